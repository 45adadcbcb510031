// The packaged extension in real VS Code: the server starts and the status bar shows the
// worker's torch version.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { openVSCode, openFile, repoRoot, screenshotPath } from './harness.mjs';

const vsix = process.env.TORCHLS_VSIX ?? path.join(repoRoot, 'dist', 'torchls.vsix');
const python = process.env.TORCHLS_TEST_PYTHON ?? path.join(repoRoot, '.venv', 'bin', 'python');

test('status bar shows the worker\'s torch version', { timeout: 240000 }, async () => {
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
  } catch (error) {
    await vscode.page.screenshot({ path: screenshotPath('smoke-failure') }).catch(() => undefined);
    throw error;
  } finally {
    await vscode.stop();
  }
});
