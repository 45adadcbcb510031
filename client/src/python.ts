// Which Python runs the torchls server: the `torchls.interpreter` setting, else the environment
// selected in the Python extension (when it is installed), else `python3` on PATH.
import { execFile } from 'node:child_process';
import * as vscode from 'vscode';
import { PythonExtension } from '@vscode/python-extension';

export interface Interpreter {
  /** The executable and any leading arguments, e.g. ["/venv/bin/python"] or ["conda", "run", "python"]. */
  command: string[];
  /** Where the choice came from, for the log and the status bar tooltip. */
  source: string;
}

const PYTHON_EXTENSION_ID = 'ms-python.python';

function substituteVariables(value: string, resource?: vscode.Uri): string {
  const folder = resource
    ? vscode.workspace.getWorkspaceFolder(resource)
    : vscode.workspace.workspaceFolders?.[0];
  return value
    .replace(/\$\{workspaceFolder\}/g, folder?.uri.fsPath ?? '')
    .replace(/\$\{userHome\}/g, process.env.HOME ?? process.env.USERPROFILE ?? '')
    .replace(/\$\{env:([^}]+)\}/g, (_match, name: string) => process.env[name] ?? '');
}

/** A setting that may be written as a string or as a list of strings. */
export function readCommandSetting(section: string, resource?: vscode.Uri): string[] {
  const raw = vscode.workspace.getConfiguration('torchls', resource).get<unknown>(section);
  const parts = typeof raw === 'string' ? [raw] : Array.isArray(raw) ? raw : [];
  return parts
    .filter((part): part is string => typeof part === 'string' && part.trim() !== '')
    .map((part) => substituteVariables(part, resource));
}

async function pythonExtensionApi(): Promise<PythonExtension | undefined> {
  if (!vscode.extensions.getExtension(PYTHON_EXTENSION_ID)) {
    return undefined;
  }
  try {
    return await PythonExtension.api();
  } catch {
    return undefined;
  }
}

export async function resolveInterpreter(resource?: vscode.Uri): Promise<Interpreter> {
  const fromSetting = readCommandSetting('interpreter', resource);
  if (fromSetting.length > 0) {
    return { command: fromSetting, source: 'the torchls.interpreter setting' };
  }
  const api = await pythonExtensionApi();
  if (api) {
    try {
      const active = api.environments.getActiveEnvironmentPath(resource);
      const environment = await api.environments.resolveEnvironment(active);
      const executable = environment?.executable.uri?.fsPath;
      if (executable) {
        return { command: [executable], source: 'the Python extension' };
      }
    } catch {
      // Fall through to python3: a broken Python extension must not stop torchls.
    }
  }
  return { command: ['python3'], source: 'the default (python3 on PATH)' };
}

/** Calls `listener` when the Python extension's active environment changes. */
export async function onDidChangePythonInterpreter(
  listener: () => void,
): Promise<vscode.Disposable | undefined> {
  const api = await pythonExtensionApi();
  return api?.environments.onDidChangeActiveEnvironmentPath(() => listener());
}

/**
 * The interpreter's version as [major, minor], or an error sentence. Checked before the server
 * starts so that "python3 is 3.8" reads as such instead of as a crashed server.
 */
export function probeVersion(interpreter: Interpreter): Promise<[number, number] | string> {
  const [executable, ...leading] = interpreter.command;
  return new Promise((resolve) => {
    execFile(
      executable,
      // -I: as the server, so that no sitecustomize on PYTHONPATH runs for a version check.
      [...leading, '-I', '-c', 'import sys; print("%d.%d" % sys.version_info[:2])'],
      { timeout: 20000 },
      (error, stdout) => {
        if (error) {
          const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : error.message.split('\n')[0];
          resolve(`cannot run ${executable} (${reason})`);
          return;
        }
        const match = /^(\d+)\.(\d+)/.exec(stdout.trim());
        resolve(match ? [Number(match[1]), Number(match[2])] : `${executable} did not report a Python version`);
      },
    );
  });
}
