// Real VS Code for tests: code-server on 127.0.0.1 with throwaway folders, the built .vsix
// installed, and Debian's Chromium driven by playwright-core. Nothing is downloaded.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
const codeServerBin = path.join(here, 'node_modules', '.bin', 'code-server');
export const artifacts = path.join(here, 'artifacts');

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

async function waitForHealth(url, process, seconds) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    if (process.exitCode !== null) throw new Error(`code-server exited with ${process.exitCode}`);
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch { /* not up yet */ }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`code-server did not answer ${url} within ${seconds} s`);
}

/**
 * Starts code-server with the .vsix installed and opens `folder` in Chromium.
 * `userSettings` are merged into the user settings.json. Returns {page, stop, userData}.
 */
export async function openVSCode({ folder, vsix, userSettings = {}, trust = false }) {
  const root = mkdtempSync(path.join(tmpdir(), 'torchls-vscode-'));
  const dirs = {
    userData: path.join(root, 'user-data'),
    extensions: path.join(root, 'extensions'),
    config: path.join(root, 'config.yaml'),
  };
  mkdirSync(path.join(dirs.userData, 'User'), { recursive: true });
  writeFileSync(dirs.config, 'auth: none\ncert: false\n');
  writeFileSync(path.join(dirs.userData, 'User', 'settings.json'), JSON.stringify({
    'security.workspace.trust.enabled': trust,
    'workbench.startupEditor': 'none',
    'files.hotExit': 'off',
    'editor.hover.delay': 100,
    'telemetry.telemetryLevel': 'off',
    'update.mode': 'none',
    'extensions.autoCheckUpdates': false,
    'extensions.autoUpdate': false,
    'workbench.tips.enabled': false,
    'chat.disableAIFeatures': true,
    'git.openRepositoryInParentFolders': 'never',
    ...userSettings,
  }, null, 2));
  const env = {
    ...process.env,
    XDG_CONFIG_HOME: path.join(root, 'xdg-config'),
    XDG_DATA_HOME: path.join(root, 'xdg-data'),
    XDG_CACHE_HOME: path.join(root, 'xdg-cache'),
  };
  const common = [
    '--config', dirs.config, '--user-data-dir', dirs.userData, '--extensions-dir', dirs.extensions,
  ];
  execFileSync(codeServerBin, [...common, '--install-extension', vsix, '--force'], { env, stdio: 'pipe' });

  const port = await freePort();
  const args = [
    ...common, '--auth', 'none', '--bind-addr', `127.0.0.1:${port}`,
    '--disable-telemetry', '--disable-update-check', '--disable-getting-started-override',
    '--ignore-last-opened',
  ];
  if (!trust) args.push('--disable-workspace-trust');
  // detached: its own process group, so that stopping it also stops the extension host and the
  // language server it spawned.
  const server = spawn(codeServerBin, args, { env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let serverLog = '';
  server.stdout.on('data', (d) => { serverLog += d; });
  server.stderr.on('data', (d) => { serverLog += d; });

  let browser;
  const stop = async () => {
    if (browser) await browser.close().catch(() => undefined);
    try { process.kill(-server.pid, 'SIGKILL'); } catch { /* already gone */ }
    rmSync(root, { recursive: true, force: true });
  };
  try {
    await waitForHealth(`http://127.0.0.1:${port}/healthz`, server, 60);
    browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(folder)}`);
    await page.waitForSelector('.monaco-workbench', { timeout: 60000 });
    await page.waitForSelector('.explorer-folders-view .monaco-list-row', { timeout: 60000 });
    return { page, stop, userData: dirs.userData, serverLog: () => serverLog };
  } catch (error) {
    process.stderr.write(serverLog);
    await stop();
    throw error;
  }
}

/** Opens a file of the workspace through Quick Open (Ctrl+P), trying again when a hover or a
 * widget swallowed the keys. */
export async function openFile(page, name) {
  const tab = page.locator(`.tab[aria-label^="${name}"]`);
  for (let attempt = 0; attempt < 3; attempt += 1) {
    await page.keyboard.press('Escape');
    await page.keyboard.press('Control+P');
    const input = page.locator('.quick-input-widget input');
    if (!(await input.waitFor({ timeout: 10000 }).then(() => true, () => false))) continue;
    await input.fill(name);
    await page.waitForSelector('.quick-input-list .monaco-list-row', { timeout: 10000 });
    await page.keyboard.press('Enter');
    if (await tab.first().waitFor({ timeout: 10000 }).then(() => true, () => false)) return;
  }
  await tab.first().waitFor({ timeout: 10000 });
}

export function screenshotPath(name) {
  if (!existsSync(artifacts)) mkdirSync(artifacts, { recursive: true });
  return path.join(artifacts, `${name}.png`);
}
