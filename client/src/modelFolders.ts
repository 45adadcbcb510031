// Which workspace folders hold a Hugging Face model (config.json plus weights). The Explorer's
// "Downgrade checkpoint" item is shown on them through the `torchls.modelFolders` context key:
// a when clause cannot look inside a folder, so the client finds them and publishes the list.
import * as vscode from 'vscode';

/** Context key read by the `explorer/context` when clause (`resourcePath in torchls.modelFolders`). */
export const MODEL_FOLDERS_CONTEXT_KEY = 'torchls.modelFolders';

/** Folders never worth searching: dependencies and tool state, which can be huge. */
export const SEARCH_EXCLUDE = '{**/node_modules/**,**/.git/**,**/.venv/**}';
/** Enough for any real workspace, and a bound on the work done after every watcher event. */
export const SEARCH_LIMIT = 500;
const REFRESH_DELAY_MS = 1000;

// The weights `save_pretrained` writes, whole or sharded, and the index of a sharded save.
const WEIGHT_FILES: readonly RegExp[] = [
  /^pytorch_model\.bin$/,
  /^pytorch_model-\d+-of-\d+\.bin$/,
  /^model\.safetensors$/,
  /^model-\d+-of-\d+\.safetensors$/,
  /\.index\.json$/,
];
// What the watcher reacts to: anything whose appearance or removal can change the answer.
const WATCHED = '**/{config.json,pytorch_model*.bin,model*.safetensors,*.index.json}';

export function isWeightFile(name: string): boolean {
  return WEIGHT_FILES.some((pattern) => pattern.test(name));
}

/** True when `folder` holds config.json and weights in a layout `from_pretrained` reads. */
async function isModelFolder(folder: vscode.Uri): Promise<boolean> {
  try {
    const entries = await vscode.workspace.fs.readDirectory(folder);
    const files = entries.filter(([, type]) => (type & vscode.FileType.File) !== 0).map(([name]) => name);
    return files.includes('config.json') && files.some(isWeightFile);
  } catch {
    return false; // removed or unreadable since the search: not a model folder now
  }
}

/** Searches the workspace for model folders; returns their URIs. */
export async function findModelFolders(): Promise<vscode.Uri[]> {
  const configs = await vscode.workspace.findFiles('**/config.json', SEARCH_EXCLUDE, SEARCH_LIMIT);
  const folders = configs.map((config) => vscode.Uri.joinPath(config, '..'));
  const verdicts = await Promise.all(folders.map(isModelFolder));
  return folders.filter((_folder, index) => verdicts[index]);
}

/** Keeps the context key up to date: searched at start, again (debounced) when files change. */
export class ModelFolderTracker implements vscode.Disposable {
  private readonly disposables: vscode.Disposable[] = [];
  // By fsPath, the form the `resourcePath` context key compares against.
  private found = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  // Each refresh gets a number; a slow search that finishes after a newer one is dropped.
  private generation = 0;

  constructor(private readonly log: vscode.LogOutputChannel) {
    const watcher = vscode.workspace.createFileSystemWatcher(WATCHED, false, true, false);
    this.disposables.push(
      watcher,
      watcher.onDidCreate(() => this.schedule()),
      watcher.onDidDelete(() => this.schedule()),
      vscode.workspace.onDidChangeWorkspaceFolders(() => this.schedule()),
    );
    void this.refresh();
  }

  /** Whether `uri` is a model folder found by the last search. */
  has(uri: vscode.Uri): boolean {
    return this.found.has(uri.fsPath);
  }

  // A save_pretrained writes several files at once: one search for the burst, not one per file.
  private schedule(): void {
    if (this.timer) {
      clearTimeout(this.timer);
    }
    this.timer = setTimeout(() => void this.refresh(), REFRESH_DELAY_MS);
  }

  async refresh(): Promise<void> {
    const generation = ++this.generation;
    try {
      const folders = await findModelFolders();
      if (generation !== this.generation) {
        return;
      }
      this.found = new Set(folders.map((folder) => folder.fsPath));
      await vscode.commands.executeCommand('setContext', MODEL_FOLDERS_CONTEXT_KEY, [...this.found]);
    } catch (error) {
      this.log.warn(`Looking for model folders: ${error instanceof Error ? error.message : String(error)}`);
    }
  }

  dispose(): void {
    if (this.timer) {
      clearTimeout(this.timer);
    }
    this.generation++; // a search still running must not set the key after disposal
    this.disposables.forEach((disposable) => disposable.dispose());
  }
}
