// The packaged extension in real VS Code: the server starts, the status bar shows the worker's
// torch version, hovering a model class shows what it costs, and the broken loads of
// examples/train.py are marked, in the Problems panel too, with their quick fixes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { openVSCode, openFile, repoRoot, screenshotPath } from './harness.mjs';

const vsix = process.env.TORCHLS_VSIX ?? path.join(repoRoot, 'dist', 'torchls.vsix');
const python = process.env.TORCHLS_TEST_PYTHON ?? path.join(repoRoot, '.venv', 'bin', 'python');

test('status bar, model hover, load diagnostics and their quick fixes', { timeout: 300000 }, async () => {
  const vscode = await openVSCode({
    folder: path.join(repoRoot, 'examples'),
    vsix,
    userSettings: { 'torchls.interpreter': [python] },
  });
  try {
    const { page } = vscode;
    await openFile(page, 'model.py'); // activates the extension (onLanguage:python)
    const item = page.locator('.statusbar-item', { hasText: /torch 2\.\d+/ });
    await item.first().waitFor({ timeout: 120000 });
    const text = (await item.first().innerText()).trim();
    assert.match(text, /torch 2\.13\.0/);
    await page.screenshot({ path: screenshotPath('smoke-status-bar') });

    const line = page.locator('.view-line', { hasText: 'class SmallConvNet' }).first();
    await line.waitFor({ timeout: 20000 });
    const hover = page.locator('.monaco-hover', { hasText: 'Parameters' });
    // The first hover may wait for the worker's count: hover again until the card shows it.
    for (let attempt = 0; attempt < 30 && !(await hover.isVisible()); attempt += 1) {
      await page.mouse.move(5, 5);
      await line.locator('span span', { hasText: 'SmallConvNet' }).first().hover();
      await hover.waitFor({ timeout: 4000 }).catch(() => undefined);
    }
    const card = (await hover.first().innerText()).replace(/\s+/g, ' ');
    assert.match(card, /Parameters 20,234/);
    assert.match(card, /1 MAC = 2 FLOPs/);
    assert.match(card, /Heaviest layers/);
    await page.screenshot({ path: screenshotPath('hover-model-cost') });
    await page.mouse.move(5, 5);

    // examples/train.py loads a DataParallel checkpoint and a whole training checkpoint.
    await openFile(page, 'train.py');
    const squiggles = page.locator('.squiggly-error');
    await squiggles.first().waitFor({ timeout: 120000 });
    await page.keyboard.press('Control+Shift+M'); // the Problems panel
    const problem = page.locator('.markers-panel .monaco-list-row', { hasText: 'start with `module.`' });
    await problem.first().waitFor({ timeout: 30000 });
    const nested = page.locator('.markers-panel .monaco-list-row', { hasText: "under ['state_dict']" });
    await nested.first().waitFor({ timeout: 30000 });
    await page.screenshot({ path: screenshotPath('load-diagnostics') });

    // Quick fix on the DataParallel load (Ctrl+.): the prefix is stripped, nothing else.
    const loadLine = page.locator('.view-line', { hasText: 'dataparallel.pt' }).first();
    await loadLine.locator('span span', { hasText: 'load_state_dict' }).first().click();
    const fixes = page.locator('.action-widget', { hasText: 'Strip the `module.` prefix' });
    for (let attempt = 0; attempt < 10 && !(await fixes.isVisible()); attempt += 1) {
      await page.keyboard.press('Control+.');
      await fixes.waitFor({ timeout: 3000 }).catch(() => undefined);
    }
    const menu = (await fixes.first().innerText()).replace(/\s+/g, ' ');
    assert.match(menu, /torchls: Strip the `module\.` prefix/);
    assert.doesNotMatch(menu, /strict=False/);
    await page.screenshot({ path: screenshotPath('load-quick-fix') });
    await page.keyboard.press('Escape');
  } catch (error) {
    await vscode.page.screenshot({ path: screenshotPath('smoke-failure') }).catch(() => undefined);
    throw error;
  } finally {
    await vscode.stop();
  }
});
