// Workspace trust left on (this file only) and the folder not trusted: torchls runs none of the
// workspace's code (a model whose __init__ leaves a mark leaves none), the hover says why, and
// the checkpoint diagnostics of train.py still appear. Trusting it afterwards proves the mark
// would have shown: the same hover then builds the model.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  copyExamples, findProcesses, hoverWord, openFile, openVSCode, python, removeCopy, runCommand,
  screenshotPath, vsix, waitForStatus, withFailureScreenshot,
} from './harness.mjs';

let vscode;
let page;
let workspace;
let scratch;
let marker;

before(async () => {
  workspace = copyExamples();
  scratch = mkdtempSync(path.join(tmpdir(), 'torchls-trust-'));
  marker = path.join(scratch, 'user-code-ran');
  // SmallConvNet's __init__ leaves a mark when it runs. (The worker executes a module's
  // definitions, not its top-level statements, so the mark goes where building the model runs.)
  const modelPy = path.join(workspace, 'model.py');
  const source = readFileSync(modelPy, 'utf8');
  const anchor = '        super().__init__()\n';
  assert.ok(source.includes(anchor));
  writeFileSync(modelPy, source.replace(
    anchor,
    `${anchor}        __import__("pathlib").Path(${JSON.stringify(marker)}).write_text("SmallConvNet was built")\n`,
  ));
  vscode = await openVSCode({ folder: workspace, vsix, trust: true, userSettings: { 'torchls.interpreter': [python] } });
  page = vscode.page;
}, { timeout: 180000 });

after(async () => {
  await vscode?.stop();
  if (workspace) removeCopy(workspace);
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test('an untrusted workspace: no user code runs, the hover says why, checkpoint diagnostics still appear', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'untrusted', async () => {
    // VS Code asks whether to trust the folder's authors: no.
    const dialog = page.locator('.monaco-dialog-box', { hasText: 'trust the authors' });
    await dialog.waitFor({ timeout: 60000 });
    await page.screenshot({ path: screenshotPath('untrusted-prompt') });
    await dialog.locator('.monaco-button', { hasText: /No, I don.t trust/ }).click();
    await dialog.waitFor({ state: 'detached', timeout: 10000 });
    await page.locator('.statusbar-item', { hasText: 'Restricted Mode' }).first().waitFor({ timeout: 20000 });

    await openFile(page, 'model.py');
    const { aria } = await waitForStatus(page, /torch 2\.13\.0\S* \(restricted\)/);
    assert.match(aria, /This workspace is not trusted: torchls reads checkpoints but does not run its code/);
    // The worker runs (it reads checkpoints), but without --allow-user-code.
    assert.equal(findProcesses('torchls/worker/boot.py', `--workspace ${workspace}`).length, 1);
    assert.deepEqual(findProcesses('torchls/worker/boot.py', `--workspace ${workspace}`, '--allow-user-code'), []);
    const card = await hoverWord(page, 'class SmallConvNet', 'SmallConvNet', 'not trusted');
    assert.match(card, /This workspace is not trusted, so torchls runs none of its code/);
    assert.match(card, /Trust the workspace/);
    assert.doesNotMatch(card, /Parameters \d/);
    await page.screenshot({ path: screenshotPath('untrusted-hover') });
    await page.mouse.move(5, 5);

    // The loads of train.py are still checked: checkpoints are read as data.
    await openFile(page, 'train.py');
    await page.locator('.editor-instance .squiggly-error').first().waitFor({ timeout: 120000 });
    await page.keyboard.press('Control+Shift+M');
    const nested = page.locator('.markers-panel .monaco-list-row', { hasText: "under ['state_dict']" });
    await nested.first().waitFor({ timeout: 60000 });
    const problems = (await page.locator('.markers-panel').first().innerText()).replace(/\s+/g, ' ');
    assert.match(problems, /load_state_dict will raise/);
    assert.match(await page.locator('#status\\.problems').innerText(), /[1-9]/);
    await page.screenshot({ path: screenshotPath('untrusted-diagnostics') });
    assert.equal(existsSync(marker), false, 'SmallConvNet was built in an untrusted workspace');
    assert.deepEqual(findProcesses('torchls/worker/boot.py', `--workspace ${workspace}`, '--allow-user-code'), [],
      'no worker may run user code here');

    // Trusting the folder now (Workspaces: Manage Workspace Trust): the same hover builds the
    // model and the mark appears, so the check above can fail.
    await runCommand(page, 'Workspaces: Manage Workspace Trust');
    const trustButton = page.locator('.workspace-trust-editor .monaco-button', { hasText: /^Trust$/ }).first();
    await trustButton.waitFor({ timeout: 20000 });
    await trustButton.click();
    await waitForStatus(page, /^torch 2\.13\.0\S*$/);
    await openFile(page, 'model.py');
    const trusted = await hoverWord(page, 'class SmallConvNet', 'SmallConvNet', 'Parameters');
    assert.match(trusted, /Parameters 20,234/);
    assert.equal(existsSync(marker), true, 'the hover builds SmallConvNet once trusted');
  });
});
