// "Convert checkpoint to safetensors" in real VS Code, as a user meets it: right-click a .bin in
// the Explorer, choose the item, the notification says what was written, its Open button opens
// the new .safetensors file in the checkpoint viewer, which shows the tensors torch saved. The
// original is byte for byte what it was.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import {
  chooseMenuItem, closeAllEditors, copyExamples, explorerRow, focusRow, openVSCode, python, removeCopy, screenshotPath, settled,
  vsix, waitForStatus, withFailureScreenshot,
} from './harness.mjs';

// Run by the Python with torch: a Hugging Face style .bin, and what torch says it holds.
const FIXTURE = String.raw`
import json, os, sys
import torch

state = {"embed.weight": torch.randn(50, 8)}
for i in range(4):
    state[f"blocks.{i}.weight"] = torch.randn(8, 8)
    state[f"blocks.{i}.bias"] = torch.randn(8)
state["head.weight"] = torch.randn(3, 8).t()  # a transposed view: not contiguous
torch.save(state, os.path.join(sys.argv[1], "pytorch_model.bin"))
# Two state dicts of one size: which one to convert is the user's choice.
torch.save({"model": {"w": torch.zeros(6)}, "ema": {"w": torch.full((6,), 0.5)}},
           os.path.join(sys.argv[1], "averaged.pt"))
torch.save({"w": torch.randn(5, 5), "bn.running_mean": torch.randn(5), "steps": torch.tensor(9)},
           os.path.join(sys.argv[1], "small.pt"))
# A training checkpoint of a DataParallel model: weights under "module.", the optimizer beside them.
torch.save({"epoch": 3, "state_dict": {"module.fc.weight": torch.randn(4, 4), "module.fc.bias": torch.randn(4)},
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}},
           os.path.join(sys.argv[1], "run.ckpt"))
print(json.dumps({"tensors": len(state), "elements": sum(t.numel() for t in state.values())}))
`;

// Run by the Python with torch: what the written file holds, read by the safetensors package.
const READ_BACK = String.raw`
import json, sys
import torch
from safetensors.torch import load_file

written, original = load_file(sys.argv[1]), torch.load(sys.argv[2], weights_only=True)
print(json.dumps({
    "keys": sorted(written) == sorted(original),
    "equal": all(torch.equal(written[k], original[k]) for k in original),
}))
`;

// Run by the Python with torch: the dtypes and values of a written torch.save or safetensors file.
const DESCRIBE = String.raw`
import json, sys
import torch
from safetensors.torch import load_file

path = sys.argv[1]
data = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
print(json.dumps({k: {"dtype": str(v.dtype), "values": v.float().flatten().tolist()} for k, v in data.items()}))
`;

const CONVERSIONS = [
  'Convert checkpoint to safetensors', 'Extract weights', 'Cast checkpoint to bf16/fp16/fp32',
  'Make checkpoint weights_only-clean',
];

const describe = (file) => JSON.parse(execFileSync(python, ['-c', DESCRIBE, file], { encoding: 'utf8', timeout: 120000 }));
const count = (n) => new Intl.NumberFormat('en-US').format(n);
const digest = (file) => createHash('sha256').update(readFileSync(file)).digest('hex');

let vscode;
let page;
let workspace;
let expected;

before(async () => {
  workspace = copyExamples();
  expected = JSON.parse(execFileSync(python, ['-c', FIXTURE, workspace], { encoding: 'utf8', timeout: 120000 }));
  vscode = await openVSCode({ folder: workspace, vsix, userSettings: { 'torchls.interpreter': [python] } });
  page = vscode.page;
}, { timeout: 240000 });

after(async () => {
  await vscode?.stop();
  if (workspace) removeCopy(workspace);
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

test('Explorer > Convert checkpoint to safetensors on a .bin: the notification\'s Open shows the new file in the viewer', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'convert-safetensors', async () => {
    const source = path.join(workspace, 'pytorch_model.bin');
    const output = path.join(workspace, 'pytorch_model.safetensors');
    const before = digest(source);
    await waitForStatus(page, /torch \d/); // the extension is up (activated by the checkpoints)

    await explorerRow(page, 'pytorch_model.bin').click({ button: 'right' });
    await chooseMenuItem(page, 'Convert checkpoint to safetensors');

    const notification = page.locator('.notifications-toasts .notification-list-item', { hasText: 'pytorch_model.safetensors' });
    await notification.first().waitFor({ timeout: 120000 });
    const message = (await notification.first().locator('.notification-list-item-message').innerText()).replace(/\s+/g, ' ');
    assert.match(message, /Converted pytorch_model\.bin -> pytorch_model\.safetensors/);
    assert.match(message, /verified/);
    assert.ok(existsSync(output), 'pytorch_model.safetensors beside pytorch_model.bin');
    assert.equal(digest(source), before, 'the original is untouched');
    const written = JSON.parse(execFileSync(python, ['-c', READ_BACK, output, source], { encoding: 'utf8', timeout: 120000 }));
    assert.deepEqual(written, { keys: true, equal: true });
    await settled(notification.first());
    await page.screenshot({ path: screenshotPath('convert-notification') });

    await notification.first().locator('.monaco-button', { hasText: /^Open$/ }).click();
    const frame = await viewerFrame('pytorch_model.safetensors');
    const header = (await (await frame.waitForSelector('.header', { timeout: 120000 })).innerText()).replace(/\s+/g, ' ');
    assert.match(header, new RegExp(`Tensors ${count(expected.tensors)}\\b`));
    assert.match(header, new RegExp(`Parameters ${count(expected.elements)} elements`));
    await frame.waitForFunction(
      (n) => document.getElementById('count')?.textContent === `${n} tensors`,
      expected.tensors,
      { timeout: 60000 },
    );
    await page.screenshot({ path: screenshotPath('convert-opened-in-viewer') });
  });
});

/** Chooses the row containing `text` in the open quick pick. */
async function pick(text) {
  const rows = '.quick-input-list .monaco-list-row';
  await page.locator(rows, { hasText: text }).first().waitFor({ timeout: 60000 });
  await focusRow(page, rows, text);
  await page.keyboard.press('Enter');
}

test('the Explorer offers the conversions on checkpoints only; Cast asks for the dtype and whether norm stats stay fp32', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'convert-cast', async () => {
    await closeAllEditors(page);
    const menuItems = page.locator('.context-view .monaco-menu .action-item .action-label');
    await explorerRow(page, 'model.py').click({ button: 'right' });
    await menuItems.first().waitFor({ timeout: 10000 });
    await settled(page.locator('.context-view').first());
    const onPython = await menuItems.allInnerTexts();
    for (const item of CONVERSIONS) assert.ok(!onPython.includes(item), `${item} on a .py: ${onPython.join(' | ')}`);
    await page.keyboard.press('Escape');
    await page.locator('.context-view .monaco-menu').waitFor({ state: 'detached', timeout: 5000 });

    await explorerRow(page, 'small.pt').click({ button: 'right' });
    await menuItems.first().waitFor({ timeout: 10000 });
    await settled(page.locator('.context-view').first());
    const onCheckpoint = await menuItems.allInnerTexts();
    for (const item of CONVERSIONS) assert.ok(onCheckpoint.includes(item), `${item} missing: ${onCheckpoint.join(' | ')}`);
    await page.screenshot({ path: screenshotPath('convert-explorer-menu') });
    await chooseMenuItem(page, 'Cast checkpoint to bf16/fp16/fp32');
    await pick('fp16, norm stats kept');

    const notification = page.locator('.notifications-toasts .notification-list-item', { hasText: 'small.fp16.pt' });
    await notification.first().waitFor({ timeout: 120000 });
    const original = describe(path.join(workspace, 'small.pt'));
    const cast = describe(path.join(workspace, 'small.fp16.pt'));
    assert.equal(cast.w.dtype, 'torch.float16');
    assert.equal(cast.steps.dtype, 'torch.int64', 'integer tensors are left as they are');
    assert.equal(cast['bn.running_mean'].dtype, 'torch.float32', 'running stats kept in fp32, as picked');
    assert.deepEqual(cast['bn.running_mean'].values, original['bn.running_mean'].values);
    assert.deepEqual(cast.steps.values, original.steps.values);
    cast.w.values.forEach((v, i) => assert.ok(Math.abs(v - original.w.values[i]) <= 2e-3 * Math.max(1, Math.abs(v)), `w[${i}]`));

    // Consolidate on one file goes the other way: it asks for the largest shard and cuts the file.
    await explorerRow(page, 'small.pt').click({ button: 'right' });
    await chooseMenuItem(page, 'Consolidate shards');
    await pick('1GB');
    const sharded = page.locator('.notifications-toasts .notification-list-item', { hasText: 'small-shards' });
    await sharded.first().waitFor({ timeout: 120000 });
    const shards = path.join(workspace, 'small-shards');
    const indexes = readdirSync(shards).filter((name) => name.endsWith('.index.json'));
    assert.equal(indexes.length, 1, `one index among ${readdirSync(shards).join(', ')}`);
    const index = JSON.parse(readFileSync(path.join(shards, indexes[0]), 'utf8'));
    assert.deepEqual(Object.keys(index.weight_map).sort(), Object.keys(original).sort());
  });
});

test('a file with two state dicts of one size: the one picked is converted', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'convert-candidates', async () => {
    await closeAllEditors(page);
    await explorerRow(page, 'averaged.pt').click({ button: 'right' });
    await chooseMenuItem(page, 'Convert checkpoint to safetensors');
    await page.locator('.quick-input-widget', { hasText: 'several state dicts' }).waitFor({ timeout: 120000 });
    const offered = await page.locator('.quick-input-list .monaco-list-row').allInnerTexts();
    assert.equal(offered.length, 2, offered.join(' | '));
    await page.screenshot({ path: screenshotPath('convert-candidates') });
    await pick('ema');

    const notification = page.locator('.notifications-toasts .notification-list-item', { hasText: 'averaged.safetensors' });
    await notification.first().waitFor({ timeout: 120000 });
    const written = describe(path.join(workspace, 'averaged.safetensors'));
    assert.deepEqual(written.w.values, [0.5, 0.5, 0.5, 0.5, 0.5, 0.5], 'the ema weights, as picked');
  });
});

test('Extract weights asks for a prefix to strip and writes the plain state dict', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'convert-extract', async () => {
    await closeAllEditors(page);
    await explorerRow(page, 'run.ckpt').click({ button: 'right' });
    await chooseMenuItem(page, 'Extract weights');
    await pick('module.');

    const notification = page.locator('.notifications-toasts .notification-list-item', { hasText: 'run.weights.pt' });
    await notification.first().waitFor({ timeout: 120000 });
    const weights = describe(path.join(workspace, 'run.weights.pt'));
    assert.deepEqual(Object.keys(weights).sort(), ['fc.bias', 'fc.weight']);
  });
});

test('the viewer\'s Convert... button offers the conversions of the file it shows', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'convert-from-viewer', async () => {
    await closeAllEditors(page);
    await explorerRow(page, 'small.pt').dblclick();
    const frame = await viewerFrame('small.pt');
    await frame.click('button#convert', { timeout: 120000 });
    await page.locator('.quick-input-widget', { hasText: 'Convert small.pt' }).waitFor({ timeout: 30000 });
    await page.screenshot({ path: screenshotPath('convert-viewer-pick') });
    await pick('Extract weights');
    await pick('Keep the names');
    // A plain state dict has nothing to extract: the refusal is one line, and nothing is written.
    const refusal = page.locator('.notifications-toasts .notification-list-item', { hasText: 'nothing to extract' });
    await refusal.first().waitFor({ timeout: 120000 });
    assert.equal(existsSync(path.join(workspace, 'small.weights.pt')), false);

    await frame.click('button#convert');
    await pick('Convert checkpoint to safetensors');
    const notification = page.locator('.notifications-toasts .notification-list-item', { hasText: 'small.safetensors' });
    await notification.first().waitFor({ timeout: 120000 });
    const original = describe(path.join(workspace, 'small.pt'));
    assert.deepEqual(describe(path.join(workspace, 'small.safetensors')), original);
  });
});
