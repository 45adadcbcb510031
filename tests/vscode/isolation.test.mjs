// The server process imports nothing that Python would pick up from PYTHONPATH before torchls
// starts: VS Code is started with a PYTHONPATH folder holding a `sitecustomize.py` that records
// every process importing it. The worker, which runs the user's code, keeps the user's
// PYTHONPATH and so records itself; the language server and the client's version probe must not.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import {
  copyExamples, findProcesses, openFile, openVSCode, python, removeCopy, vsix, waitForStatus,
  withFailureScreenshot,
} from './harness.mjs';

let vscode;
let page;
let workspace;
let scratch;
let records;

before(async () => {
  workspace = copyExamples();
  scratch = mkdtempSync(path.join(tmpdir(), 'torchls-pythonpath-'));
  records = path.join(scratch, 'imported-by.jsonl');
  const folder = path.join(scratch, 'on-pythonpath');
  mkdirSync(folder);
  writeFileSync(path.join(folder, 'sitecustomize.py'), [
    'import json, os',
    "with open('/proc/self/cmdline', 'rb') as f:",
    "    argv = [part.decode(errors='replace') for part in f.read().split(b'\\0') if part]",
    `with open(${JSON.stringify(records)}, 'a') as f:`,
    "    f.write(json.dumps({'pid': os.getpid(), 'argv': argv}) + '\\n')",
    '',
  ].join('\n'));
  // code-server, its extension host and every process they start inherit it, as they would a
  // PYTHONPATH set in the user's shell. (node --test runs each file in its own process.)
  process.env.PYTHONPATH = folder;
  vscode = await openVSCode({ folder: workspace, vsix, userSettings: { 'torchls.interpreter': [python] } });
  page = vscode.page;
}, { timeout: 180000 });

after(async () => {
  await vscode?.stop();
  if (workspace) removeCopy(workspace);
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

function parentOf(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/^PPid:\s+(\d+)/m.exec(status)[1]);
}

test('a sitecustomize on PYTHONPATH runs in the worker, never in the language server', { timeout: 300000 }, async () => {
  await withFailureScreenshot(page, 'pythonpath-isolation', async () => {
    await openFile(page, 'model.py');
    await waitForStatus(page, /torch 2\.13\.0/);
    const workers = findProcesses('torchls/worker/boot.py', `--workspace ${workspace}`);
    assert.equal(workers.length, 1, `one worker for this workspace, found ${workers.join(', ')}`);
    // The worker's parent is the language server the client started.
    const server = parentOf(workers[0]);
    const serverArgv = readFileSync(`/proc/${server}/cmdline`, 'utf8').split('\0').join(' ');
    assert.match(serverArgv, /\bserve\b.*--stdio/, `the worker's parent is the server: ${serverArgv}`);

    const seen = existsSync(records)
      ? readFileSync(records, 'utf8').trim().split('\n').filter(Boolean).map((line) => JSON.parse(line))
      : [];
    const described = seen.map((r) => `${r.pid}: ${r.argv.join(' ')}`).join('\n');
    // The worker runs the user's code with the user's PYTHONPATH: the sitecustomize works.
    assert.ok(seen.some((r) => r.pid === workers[0]), `the worker imported the sitecustomize; records:\n${described}`);
    assert.deepEqual(seen.filter((r) => r.pid === server), [], `the server (pid ${server}) imported it; records:\n${described}`);
    assert.deepEqual(
      seen.filter((r) => r.argv.some((arg) => arg.includes('sys.version_info'))),
      [],
      `the client's version probe imported it; records:\n${described}`,
    );
  });
});
