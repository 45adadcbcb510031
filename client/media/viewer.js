// The checkpoint viewer's page. It gets the language server's `torchls/inspect` answer from the
// extension (postMessage) and draws it: header, container tree, and a tensor table that keeps
// only the rows in sight in the DOM, so a checkpoint with 50,000 tensors filters and scrolls at
// once. No network, no eval, no inline style: the Content-Security-Policy allows this file only.
(function () {
  'use strict';

  // @ts-ignore acquireVsCodeApi is given by the webview host
  const vscode = acquireVsCodeApi();
  const ROW_HEIGHT = 24; // px, the same as .row in viewer.css: the virtual list computes with it
  const OVERSCAN = 8; // rows drawn above and below the visible ones, so fast scrolling shows no gap
  const GLOB = /[*?[]/;

  const saved = vscode.getState() || {};
  const state = {
    result: null,
    report: null,
    tensors: [],
    lowerKeys: [],
    order: [], // tensor indices in the current sort
    items: [], // what the list shows: >= 0 a tensor index, < 0 a group (-(i + 1) in groups)
    groups: [],
    filter: typeof saved.filter === 'string' ? saved.filter : '',
    sortKey: saved.sortKey || 'index',
    sortDescending: Boolean(saved.sortDescending),
    grouped: Boolean(saved.grouped),
    expanded: new Set(Array.isArray(saved.expanded) ? saved.expanded : []),
    focused: 0,
    columns: [],
    compare: null,
    filterError: '',
  };

  const app = /** @type {HTMLElement} */ (document.getElementById('app'));

  // ---------- small helpers ----------
  const number = new Intl.NumberFormat('en-US');
  function fmtInt(n) { return typeof n === 'number' ? number.format(n) : '—'; }
  function fmtBytes(n) {
    if (typeof n !== 'number') return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return unit === 0 ? `${n} B` : `${value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)} ${units[unit]}`;
  }
  function fmtValue(value) {
    if (value === null) return 'None';
    if (value === true) return 'True';
    if (value === false) return 'False';
    if (typeof value === 'string') return value;
    if (typeof value === 'number') return String(value);
    return JSON.stringify(value);
  }
  function plural(n, word) { return `${fmtInt(n)} ${word}${n === 1 ? '' : 's'}`; }

  // A sharded checkpoint's size is its shards' (the server says so); its index is a few KB beside.
  function sizeLabel(report) {
    const details = report.details || {};
    if (Array.isArray(details.shards)) return 'Size on disk';
    return report.format === 'huggingface' ? 'Weights size' : 'File size';
  }

  function sizeText(report) {
    if (typeof report.file_size !== 'number') return '';
    const details = report.details || {};
    let text = `${fmtBytes(report.file_size)} (${fmtInt(report.file_size)} bytes)`;
    if (Array.isArray(details.shards)) {
      text += ` in ${plural(details.shards.length, 'shard')}`;
      if (typeof details.index_size === 'number') text += `, plus the index (${fmtBytes(details.index_size)})`;
    } else if (report.format === 'huggingface' && details.weights) {
      text += `: ${details.weights}`;
    }
    return text;
  }
  function fmtShape(shape) { return Array.isArray(shape) ? `(${shape.join(', ')}${shape.length === 1 ? ',' : ''})` : ''; }

  /** document.createElement with a class, text and children. */
  function el(tag, options, ...children) {
    const node = document.createElement(tag);
    const o = options || {};
    if (o.className) node.className = o.className;
    if (o.text !== undefined) node.textContent = String(o.text);
    if (o.title) node.title = o.title;
    if (o.attrs) for (const [k, v] of Object.entries(o.attrs)) node.setAttribute(k, String(v));
    for (const child of children) if (child) node.append(child);
    return node;
  }

  function persist() {
    vscode.setState({
      filter: state.filter,
      sortKey: state.sortKey,
      sortDescending: state.sortDescending,
      grouped: state.grouped,
      expanded: [...state.expanded],
    });
  }

  function lastPart(pathText) {
    if (pathText === '(root)') return '(root)';
    const match = /\[([^\]]*)\]$/.exec(pathText);
    if (!match) return pathText;
    return match[1].replace(/^'(.*)'$/, '$1');
  }

  // ---------- header ----------
  function definitionList(entries) {
    const list = el('dl', { className: 'facts' });
    for (const [term, value, extraClass] of entries) {
      if (value === undefined || value === null || value === '') continue;
      list.append(el('dt', { text: term }));
      const dd = el('dd', { className: extraClass || '' });
      if (value instanceof Node) dd.append(value); else dd.textContent = String(value);
      list.append(dd);
    }
    return list;
  }

  function keyValueTable(object, caption) {
    const table = el('table', { className: 'kv' });
    table.append(el('caption', { text: caption }));
    const body = el('tbody');
    for (const [key, value] of Object.entries(object)) {
      body.append(el('tr', {}, el('th', { text: key, attrs: { scope: 'row' } }), el('td', { text: fmtValue(value) })));
    }
    table.append(body);
    return table;
  }

  function renderHeader(result, report) {
    const section = el('section', { className: 'header', attrs: { 'aria-label': 'Summary' } });
    const title = el('div', { className: 'title-row' },
      el('h1', { text: String(report.path || '').split(/[\\/]/).pop() || 'Checkpoint' }),
      el('span', { className: 'badge format', text: report.format }),
      result.cached ? el('span', { className: 'muted', text: 'cached' }) : null);
    const actions = el('div', { className: 'actions' });
    const compare = el('button', { text: 'Compare with a model…', attrs: { id: 'compare', type: 'button' } });
    compare.addEventListener('click', () => vscode.postMessage({ type: 'compare' }));
    const refresh = el('button', { className: 'secondary', text: 'Refresh', attrs: { id: 'refresh', type: 'button' } });
    refresh.addEventListener('click', () => vscode.postMessage({ type: 'refresh' }));
    // The conversions of this file (safetensors, extract, cast...), chosen in the editor's quick pick.
    const convert = el('button', { className: 'secondary', text: 'Convert…', attrs: { id: 'convert', type: 'button' } });
    convert.addEventListener('click', () => vscode.postMessage({ type: 'convert' }));
    actions.append(compare, convert, refresh);
    title.append(actions);
    section.append(title);

    const totals = report.totals || {};
    const byDtype = el('ul', { className: 'dtypes' });
    for (const [dtype, t] of Object.entries(totals.by_dtype || {})) {
      byDtype.append(el('li', { text: `${dtype}: ${fmtInt(t.elements)} in ${plural(t.tensors, 'tensor')} (${fmtBytes(t.bytes)})` }));
    }
    const cuda = state.tensors.filter((t) => typeof t.device === 'string' && t.device.startsWith('cuda'));
    const cudaText = cuda.length
      ? `${plural(cuda.length, 'tensor')} saved on ${[...new Set(cuda.map((t) => t.device))].join(', ')}: torch.load needs map_location='cpu' without a GPU`
      : '';
    const versions = result.versions && Object.entries(result.versions).filter(([, v]) => v).map(([k, v]) => `${k} ${v}`).join(', ');
    section.append(definitionList([
      ['Format', report.format],
      [sizeLabel(report), sizeText(report)],
      ['Tensors', fmtInt(totals.tensors)],
      ['Parameters', `${fmtInt(totals.elements)} elements, ${fmtBytes(totals.bytes)}`],
      ['By dtype', byDtype.childElementCount ? byDtype : ''],
      ['CUDA storages', cudaText, 'warning'],
      ['Versions', versions],
    ]));

    section.append(renderVerdict(result, report));

    if (Array.isArray(report.warnings) && report.warnings.length) {
      const list = el('ul', { className: 'warnings', attrs: { 'aria-label': 'Warnings' } });
      for (const w of report.warnings) list.append(el('li', { text: typeof w === 'string' ? w : JSON.stringify(w) }));
      section.append(list);
    }
    if (result.hparams && typeof result.hparams === 'object' && Object.keys(result.hparams).length) {
      section.append(keyValueTable(result.hparams, 'Hyper-parameters (Lightning)'));
    }
    if (result.metadata && typeof result.metadata === 'object' && Object.keys(result.metadata).length) {
      section.append(keyValueTable(result.metadata, 'safetensors __metadata__'));
    }
    return section;
  }

  function renderVerdict(result, report) {
    const box = el('div', { className: 'verdict', attrs: { id: 'verdict' } });
    const verdict = report.weights_only;
    if (!verdict) {
      box.classList.add('ok');
      // safetensors holds a JSON header and raw bytes: there is nothing to run.
      const files = Array.isArray(result.shards) ? result.shards.map((s) => String(s.file)) : [];
      const safetensors = /safetensors/.test(String(report.format))
        || (files.length > 0 && files.every((f) => f.endsWith('.safetensors')));
      box.append(el('p', { text: safetensors
        ? 'safetensors: no pickle, nothing in it can run code when loaded.'
        : 'No pickle verdict for this file.' }));
    } else {
      box.classList.add(verdict.accepted ? 'ok' : 'danger');
      box.append(el('p', { className: 'verdict-line', text: `${verdict.accepted ? '✓' : '✗'} ${verdict.reason}` }));
    }
    const globals = Array.isArray(report.globals) ? report.globals : [];
    if (globals.length) {
      const list = el('ul', { className: 'globals', attrs: { 'aria-label': 'Globals the pickle names' } });
      for (const g of globals) {
        const runs = !g.weights_only_allowed || g.dangerous;
        list.append(el('li', { className: runs ? 'runs-code' : 'allowed' },
          el('code', { text: g.name }),
          el('span', { className: `badge ${runs ? 'bad' : 'good'}`, text: runs ? 'runs code' : 'allowed' }),
          g.count > 1 ? el('span', { className: 'muted', text: `×${g.count}` }) : null));
      }
      box.append(el('p', { className: 'muted', text: 'Globals the pickle names (torch.load imports and calls them):' }), list);
    }
    return box;
  }

  // ---------- shards ----------
  function renderShards(result) {
    const shards = Array.isArray(result.shards) ? result.shards : null;
    const problems = Array.isArray(result.shard_problems) ? result.shard_problems : [];
    if (!shards && !problems.length) return null;
    const section = el('section', { className: 'shards', attrs: { 'aria-label': 'Shards' } });
    section.append(el('h2', { text: shards ? `Shards (${shards.length})` : 'Shards' }));
    if (shards) {
      const table = el('table', { className: 'kv' });
      const body = el('tbody');
      for (const shard of shards) {
        body.append(el('tr', {}, el('th', { text: shard.file, attrs: { scope: 'row' } }),
          el('td', { text: `${plural(shard.tensors, 'tensor')}, ${fmtBytes(shard.bytes)}` })));
      }
      table.append(body);
      section.append(table);
    }
    if (problems.length) {
      const list = el('ul', { className: 'problems', attrs: { id: 'shard-problems', 'aria-label': 'Shard problems' } });
      for (const p of problems) list.append(el('li', { text: p }));
      section.append(list);
    } else if (shards) {
      section.append(el('p', { className: 'muted', text: 'The index and the shards agree.' }));
    }
    return section;
  }

  // ---------- container tree ----------
  function renderTree(report) {
    const tree = report.tree;
    if (!tree) return null;
    const bytesByContainer = new Map();
    for (const t of state.tensors) bytesByContainer.set(t.container, (bytesByContainer.get(t.container) || 0) + (t.bytes || 0));
    const nodeBytes = (node) => {
      let total = 0;
      for (const [container, bytes] of bytesByContainer) {
        if (node.path === '(root)' || container === node.path || container.startsWith(node.path)) total += bytes;
      }
      return total;
    };
    const section = el('section', { className: 'tree', attrs: { 'aria-label': 'Container tree' } });
    section.append(el('h2', { text: 'Contents' }));
    const build = (node, depth) => {
      const details = el('details', { className: 'node' });
      if (depth < 2) details.open = true;
      const label = lastPart(node.path);
      const facts = [`${node.type}`, plural(node.items, 'item')];
      if (node.tensors) facts.push(plural(node.tensors, 'tensor'), fmtBytes(typeof node.bytes === 'number' ? node.bytes : nodeBytes(node)));
      details.append(el('summary', { attrs: { 'data-path': node.path } },
        el('span', { className: 'node-name', text: label }),
        el('span', { className: 'muted', text: ` ${facts.join(' · ')}` })));
      if (node.values && Object.keys(node.values).length) {
        const values = el('ul', { className: 'values' });
        for (const [key, value] of Object.entries(node.values)) {
          values.append(el('li', {}, el('span', { className: 'value-key', text: key }), el('span', { className: 'value', text: ` ${fmtValue(value)}` })));
        }
        details.append(values);
      }
      for (const child of node.children || []) details.append(build(child, depth + 1));
      if (node.more_children) details.append(el('p', { className: 'muted', text: `… ${fmtInt(node.more_children)} more not listed` }));
      return details;
    };
    section.append(build(tree, 0));
    return section;
  }

  // ---------- compare ----------
  function renderCompare() {
    const holder = document.getElementById('compare-result');
    if (!holder) return;
    holder.replaceChildren();
    const c = state.compare;
    if (!c) { holder.hidden = true; return; }
    holder.hidden = false;
    const r = c.result || {};
    holder.append(el('h2', { text: `Compared with ${c.target}` }));
    if (typeof r.error === 'string') {
      holder.append(el('p', { className: 'error', text: r.error }));
      return;
    }
    if (r.summary) holder.append(el('p', { className: 'summary', text: r.summary }));
    const missing = Array.isArray(r.missing) ? r.missing : [];
    const unexpected = Array.isArray(r.unexpected) ? r.unexpected : [];
    const mismatched = Array.isArray(r.mismatched) ? r.mismatched : [];
    holder.append(definitionList([
      ['Matched', fmtInt(r.matched)],
      ['Missing', fmtInt(missing.length), missing.length ? 'warning' : ''],
      ['Unexpected', fmtInt(unexpected.length), unexpected.length ? 'warning' : ''],
      ['Shape mismatched', fmtInt(mismatched.length), mismatched.length ? 'warning' : ''],
      ['Container', r.container ? r.container : r.container === '' ? '(root)' : ''],
      ['Prefix', r.prefix ? `checkpoint keys start with "${r.prefix.checkpoint}", the model's with "${r.prefix.model}"` : 'none'],
    ]));
    if (Array.isArray(r.fixes) && r.fixes.length) {
      const fixes = el('ul', { className: 'fixes', attrs: { 'aria-label': 'Fixes' } });
      for (const f of r.fixes) fixes.append(el('li', { text: f }));
      holder.append(fixes);
    }
    const keyList = (title, keys, line) => {
      if (!keys.length) return;
      const details = el('details', { className: 'keys' });
      details.append(el('summary', { text: `${title} (${fmtInt(keys.length)})` }));
      const list = el('ul');
      for (const k of keys.slice(0, 500)) list.append(el('li', { text: line(k) }));
      if (keys.length > 500) list.append(el('li', { className: 'muted', text: `… ${fmtInt(keys.length - 500)} more` }));
      details.append(list);
      holder.append(details);
    };
    keyList('Missing in the checkpoint', missing, (k) => k);
    keyList('Unexpected in the checkpoint', unexpected, (k) => k);
    keyList('Shape mismatched', mismatched, (m) => `${m.key}: checkpoint ${fmtShape(m.checkpoint)}, model ${fmtShape(m.model)}`);
  }

  // ---------- tensor table ----------
  const COLUMNS = [
    { key: 'name', title: 'Name', width: 'minmax(16em, 3fr)' },
    { key: 'container', title: 'Container', width: 'minmax(6em, 1fr)', optional: (ts) => new Set(ts.map((t) => t.container)).size > 1 },
    { key: 'dtype', title: 'dtype', width: '7em' },
    { key: 'shape', title: 'Shape', width: 'minmax(8em, 1fr)' },
    { key: 'numel', title: 'Elements', width: '8em', numeric: true },
    { key: 'bytes', title: 'Bytes', width: '7em', numeric: true },
    { key: 'shared', title: 'Shared with', width: 'minmax(6em, 1fr)', optional: (ts) => ts.some((t) => t.shared_with) },
    { key: 'shard', title: 'Shard', width: 'minmax(8em, 1fr)', optional: (ts) => ts.some((t) => t.shard) },
  ];

  function sortValue(t, key) {
    switch (key) {
      case 'name': return t.key;
      case 'container': return t.container || '';
      case 'dtype': return t.dtype || '';
      case 'shape': return Array.isArray(t.shape) ? t.shape.length * 1e15 + t.numel : 0;
      case 'numel': return t.numel || 0;
      case 'bytes': return t.bytes || 0;
      case 'shared': return t.shared_with || '';
      case 'shard': return t.shard || '';
      default: return 0;
    }
  }

  function computeOrder() {
    const n = state.tensors.length;
    const order = new Array(n);
    for (let i = 0; i < n; i += 1) order[i] = i;
    if (state.sortKey !== 'index') {
      const key = state.sortKey;
      const values = state.tensors.map((t) => sortValue(t, key));
      const sign = state.sortDescending ? -1 : 1;
      const text = typeof values[0] === 'string';
      order.sort((a, b) => {
        const va = values[a];
        const vb = values[b];
        const c = text ? (va < vb ? -1 : va > vb ? 1 : 0) : va - vb;
        return c !== 0 ? sign * c : a - b;
      });
    }
    state.order = order;
  }

  /** A test for the filter box: a glob (`*`, `?`, `[...]`, whole name) or else a substring, both ignoring case. */
  function matcher(text) {
    const wanted = text.trim().toLowerCase();
    if (!wanted) return null;
    if (GLOB.test(wanted)) {
      let source = '';
      for (let i = 0; i < wanted.length; i += 1) {
        const ch = wanted[i];
        if (ch === '*') source += '.*';
        else if (ch === '?') source += '.';
        else if (ch === '[') {
          const end = wanted.indexOf(']', i + 1);
          if (end < 0) { source += '\\['; continue; }
          let body = wanted.slice(i + 1, end).replace(/\\/g, '\\\\');
          if (body.startsWith('!')) body = `^${body.slice(1)}`;
          source += `[${body}]`;
          i = end;
        } else source += ch.replace(/[.+^${}()|\\/]/g, '\\$&');
      }
      try {
        const pattern = new RegExp(`^${source}$`);
        return (key) => pattern.test(key);
      } catch {
        state.filterError = 'not a valid pattern';
        return () => false;
      }
    }
    return (key) => key.includes(wanted);
  }

  function computeItems() {
    state.filterError = '';
    const test = matcher(state.filter);
    const keys = state.lowerKeys;
    let visible;
    if (!test) visible = state.order;
    else {
      visible = [];
      for (const i of state.order) if (test(keys[i])) visible.push(i);
    }
    state.visibleCount = visible.length;
    if (!state.grouped) {
      state.items = visible;
      state.groups = [];
      return;
    }
    // A trie on the dotted names; a group shows where more than one tensor shares a prefix.
    const root = { prefix: '', entries: [], children: new Map(), count: 0, bytes: 0 };
    for (const i of visible) {
      const t = state.tensors[i];
      const parts = t.key.split('.');
      let node = root;
      node.count += 1;
      node.bytes += t.bytes || 0;
      for (let p = 0; p < parts.length - 1; p += 1) {
        let child = node.children.get(parts[p]);
        if (!child) {
          child = { prefix: node.prefix ? `${node.prefix}.${parts[p]}` : parts[p], entries: [], children: new Map(), count: 0, bytes: 0 };
          node.children.set(parts[p], child);
          node.entries.push(child);
        }
        node = child;
        node.count += 1;
        node.bytes += t.bytes || 0;
      }
      node.entries.push(i);
    }
    const items = [];
    const groups = [];
    const firstTensor = (node) => {
      let n = node;
      for (;;) {
        const e = n.entries[0];
        if (typeof e === 'number') return e;
        n = e;
      }
    };
    const flatten = (node, depth) => {
      for (const entry of node.entries) {
        if (typeof entry === 'number') { items.push(entry); continue; }
        if (entry.count === 1) { items.push(firstTensor(entry)); continue; }
        groups.push({ prefix: entry.prefix, count: entry.count, bytes: entry.bytes, depth });
        items.push(-groups.length);
        if (state.expanded.has(entry.prefix)) flatten(entry, depth + 1);
      }
    };
    flatten(root, 0);
    state.items = items;
    state.groups = groups;
  }

  let table = null; // the DOM of the table, built once per report

  function renderTable() {
    const section = el('section', { className: 'tensors', attrs: { 'aria-label': 'Tensors' } });
    section.append(el('h2', { text: 'Tensors' }));
    const toolbar = el('div', { className: 'toolbar' });
    const filter = /** @type {HTMLInputElement} */ (el('input', {
      attrs: { id: 'filter', type: 'search', placeholder: 'Filter: substring or glob (layer4.*, *.bias)', 'aria-label': 'Filter tensors by name', spellcheck: 'false' },
    }));
    filter.value = state.filter;
    const group = /** @type {HTMLInputElement} */ (el('input', { attrs: { id: 'group', type: 'checkbox' } }));
    group.checked = state.grouped;
    const count = el('span', { className: 'count', attrs: { id: 'count', role: 'status', 'aria-live': 'polite' } });
    toolbar.append(filter, el('label', { className: 'check' }, group, document.createTextNode(' Group by prefix')), count);
    section.append(toolbar);

    state.columns = COLUMNS.filter((c) => !c.optional || c.optional(state.tensors));
    const template = state.columns.map((c) => c.width).join(' ');
    const grid = el('div', { className: 'grid', attrs: { role: 'grid', 'aria-label': 'Tensors', 'aria-rowcount': String(state.tensors.length + 1) } });
    const head = el('div', { className: 'row head', attrs: { role: 'row' } });
    head.style.gridTemplateColumns = template;
    for (const column of state.columns) {
      const button = el('button', { className: 'sort', text: column.title, attrs: { type: 'button', 'data-key': column.key } });
      const cell = el('div', { className: `cell${column.numeric ? ' numeric' : ''}`, attrs: { role: 'columnheader' } }, button);
      button.addEventListener('click', () => sortBy(column.key));
      head.append(cell);
    }
    const viewport = el('div', { className: 'viewport', attrs: { id: 'viewport', tabindex: '-1' } });
    const spacer = el('div', { className: 'spacer' });
    const rows = el('div', { className: 'rows', attrs: { role: 'rowgroup', id: 'rows' } });
    spacer.append(rows);
    viewport.append(spacer);
    grid.append(head, viewport);
    section.append(grid);
    table = { section, filter, group, count, head, viewport, spacer, rows, template };

    filter.addEventListener('input', () => {
      state.filter = filter.value;
      state.focused = 0;
      refreshItems();
      viewport.scrollTop = 0;
      drawRows();
      persist();
    });
    filter.addEventListener('keydown', (event) => {
      if (event.key === 'ArrowDown' && state.items.length) { event.preventDefault(); focusItem(0); }
    });
    group.addEventListener('change', () => {
      state.grouped = group.checked;
      state.focused = 0;
      refreshItems();
      drawRows();
      persist();
    });
    viewport.addEventListener('scroll', () => drawRows(), { passive: true });
    rows.addEventListener('click', onRowClick);
    rows.addEventListener('keydown', onRowKey);
    // Focus that arrives by Tab or by a click on a cell moves the keyboard position with it.
    rows.addEventListener('focusin', (event) => {
      const row = /** @type {HTMLElement} */ (event.target).closest('.row');
      if (!row) return;
      state.focused = Number(row.getAttribute('data-position'));
      for (const other of rows.children) other.setAttribute('tabindex', other === row ? '0' : '-1');
    });
    return section;
  }

  function refreshItems() {
    computeItems();
    const total = state.tensors.length;
    const shown = state.visibleCount;
    if (table) {
      table.count.textContent = state.filterError
        ? state.filterError
        : shown === total ? plural(total, 'tensor') : `${fmtInt(shown)} of ${plural(total, 'tensor')}`;
      table.spacer.style.height = `${state.items.length * ROW_HEIGHT}px`;
      for (const button of table.head.querySelectorAll('button.sort')) {
        const key = button.getAttribute('data-key');
        const cell = /** @type {HTMLElement} */ (button.parentElement);
        const sorted = key === state.sortKey;
        cell.setAttribute('aria-sort', sorted ? (state.sortDescending ? 'descending' : 'ascending') : 'none');
        button.textContent = `${COLUMNS.find((c) => c.key === key)?.title ?? key}${sorted ? (state.sortDescending ? ' ▼' : ' ▲') : ''}`;
      }
    }
  }

  function sortBy(key) {
    if (state.sortKey === key) {
      if (state.sortDescending) { state.sortKey = 'index'; state.sortDescending = false; } else state.sortDescending = true;
    } else {
      state.sortKey = key;
      state.sortDescending = false;
    }
    computeOrder();
    refreshItems();
    drawRows();
    persist();
  }

  function cellText(t, key) {
    switch (key) {
      case 'name': return t.key;
      case 'container': return lastPart(t.container || '(root)');
      case 'dtype': return t.dtype;
      case 'shape': return fmtShape(t.shape);
      case 'numel': return fmtInt(t.numel);
      case 'bytes': return fmtBytes(t.bytes);
      case 'shared': return t.shared_with || '';
      case 'shard': return t.shard || '';
      default: return '';
    }
  }

  function drawRows() {
    if (!table) return;
    const { viewport, rows } = table;
    const height = viewport.clientHeight || 400;
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(state.items.length, Math.ceil((viewport.scrollTop + height) / ROW_HEIGHT) + OVERSCAN);
    rows.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    const fragment = document.createDocumentFragment();
    for (let position = first; position < last; position += 1) fragment.append(buildRow(position));
    const hadFocus = rows.contains(document.activeElement);
    rows.replaceChildren(fragment);
    // One row is always reachable with Tab, even when the focused one has scrolled away.
    if (!rows.querySelector('[tabindex="0"]')) rows.firstElementChild?.setAttribute('tabindex', '0');
    if (hadFocus) {
      const row = rows.querySelector(`[data-position="${state.focused}"]`);
      if (row instanceof HTMLElement) row.focus({ preventScroll: true });
    }
  }

  function buildRow(position) {
    const item = state.items[position];
    const row = el('div', {
      className: 'row',
      attrs: { role: 'row', 'data-position': position, tabindex: position === state.focused ? '0' : '-1', 'aria-rowindex': position + 2 },
    });
    row.style.gridTemplateColumns = table.template;
    if (item < 0) {
      const g = state.groups[-item - 1];
      const open = state.expanded.has(g.prefix);
      row.classList.add('group');
      row.setAttribute('aria-expanded', String(open));
      row.setAttribute('aria-level', String(g.depth + 1));
      const name = el('div', { className: 'cell name', attrs: { role: 'gridcell' } },
        el('span', { className: `indent d${Math.min(g.depth, 12)}` }),
        el('span', { className: 'twisty', text: open ? '▾' : '▸' }),
        el('span', { className: 'key', text: `${g.prefix}.*` }));
      row.append(name);
      for (const column of state.columns.slice(1)) {
        let text = '';
        if (column.key === 'numel') text = plural(g.count, 'tensor');
        if (column.key === 'bytes') text = fmtBytes(g.bytes);
        row.append(el('div', { className: `cell${column.numeric ? ' numeric' : ''}`, text, attrs: { role: 'gridcell' } }));
      }
      return row;
    }
    const t = state.tensors[item];
    row.setAttribute('data-key', t.key);
    for (const column of state.columns) {
      const cell = el('div', { className: `cell${column.numeric ? ' numeric' : ''}${column.key === 'name' ? ' name' : ''}`, attrs: { role: 'gridcell' } });
      if (column.key === 'name') {
        if (state.grouped) cell.append(el('span', { className: `indent d${Math.min(depthOf(position), 12)}` }));
        cell.append(el('span', { className: 'key', text: t.key, title: t.key }));
        cell.append(el('button', { className: 'copy', text: 'Copy', title: `Copy ${t.key}`, attrs: { type: 'button', tabindex: '-1', 'aria-label': `Copy the name ${t.key}` } }));
      } else {
        cell.textContent = cellText(t, column.key);
        if (column.key === 'bytes') cell.title = `${fmtInt(t.bytes)} bytes`;
        if (column.key === 'dtype' && t.device && t.device !== 'cpu') cell.title = t.device;
        if (column.key === 'shard' || column.key === 'shared' || column.key === 'container') cell.title = cell.textContent;
      }
      row.append(cell);
    }
    if (t.device && t.device.startsWith('cuda')) row.classList.add('cuda');
    return row;
  }

  // The depth of a tensor row in the grouped list: one more than the group row above it at its level.
  function depthOf(position) {
    const key = state.tensors[state.items[position]].key;
    let depth = 0;
    for (let p = position - 1; p >= 0; p -= 1) {
      const item = state.items[p];
      if (item < 0) {
        const g = state.groups[-item - 1];
        if (key.startsWith(`${g.prefix}.`)) { depth = g.depth + 1; break; }
      }
    }
    return depth;
  }

  function focusItem(position) {
    if (!table || !state.items.length) return;
    const p = Math.max(0, Math.min(state.items.length - 1, position));
    state.focused = p;
    const { viewport } = table;
    const top = p * ROW_HEIGHT;
    if (top < viewport.scrollTop) viewport.scrollTop = top;
    else if (top + ROW_HEIGHT > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = top + ROW_HEIGHT - viewport.clientHeight;
    drawRows();
    const row = table.rows.querySelector(`[data-position="${p}"]`);
    if (row instanceof HTMLElement) row.focus({ preventScroll: true });
  }

  function toggleGroup(position, open) {
    const item = state.items[position];
    if (item === undefined || item >= 0) return false;
    const g = state.groups[-item - 1];
    const isOpen = state.expanded.has(g.prefix);
    const want = open === undefined ? !isOpen : open;
    if (want === isOpen) return false;
    if (want) state.expanded.add(g.prefix); else state.expanded.delete(g.prefix);
    refreshItems();
    state.focused = state.items.findIndex((i) => i < 0 && state.groups[-i - 1].prefix === g.prefix);
    focusItem(state.focused);
    persist();
    return true;
  }

  function copy(position) {
    const item = state.items[position];
    if (item === undefined) return;
    const text = item < 0 ? `${state.groups[-item - 1].prefix}.` : state.tensors[item].key;
    vscode.postMessage({ type: 'copy', text });
  }

  function onRowClick(event) {
    const target = /** @type {HTMLElement} */ (event.target);
    const row = target.closest('.row');
    if (!row) return;
    const position = Number(row.getAttribute('data-position'));
    state.focused = position;
    if (target.closest('button.copy')) { copy(position); return; }
    if (row.classList.contains('group')) { toggleGroup(position); return; }
    focusItem(position);
  }

  function onRowKey(event) {
    const page = Math.max(1, Math.floor((table?.viewport.clientHeight || 400) / ROW_HEIGHT) - 1);
    const p = state.focused;
    switch (event.key) {
      case 'ArrowDown': focusItem(p + 1); break;
      case 'ArrowUp': if (p === 0) table?.filter.focus(); else focusItem(p - 1); break;
      case 'PageDown': focusItem(p + page); break;
      case 'PageUp': focusItem(p - page); break;
      case 'Home': focusItem(0); break;
      case 'End': focusItem(state.items.length - 1); break;
      case 'ArrowRight': toggleGroup(p, true); break;
      case 'ArrowLeft': {
        if (!toggleGroup(p, false) && state.grouped) {
          // On a tensor or a closed group: to the group above it.
          const item = state.items[p];
          const key = item < 0 ? state.groups[-item - 1].prefix : state.tensors[item].key;
          for (let q = p - 1; q >= 0; q -= 1) {
            const above = state.items[q];
            if (above < 0 && key.startsWith(`${state.groups[-above - 1].prefix}.`)) { focusItem(q); break; }
          }
        }
        break;
      }
      case 'Enter': case ' ': if (!toggleGroup(p)) return; break;
      case 'c': case 'C':
        if (!(event.ctrlKey || event.metaKey)) return;
        copy(p);
        break;
      default: return;
    }
    event.preventDefault();
  }

  // ---------- two checkpoints compared (torchls/diff) ----------
  function renderDiff(result, withValues) {
    table = null;
    if (typeof result.error === 'string') { showStatus(result.error, 'error'); return; }
    const name = (side) => String(side?.path || '').split(/[\\/]/).pop();
    const section = el('section', { className: 'header diff', attrs: { 'aria-label': 'Comparison of two checkpoints' } });
    const title = el('div', { className: 'title-row' }, el('h1', { text: `${name(result.a)} ↔ ${name(result.b)}` }));
    const actions = el('div', { className: 'actions' });
    if (!withValues) {
      const values = el('button', { text: 'Compare values', attrs: { id: 'diff-values', type: 'button' } });
      values.addEventListener('click', () => vscode.postMessage({ type: 'values' }));
      actions.append(values);
    }
    const refresh = el('button', { className: 'secondary', text: 'Refresh', attrs: { id: 'refresh', type: 'button' } });
    refresh.addEventListener('click', () => vscode.postMessage({ type: withValues ? 'values' : 'refresh' }));
    actions.append(refresh);
    title.append(actions);
    section.append(title);
    section.append(el('p', { className: `summary verdict ${result.same_tensors ? 'ok' : 'danger'}`, attrs: { id: 'diff-summary' }, text: result.summary || '' }));
    const side = (s) => (s ? `${s.path} (${s.format}${s.container ? `, ${s.container}` : ''}): ${plural(s.tensors, 'tensor')}, ${fmtBytes(s.bytes)}` : '');
    const list = (items) => (Array.isArray(items) ? items : []);
    const renamed = result.renamed;
    section.append(definitionList([
      ['A', side(result.a)],
      ['B', side(result.b)],
      ['Unchanged', fmtInt(result.unchanged)],
      ['Added in B', fmtInt(list(result.added).length), list(result.added).length ? 'warning' : ''],
      ['Removed in B', fmtInt(list(result.removed).length), list(result.removed).length ? 'warning' : ''],
      ['Renamed', renamed ? `${plural(renamed.tensors, 'tensor')}: "${renamed.a_prefix}" in A is "${renamed.b_prefix}" in B` : 'none'],
      ['Shape changed', fmtInt(list(result.shape_changed).length), list(result.shape_changed).length ? 'warning' : ''],
      ['dtype changed', fmtInt(list(result.dtype_changed).length), list(result.dtype_changed).length ? 'warning' : ''],
    ]));
    const keyList = (heading, items, line, open) => {
      if (!items.length) return;
      const details = el('details', { className: 'keys' });
      details.open = open;
      details.append(el('summary', { text: `${heading} (${fmtInt(items.length)})` }));
      const ul = el('ul');
      for (const item of items.slice(0, 1000)) ul.append(el('li', { text: line(item) }));
      if (items.length > 1000) ul.append(el('li', { className: 'muted', text: `… ${fmtInt(items.length - 1000)} more` }));
      details.append(ul);
      section.append(details);
    };
    const str = (x) => (typeof x === 'string' ? x : JSON.stringify(x));
    const figure = (x) => (typeof x !== 'number' ? '—' : x === 0 ? '0' : x.toPrecision(4));
    keyList('Shape changed', list(result.shape_changed), (c) => `${c.key}: ${fmtShape(c.a)} → ${fmtShape(c.b)}`, true);
    keyList('dtype changed', list(result.dtype_changed), (c) => `${c.key}: ${c.a} → ${c.b}`, true);
    keyList('Added in B', list(result.added), str, false);
    keyList('Removed in B', list(result.removed), str, false);
    keyList('Metadata changed', list(result.metadata_changed), str, true);
    if (Array.isArray(result.values)) {
      const rows = [...result.values].sort((x, y) => (y.rel_norm ?? 0) - (x.rel_norm ?? 0));
      const changed = rows.filter((v) => v.max_abs_diff !== 0);
      const tableEl = el('table', { className: 'kv values-table', attrs: { id: 'diff-values-table' } });
      tableEl.append(el('caption', { text: `Values: ${plural(changed.length, 'tensor')} of ${fmtInt(rows.length)} differ` }));
      tableEl.append(el('thead', {}, el('tr', {}, el('th', { text: 'Tensor' }), el('th', { text: 'max |A − B|' }), el('th', { text: '‖A − B‖ / ‖A‖' }))));
      const body = el('tbody');
      for (const v of rows.slice(0, 2000)) {
        body.append(el('tr', { className: v.max_abs_diff === 0 ? 'muted' : '' },
          el('th', { text: v.key, attrs: { scope: 'row' } }),
          el('td', { className: 'numeric', text: figure(v.max_abs_diff) }),
          el('td', { className: 'numeric', text: figure(v.rel_norm) })));
      }
      tableEl.append(body);
      section.append(tableEl);
    }
    app.replaceChildren(section);
    app.setAttribute('aria-busy', 'false');
  }

  // ---------- page ----------
  function showStatus(text, className) {
    app.setAttribute('aria-busy', 'false');
    app.replaceChildren(el('p', { className: `status ${className || ''}`, text, attrs: { role: 'status' } }));
  }

  // The server sends the table as rows (one array per tensor, columns named once): a third of
  // the JSON of one object per tensor for 50,000 tensors. Objects again here, once.
  const OPTIONAL_COLUMNS = new Set(['subclass', 'shard', 'shared_with']);
  function tensorsOf(result, report) {
    const columns = result.tensor_columns;
    if (!Array.isArray(result.tensor_rows) || !Array.isArray(columns)) {
      return Array.isArray(report.tensors) ? report.tensors : [];
    }
    return result.tensor_rows.map((row) => {
      const tensor = {};
      for (let i = 0; i < columns.length && i < row.length; i++) {
        if (row[i] !== null || !OPTIONAL_COLUMNS.has(columns[i])) tensor[columns[i]] = row[i];
      }
      return tensor;
    });
  }

  function render(result, canReopen) {
    state.result = result;
    if (typeof result.error === 'string') {
      table = null;
      showStatus(result.error, 'error');
      if (canReopen) {
        // Not a checkpoint after all (a .bin is often something else): back to VS Code's editor.
        const reopen = el('button', { className: 'secondary', text: 'Open in the text editor', attrs: { id: 'reopen-text', type: 'button' } });
        reopen.addEventListener('click', () => vscode.postMessage({ type: 'reopenText' }));
        app.append(reopen);
      }
      return;
    }
    const report = result.report;
    state.report = report;
    state.tensors = tensorsOf(result, report);
    state.lowerKeys = state.tensors.map((t) => String(t.key).toLowerCase());
    computeOrder();
    const parts = [
      renderHeader(result, report),
      el('section', { className: 'compare', attrs: { id: 'compare-result', 'aria-label': 'Comparison with a model', 'aria-live': 'polite' } }),
      renderShards(result),
      renderTree(report),
      renderTable(),
    ];
    app.replaceChildren(...parts.filter(Boolean));
    app.setAttribute('aria-busy', 'false');
    renderCompare();
    refreshItems();
    drawRows();
  }

  window.addEventListener('message', (event) => {
    const message = event.data;
    if (!message || typeof message !== 'object') return;
    if (message.type === 'loading') {
      app.setAttribute('aria-busy', 'true');
      if (!state.result) showStatus('Reading the checkpoint…');
      const busy = document.getElementById('diff-values');
      if (busy) { busy.textContent = 'Comparing values…'; busy.setAttribute('disabled', 'true'); }
    } else if (message.type === 'report') {
      render(message.result || { error: 'No answer from the torchls server.' }, message.canReopen === true);
    } else if (message.type === 'diff') {
      state.result = message.result;
      renderDiff(message.result || { error: 'No answer from the torchls server.' }, Boolean(message.values));
    } else if (message.type === 'compare') {
      state.compare = { target: message.target, result: message.result };
      renderCompare();
      document.getElementById('compare-result')?.scrollIntoView({ block: 'nearest' });
    }
  });
  window.addEventListener('resize', () => drawRows());
  // Desktop VS Code turns Ctrl+C in a webview into a copy command: answer it with the focused name.
  document.addEventListener('copy', (event) => {
    const active = document.activeElement;
    if (!(active instanceof HTMLElement) || !active.closest('#rows') || String(window.getSelection() || '')) return;
    const item = state.items[state.focused];
    if (item === undefined || !event.clipboardData) return;
    event.clipboardData.setData('text/plain', item < 0 ? `${state.groups[-item - 1].prefix}.` : state.tensors[item].key);
    event.preventDefault();
  });

  vscode.postMessage({ type: 'ready' });
}());
