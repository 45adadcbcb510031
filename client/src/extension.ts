// The thin client: find the interpreter, start the bundled server in isolated mode (`python -I`),
// pass workspace trust and settings, show the worker's state, restart on change.
import * as path from 'node:path';
import * as vscode from 'vscode';
import {
  LanguageClient,
  LanguageClientOptions,
  RevealOutputChannelOn,
  ServerOptions,
  TransportKind,
} from 'vscode-languageclient/node';
import { COMMAND_OPEN_VIEWER, registerCheckpointViewer } from './checkpointViewer';
import { registerConvert } from './convert';
import { executeCommandMiddleware, registerDowngrade } from './downgrade';
import { registerModelReport } from './modelReport';
import { Interpreter, onDidChangePythonInterpreter, probeVersion, readCommandSetting, resolveInterpreter } from './python';
import { ServerStatus, StatusItem } from './status';

const SERVER_ID = 'torchls';
const SERVER_NAME = 'torchls';
const MIN_PYTHON: [number, number] = [3, 10];
const COMMAND_RESTART = 'torchls.restart';
const COMMAND_SHOW_LOG = 'torchls.showLog';

let client: LanguageClient | undefined;
let log: vscode.LogOutputChannel;
let statusItem: StatusItem;
let extensionPath: string;
// Restarts are chained so that a burst of setting changes never runs two servers at once.
let lifecycle: Promise<void> = Promise.resolve();
// Settings only the client reads: changing them must not restart the server.
const CLIENT_ONLY_SETTINGS = ['torchls.downgrade.'];

function workerOptions(resource?: vscode.Uri): Record<string, unknown> {
  const config = vscode.workspace.getConfiguration('torchls', resource);
  return {
    interpreter: readCommandSetting('worker.interpreter', resource),
    timeoutSeconds: config.get<number>('worker.timeoutSeconds', 30),
    memoryLimitMB: config.get<number>('worker.memoryLimitMB', 8192),
  };
}


async function startServer(): Promise<void> {
  const resource = vscode.workspace.workspaceFolders?.[0]?.uri;
  const interpreter: Interpreter = await resolveInterpreter(resource);
  log.info(`Python for the server: ${interpreter.command.join(' ')} (from ${interpreter.source})`);

  const version = await probeVersion(interpreter);
  if (typeof version === 'string' || version[0] < MIN_PYTHON[0] || (version[0] === MIN_PYTHON[0] && version[1] < MIN_PYTHON[1])) {
    const problem = typeof version === 'string'
      ? version
      : `${interpreter.command[0]} is Python ${version.join('.')}; torchls needs ${MIN_PYTHON.join('.')} or newer`;
    log.error(problem);
    statusItem.show({ state: 'error', message: `${problem}. Set torchls.interpreter or pick another interpreter.` });
    return;
  }

  const [executable, ...leading] = interpreter.command;
  const serverOptions: ServerOptions = {
    command: executable,
    // Isolated (`-I`): otherwise Python itself imports a `sitecustomize` found on PYTHONPATH or
    // in the user site before torchls can act. The bootstrap puts the bundled libraries first
    // on sys.path; `-u` stands in for PYTHONUNBUFFERED, which `-I` ignores.
    args: [...leading, '-I', '-u', path.join(extensionPath, 'bundled', 'tool', 'torchls_server.py'), 'serve'],
    transport: TransportKind.stdio, // the client appends --stdio; the server accepts it
    // The server ignores PYTHON* variables but hands them on to its workers, which run the
    // user's code with the user's PYTHONPATH (without the workspace's parts).
    options: { cwd: extensionPath, env: { ...process.env, PYTHONUNBUFFERED: '1' } },
  };
  const config = vscode.workspace.getConfiguration('torchls', resource);
  const clientOptions: LanguageClientOptions = {
    documentSelector: [
      { scheme: 'file', language: 'python' },
      { scheme: 'untitled', language: 'python' },
    ],
    outputChannel: log,
    traceOutputChannel: log,
    revealOutputChannelOn: RevealOutputChannelOn.Never,
    // The server's downgrade command, run from a code action or another extension, shows its
    // result through the client like the client's own command does.
    middleware: { executeCommand: executeCommandMiddleware },
    // The hover on a checkpoint path links to the viewer; no other command runs from a hover.
    markdown: { isTrusted: { enabledCommands: [COMMAND_OPEN_VIEWER] } },
    initializationOptions: {
      trusted: vscode.workspace.isTrusted,
      allowUserCode: config.get<boolean>('allowUserCode', true),
      worker: workerOptions(resource),
      defaultInputShapes: config.get<Record<string, string>>('defaultInputShapes', {}),
      maxFileSizeKB: config.get<number>('maxFileSizeKB', 512),
      // Inlay shapes in forward(), parameter counts in __init__, the CodeLens above model
      // classes, and the GPU the training-memory figures are measured against.
      inlayHints: {
        shapes: config.get<boolean>('inlayHints.shapes', true),
        parameters: config.get<boolean>('inlayHints.parameters', false),
      },
      codeLens: config.get<boolean>('codeLens', true),
      gpuMemoryGB: config.get<number>('gpuMemoryGB', 24),
    },
  };

  const next = new LanguageClient(SERVER_ID, SERVER_NAME, serverOptions, clientOptions);
  next.onNotification('torchls/status', (status: ServerStatus) => statusItem.show(status));
  statusItem.show({ state: 'starting', message: `starting the server with ${executable}` });
  try {
    await next.start();
    client = next;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    log.error(`The torchls server did not start: ${message}`);
    statusItem.show({ state: 'error', message: `the server did not start: ${message}` });
    await next.dispose().catch(() => undefined);
  }
}

async function stopServer(): Promise<void> {
  const running = client;
  client = undefined;
  if (running) {
    try {
      await running.stop(5000);
    } catch (error) {
      log.warn(`Stopping the server: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
}

/** The client once any start or restart in progress has ended: undefined if the server is down. */
async function currentClient(): Promise<LanguageClient | undefined> {
  await lifecycle.catch(() => undefined);
  return client;
}

/** Whether a configuration change touches a setting the server reads. */
function affectsServer(event: vscode.ConfigurationChangeEvent, extension: vscode.Extension<unknown>): boolean {
  const properties: Record<string, unknown> = extension.packageJSON?.contributes?.configuration?.properties ?? {};
  return Object.keys(properties)
    .filter((key) => !CLIENT_ONLY_SETTINGS.some((prefix) => key.startsWith(prefix)))
    .some((key) => event.affectsConfiguration(key));
}

function restart(reason: string): Promise<void> {
  lifecycle = lifecycle.then(async () => {
    log.info(`Restarting the server: ${reason}`);
    await stopServer();
    await startServer();
  });
  return lifecycle;
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extensionPath = context.extensionPath;
  log = vscode.window.createOutputChannel('torchls', { log: true });
  statusItem = new StatusItem(COMMAND_SHOW_LOG);
  context.subscriptions.push(
    log,
    statusItem,
    vscode.commands.registerCommand(COMMAND_RESTART, () => restart('the Restart command')),
    vscode.commands.registerCommand(COMMAND_SHOW_LOG, () => log.show()),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (affectsServer(event, context.extension)) {
        void restart('a torchls setting changed');
      }
    }),
    vscode.workspace.onDidGrantWorkspaceTrust(() => restart('the workspace is now trusted')),
    registerDowngrade({
      client: currentClient,
      showLog: () => log.show(),
      restart: () => restart('the Restart button of a downgrade'),
      log,
    }),
    registerConvert({
      client: currentClient,
      showLog: () => log.show(),
      restart: () => restart('the Restart button of a conversion'),
      log,
    }),
    registerCheckpointViewer({ client: currentClient, log }, context.extensionUri),
    registerModelReport({ client: currentClient, log }, context.extensionUri),
  );
  const pythonWatcher = await onDidChangePythonInterpreter(() => {
    if (readCommandSetting('interpreter').length === 0) {
      void restart('the Python extension\'s interpreter changed');
    }
  });
  if (pythonWatcher) {
    context.subscriptions.push(pythonWatcher);
  }
  lifecycle = lifecycle.then(startServer);
  await lifecycle;
}

export async function deactivate(): Promise<void> {
  await lifecycle.catch(() => undefined);
  await stopServer();
}
