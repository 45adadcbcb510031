// The checkpoint viewer: a read-only custom editor for .pt/.pth/.bin/.ckpt/.safetensors/
// .index.json, and a panel for Hugging Face model folders (a custom editor opens files only).
// Everything it shows comes from the language server (`torchls/inspect`, `torchls/modelTargets`,
// `torchls/compareModel`, see notes/viewer-protocol.md): the extension host never imports torch
// and never reads the file as text, so nothing in a checkpoint runs and size does not matter.
import * as path from 'node:path';
import * as vscode from 'vscode';
import { LanguageClient } from 'vscode-languageclient/node';

export const VIEW_TYPE = 'torchls.checkpointViewer';
export const COMMAND_OPEN_VIEWER = 'torchls.openCheckpointViewer';
/** convert.ts's: which conversion to run on the file, then that conversion. */
const COMMAND_CONVERT_PICK = 'torchls.convertPick';
export const COMMAND_COMPARE_CHECKPOINTS = 'torchls.compareCheckpoints';
const REQUEST_DIFF = 'torchls/diff';
const REQUEST_INSPECT = 'torchls/inspect';
const REQUEST_MODEL_TARGETS = 'torchls/modelTargets';
const REQUEST_COMPARE_MODEL = 'torchls/compareModel';
// A save rewrites a file in several writes: one refresh for the burst.
const REFRESH_DELAY_MS = 300;
// Reports of the last few files opened, by stat stamp: closing and reopening a tab is instant.
const CACHED_REPORTS = 3;
const CHECKPOINT_FILE = /\.(pt|pth|bin|ckpt|safetensors)$|\.index\.json$/i;

/** What the viewer needs from extension.ts; functions, so it sees the client of the moment. */
export interface ViewerServerAccess {
  client(): Promise<LanguageClient | undefined>;
  log: vscode.LogOutputChannel;
}

interface ModelTarget {
  label: string;
  uri: string;
  line: number;
  name: string;
  kind?: string;
}

type Stamp = { size: number; mtime: number };

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function nonce(): string {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
  let text = '';
  for (let i = 0; i < 32; i += 1) {
    text += alphabet.charAt(Math.floor(Math.random() * alphabet.length));
  }
  return text;
}

/** Reads the argument of the command: a Uri (Explorer, API), a string (hover link), or a list. */
export function targetUri(argument: unknown): vscode.Uri | undefined {
  const first = Array.isArray(argument) ? argument[0] : argument;
  if (first instanceof vscode.Uri) {
    return first;
  }
  if (typeof first === 'string' && first.length > 0) {
    return /^[a-z][a-z0-9+.-]*:/i.test(first) && !/^[a-z]:[\\/]/i.test(first) ? vscode.Uri.parse(first) : vscode.Uri.file(first);
  }
  if (isRecord(first) && typeof first.scheme === 'string' && typeof first.path === 'string') {
    return vscode.Uri.from({ scheme: first.scheme, path: first.path, authority: typeof first.authority === 'string' ? first.authority : '' });
  }
  return undefined;
}

class CheckpointDocument implements vscode.CustomDocument {
  constructor(readonly uri: vscode.Uri) {}
  dispose(): void {}
}

/** One open view (custom editor tab or folder panel): its webview, its watcher, its requests. */
class ViewerSession implements vscode.Disposable {
  private readonly disposables: vscode.Disposable[] = [];
  private timer: NodeJS.Timeout | undefined;
  // Each load gets a number; an answer that arrives after a newer load started is dropped.
  private generation = 0;
  private ready = false;
  private disposed = false;

  constructor(
    private readonly viewer: CheckpointViewer,
    private readonly uri: vscode.Uri,
    private readonly panel: vscode.WebviewPanel,
    private readonly isFolder: boolean,
  ) {
    const webview = panel.webview;
    webview.options = { enableScripts: true, localResourceRoots: [viewer.media] };
    webview.html = viewer.html(webview, path.posix.basename(uri.path));
    const base = isFolder ? uri : vscode.Uri.joinPath(uri, '..');
    const pattern = new vscode.RelativePattern(base, isFolder ? '*' : path.posix.basename(uri.path));
    const watcher = vscode.workspace.createFileSystemWatcher(pattern);
    this.disposables.push(
      watcher,
      watcher.onDidChange(() => this.schedule()),
      watcher.onDidCreate(() => this.schedule()),
      watcher.onDidDelete(() => this.schedule()),
      webview.onDidReceiveMessage((message: unknown) => this.receive(message)),
      panel.onDidDispose(() => this.dispose()),
    );
  }

  private post(message: Record<string, unknown>): void {
    if (!this.disposed) {
      void this.panel.webview.postMessage(message);
    }
  }

  private schedule(): void {
    if (this.timer) {
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => void this.load(true), REFRESH_DELAY_MS);
  }

  async load(changed: boolean): Promise<void> {
    if (!this.ready) {
      return; // the webview asks when its script runs
    }
    const generation = ++this.generation;
    this.post({ type: 'loading', refresh: changed });
    const result = await this.viewer.inspect(this.uri, changed);
    if (generation === this.generation) {
      this.post({ type: 'report', result, uri: this.uri.toString(), refreshed: changed, canReopen: !this.isFolder });
    }
  }

  private async receive(message: unknown): Promise<void> {
    if (!isRecord(message)) {
      return;
    }
    switch (message.type) {
      case 'ready':
        this.ready = true;
        await this.load(false);
        break;
      case 'refresh':
        await this.load(true);
        break;
      case 'copy':
        if (typeof message.text === 'string') {
          await vscode.env.clipboard.writeText(message.text);
          vscode.window.setStatusBarMessage(`Copied ${message.text}`, 2000);
        }
        break;
      case 'compare':
        await this.compare();
        break;
      case 'convert':
        await vscode.commands.executeCommand(COMMAND_CONVERT_PICK, this.uri);
        break;
      case 'reopenText':
        // A file that is no checkpoint: VS Code's own editor, as "Reopen Editor With..." would.
        if (!this.isFolder) {
          await vscode.commands.executeCommand('vscode.openWith', this.uri, 'default');
        }
        break;
      default:
        break;
    }
  }

  private async compare(): Promise<void> {
    const answer = await this.viewer.compare(this.uri);
    if (answer) {
      this.post({ type: 'compare', ...answer });
    }
  }

  dispose(): void {
    if (this.disposed) {
      return;
    }
    this.disposed = true;
    if (this.timer) {
      clearTimeout(this.timer);
    }
    this.disposables.forEach((disposable) => disposable.dispose());
  }
}

/** A panel showing `torchls/diff` of two checkpoints; "Compare values" asks again with values. */
class DiffSession implements vscode.Disposable {
  private readonly disposables: vscode.Disposable[] = [];
  private disposed = false;

  constructor(
    private readonly viewer: CheckpointViewer,
    private readonly a: vscode.Uri,
    private readonly b: vscode.Uri,
    private readonly panel: vscode.WebviewPanel,
  ) {
    panel.webview.html = viewer.html(panel.webview, panel.title);
    this.disposables.push(
      panel.webview.onDidReceiveMessage((message: unknown) => {
        if (isRecord(message) && (message.type === 'ready' || message.type === 'refresh' || message.type === 'values')) {
          void this.load(message.type === 'values');
        } else if (isRecord(message) && message.type === 'copy' && typeof message.text === 'string') {
          void vscode.env.clipboard.writeText(message.text);
        }
      }),
      panel.onDidDispose(() => this.dispose()),
    );
  }

  private async load(values: boolean): Promise<void> {
    if (!this.disposed) {
      void this.panel.webview.postMessage({ type: 'loading', refresh: true });
    }
    const result = await this.viewer.diff(this.a, this.b, values);
    if (!this.disposed) {
      void this.panel.webview.postMessage({ type: 'diff', result, values });
    }
  }

  dispose(): void {
    this.disposed = true;
    this.disposables.forEach((disposable) => disposable.dispose());
  }
}

export class CheckpointViewer implements vscode.CustomReadonlyEditorProvider<CheckpointDocument> {
  readonly media: vscode.Uri;
  private readonly cache = new Map<string, { stamp: Stamp; result: unknown }>();

  constructor(
    private readonly server: ViewerServerAccess,
    extensionUri: vscode.Uri,
  ) {
    this.media = vscode.Uri.joinPath(extensionUri, 'client', 'media');
  }

  openCustomDocument(uri: vscode.Uri): CheckpointDocument {
    return new CheckpointDocument(uri);
  }

  resolveCustomEditor(document: CheckpointDocument, panel: vscode.WebviewPanel): void {
    new ViewerSession(this, document.uri, panel, false);
  }

  /** A model folder (or any target given to the command outside a custom editor) in a panel. */
  openPanel(uri: vscode.Uri, isFolder: boolean): void {
    const panel = vscode.window.createWebviewPanel(
      VIEW_TYPE,
      `${path.posix.basename(uri.path)} (checkpoint)`,
      vscode.ViewColumn.Active,
      { enableScripts: true, retainContextWhenHidden: false, localResourceRoots: [this.media] },
    );
    new ViewerSession(this, uri, panel, isFolder);
  }

  html(webview: vscode.Webview, title: string): string {
    const script = webview.asWebviewUri(vscode.Uri.joinPath(this.media, 'viewer.js'));
    const style = webview.asWebviewUri(vscode.Uri.joinPath(this.media, 'viewer.css'));
    const scriptNonce = nonce();
    // Nothing from outside the extension's media folder, no inline style, no network.
    const policy = [
      "default-src 'none'",
      `style-src ${webview.cspSource}`,
      `img-src ${webview.cspSource}`,
      `font-src ${webview.cspSource}`,
      `script-src 'nonce-${scriptNonce}'`,
    ].join('; ');
    const escaped = title.replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c] ?? c);
    return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${policy}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${style.toString()}">
<title>${escaped}</title>
</head>
<body>
<main id="app" aria-busy="true"><p class="status" role="status">Reading ${escaped}…</p></main>
<script nonce="${scriptNonce}" src="${script.toString()}"></script>
</body>
</html>`;
  }

  private async stamp(uri: vscode.Uri): Promise<Stamp | undefined> {
    try {
      const stat = await vscode.workspace.fs.stat(uri);
      return { size: stat.size, mtime: stat.mtime };
    } catch {
      return undefined;
    }
  }

  /** The server's `torchls/inspect` answer, or `{error}`; a file unchanged since is answered from the cache. */
  async inspect(uri: vscode.Uri, changed: boolean): Promise<unknown> {
    const key = uri.toString();
    const stamp = await this.stamp(uri);
    const cached = this.cache.get(key);
    if (!changed && stamp && cached && cached.stamp.size === stamp.size && cached.stamp.mtime === stamp.mtime) {
      return cached.result;
    }
    if (!stamp) {
      this.cache.delete(key);
      return { error: `${uri.fsPath} is not there any more.` };
    }
    const client = await this.server.client();
    if (!client) {
      return { error: 'The torchls server is not running: see TorchLS: Show log.' };
    }
    let result: unknown;
    const started = Date.now();
    try {
      result = await client.sendRequest(REQUEST_INSPECT, { uri: key });
      // How long a view takes to fill is the first question about a slow one.
      const cachedByServer = isRecord(result) && result.cached === true ? ' (cached by the server)' : '';
      this.server.log.info(`${REQUEST_INSPECT} ${uri.fsPath}: answered in ${Date.now() - started} ms${cachedByServer}`);
    } catch (error) {
      this.server.log.error(`${REQUEST_INSPECT} on ${key}: ${errorText(error)}`);
      return { error: `The torchls server could not read it: ${errorText(error)}` };
    }
    if (!isRecord(result) || !(isRecord(result.report) || typeof result.error === 'string')) {
      this.server.log.error(`${REQUEST_INSPECT} answered ${JSON.stringify(result)?.slice(0, 500)}`);
      return { error: 'The torchls server gave no usable answer (see TorchLS: Show log).' };
    }
    if (isRecord(result.report)) {
      this.cache.delete(key);
      this.cache.set(key, { stamp, result });
      while (this.cache.size > CACHED_REPORTS) {
        this.cache.delete(this.cache.keys().next().value as string);
      }
    }
    return result;
  }

  /** "Compare with a model...": a quick pick of the workspace's models, then the server's comparison. */
  async compare(uri: vscode.Uri): Promise<{ target: string; result: unknown } | undefined> {
    const client = await this.server.client();
    if (!client) {
      void vscode.window.showErrorMessage('The torchls server is not running: see TorchLS: Show log.');
      return undefined;
    }
    let targets: ModelTarget[] = [];
    let reason = '';
    try {
      const answer: unknown = await client.sendRequest(REQUEST_MODEL_TARGETS, {});
      if (isRecord(answer) && Array.isArray(answer.targets)) {
        targets = answer.targets.filter((t): t is ModelTarget => isRecord(t) && typeof t.label === 'string' && typeof t.uri === 'string');
        reason = typeof answer.reason === 'string' ? answer.reason : '';
      }
    } catch (error) {
      this.server.log.error(`${REQUEST_MODEL_TARGETS}: ${errorText(error)}`);
      void vscode.window.showErrorMessage(`Listing the workspace's models failed: ${errorText(error)}`);
      return undefined;
    }
    if (targets.length === 0) {
      void vscode.window.showInformationMessage(reason || 'torchls found no model class or construction in this workspace to compare with.');
      return undefined;
    }
    const picked = await vscode.window.showQuickPick(
      targets.map((target) => ({
        label: target.label,
        description: target.kind,
        detail: vscode.workspace.asRelativePath(vscode.Uri.parse(target.uri)),
        target,
      })),
      { title: `Compare ${path.posix.basename(uri.path)} with a model`, placeHolder: 'a model class or construction of the workspace', matchOnDescription: true, matchOnDetail: true },
    );
    if (!picked) {
      return undefined;
    }
    const { target } = picked;
    let result: unknown;
    try {
      result = await vscode.window.withProgress(
        { location: vscode.ProgressLocation.Notification, title: `Comparing with ${target.name}…` },
        () => client.sendRequest(REQUEST_COMPARE_MODEL, {
          uri: uri.toString(),
          target: { uri: target.uri, line: target.line, name: target.name },
        }),
      );
    } catch (error) {
      this.server.log.error(`${REQUEST_COMPARE_MODEL}: ${errorText(error)}`);
      result = { error: `The comparison failed: ${errorText(error)}` };
    }
    if (!isRecord(result)) {
      result = { error: 'The torchls server gave no usable answer (see TorchLS: Show log).' };
    }
    return { target: target.label, result };
  }

  /** The server's `torchls/diff` document for two checkpoints, or `{error}`. */
  async diff(a: vscode.Uri, b: vscode.Uri, values: boolean): Promise<unknown> {
    const client = await this.server.client();
    if (!client) {
      return { error: 'The torchls server is not running: see TorchLS: Show log.' };
    }
    try {
      const result: unknown = await client.sendRequest(REQUEST_DIFF, { a: a.toString(), b: b.toString(), values });
      return isRecord(result) ? result : { error: 'The torchls server gave no usable answer (see TorchLS: Show log).' };
    } catch (error) {
      this.server.log.error(`${REQUEST_DIFF}: ${errorText(error)}`);
      return { error: `The comparison failed: ${errorText(error)}` };
    }
  }

  /** `torchls.compareCheckpoints`: the two files selected in the Explorer, else the ones picked. */
  async compareCheckpoints(clicked: unknown, selected: unknown): Promise<void> {
    const chosen = (Array.isArray(selected) ? selected : [clicked]).map(targetUri).filter((u): u is vscode.Uri => u !== undefined);
    const uris = chosen.slice(0, 2);
    while (uris.length < 2) {
      const picked = await this.pickCheckpoint(uris.length === 0 ? 'The first checkpoint (A)' : `Compare ${path.posix.basename(uris[0].path)} with (B)`, uris);
      if (!picked) {
        return;
      }
      uris.push(picked);
    }
    const [a, b] = uris;
    const title = `${path.posix.basename(a.path)} ↔ ${path.posix.basename(b.path)}`;
    const panel = vscode.window.createWebviewPanel(`${VIEW_TYPE}.diff`, title, vscode.ViewColumn.Active, {
      enableScripts: true,
      localResourceRoots: [this.media],
    });
    new DiffSession(this, a, b, panel);
  }

  private async pickCheckpoint(title: string, exclude: vscode.Uri[]): Promise<vscode.Uri | undefined> {
    const files = await vscode.workspace.findFiles('**/*.{pt,pth,bin,ckpt,safetensors}', '{**/node_modules/**,**/.git/**,**/.venv/**}', 500);
    const items: (vscode.QuickPickItem & { uri?: vscode.Uri })[] = files
      .filter((file) => !exclude.some((other) => other.toString() === file.toString()))
      .sort((x, y) => x.path.localeCompare(y.path))
      .map((file) => ({ label: path.posix.basename(file.path), description: vscode.workspace.asRelativePath(file), uri: file }));
    items.push({ label: 'Browse…', description: 'a file or model folder outside the list' });
    const picked = await vscode.window.showQuickPick(items, { title, matchOnDescription: true });
    if (!picked) {
      return undefined;
    }
    if (picked.uri) {
      return picked.uri;
    }
    const browsed = await vscode.window.showOpenDialog({ title, canSelectFiles: true, canSelectFolders: true, canSelectMany: false });
    return browsed?.[0];
  }

  /** `torchls.openCheckpointViewer`: a file in the custom editor, a folder in a panel, nothing given: a picker. */
  async open(argument: unknown): Promise<void> {
    let uri = targetUri(argument);
    if (!uri) {
      const active = vscode.window.tabGroups.activeTabGroup.activeTab?.input;
      const picked = await vscode.window.showOpenDialog({
        title: 'Open checkpoint viewer',
        canSelectFiles: true,
        canSelectFolders: true,
        canSelectMany: false,
        defaultUri: active instanceof vscode.TabInputText ? vscode.Uri.joinPath(active.uri, '..') : vscode.workspace.workspaceFolders?.[0]?.uri,
        filters: { Checkpoints: ['pt', 'pth', 'bin', 'ckpt', 'safetensors', 'json'] },
      });
      uri = picked?.[0];
      if (!uri) {
        return;
      }
    }
    let isFolder = false;
    try {
      isFolder = ((await vscode.workspace.fs.stat(uri)).type & vscode.FileType.Directory) !== 0;
    } catch {
      void vscode.window.showErrorMessage(`${uri.fsPath} does not exist.`);
      return;
    }
    if (isFolder || !CHECKPOINT_FILE.test(uri.path)) {
      // A folder cannot host a custom editor; any other file is left to the server to judge.
      this.openPanel(uri, isFolder);
      return;
    }
    await vscode.commands.executeCommand('vscode.openWith', uri, VIEW_TYPE);
  }
}

/** Registers the custom editor, `torchls.openCheckpointViewer` and `torchls.compareCheckpoints`. */
export function registerCheckpointViewer(server: ViewerServerAccess, extensionUri: vscode.Uri): vscode.Disposable {
  const viewer = new CheckpointViewer(server, extensionUri);
  return vscode.Disposable.from(
    vscode.window.registerCustomEditorProvider(VIEW_TYPE, viewer, {
      supportsMultipleEditorsPerDocument: true,
      webviewOptions: { retainContextWhenHidden: false },
    }),
    vscode.commands.registerCommand(COMMAND_OPEN_VIEWER, (clicked?: unknown) => viewer.open(clicked)),
    vscode.commands.registerCommand(COMMAND_COMPARE_CHECKPOINTS, (clicked?: unknown, selected?: unknown) =>
      viewer.compareCheckpoints(clicked, selected)),
  );
}
