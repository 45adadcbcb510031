// "TorchLS: Downgrade checkpoint": pick what to re-save in torch's legacy format, ask the server
// (its `torchls.downgradeCheckpoint` command does the work, the progress and the questions), and
// show the outcome. The server's command, run from anywhere else (a code action, another
// extension), goes through `executeCommandMiddleware`, so every path ends in the same message.
import * as path from 'node:path';
import * as vscode from 'vscode';
import { ExecuteCommandRequest, ExecuteCommandSignature, LanguageClient, State } from 'vscode-languageclient/node';
import { findModelFolders, ModelFolderTracker, SEARCH_EXCLUDE, SEARCH_LIMIT } from './modelFolders';

/** The client's command (palette, Explorer). Not the server's id: that one is auto-registered. */
export const COMMAND_DOWNGRADE = 'torchls.downgrade';
/** The server's LSP command, which vscode-languageclient registers as a VS Code command too. */
export const SERVER_COMMAND_DOWNGRADE = 'torchls.downgradeCheckpoint';

const CHECKPOINT_EXTENSIONS = ['pt', 'pth', 'bin', 'ckpt', 'safetensors'];
// The same test as the `explorer/context` when clause in package.json.
const CHECKPOINT_EXTENSION = /^\.(pt|pth|bin|ckpt|safetensors)$/i;
const DEFAULT_SUFFIX = 'legacy';
const REVEAL = 'Reveal in Explorer';
const TITLE = 'TorchLS: Downgrade checkpoint';

/** The second argument of `torchls.downgradeCheckpoint` (see the server's command). */
export interface DowngradeOptions {
  output?: string;
  suffix?: string;
  overwrite?: boolean;
  cast?: boolean;
  allowGlobals?: string[];
  interactive?: boolean;
  notify?: boolean;
}

interface DowngradeSuccess {
  ok: true;
  input: string;
  output: string;
  outputUri: string;
  verified: true;
  tensors: number;
  bytes: number;
  seconds: number;
  cast: string[];
  message: string;
}

interface DowngradeFailure {
  ok: false;
  reason:
    | 'exists' | 'refused-globals' | 'unsupported-dtypes' | 'already-legacy' | 'not-a-checkpoint'
    | 'not-found' | 'untrusted' | 'cancelled' | 'verify' | 'busy' | 'timeout' | 'error';
  message: string;
  output?: string;
  globals?: string[];
  dtypes?: string[];
}

export type DowngradeResult = DowngradeSuccess | DowngradeFailure;

/** What the command needs from extension.ts; functions, so it sees the client of the moment. */
export interface ServerAccess {
  /** The running client once any start or restart in progress has finished, else undefined. */
  client(): Promise<LanguageClient | undefined>;
  showLog(): void;
  restart(): Promise<void>;
  log: vscode.LogOutputChannel;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

// Only the fields the client reads are checked: a newer server may send more.
function isDowngradeResult(value: unknown): value is DowngradeResult {
  return isRecord(value) && typeof value.ok === 'boolean' && typeof value.message === 'string';
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function isCheckpointFile(uri: vscode.Uri): boolean {
  return CHECKPOINT_EXTENSION.test(path.posix.extname(uri.path));
}

/** The `torchls.downgrade.suffix` setting; undefined (the server's default) when blank. */
function configuredSuffix(resource?: vscode.Uri): string | undefined {
  const suffix = vscode.workspace.getConfiguration('torchls', resource).get<string>('downgrade.suffix', DEFAULT_SUFFIX);
  return suffix.trim() || undefined;
}

function parseUri(text: string): vscode.Uri | undefined {
  try {
    return text.includes('://') ? vscode.Uri.parse(text, true) : vscode.Uri.file(text);
  } catch {
    return undefined;
  }
}

async function reveal(target: vscode.Uri | undefined): Promise<void> {
  if (target) {
    await vscode.commands.executeCommand('revealInExplorer', target);
  }
}

/** The one way a result is shown, whichever path ran the server's command. */
export async function showDowngradeResult(result: DowngradeResult): Promise<void> {
  if (result.ok) {
    const choice = await vscode.window.showInformationMessage(result.message, REVEAL);
    if (choice === REVEAL) {
      await reveal(parseUri(result.outputUri || result.output));
    }
    return;
  }
  if (result.reason === 'cancelled') {
    // The user pressed Cancel on the server's progress: they know, a pop-up would be noise.
    vscode.window.setStatusBarMessage(`torchls: ${result.message || 'downgrade cancelled'}`, 5000);
    return;
  }
  if (result.reason === 'exists' && result.output) {
    // The server has already asked (when interactive); let the user look at what is in the way.
    const choice = await vscode.window.showErrorMessage(result.message, REVEAL);
    if (choice === REVEAL) {
      await reveal(parseUri(result.output));
    }
    return;
  }
  await vscode.window.showErrorMessage(result.message);
}

/**
 * `middleware.executeCommand`: when the server's command is run from elsewhere (a code action,
 * another extension), the client shows the result instead of the server, so it carries the
 * Reveal button, and the `torchls.downgrade.suffix` setting applies there too. A caller that
 * passes `notify: false` itself wants to show the result: it is left alone.
 */
export async function executeCommandMiddleware(
  command: string,
  args: unknown[],
  next: ExecuteCommandSignature,
): Promise<unknown> {
  const [target, options] = args;
  const given: Record<string, unknown> = isRecord(options) ? options : {};
  if (command !== SERVER_COMMAND_DOWNGRADE || given.notify === false) {
    return next(command, args);
  }
  const resource = typeof target === 'string' ? parseUri(target) : undefined;
  const result: unknown = await next(command, [target, { suffix: configuredSuffix(resource), ...given, notify: false }]);
  if (isDowngradeResult(result)) {
    void showDowngradeResult(result);
  }
  return result;
}

// ---- choosing what to downgrade ----

interface TargetItem extends vscode.QuickPickItem {
  target?: vscode.Uri;
  browse?: 'file' | 'folder';
}

/** `model.legacy.pt` or `bert-legacy/`: what an earlier downgrade wrote, not worth offering. */
function isDowngradeOutput(uri: vscode.Uri, suffix: string, isFolder: boolean): boolean {
  const name = path.posix.basename(uri.path).toLowerCase();
  const word = suffix.toLowerCase();
  return isFolder ? name.endsWith(`-${word}`) : name.endsWith(`.${word}${path.posix.extname(name)}`);
}

function targetItem(uri: vscode.Uri, isFolder: boolean): TargetItem {
  return {
    label: vscode.workspace.asRelativePath(uri, true),
    description: isFolder ? 'Hugging Face model folder' : undefined,
    iconPath: new vscode.ThemeIcon(isFolder ? 'folder' : 'file-binary'),
    target: uri,
  };
}

function byLabel(a: TargetItem, b: TargetItem): number {
  return a.label.localeCompare(b.label);
}

async function targetItems(): Promise<TargetItem[]> {
  const suffix = configuredSuffix() ?? DEFAULT_SUFFIX;
  // Searched afresh (the tracker's first search may not have ended); the pick shows busy meanwhile.
  const [files, folders] = await Promise.all([
    vscode.workspace.findFiles(`**/*.{${CHECKPOINT_EXTENSIONS.join(',')}}`, SEARCH_EXCLUDE, SEARCH_LIMIT),
    findModelFolders(),
  ]);
  const fileItems = files.filter((uri) => !isDowngradeOutput(uri, suffix, false)).map((uri) => targetItem(uri, false));
  const folderItems = folders.filter((uri) => !isDowngradeOutput(uri, suffix, true)).map((uri) => targetItem(uri, true));
  const separator = (label: string): TargetItem => ({ label, kind: vscode.QuickPickItemKind.Separator });
  return [
    { label: '$(folder-opened) Browse for a checkpoint file...', browse: 'file', alwaysShow: true },
    // Separate items: on Windows and Linux one dialog cannot pick both files and folders.
    { label: '$(folder-opened) Browse for a model folder...', browse: 'folder', alwaysShow: true },
    ...(folderItems.length ? [separator('model folders'), ...folderItems.sort(byLabel)] : []),
    ...(fileItems.length ? [separator('checkpoints'), ...fileItems.sort(byLabel)] : []),
  ];
}

async function browse(kind: 'file' | 'folder'): Promise<vscode.Uri[] | undefined> {
  const files = kind === 'file';
  return vscode.window.showOpenDialog({
    title: TITLE,
    openLabel: 'Downgrade',
    canSelectFiles: files,
    canSelectFolders: !files,
    canSelectMany: files,
    defaultUri: vscode.workspace.workspaceFolders?.[0]?.uri,
    filters: files ? { Checkpoints: CHECKPOINT_EXTENSIONS, 'All files': ['*'] } : undefined,
  });
}

async function askForTargets(): Promise<vscode.Uri[] | undefined> {
  const picked = await vscode.window.showQuickPick(targetItems(), {
    title: TITLE,
    placeHolder: 'A checkpoint file or a Hugging Face model folder to re-save for torch < 1.6',
    matchOnDescription: true,
  });
  if (picked?.browse) {
    return browse(picked.browse);
  }
  return picked?.target ? [picked.target] : undefined;
}

/** The checkpoint shown in the active tab: binary files open in a custom or text editor. */
function activeCheckpoint(): vscode.Uri | undefined {
  const input = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
  const uri = input instanceof vscode.TabInputText || input instanceof vscode.TabInputCustom
    ? input.uri
    : vscode.window.activeTextEditor?.document.uri;
  return uri && isCheckpointFile(uri) ? uri : undefined;
}

/**
 * The Explorer passes the clicked item and the whole selection. The menu's when clause only
 * looked at the clicked one, so other selected items are kept only when they are checkpoints.
 */
function explorerTargets(clicked: unknown, selected: unknown, tracker: ModelFolderTracker): vscode.Uri[] | undefined {
  if (!(clicked instanceof vscode.Uri)) {
    return undefined;
  }
  const selection = Array.isArray(selected) ? selected.filter((item): item is vscode.Uri => item instanceof vscode.Uri) : [];
  const others = selection.filter((uri) => uri.toString() !== clicked.toString() && (isCheckpointFile(uri) || tracker.has(uri)));
  return [clicked, ...others];
}

async function chooseTargets(tracker: ModelFolderTracker, clicked: unknown, selected: unknown): Promise<vscode.Uri[] | undefined> {
  const fromExplorer = explorerTargets(clicked, selected, tracker);
  if (fromExplorer) {
    return fromExplorer;
  }
  const active = activeCheckpoint();
  return active ? [active] : askForTargets();
}

// ---- talking to the server ----

async function reportNotRunning(server: ServerAccess): Promise<void> {
  const showLog = 'Show Log';
  const restart = 'Restart Server';
  const choice = await vscode.window.showErrorMessage(
    'The torchls server is not running, so nothing was downgraded. The torchls log says why.',
    showLog,
    restart,
  );
  if (choice === showLog) {
    server.showLog();
  } else if (choice === restart) {
    await server.restart();
  }
}

/** The running client, when its server offers the command; otherwise says why not. */
async function readyClient(server: ServerAccess): Promise<LanguageClient | undefined> {
  const client = await server.client();
  if (!client || client.state !== State.Running) {
    void reportNotRunning(server);
    return undefined;
  }
  const commands = client.initializeResult?.capabilities.executeCommandProvider?.commands ?? [];
  if (!commands.includes(SERVER_COMMAND_DOWNGRADE)) {
    void vscode.window.showErrorMessage(
      `This torchls server has no ${SERVER_COMMAND_DOWNGRADE} command: update the torchls server to downgrade checkpoints.`,
    );
    return undefined;
  }
  return client;
}

async function requestDowngrade(server: ServerAccess, client: LanguageClient, target: vscode.Uri): Promise<DowngradeResult | undefined> {
  // notify: false because the client shows the result itself, with the Reveal button.
  const options: DowngradeOptions = { suffix: configuredSuffix(target), notify: false };
  const name = path.posix.basename(target.path);
  try {
    const result: unknown = await client.sendRequest(ExecuteCommandRequest.type, {
      command: SERVER_COMMAND_DOWNGRADE,
      arguments: [target.toString(), options],
    });
    if (isDowngradeResult(result)) {
      return result;
    }
    server.log.error(`${SERVER_COMMAND_DOWNGRADE} answered ${JSON.stringify(result)}`);
    void vscode.window.showErrorMessage(`Downgrading ${name}: the torchls server gave no usable answer (see the torchls log).`);
  } catch (error) {
    server.log.error(`${SERVER_COMMAND_DOWNGRADE} on ${target.toString()}: ${errorText(error)}`);
    void vscode.window.showErrorMessage(`Downgrading ${name} failed: ${errorText(error)}`);
  }
  return undefined;
}

/** Downgrades one target; false when the rest of a multi-selection should not run. */
async function downgradeOne(server: ServerAccess, target: vscode.Uri): Promise<boolean> {
  if (target.scheme !== 'file') {
    void vscode.window.showErrorMessage(`torchls downgrades files on disk only, not ${target.toString()}.`);
    return true;
  }
  const client = await readyClient(server);
  if (!client) {
    return false; // the same answer for every other target: say it once
  }
  const result = await requestDowngrade(server, client, target);
  if (result) {
    void showDowngradeResult(result); // not awaited: the next target need not wait for a click
  }
  // Cancelling one of several means "stop", not "skip this one".
  return !(result && !result.ok && result.reason === 'cancelled');
}

async function downgrade(server: ServerAccess, tracker: ModelFolderTracker, clicked: unknown, selected: unknown): Promise<void> {
  const targets = await chooseTargets(tracker, clicked, selected);
  // One by one: each conversion holds a whole checkpoint in memory.
  for (const target of targets ?? []) {
    if (!(await downgradeOne(server, target))) {
      break;
    }
  }
}

/** Registers `torchls.downgrade` and keeps the `torchls.modelFolders` context key current. */
export function registerDowngrade(server: ServerAccess): vscode.Disposable {
  const tracker = new ModelFolderTracker(server.log);
  const command = vscode.commands.registerCommand(COMMAND_DOWNGRADE, (clicked?: unknown, selected?: unknown) =>
    downgrade(server, tracker, clicked, selected),
  );
  return vscode.Disposable.from(tracker, command);
}
