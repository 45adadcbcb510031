// The status bar item: the worker's torch version, or what is missing.
import * as vscode from 'vscode';

/** What the server sends in its `torchls/status` notification (see server/torchls/status.py). */
export interface ServerStatus {
  state: 'starting' | 'ready' | 'missing-torch' | 'broken-torch' | 'restarting' | 'error' | string;
  message: string;
  python?: string | null;
  torch?: string | null;
  trusted?: boolean;
  user_code_allowed?: boolean;
  worker_pid?: number | null;
  worker_starts?: number;
  last_worker_exit?: string | null;
}

export class StatusItem implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;

  constructor(showLogCommand: string) {
    this.item = vscode.window.createStatusBarItem('torchls.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'torchls';
    this.item.command = showLogCommand;
    this.show({ state: 'starting', message: 'starting the torchls server' });
  }

  show(status: ServerStatus): void {
    const restricted = status.user_code_allowed === false;
    const suffix = restricted ? ' (restricted)' : '';
    switch (status.state) {
      case 'ready':
        this.item.text = `$(flame) torch ${status.torch ?? ''}${suffix}`;
        this.item.backgroundColor = undefined;
        break;
      case 'missing-torch':
      case 'broken-torch':
        this.item.text = `$(warning) ${status.state === 'missing-torch' ? 'torch not found' : 'torch broken'}`;
        this.item.backgroundColor = new vscode.ThemeColor('statusBarItem.warningBackground');
        break;
      case 'error':
        this.item.text = '$(error) torchls';
        this.item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
        break;
      default:
        this.item.text = '$(sync~spin) torchls';
        this.item.backgroundColor = undefined;
    }
    const lines = [`torchls: ${status.message}`];
    if (restricted) {
      lines.push(
        status.trusted === false
          ? 'This workspace is not trusted: torchls reads checkpoints but does not run its code.'
          : 'torchls.allowUserCode is off: torchls does not run this workspace\'s code.',
      );
    }
    if (status.last_worker_exit) {
      lines.push(`The worker last ended unexpectedly: ${status.last_worker_exit}.`);
    }
    lines.push('Click to show the torchls log.');
    this.item.tooltip = lines.join('\n');
    this.item.show();
  }

  dispose(): void {
    this.item.dispose();
  }
}
