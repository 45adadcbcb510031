// Real VS Code for tests: code-server on 127.0.0.1 with throwaway folders, the built .vsix
// installed, and Debian's Chromium driven by playwright-core. Nothing is downloaded.
import { spawn, execFileSync } from 'node:child_process';
import {
  cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
const codeServerBin = path.join(here, 'node_modules', '.bin', 'code-server');
export const artifacts = path.join(here, 'artifacts');
export const examples = path.join(repoRoot, 'examples');
/** The packaged extension under test and the Python (with torch) its server and worker run in. */
export const vsix = process.env.TORCHLS_VSIX ?? path.join(repoRoot, 'dist', 'torchls.vsix');
export const python = process.env.TORCHLS_TEST_PYTHON ?? path.join(repoRoot, '.venv', 'bin', 'python');

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
    const settingsFile = path.join(dirs.userData, 'User', 'settings.json');
    return { page, stop, userData: dirs.userData, settingsFile, serverLog: () => serverLog };
  } catch (error) {
    process.stderr.write(serverLog);
    await stop();
    throw error;
  }
}

/** Opens a file of the workspace through Quick Open (Ctrl+P), choosing the row of that file,
 * trying again when a hover or a widget swallowed the keys. */
export async function openFile(page, name) {
  const tab = page.locator(`.tab.active[aria-label^="${name}"]`);
  const input = page.locator('.quick-input-widget input');
  const seen = [];
  for (let attempt = 0; attempt < 4; attempt += 1) {
    await page.keyboard.press('Escape');
    await page.keyboard.press('Control+P');
    if (!(await input.waitFor({ timeout: 10000 }).then(() => true, () => false))) continue;
    await input.fill(name);
    const found = await page.waitForFunction((wanted) => {
      const row = document.querySelector('.quick-input-list .monaco-list-row.focused');
      return (row?.getAttribute('aria-label') ?? '').startsWith(`${wanted},`);
    }, name, { timeout: 10000 }).then(() => true, () => false);
    if (!found) {
      seen.push((await page.locator('.quick-input-list .monaco-list-row').allInnerTexts()).join(' / '));
      continue;
    }
    await page.keyboard.press('Enter');
    if (await tab.first().waitFor({ timeout: 10000 }).then(() => true, () => false)) return;
  }
  const tabs = await page.locator('.tabs-container .tab').evaluateAll((all) => all.map((t) => t.getAttribute('aria-label')));
  throw new Error(`could not open ${name} with Quick Open; rows: ${seen.join(' || ')}; tabs: ${tabs.join(', ')}`);
}

export function screenshotPath(name) {
  if (!existsSync(artifacts)) mkdirSync(artifacts, { recursive: true });
  return path.join(artifacts, `${name}.png`);
}

// ---- helpers shared by the tests ----

/** A throwaway copy of examples/ (checkpoints included) in a folder named `examples`, so that
 * tests that edit or write files never touch the repository. Returns its path. */
export function copyExamples() {
  const folder = path.join(mkdtempSync(path.join(tmpdir(), 'torchls-ws-')), 'examples');
  cpSync(examples, folder, {
    recursive: true,
    filter: (source) => !/(__pycache__|\.torchls-cache|\.legacy\.)/.test(path.basename(source)),
  });
  return folder;
}

export function removeCopy(folder) {
  rmSync(path.dirname(folder), { recursive: true, force: true });
}

/** Puts a file of the copy back as it is in examples/. */
export function restoreExample(folder, name) {
  cpSync(path.join(examples, name), path.join(folder, name));
}

/** Runs a test body; on failure keeps a screenshot named `<name>-failure` before rethrowing. */
export async function withFailureScreenshot(page, name, body) {
  try {
    return await body();
  } catch (error) {
    await page.screenshot({ path: screenshotPath(`${name}-failure`) }).catch(() => undefined);
    // A menu or quick pick left open would swallow the next test's clicks: one failure, not a cascade.
    for (let i = 0; i < 2; i += 1) await page.keyboard.press('Escape').catch(() => undefined);
    throw error;
  }
}

/** Waits until the element and everything in it has finished animating (hovers fade in). */
export async function settled(locator) {
  await locator.evaluate((element) => Promise.all(
    element.getAnimations({ subtree: true }).map((animation) => animation.finished.catch(() => undefined)),
  ));
  // A frame later the fade-in's final opacity is painted.
  await locator.evaluate(() => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve))));
}

/** Runs a command by its title from the command palette (F1), choosing the row with exactly
 * that title (the palette's first row may be a similar command). */
export async function runCommand(page, title) {
  const input = page.locator('.quick-input-widget input');
  const matches = (label) => label === title || label.startsWith(`${title},`);
  for (let attempt = 0; attempt < 3; attempt += 1) {
    await page.keyboard.press('Escape');
    await page.keyboard.press('F1');
    if (!(await input.waitFor({ timeout: 10000 }).then(() => true, () => false))) continue;
    await input.fill(`>${title}`);
    const listed = await page.waitForFunction((wanted) => [...document.querySelectorAll('.quick-input-list .monaco-list-row')]
      .some((row) => {
        const label = row.getAttribute('aria-label') ?? '';
        return label === wanted || label.startsWith(`${wanted},`);
      }), title, { timeout: 10000 }).then(() => true, () => false);
    if (!listed) continue;
    for (let moves = 0; moves < 20; moves += 1) {
      const focused = page.locator('.quick-input-list .monaco-list-row.focused').first();
      if (matches((await focused.getAttribute('aria-label').catch(() => '')) ?? '')) {
        await page.keyboard.press('Enter');
        await input.waitFor({ state: 'hidden', timeout: 10000 }).catch(() => undefined);
        return;
      }
      await page.keyboard.press('ArrowDown');
    }
  }
  throw new Error(`the command palette did not offer "${title}"`);
}

/** In an open quick pick or action widget list, moves the keyboard focus to the row whose text
 * contains `text` and returns that row. */
export async function focusRow(page, rows, text, { maxMoves = 30 } = {}) {
  const focused = page.locator(`${rows}.focused`);
  for (let moves = 0; moves <= maxMoves; moves += 1) {
    if (await focused.count()) {
      const label = (await focused.first().innerText()).replace(/\s+/g, ' ');
      if (label.includes(text)) return focused.first();
    }
    await page.keyboard.press('ArrowDown');
    await focused.first().waitFor({ timeout: 2000 }).catch(() => undefined);
  }
  const all = await page.locator(rows).allInnerTexts();
  throw new Error(`no row with "${text}" among: ${all.join(' | ')}`);
}

/** Closes every editor; a file with unsaved changes is reverted, not saved. */
export async function closeAllEditors(page) {
  await runCommand(page, 'View: Close All Editors');
  const dontSave = page.locator('.monaco-dialog-box .monaco-button', { hasText: /Don.t Save/ });
  const tabs = page.locator('.tabs-container .tab');
  const deadline = Date.now() + 15000;
  while ((await tabs.count()) > 0 && Date.now() < deadline) {
    if (await dontSave.isVisible()) await dontSave.click();
    await tabs.first().waitFor({ state: 'detached', timeout: 1000 }).catch(() => undefined);
  }
  if ((await tabs.count()) > 0) throw new Error('the editors did not close');
}

/** The torchls status bar item (its aria-label carries the tooltip: what the server said). */
export function statusItem(page) {
  return page.locator('[id="torchls.torchls.torchls.status"]');
}

export async function statusLabel(page) {
  return (await statusItem(page).getAttribute('aria-label')) ?? '';
}

/** Waits until the status item's text (and its tooltip, in the aria-label) match. */
export async function waitForStatus(page, textPattern, { label = undefined, timeout = 120000 } = {}) {
  const id = 'torchls.torchls.torchls.status';
  const read = async () => {
    const item = statusItem(page).first();
    if (!(await item.count())) return { text: '', aria: '' };
    return { text: (await item.innerText()).trim(), aria: (await item.getAttribute('aria-label')) ?? '' };
  };
  try {
    await page.waitForFunction(([itemId, text, textFlags, aria, ariaFlags]) => {
      const element = document.getElementById(itemId);
      if (!element) return false;
      return new RegExp(text, textFlags).test(element.innerText.trim())
        && (aria === null || new RegExp(aria, ariaFlags).test(element.getAttribute('aria-label') ?? ''));
    }, [id, textPattern.source, textPattern.flags, label?.source ?? null, label?.flags ?? ''], { timeout, polling: 200 });
  } catch (error) {
    const last = await read();
    throw new Error(`the torchls status never matched ${textPattern}${label ? ` with tooltip ${label}` : ''}; it says "${last.text}" / "${last.aria}"`);
  }
  return read();
}

/**
 * Hovers `word` on the first editor line containing `lineText` until a hover containing
 * `expected` shows; returns the hover's text with whitespace collapsed. Tokens are located
 * again on every try: they re-render while highlighting runs.
 */
export async function hoverWord(page, lineText, word, expected, { timeout = 90000 } = {}) {
  const hover = page.locator('.monaco-hover:not(.hidden)', { hasText: expected }).first();
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline && !(await hover.isVisible())) {
    await page.mouse.move(5, 5);
    const line = page.locator('.editor-instance .view-line', { hasText: lineText }).first();
    await line.locator('span span', { hasText: word }).first().hover({ timeout: 5000 }).catch(() => undefined);
    await hover.waitFor({ timeout: 3000 }).catch(() => undefined);
  }
  if (!(await hover.isVisible())) {
    const shown = await page.locator('.monaco-hover:not(.hidden)').allInnerTexts();
    throw new Error(`no hover with "${expected}" on ${word} (line "${lineText}"); shown: ${shown.join(' | ') || 'nothing'}`);
  }
  await settled(hover);
  return (await hover.innerText()).replace(/\s+/g, ' ');
}

/** The text of the open editor (spaces come back as U+00A0 from the DOM). */
export async function editorText(page) {
  return (await page.locator('.editor-instance .monaco-editor .view-lines').first().innerText())
    .replace(/\u00a0/g, ' ');
}

/** The errors and warnings counts of the status bar's Problems item. */
export async function problemCounts(page) {
  const text = await page.locator('#status\\.problems').innerText();
  const [errors, warnings] = (text.match(/\d+/g) ?? ['0', '0']).map(Number);
  return { errors, warnings };
}

/** Pids of processes whose command line contains every one of `parts`. */
export function findProcesses(...parts) {
  const pids = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let command;
    try {
      command = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' ');
    } catch {
      continue; // ended meanwhile
    }
    if (parts.every((part) => command.includes(part))) pids.push(Number(entry));
  }
  return pids;
}

/** Waits until the file on disk satisfies `check` (a wait-for: saving is asynchronous). */
export async function waitForFile(file, check, { timeout = 20000, what = 'the expected content' } = {}) {
  const deadline = Date.now() + timeout;
  let text = '';
  for (;;) {
    text = existsSync(file) ? readFileSync(file, 'utf8') : '';
    if (check(text)) return text;
    if (Date.now() > deadline) throw new Error(`${file} never had ${what}; it holds:\n${text}`);
    await new Promise((resolve) => setTimeout(resolve, 100)); // polling the disk
  }
}

/** Saves the active editor (Ctrl+S) and waits until its file on disk has `expected` in it. */
export async function saveAndWait(page, file, expected) {
  await page.keyboard.press('Control+S');
  return waitForFile(file, (text) => text.includes(expected), { what: JSON.stringify(expected) });
}

/** Moves the cursor to a line (Ctrl+G), which scrolls it into view. */
export async function goToLine(page, line) {
  await page.keyboard.press('Escape');
  await page.keyboard.press('Control+G');
  const input = page.locator('.quick-input-widget input');
  await input.waitFor({ timeout: 10000 });
  await input.fill(`:${line}`);
  await page.keyboard.press('Enter');
  await page.waitForFunction(
    (wanted) => new RegExp(`^Ln ${wanted},`).test(document.getElementById('status.editor.selection')?.innerText ?? ''),
    line, { timeout: 10000 },
  );
}

/** Starts recording every text and tooltip the torchls status item shows, so that a passing
 * state ("restarting") can be asserted after the fact; `statusHistory` returns them. */
export async function recordStatus(page) {
  await page.evaluate((id) => {
    const history = [];
    window.torchlsStatusHistory = history;
    const note = () => {
      const element = document.getElementById(id);
      if (!element) return;
      const entry = `${element.innerText.trim()} | ${element.getAttribute('aria-label') ?? ''}`;
      if (history[history.length - 1] !== entry) history.push(entry);
    };
    note();
    new MutationObserver(note).observe(document.querySelector('.part.statusbar') ?? document.body, {
      subtree: true, childList: true, characterData: true, attributes: true,
    });
  }, 'torchls.torchls.torchls.status');
}

export async function statusHistory(page) {
  return page.evaluate(() => window.torchlsStatusHistory ?? []);
}

/** Changes user settings the way a user does: "Preferences: Open User Settings (JSON)", the
 * whole text replaced, saved. (code-server does not notice settings.json written behind its back.)
 * Returns when the file on disk holds the new settings. */
export async function editUserSettings(page, settingsFile, changes) {
  const settings = { ...JSON.parse(readFileSync(settingsFile, 'utf8')), ...changes };
  const text = JSON.stringify(settings); // one line: no auto-indentation to fight
  await runCommand(page, 'Preferences: Open User Settings (JSON)');
  await page.locator('.tab.active', { hasText: 'settings.json' }).waitFor({ timeout: 20000 });
  const editor = page.locator('.editor-instance .monaco-editor').first();
  await editor.locator('.view-lines').click();
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(text);
  // Brackets and quotes the editor closed by itself are left after the cursor: drop them.
  await page.keyboard.press('Control+Shift+End');
  await page.keyboard.press('Delete');
  await page.keyboard.press('Control+S');
  await waitForFile(settingsFile, (saved) => {
    try {
      return JSON.stringify(JSON.parse(saved)) === JSON.stringify(settings);
    } catch {
      return false;
    }
  }, { what: text });
  await closeAllEditors(page);
}

/** The Explorer's row for a file or folder named exactly `name` (visible ones only). */
export function explorerRow(page, name) {
  const exact = new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  return page.locator('.explorer-folders-view .monaco-list-row')
    .filter({ has: page.locator('.label-name', { hasText: exact }) }).first();
}

/**
 * Chooses the item labelled exactly `label` in the open context menu. A click that lands while the
 * menu is still animating open is swallowed, so the menu is let settle first, and if it is still
 * open after the click the item is hovered and chosen with Enter. Throws if the menu stays open.
 */
export async function chooseMenuItem(page, label) {
  const exact = new RegExp(`^${label.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`);
  const menu = page.locator('.context-view .monaco-menu');
  const item = page.locator('.context-view .monaco-menu .action-item .action-label', { hasText: exact }).first();
  await item.waitFor({ timeout: 10000 });
  await settled(page.locator('.context-view').first());
  const closed = (timeout) => menu.waitFor({ state: 'detached', timeout }).then(() => true, () => false);
  await item.click();
  if (await closed(2000)) return;
  await item.hover();
  await page.keyboard.press('Enter');
  if (await closed(5000)) return;
  await page.keyboard.press('Escape');
  throw new Error(`the menu item "${label}" could not be chosen`);
}
