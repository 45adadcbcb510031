// The model report: everything torchls measured about one model (the whole module tree, the
// heaviest layers, thop's figure, training memory, cost against input size) in a webview panel.
// It opens from the CodeLens above a model class or construction (the server's lens passes
// `{uri, line, character}`) or from the palette on the model under the cursor, and asks the
// server (`torchls/modelReport`) for the report: the extension host never imports torch.
//
// Why a webview and not a read-only virtual document (a Markdown text the editor shows): a
// ResNet-50 has 150 modules and a GPT-2 several hundred, so the tree is only readable when it
// can be collapsed (repeated blocks folded into `layer1.0-2: 3 × Bottleneck`), narrowed by a
// filter that keeps the matches' ancestors, and sorted by MACs or parameters within each parent;
// a text document can do none of that, and its plot of cost against input size would be ASCII.
// The Markdown and CSV texts stay available: the Export buttons save them through a save dialog.
import * as path from 'node:path';
import * as vscode from 'vscode';
import { LanguageClient } from 'vscode-languageclient/node';

export const COMMAND_SHOW_MODEL_REPORT = 'torchls.showModelReport';
const REQUEST_MODEL_REPORT = 'torchls/modelReport';
const VIEW_TYPE = 'torchls.modelReport';

/** What the report needs from extension.ts; a function, so it sees the client of the moment. */
export interface ReportServerAccess {
  client(): Promise<LanguageClient | undefined>;
  log: vscode.LogOutputChannel;
}

/** The position of a model class or construction, as the CodeLens sends it (0-based). */
export interface ReportTarget {
  uri: string;
  line: number;
  character: number;
}

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

/** The command's argument: `{uri, line, character}` (or a list holding one, as CodeLens
 * arguments are written); nothing usable gives undefined, and the cursor is used instead. */
export function readTarget(argument: unknown): ReportTarget | undefined {
  const first = Array.isArray(argument) ? argument[0] : argument;
  if (!isRecord(first)) {
    return undefined;
  }
  const uri = first.uri instanceof vscode.Uri ? first.uri.toString() : first.uri;
  const { line, character } = first;
  if (typeof uri !== 'string' || typeof line !== 'number' || !Number.isInteger(line) || line < 0) {
    return undefined;
  }
  return { uri, line, character: typeof character === 'number' && Number.isInteger(character) && character >= 0 ? character : 0 };
}

function cursorTarget(): ReportTarget | undefined {
  const editor = vscode.window.activeTextEditor;
  if (!editor || editor.document.languageId !== 'python') {
    return undefined;
  }
  const { line, character } = editor.selection.active;
  return { uri: editor.document.uri.toString(), line, character };
}

function reportName(result: unknown): string | undefined {
  if (!isRecord(result)) {
    return undefined;
  }
  for (const key of ['name', 'model', 'title']) {
    if (typeof result[key] === 'string' && result[key]) {
      return result[key] as string;
    }
  }
  const tree = Array.isArray(result.tree) ? result.tree : [];
  return isRecord(tree[0]) && typeof tree[0].type === 'string' ? tree[0].type : undefined;
}

/** One open report panel: its target, its last answer, its messages. */
class ReportSession implements vscode.Disposable {
  private readonly disposables: vscode.Disposable[] = [];
  // Each load gets a number; an answer that arrives after a newer load started is dropped.
  private generation = 0;
  private ready = false;
  private disposed = false;
  private result: unknown;

  constructor(
    private readonly reports: ModelReports,
    readonly key: string,
    private target: ReportTarget,
    readonly panel: vscode.WebviewPanel,
  ) {
    panel.webview.html = reports.html(panel.webview);
    this.disposables.push(
      panel.webview.onDidReceiveMessage((message: unknown) => void this.receive(message)),
      panel.onDidDispose(() => this.dispose()),
    );
  }

  private post(message: Record<string, unknown>): void {
    if (!this.disposed) {
      void this.panel.webview.postMessage(message);
    }
  }

  /** Asks the server again (a new target from the same model's lens, or the Refresh button). */
  async load(target?: ReportTarget): Promise<void> {
    if (target) {
      this.target = target;
    }
    if (!this.ready) {
      return; // the webview asks when its script runs
    }
    const generation = ++this.generation;
    const file = path.posix.basename(vscode.Uri.parse(this.target.uri).path);
    this.post({ type: 'loading', where: `${file}:${this.target.line + 1}` });
    const result = await this.reports.request(this.target);
    if (generation !== this.generation || this.disposed) {
      return;
    }
    this.result = result;
    const name = reportName(result);
    this.panel.title = name ? `${name} (model report)` : 'Model report';
    const gpuMemoryGB = vscode.workspace.getConfiguration('torchls').get<number>('gpuMemoryGB', 24);
    this.post({ type: 'report', result, gpuMemoryGB, file, line: this.target.line + 1 });
  }

  private async receive(message: unknown): Promise<void> {
    if (!isRecord(message)) {
      return;
    }
    switch (message.type) {
      case 'ready':
        this.ready = true;
        await this.load();
        break;
      case 'refresh':
        await this.load();
        break;
      case 'export':
        if (message.format === 'markdown' || message.format === 'csv') {
          await this.export(message.format, typeof message.fallback === 'string' ? message.fallback : undefined);
        }
        break;
      case 'reveal':
        await this.reveal(typeof message.line === 'number' ? message.line : undefined);
        break;
      default:
        break;
    }
  }

  /** Saves the server's Markdown or CSV text where the user says, through the save dialog
   * (which asks before replacing a file); nothing is written without it. */
  private async export(format: 'markdown' | 'csv', fallback: string | undefined): Promise<void> {
    const result = isRecord(this.result) ? this.result : {};
    const text = typeof result[format] === 'string' ? (result[format] as string) : fallback;
    if (!text) {
      void vscode.window.showWarningMessage('This report has nothing to export.');
      return;
    }
    const extension = format === 'markdown' ? 'md' : 'csv';
    const source = vscode.Uri.parse(this.target.uri);
    const name = (reportName(result) ?? 'model').replace(/[^A-Za-z0-9_.-]+/g, '_');
    const folder = source.scheme === 'file' ? vscode.Uri.joinPath(source, '..') : vscode.workspace.workspaceFolders?.[0]?.uri;
    const defaultName = `${name}-report.${extension}`;
    const destination = await vscode.window.showSaveDialog({
      title: `Export the ${name} report as ${format === 'markdown' ? 'Markdown' : 'CSV'}`,
      defaultUri: folder ? vscode.Uri.joinPath(folder, defaultName) : undefined,
      filters: format === 'markdown' ? { Markdown: ['md'] } : { CSV: ['csv'] },
      saveLabel: 'Export',
    });
    if (!destination) {
      return;
    }
    try {
      await vscode.workspace.fs.writeFile(destination, new TextEncoder().encode(text));
    } catch (error) {
      void vscode.window.showErrorMessage(`Could not write ${destination.fsPath}: ${errorText(error)}`);
      return;
    }
    this.reports.log.info(`Model report exported to ${destination.fsPath}`);
    const open = await vscode.window.showInformationMessage(`Exported the ${name} report to ${path.basename(destination.fsPath)}.`, 'Open');
    if (open) {
      await vscode.window.showTextDocument(destination);
    }
  }

  /** Shows the model's source line (the report's "where" link; 0-based, the server's). */
  private async reveal(line: number | undefined): Promise<void> {
    const where = new vscode.Position(line !== undefined && Number.isInteger(line) && line >= 0 ? line : this.target.line, 0);
    await vscode.window.showTextDocument(vscode.Uri.parse(this.target.uri), {
      viewColumn: vscode.ViewColumn.One,
      selection: new vscode.Range(where, where),
    });
  }

  dispose(): void {
    if (this.disposed) {
      return;
    }
    this.disposed = true;
    this.reports.forget(this);
    this.disposables.forEach((disposable) => disposable.dispose());
  }
}

export class ModelReports {
  readonly media: vscode.Uri;
  readonly log: vscode.LogOutputChannel;
  private readonly sessions = new Map<string, ReportSession>();

  constructor(
    private readonly server: ReportServerAccess,
    extensionUri: vscode.Uri,
  ) {
    this.media = vscode.Uri.joinPath(extensionUri, 'client', 'media');
    this.log = server.log;
  }

  /** `torchls.showModelReport`: the lens's target, else the cursor of the active Python editor.
   * A report already open for the same place is brought forward and asked again. */
  async show(argument: unknown): Promise<void> {
    const target = readTarget(argument) ?? cursorTarget();
    if (!target) {
      void vscode.window.showInformationMessage('Put the cursor on a model class or a model construction in a Python file, then run TorchLS: Show model report.');
      return;
    }
    const key = `${target.uri}#${target.line}`;
    const open = this.sessions.get(key);
    if (open) {
      open.panel.reveal(open.panel.viewColumn ?? vscode.ViewColumn.Beside);
      await open.load(target);
      return;
    }
    const panel = vscode.window.createWebviewPanel(VIEW_TYPE, 'Model report', vscode.ViewColumn.Beside, {
      enableScripts: true,
      // The filter, the sort order and the rows opened stay when the tab is hidden.
      retainContextWhenHidden: true,
      localResourceRoots: [this.media],
    });
    this.sessions.set(key, new ReportSession(this, key, target, panel));
  }

  forget(session: ReportSession): void {
    if (this.sessions.get(session.key) === session) {
      this.sessions.delete(session.key);
    }
  }

  html(webview: vscode.Webview): string {
    const script = webview.asWebviewUri(vscode.Uri.joinPath(this.media, 'report.js'));
    const style = webview.asWebviewUri(vscode.Uri.joinPath(this.media, 'report.css'));
    const scriptNonce = nonce();
    // Nothing from outside the extension's media folder, no inline style or script, no network;
    // the plot is SVG built by report.js and coloured by the stylesheet's theme variables.
    const policy = [
      "default-src 'none'",
      `style-src ${webview.cspSource}`,
      `img-src ${webview.cspSource}`,
      `font-src ${webview.cspSource}`,
      `script-src 'nonce-${scriptNonce}'`,
    ].join('; ');
    return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${policy}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${style.toString()}">
<title>Model report</title>
</head>
<body>
<main id="app" aria-busy="true"><p class="status" role="status">Profiling the model…</p></main>
<script nonce="${scriptNonce}" src="${script.toString()}"></script>
</body>
</html>`;
  }

  /** The server's `torchls/modelReport` answer, or `{error}` in one sentence. */
  async request(target: ReportTarget): Promise<unknown> {
    const client = await this.server.client();
    if (!client) {
      return { error: 'The torchls server is not running: see TorchLS: Show log.' };
    }
    const started = Date.now();
    try {
      const result: unknown = await client.sendRequest(REQUEST_MODEL_REPORT, target);
      this.log.info(`${REQUEST_MODEL_REPORT} ${target.uri}:${target.line + 1}: answered in ${Date.now() - started} ms`);
      if (result === null || result === undefined) {
        return { error: 'There is no model class or construction here: put the cursor on one (a class deriving from nn.Module, or a call that builds one).' };
      }
      if (!isRecord(result) || !(Array.isArray(result.tree) || typeof result.error === 'string')) {
        this.log.error(`${REQUEST_MODEL_REPORT} answered ${JSON.stringify(result)?.slice(0, 500)}`);
        return { error: 'The torchls server gave no usable answer (see TorchLS: Show log).' };
      }
      return result;
    } catch (error) {
      this.log.error(`${REQUEST_MODEL_REPORT} on ${target.uri}:${target.line + 1}: ${errorText(error)}`);
      return { error: `The torchls server could not make the report: ${errorText(error)}` };
    }
  }
}

/** Registers `torchls.showModelReport`. */
export function registerModelReport(server: ReportServerAccess, extensionUri: vscode.Uri): vscode.Disposable {
  const reports = new ModelReports(server, extensionUri);
  return vscode.commands.registerCommand(COMMAND_SHOW_MODEL_REPORT, (argument?: unknown) => reports.show(argument));
}
