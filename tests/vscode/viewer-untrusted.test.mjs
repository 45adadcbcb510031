// The checkpoint viewer in an untrusted workspace (workspace trust left on, the folder not
// trusted): a checkpoint is data, so the viewer shows it as in a trusted one; "Compare with a
// model..." would build the workspace's model, so it says why it does not.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  copyExamples, explorerRow, openVSCode, python, removeCopy, screenshotPath, vsix, waitForStatus,
  withFailureScreenshot,
} from './harness.mjs';

let vscode;
let page;
let workspace;

before(async () => {
  workspace = copyExamples();
  vscode = await openVSCode({ folder: workspace, vsix, trust: true, userSettings: { 'torchls.interpreter': [python] } });
  page = vscode.page;
}, { timeout: 180000 });

after(async () => {
  await vscode?.stop();
  if (workspace) removeCopy(workspace);
});

test('in an untrusted workspace the viewer shows a checkpoint, and Compare with a model says it needs trust', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'viewer-untrusted', async () => {
    const dialog = page.locator('.monaco-dialog-box', { hasText: 'trust the authors' });
    await dialog.waitFor({ timeout: 60000 });
    await dialog.locator('.monaco-button', { hasText: /No, I don.t trust/ }).click();
    await dialog.waitFor({ state: 'detached', timeout: 10000 });
    await page.locator('.statusbar-item', { hasText: 'Restricted Mode' }).first().waitFor({ timeout: 20000 });
    await waitForStatus(page, /\(restricted\)/);

    const folder = explorerRow(page, 'checkpoints');
    if ((await folder.getAttribute('aria-expanded')) !== 'true') await folder.click();
    await explorerRow(page, 'dataparallel.pt').dblclick();
    await page.locator('.tab.active[aria-label^="dataparallel.pt"]').first().waitFor({ timeout: 30000 });
    let frame;
    const deadline = Date.now() + 30000;
    while (!frame && Date.now() < deadline) {
      for (const outer of await page.locator('iframe.webview.ready').elementHandles()) {
        const inner = await (await outer.contentFrame())?.$('iframe#active-frame');
        const candidate = await inner?.contentFrame();
        if (candidate && (await candidate.title().catch(() => '')) === 'dataparallel.pt') frame = candidate;
      }
      if (!frame) await page.waitForTimeout(200); // the webview is still loading its page
    }
    assert.ok(frame, 'the viewer did not show in Restricted Mode');
    await frame.waitForFunction(() => document.getElementById('count')?.textContent === '16 tensors', null, { timeout: 120000 });
    assert.match((await frame.locator('#verdict').innerText()), /accepts this file/);

    await frame.click('#compare');
    const note = page.locator('.notifications-toasts .notification-list-item-message', { hasText: /trust/i });
    await note.first().waitFor({ timeout: 60000 });
    assert.equal(await page.locator('.quick-input-widget:visible').count(), 0, 'no model to pick when untrusted');
    await page.screenshot({ path: screenshotPath('viewer-untrusted') });
  });
});
