// The worker's life in real VS Code: torchls.interpreter pointed at a Python without torch shows
// "torch not found" and back again recovers, without reloading the window; a worker killed by
// hand is restarted, the status bar says what happened, and the next hover is answered.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  closeAllEditors, copyExamples, editUserSettings, explorerRow, findProcesses, hoverWord, openFile,
  openVSCode, python, recordStatus, removeCopy, screenshotPath, settled, statusHistory, statusItem,
  vsix, waitForStatus, withFailureScreenshot,
} from './harness.mjs';

let vscode;
let page;
let workspace;
let bare; // a venv with no torch in it

before(async () => {
  workspace = copyExamples();
  bare = mkdtempSync(path.join(tmpdir(), 'torchls-bare-'));
  // The server needs only the libraries the extension bundles; the worker finds no torch here.
  execFileSync('python3', ['-m', 'venv', '--without-pip', path.join(bare, 'venv')], { stdio: 'pipe' });
  vscode = await openVSCode({ folder: workspace, vsix, userSettings: { 'torchls.interpreter': [python] } });
  page = vscode.page;
}, { timeout: 180000 });

after(async () => {
  await vscode?.stop();
  if (workspace) removeCopy(workspace);
  if (bare) rmSync(bare, { recursive: true, force: true });
});

/** The worker of this window: its command line runs the bundled boot.py for this workspace. */
function workerPids() {
  return findProcesses('torchls/worker/boot.py', `--workspace ${workspace}`);
}

test('torchls.interpreter set to a Python without torch shows "torch not found"; set back, torch is back without a reload', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'interpreter', async () => {
    await openFile(page, 'model.py');
    await waitForStatus(page, /torch 2\.13\.0/);
    // A mark in the page: a window reload would lose it.
    await page.evaluate(() => { window.torchlsNoReload = true; });

    const noTorch = path.join(bare, 'venv', 'bin', 'python');
    await editUserSettings(page, vscode.settingsFile, { 'torchls.interpreter': [noTorch] });
    const missing = await waitForStatus(page, /torch not found/, { label: /torch not found in .*torchls-bare-/ });
    await openFile(page, 'model.py');
    assert.doesNotMatch(missing.text, /torch 2\./);
    // The hover says why there is no figure, instead of showing nothing.
    const card = await hoverWord(page, 'class SmallConvNet', 'SmallConvNet', 'torch is not installed');
    assert.match(card, /torch is not installed in \S*torchls-bare-\S*python/);
    assert.doesNotMatch(card, /Parameters 20,234/);
    await page.mouse.move(5, 5);
    await statusItem(page).hover();
    const tooltip = page.locator('.monaco-hover:not(.hidden), .workbench-hover', { hasText: 'torch not found' }).first();
    await tooltip.waitFor({ timeout: 10000 }).catch(() => undefined); // the picture only
    if (await tooltip.isVisible()) await settled(tooltip);
    await page.screenshot({ path: screenshotPath('interpreter-without-torch') });
    await page.mouse.move(5, 5);

    await editUserSettings(page, vscode.settingsFile, { 'torchls.interpreter': [python] });
    const back = await waitForStatus(page, /torch 2\.13\.0/);
    await openFile(page, 'model.py');
    assert.match(back.aria, new RegExp(`\\(${python.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}\\)`));
    assert.equal(await page.evaluate(() => window.torchlsNoReload), true, 'the window was not reloaded');
    const again = await hoverWord(page, 'class SmallConvNet', 'SmallConvNet', 'Parameters');
    assert.match(again, /Parameters 20,234/);
    await page.screenshot({ path: screenshotPath('interpreter-restored') });
    await page.mouse.move(5, 5);
  });
});

test('a worker killed by hand: the status bar says so, the worker restarts and the next hover answers', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'worker-killed', async () => {
    await closeAllEditors(page);
    await openFile(page, 'model.py');
    await waitForStatus(page, /torch 2\.13\.0/);
    const before = workerPids();
    assert.equal(before.length, 1, `one worker for this workspace, found ${before.join(', ')}`);
    assert.doesNotMatch(await statusItem(page).getAttribute('aria-label'), /ended unexpectedly/);

    await recordStatus(page);
    process.kill(before[0], 'SIGKILL');
    // The status bar's tooltip says what happened: "restarting" while it starts again, then
    // "last ended unexpectedly" once torch is back.
    const restarted = await waitForStatus(page, /torch 2\.13\.0/, { label: /The worker last ended unexpectedly: killed by SIGKILL/ });
    assert.match(restarted.aria, /killed by SIGKILL/);
    const history = await statusHistory(page);
    assert.ok(
      history.some((entry) => /the worker ended \(killed by SIGKILL\); restarting it/.test(entry)),
      `the status said it was restarting the worker; it showed: ${history.join(' || ')}`,
    );
    const after = workerPids();
    assert.equal(after.length, 1, `one new worker, found ${after.join(', ')}`);
    assert.notEqual(after[0], before[0]);
    await statusItem(page).hover();
    const tooltip = page.locator('.monaco-hover:not(.hidden), .workbench-hover', { hasText: 'killed by SIGKILL' }).first();
    await tooltip.waitFor({ timeout: 10000 });
    await settled(tooltip);
    await page.screenshot({ path: screenshotPath('worker-killed-status') });
    await page.mouse.move(5, 5);

    // A model nobody has hovered yet, so that the new worker has to build it (no cached answer).
    writeFileSync(path.join(workspace, 'after_restart.py'), [
      'import torch',
      'from torch import nn',
      '',
      '',
      'class AfterRestartNet(nn.Module):',
      '    def __init__(self) -> None:',
      '        super().__init__()',
      '        self.fc = nn.Linear(10, 5)',
      '',
      '    def forward(self, x: torch.Tensor) -> torch.Tensor:',
      '        return self.fc(x)',
      '',
    ].join('\n'));
    // Opened from the Explorer: Quick Open's file index may not list a file this new yet.
    await explorerRow(page, 'after_restart.py').click();
    await page.locator('.tab.active[aria-label^="after_restart.py"]').waitFor({ timeout: 20000 });
    const card = await hoverWord(page, 'class AfterRestartNet', 'AfterRestartNet', 'Parameters');
    assert.match(card, /Parameters 55\b/);
    assert.match(card, /MACs 50\b/);
    await page.screenshot({ path: screenshotPath('worker-killed-next-hover') });
    await page.mouse.move(5, 5);
    assert.deepEqual(workerPids(), after, 'answered by the restarted worker');
  });
});
