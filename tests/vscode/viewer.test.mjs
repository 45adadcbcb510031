// The checkpoint viewer in real VS Code, on checkpoints torch writes in the test's own copy of
// examples/: a double-click in the Explorer opens it; the header, the container tree and the
// tensor table show what torch says the file holds; the filter narrows 50,000 tensors within
// 300 ms measured in the page; "Compare with a model..." finds DataParallel's "module." prefix;
// and a pickle that would run a command when loaded runs nothing and is shown for what it is.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  chooseMenuItem, closeAllEditors, copyExamples, explorerRow, focusRow, hoverWord, openFile, openVSCode, python, removeCopy, runCommand,
  screenshotPath, vsix, waitForStatus, withFailureScreenshot,
} from './harness.mjs';

// Run by the Python with torch: writes the fixtures and prints what torch says they hold.
const FIXTURES = String.raw`
import json, os, sys
import torch

workspace, sentinel = sys.argv[1], sys.argv[2]

state = {"embed.weight": torch.randn(100, 16)}
for i in range(3):
    state[f"layers.{i}.fc.weight"] = torch.randn(16, 16)
    state[f"layers.{i}.fc.bias"] = torch.randn(16)
state["head.weight"] = torch.randn(10, 16, dtype=torch.float16)
state["head.bias"] = torch.randn(10, dtype=torch.float16)
state["steps"] = torch.tensor(7)
torch.save({
    "epoch": 12,
    "global_step": 3400,
    "state_dict": state,
    "optimizer": {"state": {}, "param_groups": [{"lr": 3e-4, "weight_decay": 0.01, "params": list(range(len(state)))}]},
    "hyper_parameters": {"lr": 3e-4, "hidden": 16, "layers": 3},
}, os.path.join(workspace, "run.ckpt"))

by_dtype = {}
for t in state.values():
    entry = by_dtype.setdefault(str(t.dtype).removeprefix("torch."), {"tensors": 0, "elements": 0})
    entry["tensors"] += 1
    entry["elements"] += t.numel()

# 50,000 tiny tensors, each its own storage, as a real state dict would have them.
torch.save({f"layer{i // 1000}.block{i % 1000}.weight": torch.zeros(2) for i in range(50000)},
           os.path.join(workspace, "big.pt"))

class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {sentinel}",))

torch.save({"weight": torch.zeros(3), "extra": Payload()}, os.path.join(workspace, "hostile.pt"))
# A .bin that is no checkpoint at all (an executable's bytes): the viewer must let it go.
with open(os.path.join(workspace, "firmware.bin"), "wb") as handle:
    handle.write(b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 8)

# A Hugging Face model folder saved in two shards, whose index names a third shard that is not there.
from safetensors.torch import save_file
folder = os.path.join(workspace, "hf-model")
os.makedirs(folder)
shards = {
    "model-00001-of-00002.safetensors": {"encoder.layer.0.weight": torch.zeros(4, 4), "encoder.layer.1.weight": torch.zeros(4, 4)},
    "model-00002-of-00002.safetensors": {"head.weight": torch.zeros(2, 4), "head.bias": torch.zeros(2)},
}
weight_map = {}
for name, tensors in shards.items():
    save_file(tensors, os.path.join(folder, name), metadata={"format": "pt"})
    weight_map.update({key: name for key in tensors})
weight_map["pooler.weight"] = "model-00003-of-00003.safetensors"
with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": 112}, "weight_map": weight_map}, f)
with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"model_type": "bert"}, f)

print(json.dumps({
    "tensors": len(state),
    "elements": sum(t.numel() for t in state.values()),
    "bytes": sum(t.numel() * t.element_size() for t in state.values()),
    "by_dtype": by_dtype,
    "embed": {"shape": list(state["embed.weight"].shape), "numel": state["embed.weight"].numel()},
}))
`;

const REWRITE = String.raw`
import sys, torch
torch.save({"epoch": 13, "state_dict": {"w": torch.zeros(4)}}, sys.argv[1])
`;

const count = (n) => new Intl.NumberFormat('en-US').format(n);

let vscode;
let page;
let workspace;
let scratch;
let sentinel;
let expected;

before(async () => {
  workspace = copyExamples();
  scratch = mkdtempSync(path.join(tmpdir(), 'torchls-viewer-'));
  sentinel = path.join(scratch, 'pickle-ran');
  expected = JSON.parse(execFileSync(python, ['-c', FIXTURES, workspace, sentinel], { encoding: 'utf8', timeout: 120000 }));
  vscode = await openVSCode({ folder: workspace, vsix, userSettings: { 'torchls.interpreter': [python] } });
  page = vscode.page;
}, { timeout: 240000 });

after(async () => {
  await vscode?.stop();
  if (workspace) removeCopy(workspace);
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** The page inside the viewer's webview (VS Code nests it in two iframes) once its tab is active. */
async function viewerFrame(name) {
  await page.locator(`.tab.active[aria-label^="${name}"]`).first().waitFor({ timeout: 30000 });
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    for (const outer of await page.locator('iframe.webview.ready').elementHandles()) {
      if (!(await outer.isVisible())) continue;
      const host = await outer.contentFrame();
      const inner = await host?.$('iframe#active-frame');
      const frame = await inner?.contentFrame();
      if (frame && (await frame.title().catch(() => '')) === name) return frame;
    }
    await page.waitForTimeout(200); // the webview is still loading its page
  }
  throw new Error(`no checkpoint viewer for ${name} showed`);
}

/** The text of an element of the viewer, whitespace collapsed, once it exists. */
async function textOf(frame, selector, { timeout = 120000 } = {}) {
  const element = await frame.waitForSelector(selector, { timeout });
  return (await element.innerText()).replace(/\s+/g, ' ');
}

test('a double-click on a training checkpoint in the Explorer opens the viewer with the right numbers', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'viewer-open', async () => {
    // The extension (activated by the workspace's .pt files) is up: VS Code knows its editors.
    await waitForStatus(page, /torch \d/);
    await explorerRow(page, 'run.ckpt').dblclick();
    const frame = await viewerFrame('run.ckpt');
    // Not the text editor's "binary file" notice: the custom editor is the default for .ckpt.
    assert.equal(await page.locator('.editor-instance .monaco-editor .view-lines').count(), 0);

    const header = await textOf(frame, '.header');
    assert.match(header, new RegExp(`Tensors ${count(expected.tensors)}\\b`));
    assert.match(header, new RegExp(`Parameters ${count(expected.elements)} elements`));
    for (const [dtype, { tensors, elements }] of Object.entries(expected.by_dtype)) {
      assert.match(header, new RegExp(`${dtype}: ${count(elements)} in ${count(tensors)} tensors?\\b`));
    }
    assert.match(header, /torch\.load\(weights_only=True\) accepts this file/);
    assert.match(header, /Hyper-parameters/);

    // The tree: the training checkpoint's containers with their plain values.
    const tree = await textOf(frame, '.tree');
    assert.match(tree, /epoch 12\b/);
    assert.match(tree, /global_step 3400\b/);
    // Each container with its tensors' total size (10,012 bytes here, shown in KiB).
    assert.ok(expected.bytes > 1024 && expected.bytes < 10240);
    const kib = `${(expected.bytes / 1024).toFixed(2)} KiB`;
    assert.match(tree, new RegExp(`\\(root\\) dict · 5 items · 10 tensors · ${kib}`));
    assert.match(tree, new RegExp(`state_dict \\w+ · 10 items · 10 tensors · ${kib}`));
    assert.match(tree, /lr 0\.0003\b/);

    // The table: one row per tensor, torch's shape and element count.
    await frame.waitForFunction(() => /^10 tensors$/.test(document.getElementById('count')?.textContent ?? ''));
    const embed = (await frame.locator('#rows .row[data-key="embed.weight"]').innerText()).replace(/\s+/g, ' ');
    assert.match(embed, new RegExp(`embed\\.weight .*float32 \\(${expected.embed.shape.join(', ')}\\) ${count(expected.embed.numel)}`));
    await page.screenshot({ path: screenshotPath('viewer-training-checkpoint') });

    // Sorted by bytes, largest first (a second click reverses the order).
    await frame.click('button.sort[data-key="bytes"]');
    await frame.click('button.sort[data-key="bytes"]');
    assert.equal(await frame.locator('#rows .row').first().getAttribute('data-key'), 'embed.weight');

    // Copy a name: the row's button, or Ctrl+C on the focused row.
    const embedRow = frame.locator('#rows .row[data-key="embed.weight"]');
    await embedRow.hover();
    await embedRow.locator('button.copy').click();
    await page.locator('.statusbar', { hasText: 'Copied embed.weight' }).waitFor({ timeout: 10000 });
    await frame.locator('#rows .row[data-key="head.bias"]').focus();
    await page.keyboard.press('Control+C');
    await page.locator('.statusbar', { hasText: 'Copied head.bias' }).waitFor({ timeout: 10000 });

    // Grouped by prefix: layers.* collapsed to one row, opened with the keyboard.
    await frame.check('#group');
    const groups = await frame.locator('#rows .row.group').allInnerTexts();
    assert.ok(groups.some((g) => /^\s*▸\s*layers\.\*/.test(g)), groups.join(' | '));
    await frame.locator('#rows .row').first().focus();
    for (let moves = 0; moves < 10; moves += 1) {
      const focused = await frame.evaluate(() => document.activeElement?.textContent ?? '');
      if (focused.includes('layers.*')) break;
      await page.keyboard.press('ArrowDown');
    }
    await page.keyboard.press('ArrowRight');
    await frame.waitForSelector('#rows .row.group[aria-expanded="true"]');
    const opened = await frame.locator('#rows .row').allInnerTexts();
    assert.ok(opened.some((r) => r.includes('layers.0.*')), opened.join(' | '));
    await frame.uncheck('#group');

    // Written again on disk (a training run saving its next epoch): the open view follows.
    execFileSync(python, ['-c', REWRITE, path.join(workspace, 'run.ckpt')], { timeout: 120000 });
    await frame.waitForFunction(() => /epoch 13\b/.test(document.querySelector('.tree')?.innerText?.replace(/\s+/g, ' ') ?? ''), null, { timeout: 60000 });
    assert.match(await textOf(frame, '.header'), /Tensors 1\b/);
    await closeAllEditors(page);
  });
});

test('the filter narrows a 50,000-tensor checkpoint in under 300 ms, and only visible rows are in the page', { timeout: 300000 }, async (t) => {
  await withFailureScreenshot(page, 'viewer-filter', async () => {
    const opening = Date.now();
    await openFile(page, 'big.pt');
    const frame = await viewerFrame('big.pt');
    await frame.waitForFunction(() => document.getElementById('count')?.textContent === '50,000 tensors', null, { timeout: 120000 });
    t.diagnostic(`opening big.pt (50,000 tensors, ${count(statSync(path.join(workspace, 'big.pt')).size)} bytes) until its rows show: ${Date.now() - opening} ms`);
    const drawn = await frame.locator('#rows .row').count();
    assert.ok(drawn > 0 && drawn < 200, `${drawn} rows in the DOM for 50,000 tensors`);

    // From the input event to the rows painted (the frame after the DOM update).
    const measure = (text) => frame.evaluate(async (value) => {
      const input = document.getElementById('filter');
      const start = performance.now();
      input.value = value;
      input.dispatchEvent(new Event('input', { bubbles: true }));
      await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
      return {
        ms: performance.now() - start,
        rows: [...document.querySelectorAll('#rows .row')].map((row) => row.getAttribute('data-key')),
        count: document.getElementById('count').textContent,
      };
    }, text);

    const glob = await measure('layer7.block12*');
    t.diagnostic(`filter "layer7.block12*" on 50,000 tensors: ${glob.ms.toFixed(1)} ms`);
    console.log(`filter "layer7.block12*" on 50,000 tensors: ${glob.ms.toFixed(1)} ms`);
    assert.equal(glob.count, '11 of 50,000 tensors'); // block12 and block120..block129
    assert.ok(glob.rows.includes('layer7.block12.weight') && glob.rows.includes('layer7.block129.weight'), glob.rows.join(' '));
    assert.ok(glob.ms < 300, `the glob filter took ${glob.ms} ms`);

    const substring = await measure('block999.');
    t.diagnostic(`filter "block999." on 50,000 tensors: ${substring.ms.toFixed(1)} ms`);
    console.log(`filter "block999." on 50,000 tensors: ${substring.ms.toFixed(1)} ms`);
    assert.equal(substring.count, '50 of 50,000 tensors');
    assert.ok(substring.ms < 300, `the substring filter took ${substring.ms} ms`);
    await page.screenshot({ path: screenshotPath('viewer-filter') });

    const cleared = await measure('');
    t.diagnostic(`clearing the filter: ${cleared.ms.toFixed(1)} ms`);
    assert.equal(cleared.count, '50,000 tensors');
    assert.ok(cleared.ms < 300, `clearing the filter took ${cleared.ms} ms`);
    // Sorting all 50,000 by size, from the click to the rows painted.
    const sorted = await frame.evaluate(async () => {
      const start = performance.now();
      document.querySelector('button.sort[data-key="numel"]').click();
      await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
      return performance.now() - start;
    });
    t.diagnostic(`sorting 50,000 tensors by elements: ${sorted.toFixed(1)} ms`);
    assert.ok(sorted < 1000, `sorting took ${sorted} ms`);
    await frame.click('button.sort[data-key="numel"]');
    await frame.click('button.sort[data-key="numel"]'); // back to the file's order

    // The end of the list is reachable with the keyboard, and its rows are drawn there.
    await frame.locator('#rows .row').first().focus();
    await page.keyboard.press('End');
    await frame.waitForSelector('#rows .row[data-key="layer49.block999.weight"]', { timeout: 5000 });
    assert.ok((await frame.locator('#rows .row').count()) < 200);
    await closeAllEditors(page);
  });
});

test('"Compare with a model..." on the DataParallel checkpoint shows the module. prefix', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'viewer-compare', async () => {
    const folder = explorerRow(page, 'checkpoints');
    if ((await folder.getAttribute('aria-expanded')) !== 'true') await folder.click();
    await explorerRow(page, 'dataparallel.pt').dblclick();
    const frame = await viewerFrame('dataparallel.pt');
    await frame.waitForFunction(() => /^16 tensors$/.test(document.getElementById('count')?.textContent ?? ''), null, { timeout: 120000 });
    await frame.click('#compare');
    await page.locator('.quick-input-widget').waitFor({ timeout: 60000 });
    await focusRow(page, '.quick-input-list .monaco-list-row', 'SmallConvNet (model.py');
    await page.keyboard.press('Enter');
    const result = await textOf(frame, '#compare-result:not([hidden]) dl', { timeout: 120000 });
    assert.match(result, /Prefix checkpoint keys start with "module\.", the model's with ""/);
    assert.match(await textOf(frame, "#compare-result h2"), /Compared with SmallConvNet \(model\.py:\d+\)/);
    await page.screenshot({ path: screenshotPath('viewer-compare') });
    await closeAllEditors(page);
  });
});

test('a pickle that runs a command when loaded runs nothing in the viewer and shows its verdict', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'viewer-hostile', async () => {
    await openFile(page, 'hostile.pt');
    const frame = await viewerFrame('hostile.pt');
    const verdict = await textOf(frame, '#verdict');
    assert.match(verdict, /✗/);
    const system = frame.locator('.globals li.runs-code', { hasText: /(posix|os)\.system/ });
    assert.match(await system.innerText(), /runs code/);
    assert.match(await frame.locator('.globals li', { hasText: '_rebuild_tensor_v2' }).innerText(), /allowed/);
    await page.screenshot({ path: screenshotPath('viewer-hostile-pickle') });
    assert.equal(existsSync(sentinel), false, 'the pickle ran its command');
    await closeAllEditors(page);

    // A .bin that is not a checkpoint says so in one line, and one click gives it back to VS Code.
    await openFile(page, 'firmware.bin');
    const other = await viewerFrame('firmware.bin');
    assert.match(await textOf(other, '.status.error'), /not a checkpoint format torchls knows/);
    await other.click('#reopen-text');
    await page.locator('.editor-container', { hasText: /not displayed in the text editor|Open Anyway/ }).first()
      .waitFor({ timeout: 30000 });
    await closeAllEditors(page);
  });
});

test('the hover on a checkpoint path in code links to the viewer, and the link opens it', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'viewer-hover-link', async () => {
    await openFile(page, 'train.py');
    const card = await hoverWord(page, 'checkpoints/dataparallel.pt', 'dataparallel', 'Open in the checkpoint viewer');
    assert.match(card, /16 tensors|Tensors 16|16 tensor/);
    await page.locator('.monaco-hover:not(.hidden) a', { hasText: 'Open in the checkpoint viewer' }).first().click();
    const frame = await viewerFrame('dataparallel.pt');
    await frame.waitForFunction(() => /^16 tensors$/.test(document.getElementById('count')?.textContent ?? ''), null, { timeout: 120000 });
    await closeAllEditors(page);
  });
});

test('a sharded Hugging Face model folder opens from the Explorer in one view with each tensor\'s shard and the index\'s problems', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'viewer-sharded', async () => {
    const menuItems = page.locator('.context-view .monaco-menu .action-item .action-label');
    // The folder is known to be a model folder once the client's search has run.
    const deadline = Date.now() + 60000;
    for (;;) {
      await explorerRow(page, 'hf-model').click({ button: 'right' });
      await menuItems.first().waitFor({ timeout: 10000 });
      if ((await menuItems.allInnerTexts()).includes('Open checkpoint viewer')) break;
      await page.keyboard.press('Escape');
      if (Date.now() > deadline) throw new Error('no "Open checkpoint viewer" on the model folder');
      await page.waitForTimeout(1000); // the model-folder search runs in the background
    }
    await chooseMenuItem(page, 'Open checkpoint viewer');
    const frame = await viewerFrame('hf-model');
    const shards = await textOf(frame, '.shards');
    assert.match(shards, /model-00001-of-00002\.safetensors 2 tensors/);
    assert.match(shards, /model-00002-of-00002\.safetensors 2 tensors/);
    assert.match(await textOf(frame, '#shard-problems'), /model-00003-of-00003\.safetensors/);
    // The size is the shards' on disk (not the index's few hundred bytes), the index beside it.
    const onDisk = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
      .reduce((sum, name) => sum + statSync(path.join(workspace, 'hf-model', name)).size, 0);
    assert.match(await textOf(frame, '.header'), new RegExp(`Size on disk .*\\(${count(onDisk)} bytes\\) in 2 shards, plus the index`));
    const head = (await frame.locator('#rows .row[data-key="head.bias"]').innerText()).replace(/\s+/g, ' ');
    assert.match(head, /head\.bias .*float32 \(2,\) 2 .*model-00002-of-00002\.safetensors/);
    assert.match(await textOf(frame, '#verdict'), /safetensors: no pickle/);
    await page.screenshot({ path: screenshotPath('viewer-sharded') });

    // Themes: the page takes VS Code's colours (dark, then high contrast with its borders).
    const background = () => frame.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const light = await background();
    // Each theme is waited for by its own colour change: waiting for "not light" let the high
    // contrast check read the dark theme's background still.
    let previous = light;
    for (const [theme, shot] of [['Dark Modern', 'viewer-dark'], ['Dark High Contrast', 'viewer-high-contrast']]) {
      await runCommand(page, 'Preferences: Color Theme');
      await page.locator('.quick-input-widget input').fill(theme);
      await focusRow(page, '.quick-input-list .monaco-list-row', theme);
      await page.keyboard.press('Enter');
      await frame.waitForFunction((before) => getComputedStyle(document.body).backgroundColor !== before, previous, { timeout: 20000 });
      previous = await background();
      await page.screenshot({ path: screenshotPath(shot) });
    }
    assert.equal(await background(), 'rgb(0, 0, 0)');
    assert.equal(await frame.evaluate(() => document.body.classList.contains('vscode-high-contrast')), true);
    const border = await frame.evaluate(() => getComputedStyle(document.querySelector('#rows .row')).borderBottomStyle);
    assert.equal(border, 'solid'); // rows are outlined in high contrast
    await runCommand(page, 'Preferences: Color Theme');
    await page.locator('.quick-input-widget input').fill('Light Modern');
    await focusRow(page, '.quick-input-list .monaco-list-row', 'Light Modern');
    await page.keyboard.press('Enter');
    await frame.waitForFunction((before) => getComputedStyle(document.body).backgroundColor === before, light, { timeout: 20000 });
    await closeAllEditors(page);
  });
});

test('Compare checkpoints on two files selected in the Explorer shows the changed shapes, then the values', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'viewer-diff', async () => {
    const folder = explorerRow(page, 'checkpoints');
    if ((await folder.getAttribute('aria-expanded')) !== 'true') await folder.click();
    await explorerRow(page, 'clean.pt').click();
    await explorerRow(page, 'other_head.pt').click({ modifiers: ['Control'] });
    await explorerRow(page, 'other_head.pt').click({ button: 'right' });
    await chooseMenuItem(page, 'Compare checkpoints');

    await page.locator('.tab.active', { hasText: '↔' }).first().waitFor({ timeout: 30000 });
    let frame;
    const deadline = Date.now() + 30000;
    while (!frame && Date.now() < deadline) {
      for (const outer of await page.locator('iframe.webview.ready').elementHandles()) {
        const inner = await (await outer.contentFrame())?.$('iframe#active-frame');
        const candidate = await inner?.contentFrame();
        if (candidate && (await candidate.title().catch(() => '')).includes('↔')) frame = candidate;
      }
      if (!frame) await page.waitForTimeout(200); // the panel is still loading its page
    }
    assert.ok(frame, 'the comparison panel did not show');
    const facts = await textOf(frame, '.diff dl');
    assert.match(facts, /Unchanged 14\b/);
    assert.match(facts, /Shape changed 2\b/);
    const shapes = await textOf(frame, '.diff details');
    assert.match(shapes, /classifier\.weight: \((10, 64\) → \(100, 64|100, 64\) → \(10, 64)\)/);
    await frame.click('#diff-values');
    const values = await textOf(frame, '#diff-values-table', { timeout: 120000 });
    assert.match(values, /Values: \d+ tensors? of 14 differ/);
    assert.equal(await frame.locator('#diff-values-table tbody tr').count(), 14);
    await page.screenshot({ path: screenshotPath('viewer-diff') });
    await closeAllEditors(page);
  });
});
