// "TorchLS: Convert checkpoint to safetensors" and its family (extract, cast, consolidate,
// weights_only-clean): the server's `torchls.convertCheckpoint` command does the work, the
// progress and the "Replace it?" question; the client picks the target, the dtype and, when the
// file holds several state dicts, which one, and shows the result with an Open button.
import * as path from 'node:path';
import * as vscode from 'vscode';
import { ExecuteCommandRequest, LanguageClient, State } from 'vscode-languageclient/node';
import { COMMAND_OPEN_VIEWER } from './checkpointViewer';
import { isCheckpointFile, ServerAccess } from './downgrade';

export const SERVER_COMMAND_CONVERT = 'torchls.convertCheckpoint';

type Kind = 'safetensors' | 'extract' | 'cast' | 'consolidate' | 'weights-only';

interface Conversion {
  command: string;
  kind: Kind;
  title: string;
}

// The titles are package.json's, with its category.
const CONVERSIONS: Conversion[] = [
  { command: 'torchls.convertToSafetensors', kind: 'safetensors', title: 'Convert checkpoint to safetensors' },
  { command: 'torchls.extractWeights', kind: 'extract', title: 'Extract weights' },
  { command: 'torchls.castCheckpoint', kind: 'cast', title: 'Cast checkpoint to bf16/fp16/fp32' },
  { command: 'torchls.consolidateShards', kind: 'consolidate', title: 'Consolidate shards' },
  { command: 'torchls.makeWeightsOnlyClean', kind: 'weights-only', title: 'Make checkpoint weights_only-clean' },
];

const OPEN = 'Open';
const INDEX_FILE = /\.index\.json$/i;

/** The second argument of `torchls.convertCheckpoint` (see the server's command). */
interface ConvertOptions {
  kind: Kind;
  key?: string;
  dtype?: string;
  keepNormFp32?: boolean;
  stripPrefix?: string;
  maxShardSize?: string;
  interactive?: boolean;
  notify?: boolean;
}

interface ConvertResult {
  ok: boolean;
  message: string;
  reason?: string;
  output?: string;
  outputUri?: string;
  candidates?: string[];
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isConvertResult(value: unknown): value is ConvertResult {
  return isRecord(value) && typeof value.ok === 'boolean' && typeof value.message === 'string';
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function parseUri(text: string | undefined): vscode.Uri | undefined {
  if (!text) {
    return undefined;
  }
  try {
    return text.includes('://') ? vscode.Uri.parse(text, true) : vscode.Uri.file(text);
  } catch {
    return undefined;
  }
}

function isConvertible(uri: vscode.Uri): boolean {
  return isCheckpointFile(uri) || INDEX_FILE.test(uri.path);
}

/** The Explorer's clicked item and the other selected checkpoints; else the active viewer's
 * file; else a dialog. */
async function chooseTargets(conversion: Conversion, clicked: unknown, selected: unknown): Promise<vscode.Uri[] | undefined> {
  if (clicked instanceof vscode.Uri) {
    const selection = Array.isArray(selected) ? selected.filter((item): item is vscode.Uri => item instanceof vscode.Uri) : [];
    const others = selection.filter((uri) => uri.toString() !== clicked.toString() && isConvertible(uri));
    return [clicked, ...others];
  }
  const input = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
  const active = input instanceof vscode.TabInputText || input instanceof vscode.TabInputCustom ? input.uri : undefined;
  if (active && isConvertible(active)) {
    return [active];
  }
  const folders = conversion.kind === 'safetensors';
  return vscode.window.showOpenDialog({
    title: `TorchLS: ${conversion.title}`,
    openLabel: conversion.title.split(' ')[0],
    canSelectFiles: true,
    canSelectFolders: folders, // a Hugging Face model folder is converted whole
    canSelectMany: true,
    defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri,
    filters: folders ? undefined : { Checkpoints: ['pt', 'pth', 'bin', 'ckpt', 'safetensors', 'json'], 'All files': ['*'] },
  });
}

interface DtypeItem extends vscode.QuickPickItem {
  dtype: string;
  keepNormFp32: boolean;
}

const NORM_KEPT = 'BatchNorm running stats kept in fp32';

/** Cast's dtype, and whether normalisation running stats stay fp32; undefined when dismissed. */
async function chooseDtype(): Promise<DtypeItem | undefined> {
  return vscode.window.showQuickPick<DtypeItem>(
    [
      { label: 'bf16', description: 'bfloat16: the range of fp32, half the size', dtype: 'bf16', keepNormFp32: false },
      { label: 'bf16, norm stats kept', description: NORM_KEPT, dtype: 'bf16', keepNormFp32: true },
      { label: 'fp16', description: 'float16: refused if a value overflows', dtype: 'fp16', keepNormFp32: false },
      { label: 'fp16, norm stats kept', description: NORM_KEPT, dtype: 'fp16', keepNormFp32: true },
      { label: 'fp32', description: 'float32: back to full precision', dtype: 'fp32', keepNormFp32: false },
    ],
    { title: 'TorchLS: Cast checkpoint', placeHolder: 'The dtype of the floating-point tensors (integer tensors stay as they are)' },
  );
}

/** Consolidate's reverse direction: the largest shard when one file is cut into shards. */
async function chooseShardSize(): Promise<string | undefined> {
  const picked = await vscode.window.showQuickPick(
    ['1GB', '2GB', '5GB', '10GB'].map((label) => ({ label, description: label === '5GB' ? 'what Hugging Face uses' : undefined })),
    { title: 'TorchLS: Cut a checkpoint into shards', placeHolder: 'The largest shard (an index file is written beside the shards)' },
  );
  return picked?.label;
}

/** True for a single checkpoint file (not an index, not a folder): consolidate cuts it into shards. */
async function isSingleFile(target: vscode.Uri): Promise<boolean> {
  if (INDEX_FILE.test(target.path)) {
    return false;
  }
  try {
    return ((await vscode.workspace.fs.stat(target)).type & vscode.FileType.Directory) === 0;
  } catch {
    return false; // the server says what is wrong with it
  }
}

const KEEP_NAMES = 'Keep the names as they are';

/** Extract's prefix to strip: '' to keep the names, undefined when dismissed. */
async function choosePrefix(): Promise<string | undefined> {
  const picked = await vscode.window.showQuickPick(
    [
      { label: KEEP_NAMES },
      { label: 'module.', description: 'DataParallel / DistributedDataParallel' },
      { label: '_orig_mod.', description: 'torch.compile' },
      { label: 'model.', description: 'a Lightning module\'s attribute' },
    ],
    { title: 'TorchLS: Extract weights', placeHolder: 'A prefix to strip from every name (optimizer, scheduler and RNG state are left out)' },
  );
  return picked && (picked.label === KEEP_NAMES ? '' : picked.label);
}

async function readyClient(server: ServerAccess): Promise<LanguageClient | undefined> {
  const client = await server.client();
  if (!client || client.state !== State.Running) {
    const showLog = 'Show Log';
    void vscode.window
      .showErrorMessage('The torchls server is not running, so nothing was converted. The torchls log says why.', showLog)
      .then((choice) => choice === showLog && server.showLog());
    return undefined;
  }
  const commands = client.initializeResult?.capabilities.executeCommandProvider?.commands ?? [];
  if (!commands.includes(SERVER_COMMAND_CONVERT)) {
    void vscode.window.showErrorMessage(
      `This torchls server has no ${SERVER_COMMAND_CONVERT} command: update the torchls server to convert checkpoints.`,
    );
    return undefined;
  }
  return client;
}

async function request(server: ServerAccess, client: LanguageClient, target: vscode.Uri, options: ConvertOptions): Promise<ConvertResult | undefined> {
  const name = path.posix.basename(target.path);
  try {
    const result: unknown = await client.sendRequest(ExecuteCommandRequest.type, {
      command: SERVER_COMMAND_CONVERT,
      arguments: [target.toString(), options],
    });
    if (isConvertResult(result)) {
      return result;
    }
    server.log.error(`${SERVER_COMMAND_CONVERT} answered ${JSON.stringify(result)}`);
    void vscode.window.showErrorMessage(`Converting ${name}: the torchls server gave no usable answer (see the torchls log).`);
  } catch (error) {
    server.log.error(`${SERVER_COMMAND_CONVERT} on ${target.toString()}: ${errorText(error)}`);
    void vscode.window.showErrorMessage(`Converting ${name} failed: ${errorText(error)}`);
  }
  return undefined;
}

async function showResult(result: ConvertResult): Promise<void> {
  if (result.ok) {
    const choice = await vscode.window.showInformationMessage(result.message, OPEN);
    const output = parseUri(result.outputUri ?? result.output);
    if (choice === OPEN && output) {
      // The viewer opens a file as its custom editor and a folder (shards, a model) in a panel.
      await vscode.commands.executeCommand(COMMAND_OPEN_VIEWER, output);
    }
    return;
  }
  if (result.reason === 'cancelled') {
    vscode.window.setStatusBarMessage(`torchls: ${result.message}`, 5000);
    return;
  }
  await vscode.window.showErrorMessage(result.message);
}

/** Converts one target; false when the rest of a multi-selection should not run. */
async function convertOne(server: ServerAccess, target: vscode.Uri, options: ConvertOptions): Promise<boolean> {
  if (target.scheme !== 'file') {
    void vscode.window.showErrorMessage(`torchls converts files on disk only, not ${target.toString()}.`);
    return true;
  }
  const client = await readyClient(server);
  if (!client) {
    return false;
  }
  let result = await request(server, client, target, options);
  if (result && !result.ok && result.reason === 'several-state-dicts' && result.candidates?.length) {
    const key = await vscode.window.showQuickPick(result.candidates, {
      title: `TorchLS: ${path.posix.basename(target.path)} holds several state dicts`,
      placeHolder: 'The state dict to convert',
    });
    if (!key) {
      return true; // dismissed: nothing converted, and the user knows why
    }
    result = await request(server, client, target, { ...options, key });
  }
  if (result) {
    void showResult(result); // not awaited: the next target need not wait for a click
  }
  return !(result && !result.ok && result.reason === 'cancelled');
}

async function run(server: ServerAccess, conversion: Conversion, clicked: unknown, selected: unknown): Promise<void> {
  const targets = await chooseTargets(conversion, clicked, selected);
  if (!targets?.length) {
    return;
  }
  // notify: false because the client shows the result itself, with the Open button.
  const options: ConvertOptions = { kind: conversion.kind, notify: false };
  if (conversion.kind === 'cast') {
    const dtype = await chooseDtype();
    if (!dtype) {
      return;
    }
    options.dtype = dtype.dtype;
    options.keepNormFp32 = dtype.keepNormFp32;
  }
  if (conversion.kind === 'consolidate' && targets.length === 1 && (await isSingleFile(targets[0]))) {
    options.maxShardSize = await chooseShardSize();
    if (!options.maxShardSize) {
      return;
    }
  }
  if (conversion.kind === 'extract') {
    options.stripPrefix = await choosePrefix();
    if (options.stripPrefix === undefined) {
      return;
    }
  }
  // One by one: each conversion holds a whole checkpoint in memory.
  for (const target of targets) {
    if (!(await convertOne(server, target, options))) {
      break;
    }
  }
}

/** The viewer's Convert... button: the conversions in a quick pick, run on the viewed file. A
 * plain string id (not imported from checkpointViewer.ts, which would import this module back). */
const COMMAND_CONVERT_PICK = 'torchls.convertPick';

async function pickConversion(server: ServerAccess, target: unknown): Promise<void> {
  if (!(target instanceof vscode.Uri)) {
    return;
  }
  const picked = await vscode.window.showQuickPick(
    CONVERSIONS.map((conversion) => ({ label: conversion.title, conversion })),
    { title: `TorchLS: Convert ${path.posix.basename(target.path)}`, placeHolder: 'What to write beside it (the original is not changed)' },
  );
  if (picked) {
    await run(server, picked.conversion, target, [target]);
  }
}

export function registerConvert(server: ServerAccess): vscode.Disposable {
  return vscode.Disposable.from(
    ...CONVERSIONS.map((conversion) =>
      vscode.commands.registerCommand(conversion.command, (clicked?: unknown, selected?: unknown) =>
        run(server, conversion, clicked, selected),
      ),
    ),
    vscode.commands.registerCommand(COMMAND_CONVERT_PICK, (target?: unknown) => pickConversion(server, target)),
  );
}
