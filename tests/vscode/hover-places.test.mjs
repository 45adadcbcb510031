// Where the hover answers besides a class name and a construction, in real VS Code: on the
// variable a model is bound to (`classifier` in `classifier.eval()`) and on a `self.x = ...`
// submodule line (that submodule's share of its parent). The figures are checked against torch
// itself, run on real tensors by the test's Python.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  hoverWord, openFile, openVSCode, python, screenshotPath, vsix, waitForStatus, withFailureScreenshot,
} from './harness.mjs';

const SOURCE = [
  'import torch',
  'from torch import nn',
  '',
  '',
  'class Encoder(nn.Module):',
  '    def __init__(self, width: int = 16) -> None:',
  '        super().__init__()',
  '        self.conv = nn.Conv2d(3, width, 3, padding=1)',
  '        self.mix = nn.Conv2d(width, width, 1)',
  '',
  '    def forward(self, x):',
  '        return self.mix(torch.relu(self.conv(x)))',
  '',
  '',
  'class Classifier(nn.Module):',
  '    def __init__(self, width: int = 16) -> None:',
  '        super().__init__()',
  '        self.encoder = Encoder(width)',
  '        self.head = nn.Linear(width, 10)',
  '',
  '    def forward(self, x):',
  '        return self.head(self.encoder(x).mean((2, 3)))',
  '',
  '',
  'def evaluate():',
  '    classifier = Classifier(width=24)',
  '    classifier.eval()',
  '    return classifier(torch.randn(2, 3, 32, 32))',
  '',
].join('\n');

// What torch itself says: parameters and MACs (FLOPs / 2) of one forward on real tensors.
const MEASURE = `
import json, sys, torch
from torch.utils.flop_counter import FlopCounterMode
namespace = {}
exec(sys.stdin.read(), namespace)
model = namespace["Classifier"](width=24).eval()
x = torch.randn(2, 3, 32, 32)
def measure(module, x):
    counter = FlopCounterMode(display=False)
    with counter:
        out = module(x)
    return {"params": sum(p.numel() for p in module.parameters()),
            "macs": counter.get_total_flops() // 2, "shape": list(out.shape)}
print(json.dumps({"model": measure(model, x), "encoder": measure(model.encoder, x)}))
`;

let vscode;
let page;
let root;
let workspace;
let real;

before(async () => {
  real = JSON.parse(execFileSync(python, ['-c', MEASURE], { input: SOURCE, encoding: 'utf8' }));
  root = mkdtempSync(path.join(tmpdir(), 'torchls-places-'));
  workspace = path.join(root, 'places');
  mkdirSync(workspace);
  writeFileSync(path.join(workspace, 'classifier.py'), SOURCE);
  vscode = await openVSCode({ folder: workspace, vsix, userSettings: { 'torchls.interpreter': [python] } });
  page = vscode.page;
}, { timeout: 180000 });

after(async () => {
  await vscode?.stop();
  if (root) rmSync(root, { recursive: true, force: true });
});

const number = (value) => value.toLocaleString('en-US');

test('hovering the variable `classifier` and the line `self.encoder = Encoder(width)` shows their numbers', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'hover-places', async () => {
    await openFile(page, 'classifier.py');
    await waitForStatus(page, /torch 2\.13\.0/);

    const onVariable = await hoverWord(page, 'classifier.eval()', 'classifier', 'Parameters');
    assert.match(onVariable, /built as Classifier\(width=24\)/);
    assert.match(onVariable, new RegExp(`Parameters ${number(real.model.params)} `));
    assert.match(onVariable, new RegExp(`MACs [\\d.]+ [KMG]? ?\\(${number(real.model.macs)}\\)`));
    assert.match(onVariable, /Input \(2, 3, 32, 32\)/);
    await page.screenshot({ path: screenshotPath('hover-variable') });
    await page.mouse.move(5, 5);

    const onLine = await hoverWord(page, 'self.encoder = Encoder(width)', 'encoder', 'self.encoder');
    assert.match(onLine, /self\.encoder \(Encoder\) · its share of Classifier, built as Classifier\(width=24\)/);
    assert.match(onLine, new RegExp(`Parameters ${number(real.encoder.params)} .* of Classifier's ${number(real.model.params)}`));
    assert.match(onLine, new RegExp(`MACs [\\d.]+ [KMG]? ?\\(${number(real.encoder.macs)}\\)`));
    assert.match(onLine, new RegExp(`output ${real.encoder.shape.join('x')}`));
    await page.screenshot({ path: screenshotPath('hover-submodule-line') });
    await page.mouse.move(5, 5);
  });
});
