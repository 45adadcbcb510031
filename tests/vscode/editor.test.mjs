// The packaged extension in real VS Code, as a user meets it in a trusted copy of examples/: the
// status bar and the log, model hovers, the load_state_dict diagnostics and a quick fix applied,
// the k-fold source action, and Downgrade checkpoint from the palette and the Explorer.
// One code-server for the file; every test starts from closed editors and restores what it edits.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import {
  closeAllEditors, copyExamples, editorText, explorerRow as explorerFileRow, focusRow, goToLine,
  hoverWord, openFile, openVSCode, problemCounts, python, removeCopy, restoreExample, runCommand,
  saveAndWait, screenshotPath, settled, vsix, waitForStatus, withFailureScreenshot,
} from './harness.mjs';

let vscode;
let page;
let workspace;

before(async () => {
  workspace = copyExamples();
  vscode = await openVSCode({ folder: workspace, vsix, userSettings: { 'torchls.interpreter': [python] } });
  page = vscode.page;
}, { timeout: 180000 });

after(async () => {
  await vscode?.stop();
  if (workspace) removeCopy(workspace);
});

test('the status bar shows the worker\'s torch version and the torchls output channel shows the server log', { timeout: 240000 }, async () => {
  await withFailureScreenshot(page, 'status-and-log', async () => {
    await openFile(page, 'model.py'); // activates the extension (onLanguage:python)
    const { text, aria } = await waitForStatus(page, /torch 2\.13\.0/);
    assert.match(text, /^torch 2\.13\.0/);
    assert.match(aria, /torchls: torch 2\.13\.0\S* \(.*python/); // the tooltip names the interpreter
    await page.screenshot({ path: screenshotPath('status-bar') });

    await runCommand(page, 'TorchLS: Show log');
    const output = page.locator('.part.panel .monaco-editor .view-lines').first();
    await output.waitFor({ timeout: 30000 });
    // The Output view shows the torchls channel (its picker says so) ...
    await page.locator('.part.panel .monaco-select-box[title="torchls"], .part.panel select.monaco-select-box')
      .first().waitFor({ timeout: 10000 });
    assert.match(await page.locator('.part.panel select.monaco-select-box').first().inputValue(), /torchls/);
    // ... and, filtered on "status:", the server's own log lines about the worker's state.
    const filter = page.locator('.part.panel .viewpane-filter input, .part.panel input[placeholder^="Filter"]').first();
    await filter.fill('status:');
    await page.waitForFunction(
      () => /INFO torchls\.lsp\.server: status: ready: torch 2\.13\.0/.test(
        (document.querySelector('.part.panel .monaco-editor .view-lines')?.innerText ?? '').replace(/\u00a0/g, ' '),
      ),
      null, { timeout: 30000 },
    );
    await page.screenshot({ path: screenshotPath('output-log') });
    await filter.fill('');
    await runCommand(page, 'View: Hide Panel');
  });
});

test('hovering a model class and a construction shows parameters and MACs/FLOPs for the input shape', { timeout: 240000 }, async () => {
  await withFailureScreenshot(page, 'hover', async () => {
    await closeAllEditors(page);
    await openFile(page, 'model.py');
    await waitForStatus(page, /torch 2\.13\.0/);
    const card = await hoverWord(page, 'class SmallConvNet', 'SmallConvNet', 'Parameters');
    assert.match(card, /Parameters 20,234/);
    assert.match(card, /MACs [\d.]+ [KMG]? ?\([\d,]+\)/);
    assert.match(card, /FLOPs [\d.]+ [KMG]/);
    assert.match(card, /1 MAC = 2 FLOPs/);
    assert.match(card, /Input \(1, 3, \d+, \d+\)/, 'the input shape the figures are for');
    assert.match(card, /Heaviest layers/);
    await page.screenshot({ path: screenshotPath('hover-model-class') });
    await page.mouse.move(5, 5);

    // A construction whose input a `# torchls: input=` comment states (model.py's last lines).
    const modelSource = readFileSync(path.join(workspace, 'model.py'), 'utf8').split('\n');
    await goToLine(page, modelSource.findIndex((line) => line.includes('model = SmallConvNet(num_classes=10)')) + 1);
    const construction = await hoverWord(page, 'model = SmallConvNet(num_classes=10)', 'SmallConvNet', 'Parameters');
    assert.match(construction, /built as SmallConvNet\(num_classes=10\)/);
    assert.match(construction, /Parameters 20,234/);
    assert.match(construction, /MACs [\d.]+ [KMG]? ?\([\d,]+\)/);
    assert.match(construction, /FLOPs [\d.]+ [KMG]/);
    assert.match(construction, /Input \(1, 3, 32, 32\)/, 'the input shape of the comment');
    assert.doesNotMatch(construction, /a guess from the first layer/);
    await page.screenshot({ path: screenshotPath('hover-construction') });
    await page.mouse.move(5, 5);
  });
});

test('a mismatched load_state_dict is marked, Ctrl+. lists its fixes and applying one clears it', { timeout: 240000 }, async () => {
  await withFailureScreenshot(page, 'quick-fix', async () => {
    await closeAllEditors(page);
    restoreExample(workspace, 'train.py');
    await openFile(page, 'train.py');
    await page.locator('.editor-instance .squiggly-error').first().waitFor({ timeout: 120000 });
    await page.keyboard.press('Control+Shift+M'); // the Problems panel
    const problems = page.locator('.markers-panel .monaco-list-row');
    const prefixProblem = problems.filter({ hasText: 'start with `module.`' });
    const nestedProblem = problems.filter({ hasText: "under ['state_dict']" });
    await prefixProblem.first().waitFor({ timeout: 60000 });
    await nestedProblem.first().waitFor({ timeout: 60000 });
    const before = await problemCounts(page);
    assert.ok(before.errors >= 2, `two errors in the Problems count, got ${JSON.stringify(before)}`);
    await page.screenshot({ path: screenshotPath('load-diagnostics') });

    // Ctrl+. on the DataParallel load: the menu lists torchls's fixes.
    const loadLine = () => page.locator('.editor-instance .view-line', { hasText: 'dataparallel.pt' }).first();
    await loadLine().locator('span span', { hasText: 'load_state_dict' }).first().click();
    const menu = page.locator('.action-widget', { hasText: 'torchls:' });
    for (let attempt = 0; attempt < 10 && !(await menu.isVisible()); attempt += 1) {
      await page.keyboard.press('Control+.');
      await menu.waitFor({ timeout: 3000 }).catch(() => undefined);
    }
    await settled(menu.first());
    const items = (await menu.first().innerText()).replace(/\s+/g, ' ');
    assert.match(items, /torchls: Strip the `module\.` prefix/);
    await focusRow(page, '.action-widget .monaco-list-row.action', 'Strip the `module.` prefix');
    await page.screenshot({ path: screenshotPath('quick-fix-menu') });
    await page.keyboard.press('Enter');

    // The line now strips the prefix; the file on disk says so once saved.
    const expected = 'model.load_state_dict({k.removeprefix("module."): v for k, v in torch.load("checkpoints/dataparallel.pt").items()})';
    await page.waitForFunction(
      () => /removeprefix/.test(document.querySelector('.editor-instance .view-lines')?.innerText ?? ''),
      null, { timeout: 20000 },
    );
    assert.ok((await editorText(page)).includes(expected), await editorText(page));
    const lines = (await saveAndWait(page, path.join(workspace, 'train.py'), expected)).split('\n');
    assert.equal(lines[13], expected);
    assert.equal(lines.filter((line) => line.includes('load_state_dict')).length, 2, 'nothing else changed');

    // That diagnostic goes away, the other load's stays.
    await prefixProblem.first().waitFor({ state: 'detached', timeout: 60000 });
    assert.equal(await nestedProblem.count(), 1);
    await page.waitForFunction(
      (errors) => Number((document.getElementById('status.problems')?.innerText.match(/\d+/) ?? ['-1'])[0]) === errors,
      before.errors - 1, { timeout: 30000 },
    );
    await page.screenshot({ path: screenshotPath('quick-fix-applied') });
    await runCommand(page, 'View: Hide Panel');
  });
});

test('the k-fold source action inserts a cross-validation loop and the file still compiles', { timeout: 240000 }, async () => {
  await withFailureScreenshot(page, 'kfold', async () => {
    await closeAllEditors(page);
    restoreExample(workspace, 'train.py');
    await openFile(page, 'train.py');
    await waitForStatus(page, /torch 2\.13\.0/);
    // The loop goes before the cursor's line: put it on the training loop.
    const loopLine = page.locator('.editor-instance .view-line', { hasText: 'for epoch in range(2)' }).first();
    await loopLine.locator('span span', { hasText: 'for' }).first().click();
    await page.keyboard.press('Home');

    // Source actions are not in the Ctrl+. menu: "Source Action..." (editor.action.sourceAction).
    const menu = page.locator('.action-widget', { hasText: 'Insert k-fold cross-validation (KFold)' });
    for (let attempt = 0; attempt < 5 && !(await menu.isVisible()); attempt += 1) {
      await runCommand(page, 'Source Action...');
      await menu.waitFor({ timeout: 10000 }).catch(() => undefined);
    }
    await focusRow(page, '.action-widget .monaco-list-row.action', 'Insert k-fold cross-validation (KFold)');
    await page.keyboard.press('Enter');

    await page.locator('.editor-instance .view-line', { hasText: 'import KFold' }).first().waitFor({ timeout: 30000 });
    const source = await saveAndWait(page, path.join(workspace, 'train.py'), 'KFold(n_splits');
    assert.match(source, /from sklearn\.model_selection import KFold/);
    assert.match(source, /KFold\(n_splits=\w+, shuffle=True, random_state=\d+\)/);
    assert.match(source, /for fold, \(\w+, \w+\) in enumerate\(/);
    assert.ok(source.indexOf('KFold(n_splits') < source.indexOf('for epoch in range(2)'), 'inserted before the cursor line');
    assert.match(source, /for epoch in range\(2\):/, 'the original loop is kept');
    // Compiled with the worker's Python; the .pyc goes elsewhere, not into the workspace.
    execFileSync(python, ['-m', 'py_compile', path.join(workspace, 'train.py')], {
      stdio: 'pipe', env: { ...process.env, PYTHONPYCACHEPREFIX: path.join(path.dirname(workspace), 'pycache') },
    });

    // The picture: the inserted loop in view.
    await goToLine(page, source.split('\n').findIndex((line) => line.includes('k-fold cross-validation (inserted')) + 1);
    await page.locator('.editor-instance .view-line', { hasText: 'KFold(n_splits' }).first().waitFor({ timeout: 10000 });
    await page.screenshot({ path: screenshotPath('kfold-inserted') });
    restoreExample(workspace, 'train.py');
  });
});

test('Downgrade checkpoint writes a verified legacy copy; the Explorer menu offers it on checkpoints only', { timeout: 240000 }, async () => {
  await withFailureScreenshot(page, 'downgrade', async () => {
    await closeAllEditors(page);
    await openFile(page, 'train.py'); // not a checkpoint: the command asks which one
    const output = path.join(workspace, 'checkpoints', 'clean.legacy.pt');
    assert.equal(existsSync(output), false);
    const explorerRow = (name) => explorerFileRow(page, name);
    if (!(await explorerRow('clean.pt').isVisible())) await explorerRow('checkpoints').click();
    await explorerRow('clean.pt').waitFor({ timeout: 10000 });

    // From the palette with no checkpoint active: the picker lists the workspace's checkpoints.
    await runCommand(page, 'TorchLS: Downgrade checkpoint');
    const picker = page.locator('.quick-input-widget input');
    await page.locator('.quick-input-list .monaco-list-row', { hasText: 'clean.pt' }).first().waitFor({ timeout: 60000 });
    await picker.fill('checkpoints/clean.pt');
    await focusRow(page, '.quick-input-list .monaco-list-row', 'clean.pt');
    await page.keyboard.press('Enter');

    const notification = page.locator('.notifications-toasts .notification-list-item', { hasText: 'verified' });
    await notification.first().waitFor({ timeout: 120000 });
    const message = (await notification.first().locator('.notification-list-item-message').innerText()).replace(/\s+/g, ' ');
    assert.match(message, /Downgraded clean\.pt -> clean\.legacy\.pt/);
    assert.match(message, /verified: torch 2\.13\.0/);
    assert.match(await notification.first().innerText(), /Reveal in Explorer/);
    assert.ok(existsSync(output), 'clean.legacy.pt next to clean.pt');
    await explorerRow('clean.legacy.pt').waitFor({ timeout: 20000 }); // the Explorer shows it too
    await settled(notification.first());
    await page.screenshot({ path: screenshotPath('downgrade-notification') });

    const head = readFileSync(output).subarray(0, 2);
    assert.notEqual(head.toString('latin1'), 'PK', 'the legacy format, not a zip archive');
    assert.ok(statSync(output).size > 10000);
    await notification.first().hover();
    await notification.first().locator('.codicon-notifications-clear, .codicon-close').first().click().catch(() => undefined);

    // The Explorer: right-click a .pt file, then a .py file.
    const menuItems = page.locator('.context-view .monaco-menu .action-item .action-label');
    await explorerRow('clean.pt').click({ button: 'right' });
    await menuItems.first().waitFor({ timeout: 10000 });
    await settled(page.locator('.context-view').first());
    const onCheckpoint = await menuItems.allInnerTexts();
    assert.ok(onCheckpoint.includes('Downgrade checkpoint'), onCheckpoint.join(' | '));
    await page.screenshot({ path: screenshotPath('explorer-menu-checkpoint') });
    await page.keyboard.press('Escape');
    await page.locator('.context-view .monaco-menu').waitFor({ state: 'detached', timeout: 5000 });

    await explorerRow('model.py').click({ button: 'right' });
    await menuItems.first().waitFor({ timeout: 10000 });
    const onPython = await menuItems.allInnerTexts();
    assert.ok(onPython.includes('Rename...') || onPython.some((item) => /Copy Path/.test(item)), onPython.join(' | '));
    assert.ok(!onPython.includes('Downgrade checkpoint'), onPython.join(' | '));
    await page.screenshot({ path: screenshotPath('explorer-menu-python') });
    await page.keyboard.press('Escape');
  });
});
