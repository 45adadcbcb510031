// The model report's page. It gets the language server's `torchls/modelReport` answer from the
// extension (postMessage) and draws it: the whole module tree as a collapsible table (repeated
// sibling blocks folded into one row), a filter that keeps the ancestors of what it matches,
// columns sorted within each parent, the heaviest layers, thop's figure, training memory, and
// cost against input size as a table and an SVG plot coloured by the theme. No network, no eval,
// no inline style: the Content-Security-Policy allows this file and report.css only.
(function () {
  'use strict';

  // @ts-ignore acquireVsCodeApi is given by the webview host
  const vscode = acquireVsCodeApi();
  const saved = vscode.getState() || {};
  const state = {
    result: null,
    gpuMemoryGB: 24,
    roots: [], // the tree: nodes {id, kind: 'module' | 'group', row | group fields, children, depth}
    nodes: [], // every node, pre-order
    modules: 0, // module rows (the server's rows)
    filter: typeof saved.filter === 'string' ? saved.filter : '',
    sortKey: typeof saved.sortKey === 'string' ? saved.sortKey : '',
    sortDescending: saved.sortDescending !== false,
    expanded: null, // Set of node ids opened; made on the first report
    focused: '',
  };

  const app = /** @type {HTMLElement} */ (document.getElementById('app'));

  // ---------- formatting ----------
  const number = new Intl.NumberFormat('en-US');
  function fmtInt(n) { return typeof n === 'number' ? number.format(n) : '—'; }
  /** 20.2 K, 25.6 M, 4.09 G: three significant digits, as the hover writes them. */
  function fmtCount(n) {
    if (typeof n !== 'number') return '—';
    for (const [limit, suffix] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'K']]) {
      if (Math.abs(n) >= limit) {
        const scaled = n / limit;
        return `${Math.abs(scaled) < 100 ? String(Number(scaled.toPrecision(3))) : scaled.toFixed(0)} ${suffix}`;
      }
    }
    return n.toFixed(0);
  }
  function fmtBytes(n) {
    if (typeof n !== 'number') return '—';
    for (const [limit, suffix] of [[2 ** 40, 'TiB'], [2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB']]) {
      if (Math.abs(n) >= limit) {
        const scaled = n / limit;
        return `${scaled < 100 ? String(Number(scaled.toPrecision(3))) : scaled.toFixed(0)} ${suffix}`;
      }
    }
    return `${n.toFixed(0)} B`;
  }
  function fmtShare(share) {
    if (typeof share !== 'number') return '—';
    const percent = share * 100;
    return `${percent >= 10 || percent === 0 ? percent.toFixed(1) : percent.toPrecision(2)}%`;
  }
  function fmtShape(shape) {
    if (typeof shape === 'string') return shape;
    if (!Array.isArray(shape)) return '';
    if (shape.length && Array.isArray(shape[0])) return `(${shape.map(fmtShape).join(', ')})`;
    return `(${shape.join(', ')}${shape.length === 1 ? ',' : ''})`;
  }
  /** A sentence whose `backticked` parts are code, as the server writes them (never HTML). */
  function rich(tag, cls, text) {
    const node = el(tag, { cls });
    String(text).split('`').forEach((part, i) => { if (part) node.append(i % 2 ? el('code', { text: part }) : document.createTextNode(part)); });
    return node;
  }
  function plural(n, word) { return `${fmtInt(n)} ${word}${n === 1 ? '' : 's'}`; }

  /** document.createElement with a class, text, attributes and children. */
  function el(tag, options, ...children) {
    const node = document.createElement(tag);
    const { cls, text, title, attrs } = options || {};
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (title) node.title = title;
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    for (const child of children) if (child) node.append(child);
    return node;
  }
  const SVG = 'http://www.w3.org/2000/svg';
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function persist() {
    vscode.setState({ filter: state.filter, sortKey: state.sortKey, sortDescending: state.sortDescending });
  }

  // ---------- the tree ----------
  /** Nodes from the server's pre-order rows (each with its depth), then runs of repeated
   * siblings folded into one group node holding them. */
  function buildTree(rows) {
    const roots = [];
    const stack = [];
    rows.forEach((row, index) => {
      const node = { id: `m${index}`, kind: 'module', row, children: [], depth: row.depth };
      while (stack.length && stack[stack.length - 1].depth >= row.depth) stack.pop();
      (stack.length ? stack[stack.length - 1].children : roots).push(node);
      stack.push(node);
    });
    const fold = (children) => {
      const out = [];
      for (let i = 0; i < children.length;) {
        const first = children[i];
        const repeat = first.row.repeat;
        if (repeat && typeof repeat.count === 'number' && repeat.count >= 2) {
          const members = [first];
          let j = i + 1;
          while (j < children.length && members[members.length - 1].row.path !== repeat.last) {
            members.push(children[j]);
            j += 1;
          }
          out.push({
            id: `g${first.id}`, kind: 'group', label: repeat.label, count: members.length, type: first.row.type,
            depth: first.depth, children: members, row: first.row,
          });
          i = j;
        } else {
          out.push(first);
          i += 1;
        }
      }
      for (const node of out) {
        // A group's members are already folded at this level: fold below each of them.
        if (node.kind === 'group') for (const member of node.children) member.children = fold(member.children);
        else node.children = fold(node.children);
      }
      return out;
    };
    return fold(roots);
  }

  /** A node's values in the table's columns; a group sums its members. */
  function values(node) {
    if (node.values) return node.values;
    if (node.kind === 'module') {
      const r = node.row;
      node.values = {
        path: r.path === '' ? '(model)' : r.path, type: r.type, output: r.output, params: r.params,
        trainable: r.trainable, macs: r.macs, share: r.share, calls: r.calls,
      };
    } else {
      const sum = (key) => node.children.reduce((total, child) => total + (typeof values(child)[key] === 'number' ? values(child)[key] : 0), 0);
      node.values = {
        path: node.label, type: `${node.count} × ${node.type}`, output: values(node.children[node.children.length - 1]).output,
        params: sum('params'), trainable: sum('trainable'), macs: sum('macs'), share: sum('share'), calls: sum('calls'),
      };
    }
    return node.values;
  }

  function walk(nodes, visit, parent = null) {
    for (const node of nodes) {
      visit(node, parent);
      walk(node.children, visit, node);
    }
  }

  /** Which nodes the filter keeps: those matching (path or type) and their ancestors. */
  function filtered() {
    const text = state.filter.trim().toLowerCase();
    if (!text) return null;
    const keep = new Set();
    const matched = new Set();
    const visit = (node, ancestors) => {
      const v = values(node);
      const hit = String(v.path).toLowerCase().includes(text) || String(node.kind === 'group' ? node.type : v.type).toLowerCase().includes(text);
      if (hit) {
        matched.add(node.id);
        keep.add(node.id);
        for (const ancestor of ancestors) keep.add(ancestor.id);
      }
      for (const child of node.children) visit(child, [...ancestors, node]);
    };
    for (const root of state.roots) visit(root, []);
    return { keep, matched };
  }

  const COLUMNS = [
    { key: 'path', label: 'Module', numeric: false },
    { key: 'type', label: 'Type', numeric: false },
    { key: 'output', label: 'Output', numeric: false },
    { key: 'params', label: 'Params', numeric: true },
    { key: 'trainable', label: 'Trainable', numeric: true },
    { key: 'macs', label: 'MACs', numeric: true },
    { key: 'share', label: 'Share', numeric: true },
  ];

  function sortKeyOf(node) {
    const v = values(node)[state.sortKey];
    if (state.sortKey === 'output') return Array.isArray(v) ? v.flat(2).reduce((a, b) => a * (typeof b === 'number' ? b : 1), 1) : -1;
    return v;
  }

  /** Siblings in the chosen order; the model's own order when no column is chosen. */
  function ordered(children) {
    if (!state.sortKey) return children;
    const direction = state.sortDescending ? -1 : 1;
    return [...children].sort((a, b) => {
      const x = sortKeyOf(a);
      const y = sortKeyOf(b);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      if (typeof x === 'number' && typeof y === 'number') return (x - y) * direction;
      return String(x).localeCompare(String(y), 'en', { numeric: true }) * direction;
    });
  }

  /** The rows to draw: open nodes' children, in order, those the filter keeps. */
  function visibleRows(filter) {
    const rows = [];
    const add = (nodes) => {
      for (const node of ordered(nodes)) {
        if (filter && !filter.keep.has(node.id)) continue;
        rows.push(node);
        // While filtering, the ancestors of a match open by themselves.
        const open = filter ? node.children.some((child) => filter.keep.has(child.id)) : state.expanded.has(node.id);
        if (open) add(node.children);
      }
    };
    add(state.roots);
    return rows;
  }

  function isOpen(node, filter) {
    return filter ? node.children.some((child) => filter.keep.has(child.id)) : state.expanded.has(node.id);
  }

  function drawTable() {
    const table = document.getElementById('tree-table');
    if (!table) return;
    const filter = filtered();
    const body = el('tbody', { attrs: { id: 'tree-rows' } });
    const rows = visibleRows(filter);
    for (const node of rows) body.append(treeRow(node, filter));
    table.querySelector('tbody')?.replaceWith(body);
    const counter = document.getElementById('count');
    if (counter) {
      let modulesShown = 0;
      if (filter) walk(state.roots, (node) => { if (node.kind === 'module' && filter.matched.has(node.id)) modulesShown += 1; });
      counter.textContent = filter
        ? `${fmtInt(modulesShown)} of ${plural(state.modules, 'module')} match`
        : plural(state.modules, 'module');
    }
    for (const button of table.querySelectorAll('button.sort')) {
      const key = button.getAttribute('data-key');
      const th = button.closest('th');
      const sorted = key === state.sortKey;
      th?.setAttribute('aria-sort', sorted ? (state.sortDescending ? 'descending' : 'ascending') : 'none');
      button.textContent = `${COLUMNS.find((c) => c.key === key)?.label ?? key}${sorted ? (state.sortDescending ? ' ▾' : ' ▴') : ''}`;
    }
    if (!rows.length) {
      body.append(el('tr', { cls: 'empty' }, el('td', { text: `No module's path or type contains "${state.filter.trim()}".`, attrs: { colspan: COLUMNS.length } })));
    }
  }

  function treeRow(node, filter) {
    const v = values(node);
    const hasChildren = node.children.length > 0;
    const open = hasChildren && isOpen(node, filter);
    const tr = el('tr', {
      cls: `row ${node.kind}${filter && filter.matched.has(node.id) ? ' match' : ''}${v.calls === 0 ? ' unused' : ''}`,
      attrs: { 'data-id': node.id, 'data-path': v.path, tabindex: '-1', 'aria-level': node.depth + 1 },
    });
    if (hasChildren) tr.setAttribute('aria-expanded', String(open));
    const cell = el('td', { cls: 'name' });
    const name = el('div', { cls: 'name-inner' });
    name.style.paddingLeft = `${node.depth * 16}px`; // CSSOM, which the CSP allows
    cell.append(name);
    const toggle = el('button', {
      cls: `toggle${hasChildren ? '' : ' leaf'}`,
      text: hasChildren ? (open ? '▾' : '▸') : '',
      attrs: { tabindex: hasChildren ? '0' : '-1', 'aria-label': hasChildren ? `${open ? 'Collapse' : 'Expand'} ${v.path}` : '' },
    });
    if (hasChildren) toggle.addEventListener('click', () => toggleNode(node));
    name.append(toggle);
    if (node.kind === 'group') {
      name.append(el('span', { cls: 'path', text: `${node.label}: ${node.count} × ${node.type}`, title: `${node.count} consecutive ${node.type} blocks with the same parameters and MACs` }));
    } else {
      name.append(el('span', { cls: 'path', text: v.path, title: v.path }));
      if (v.calls === 0) name.append(el('span', { cls: 'tag', text: 'not run', title: 'Its forward never ran at this input: its MACs are 0 and it has no output shape.' }));
      else if (typeof v.calls === 'number' && v.calls > 1) name.append(el('span', { cls: 'tag', text: `${v.calls} calls`, title: `Its forward ran ${v.calls} times; the MACs count every call.` }));
    }
    tr.append(cell);
    tr.append(el('td', { cls: 'type', text: node.kind === 'group' ? node.type : v.type }));
    const output = v.output === null || v.output === undefined ? '—' : fmtShape(v.output);
    tr.append(el('td', { cls: 'shape', text: output, title: output === '—' ? (v.calls === 0 ? 'never ran' : 'its output is not a single tensor') : '' }));
    tr.append(el('td', { cls: 'num', text: fmtInt(v.params) }));
    tr.append(el('td', { cls: 'num', text: fmtInt(v.trainable) }));
    tr.append(el('td', { cls: 'num', text: fmtCount(v.macs), title: typeof v.macs === 'number' ? `${fmtInt(v.macs)} MACs` : '' }));
    const share = el('td', { cls: 'num share' });
    const bar = el('span', { cls: 'bar' });
    bar.style.width = `${Math.max(0, Math.min(1, typeof v.share === 'number' ? v.share : 0)) * 100}%`;
    share.append(el('div', { cls: 'share-inner' }, el('span', { cls: 'bar-track' }, bar), el('span', { text: fmtShare(v.share) })));
    tr.append(share);
    tr.addEventListener('keydown', (event) => onRowKey(event, node));
    tr.addEventListener('focus', () => { state.focused = node.id; });
    return tr;
  }

  function toggleNode(node, open) {
    const next = open === undefined ? !state.expanded.has(node.id) : open;
    if (next) state.expanded.add(node.id); else state.expanded.delete(node.id);
    state.focused = node.id;
    drawTable();
    /** @type {HTMLElement | null} */ (document.querySelector(`#tree-rows tr[data-id="${node.id}"]`))?.focus();
  }

  function onRowKey(event, node) {
    const row = /** @type {HTMLElement} */ (event.currentTarget);
    if (event.key === 'ArrowRight' && node.children.length) { toggleNode(node, true); event.preventDefault(); }
    else if (event.key === 'ArrowLeft' && node.children.length) { toggleNode(node, false); event.preventDefault(); }
    else if (event.key === 'ArrowDown') { /** @type {HTMLElement | null} */ (row.nextElementSibling)?.focus(); event.preventDefault(); }
    else if (event.key === 'ArrowUp') { /** @type {HTMLElement | null} */ (row.previousElementSibling)?.focus(); event.preventDefault(); }
  }

  // ---------- sections ----------
  function section(title, ...children) {
    return el('section', { cls: 'section' }, el('h2', { text: title }), ...children);
  }

  function inputSentence(result) {
    const input = result.input;
    let shape = '';
    let source = '';
    let guess = false;
    if (typeof input === 'string') shape = input;
    else if (input && typeof input === 'object') {
      shape = input.text || input.shape || input.description || '';
      source = input.source || '';
      guess = Boolean(input.guess);
    }
    source = result.input_source || source;
    if (!shape && result.inputs && typeof result.inputs === 'object') {
      shape = result.inputs.text || '';
      source = source || result.inputs.source || '';
      guess = guess || Boolean(result.inputs.guess);
    }
    if (!shape) return null;
    const p = el('p', { cls: 'input' }, el('span', { text: 'Input ' }), el('code', { text: shape }));
    if (guess) p.append(el('span', { text: ': ' }), el('strong', { text: 'a guess' }), rich('span', '', ` from ${String(source).replace(/^a guess from /, '')}.`));
    else if (source) p.append(rich('span', '', `, from ${source}.`));
    else p.append(el('span', { text: '.' }));
    if (input && typeof input === 'object' && input.change) p.append(rich('span', 'muted', ` ${input.change}`));
    return p;
  }

  function summary(result, where) {
    const root = Array.isArray(result.tree) && result.tree[0] ? result.tree[0] : {};
    const parameters = result.parameters;
    const total = typeof parameters === 'number' ? parameters : parameters?.total ?? root.params;
    const trainable = typeof parameters === 'object' && parameters ? parameters.trainable : root.trainable;
    const macs = typeof result.macs === 'number' ? result.macs : root.macs;
    const name = result.name || result.model || root.type || 'Model';
    const header = el('header', { cls: 'header' });
    const title = el('div', { cls: 'title-row' }, el('h1', { text: name }));
    if (where) {
      const link = el('a', { cls: 'where', text: where, attrs: { href: '#', title: 'Show it in the editor' } });
      link.addEventListener('click', (event) => { event.preventDefault(); vscode.postMessage({ type: 'reveal', line: result.line }); });
      title.append(link);
    }
    if (typeof result.call === 'string' && result.call && result.call !== name) {
      title.append(el('span', { cls: 'muted', text: 'built as ' }), el('code', { text: result.call }));
    }
    const actions = el('div', { cls: 'actions' });
    const exportMd = el('button', { cls: 'secondary', text: 'Export Markdown', attrs: { id: 'export-markdown' } });
    exportMd.addEventListener('click', () => vscode.postMessage({ type: 'export', format: 'markdown', fallback: result.markdown ? undefined : markdownFallback() }));
    const exportCsv = el('button', { cls: 'secondary', text: 'Export CSV', attrs: { id: 'export-csv' } });
    exportCsv.addEventListener('click', () => vscode.postMessage({ type: 'export', format: 'csv', fallback: result.csv ? undefined : csvFallback() }));
    const refresh = el('button', { cls: 'secondary', text: 'Refresh', attrs: { id: 'refresh', title: 'Profile the model again (after editing it)' } });
    refresh.addEventListener('click', () => vscode.postMessage({ type: 'refresh' }));
    actions.append(exportMd, exportCsv, refresh);
    title.append(actions);
    header.append(title);
    const facts = el('dl', { cls: 'facts' });
    const fact = (label, value, hint) => { facts.append(el('dt', { text: label }), el('dd', { text: value, title: hint || '' })); };
    if (typeof total === 'number') fact('Parameters', `${fmtCount(total)} (${fmtInt(total)})`, typeof trainable === 'number' && trainable !== total ? `${fmtInt(trainable)} trainable` : '');
    if (typeof trainable === 'number' && typeof total === 'number' && trainable !== total) fact('Trainable', fmtInt(trainable));
    if (typeof macs === 'number') fact('MACs', `${fmtCount(macs)} (${fmtInt(macs)})${result.variation_text ? `; ${result.variation_text}` : ''}`, '1 MAC = one multiply-add = 2 FLOPs');
    if (typeof result.flops === 'number') fact('FLOPs', fmtCount(result.flops));
    if (Array.isArray(root.output)) fact('Output', fmtShape(root.output));
    header.append(facts);
    const input = inputSentence(result);
    if (input) header.append(input);
    const how = result.mode && typeof result.mode === 'object' ? result.mode.text : '';
    if (how) header.append(el('p', { cls: 'muted', text: `${how[0].toUpperCase()}${how.slice(1)}${/[.!?]$/.test(how) ? '' : '.'}` }));
    return header;
  }

  function treeSection(result) {
    const search = el('input', { attrs: { id: 'filter', type: 'search', placeholder: 'Filter by module path or type (conv, layer2, Bottleneck)', 'aria-label': 'Filter modules', spellcheck: 'false' } });
    search.value = state.filter;
    search.addEventListener('input', () => { state.filter = search.value; persist(); drawTable(); });
    const expandAll = el('button', { cls: 'secondary small', text: 'Expand all', attrs: { id: 'expand-all' } });
    expandAll.addEventListener('click', () => { walk(state.roots, (node) => { if (node.children.length) state.expanded.add(node.id); }); drawTable(); });
    const collapseAll = el('button', { cls: 'secondary small', text: 'Collapse all', attrs: { id: 'collapse-all' } });
    collapseAll.addEventListener('click', () => { state.expanded = new Set(state.roots.map((node) => node.id)); drawTable(); });
    const toolbar = el('div', { cls: 'toolbar' }, search, el('span', { cls: 'muted', attrs: { id: 'count', role: 'status' } }), expandAll, collapseAll);
    const head = el('tr');
    for (const column of COLUMNS) {
      const button = el('button', { cls: 'sort', text: column.label, attrs: { 'data-key': column.key, title: `Sort by ${column.label.toLowerCase()} within each parent (again: reverse, a third time: the model's order)` } });
      button.addEventListener('click', () => {
        if (state.sortKey !== column.key) { state.sortKey = column.key; state.sortDescending = column.numeric; }
        else if (state.sortDescending === column.numeric) state.sortDescending = !state.sortDescending;
        else state.sortKey = '';
        persist();
        drawTable();
      });
      head.append(el('th', { cls: column.numeric ? 'num' : '', attrs: { scope: 'col' } }, button));
    }
    const table = el('table', { cls: 'tree', attrs: { id: 'tree-table' } }, el('thead', {}, head), el('tbody'));
    const parts = [toolbar, el('div', { cls: 'table-wrap' }, table)];
    if (result.tree_truncated) parts.push(el('p', { cls: 'muted', text: `The model has more modules than the report holds: the first ${fmtInt(result.tree.length)} are shown.` }));
    parts.push(el('p', { cls: 'muted note', text: `MACs are inclusive (a module with everything below it, all its calls); share is of the whole model. ${result.counted || 'Element-wise work (activations, normalisation, pooling) is not counted.'}` }));
    return section('Module tree', ...parts);
  }

  function layersSection(layers) {
    if (!Array.isArray(layers) || !layers.length) return null;
    const table = el('table', { cls: 'plain', attrs: { id: 'heaviest' } });
    table.append(el('thead', {}, el('tr', {}, ...['Layer', 'Type', 'Output', 'Params (each)', 'MACs', 'Share'].map((label, i) => el('th', { cls: i >= 3 ? 'num' : '', text: label })))));
    const body = el('tbody');
    for (const layer of layers) {
      const count = typeof layer.count === 'number' && layer.count > 1 ? ` (${layer.count} layers)` : '';
      body.append(el('tr', {},
        el('td', { cls: 'path', text: `${layer.path}${count}` }),
        el('td', { text: layer.type }),
        el('td', { cls: 'shape', text: layer.output ? fmtShape(layer.output) : '—' }),
        el('td', { cls: 'num', text: fmtInt(layer.params) }),
        el('td', { cls: 'num', text: fmtCount(layer.macs), title: `${fmtInt(layer.macs)} MACs` }),
        el('td', { cls: 'num', text: fmtShare(layer.share) })));
    }
    table.append(body);
    return section('Heaviest layers', table);
  }

  function thopSection(result) {
    const thop = result.thop;
    if (!thop) return null;
    const parts = [];
    if (typeof thop === 'string') parts.push(el('p', { text: thop }));
    else if (typeof thop.text === 'string' || typeof thop.line === 'string') {
      parts.push(el('p', { text: thop.text || thop.line }));
      if (Array.isArray(thop.reasons) && thop.reasons.length) parts.push(el('ul', {}, ...thop.reasons.map((reason) => rich('li', '', reason))));
    } else if (thop.error) {
      parts.push(el('p', { text: `thop ${thop.version || ''} failed on this model: ${thop.error}` }));
    } else if (typeof thop.macs === 'number') {
      const difference = typeof thop.difference === 'number' ? ` (${thop.difference >= 0 ? '+' : ''}${(thop.difference * 100).toFixed(1)}% from torchls's count)` : '';
      parts.push(el('p', { text: `thop ${thop.version || ''}: ${fmtCount(thop.macs)} MACs${difference}` }));
      const rows = Array.isArray(thop.by_type) ? thop.by_type.filter((row) => typeof row.difference === 'number' && row.difference !== 0) : [];
      if (rows.length) {
        parts.push(el('ul', {}, ...rows.map((row) => el('li', { text: `${row.type}: thop ${row.difference < 0 ? 'misses' : 'adds'} ${fmtCount(Math.abs(row.difference))} MACs` }))));
      }
    } else return null;
    return section('thop comparison', ...parts);
  }

  function trainingSection(result) {
    const training = result.training;
    if (!training || typeof training !== 'object') return null;
    if (training.error) return section('Training memory', rich('p', 'muted', training.error));
    const root = Array.isArray(result.tree) && result.tree[0] ? result.tree[0] : {};
    const parameters = result.parameters;
    const total = typeof parameters === 'number' ? parameters : parameters?.total ?? root.params;
    const trainable = typeof parameters === 'object' && parameters ? parameters.trainable : root.trainable;
    const gpuGB = typeof training.gpu_memory_gb === 'number' ? training.gpu_memory_gb : state.gpuMemoryGB;
    // fp32 weights, a gradient and Adam's two moments for each trainable parameter; frozen weights once.
    let states = training.states_bytes;
    if (typeof states !== 'number') {
      if (typeof total !== 'number' || typeof trainable !== 'number') {
        return section('Training memory', el('p', { cls: 'muted', text: 'torchls cannot size the optimizer states: the report has no parameter counts.' }));
      }
      states = trainable * 16 + (total - trainable) * 4;
    }
    const batch = typeof training.batch === 'number' ? training.batch : 1;
    const activations = training.activation_bytes;
    const parts = [];
    if (typeof training.summary === 'string') {
      parts.push(el('p', { cls: 'training-line', text: training.summary }));
    } else if (typeof activations === 'number') {
      parts.push(el('p', { cls: 'training-line', text: `Adam training at batch ${fmtInt(batch)}: ${fmtBytes(states)} states + ${fmtBytes(activations)} activations = ${fmtBytes(states + activations)}` }));
    } else {
      parts.push(el('p', { cls: 'training-line', text: `Adam training: ${fmtBytes(states)} states (weights, gradients, two moments in fp32); the activations were not measured.` }));
    }
    const dl = el('dl', { cls: 'facts' });
    const fact = (label, value, hint) => { dl.append(el('dt', { text: label }), el('dd', { text: value, title: hint || '' })); };
    const frozen = typeof total === 'number' && typeof trainable === 'number' ? total - trainable : 0;
    fact('States', fmtBytes(states), typeof trainable === 'number' ? `${fmtInt(trainable)} trainable × 16 bytes (fp32 weight, gradient, 2 Adam moments)${frozen > 0 ? ` + ${fmtInt(frozen)} frozen × 4 bytes` : ''}` : '');
    if (typeof activations === 'number') fact(`Activations at batch ${fmtInt(batch)}`, fmtBytes(activations), 'bytes saved for backward in one forward (parameters and buffers excluded)');
    const fixed = typeof training.fixed_bytes === 'number' ? training.fixed_bytes : 0;
    if (typeof training.per_sample_bytes === 'number' && training.per_sample_bytes > 0) {
      fact('Per sample', `${fmtBytes(training.per_sample_bytes)} of activations${fixed ? ` (+ ${fmtBytes(fixed)} that do not grow with the batch)` : ''}`);
      const largest = typeof training.max_batch === 'number'
        ? training.max_batch
        : Math.max(0, Math.floor((gpuGB * 2 ** 30 - states - fixed) / training.per_sample_bytes));
      fact(`Fits ${gpuGB} GB`, largest >= 1 ? `batch ${fmtInt(largest)} at most` : 'not even batch 1',
        'torchls.gpuMemoryGB (in GiB); the CUDA context, the allocator\'s fragmentation and temporary buffers also take some of it');
    } else if (typeof activations === 'number') {
      fact(`Fits ${gpuGB} GB`, '—');
      parts.push(el('p', { cls: 'muted', text: `torchls cannot tell the largest batch: ${training.max_batch_reason || 'the input has no batch dimension it could double to see how the activations grow'}.` }));
    }
    if (typeof training.backward_flops === 'number') {
      fact('Backward', `${fmtCount(training.backward_flops)} FLOPs${training.backward_estimated ? ' (estimate)' : ''}`, training.estimate_reason || '');
    }
    parts.splice(1, 0, dl);
    if (training.backward_estimated && training.estimate_reason) parts.push(el('p', { cls: 'muted', text: `Backward FLOPs are an estimate: ${training.estimate_reason}` }));
    return section('Training memory', ...parts);
  }

  /** "1179648" or "1/3" as a number. */
  function rational(text) {
    const [p, q] = String(text).split('/');
    return Number(p) / (q === undefined ? 1 : Number(q));
  }
  function evaluate(terms, x) {
    return terms.reduce((total, [power, coefficient]) => total + rational(coefficient) * x ** power, 0);
  }

  const METRICS = [
    { key: 'macs', label: 'MACs', format: fmtCount },
    { key: 'flops', label: 'FLOPs', format: fmtCount },
    { key: 'activation_bytes', label: 'Activations', format: fmtBytes },
  ];

  function sweepSection(sweep) {
    if (!sweep || !Array.isArray(sweep.points) || !sweep.points.length) return null;
    const symbol = sweep.symbol || 'L';
    const fits = sweep.fits || {};
    const metrics = METRICS.filter((m) => sweep.points.some((p) => typeof p[m.key] === 'number'));
    const points = [...sweep.points.map((p) => ({ ...p, check: false }))];
    if (sweep.check && typeof sweep.check.value === 'number') points.push({ ...sweep.check, check: true });
    points.sort((a, b) => a.value - b.value);

    const table = el('table', { cls: 'plain', attrs: { id: 'sweep-table' } });
    table.append(el('thead', {}, el('tr', {}, el('th', { cls: 'num', text: symbol }), ...metrics.map((m) => el('th', { cls: 'num', text: m.label })), el('th', { text: '' }))));
    const body = el('tbody');
    for (const point of points) {
      body.append(el('tr', { cls: point.check ? 'check' : '' },
        el('td', { cls: 'num', text: fmtInt(point.value) }),
        ...metrics.map((m) => el('td', { cls: 'num', text: m.format(point[m.key]), title: typeof point[m.key] === 'number' ? fmtInt(point[m.key]) : '' })),
        el('td', { cls: 'muted', text: point.check ? 'check: not used for the fit' : '' })));
    }
    table.append(body);

    const formulas = el('ul', { cls: 'formulas' });
    for (const m of metrics) {
      const fit = fits[m.key];
      if (!fit) continue;
      const item = el('li', {}, el('span', { text: `${m.label}(${symbol}) = ` }), el('code', { text: fit.text || '' }));
      if (sweep.check && typeof sweep.check.value === 'number') {
        item.append(el('span', {
          cls: fit.checked ? 'ok' : 'warn',
          text: fit.checked ? ` ✓ predicts ${symbol} = ${fmtInt(sweep.check.value)} exactly` : ` ⚠ does not predict ${symbol} = ${fmtInt(sweep.check.value)} exactly: not a polynomial of ${symbol} over this range`,
        }));
      }
      formulas.append(item);
    }
    const plots = el('div', { cls: 'plots' });
    for (const m of metrics.filter((metric) => metric.key !== 'flops')) plots.append(plot(points, m, fits[m.key], symbol));
    return section(`Cost against ${symbol}`, formulas, plots, table);
  }

  /** A small line plot: measured points (filled), the check point (hollow), the fitted polynomial
   * (a line). Colours come from the theme through report.css. */
  function plot(points, metric, fit, symbol) {
    const width = 340;
    const height = 190;
    const pad = { left: 58, right: 12, top: 22, bottom: 34 };
    const xs = points.map((p) => p.value);
    const ys = points.map((p) => p[metric.key]).filter((y) => typeof y === 'number');
    const x0 = Math.min(0, ...xs);
    const x1 = Math.max(...xs);
    const y1 = Math.max(...ys) || 1;
    const sx = (x) => pad.left + ((x - x0) / (x1 - x0 || 1)) * (width - pad.left - pad.right);
    const sy = (y) => height - pad.bottom - (y / y1) * (height - pad.top - pad.bottom);
    const root = svg('svg', { class: 'plot', viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': `${metric.label} against ${symbol}` });
    root.append(svg('text', { class: 'plot-title', x: pad.left, y: 14 }, `${metric.label} against ${symbol}`));
    root.append(svg('line', { class: 'axis', x1: pad.left, y1: height - pad.bottom, x2: width - pad.right, y2: height - pad.bottom }));
    root.append(svg('line', { class: 'axis', x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom }));
    for (const y of [0, y1 / 2, y1]) {
      root.append(svg('line', { class: 'grid', x1: pad.left, y1: sy(y), x2: width - pad.right, y2: sy(y) }));
      root.append(svg('text', { class: 'tick', x: pad.left - 6, y: sy(y) + 4, 'text-anchor': 'end' }, metric.format(y)));
    }
    for (const x of xs) {
      root.append(svg('text', { class: 'tick', x: sx(x), y: height - pad.bottom + 14, 'text-anchor': 'middle' }, fmtInt(x)));
    }
    root.append(svg('text', { class: 'tick', x: width - pad.right, y: height - 4, 'text-anchor': 'end' }, symbol));
    if (fit && Array.isArray(fit.terms)) {
      const steps = 48;
      let d = '';
      for (let i = 0; i <= steps; i += 1) {
        const x = x0 + ((x1 - x0) * i) / steps;
        d += `${i ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(evaluate(fit.terms, x)).toFixed(1)}`;
      }
      root.append(svg('path', { class: 'fit', d }));
    }
    for (const p of points) {
      if (typeof p[metric.key] !== 'number') continue;
      const dot = svg('circle', { class: p.check ? 'point check' : 'point', cx: sx(p.value), cy: sy(p[metric.key]), r: p.check ? 4.5 : 3.5 });
      dot.append(svg('title', {}, `${symbol} = ${fmtInt(p.value)}: ${metric.format(p[metric.key])}${p.check ? ' (check point, not fitted)' : ''}`));
      root.append(dot);
    }
    return root;
  }

  // ---------- exports when the server sent none ----------
  function exportRows() {
    const rows = [];
    walk(state.roots, (node) => { if (node.kind === 'module') rows.push(values(node)); });
    return rows;
  }
  function markdownFallback() {
    const lines = ['| Module | Type | Output | Params | Trainable | MACs | Share |', '|---|---|---|---:|---:|---:|---:|'];
    for (const v of exportRows()) lines.push(`| ${v.path} | ${v.type} | ${v.output ? fmtShape(v.output) : ''} | ${fmtInt(v.params)} | ${fmtInt(v.trainable)} | ${fmtInt(v.macs)} | ${fmtShare(v.share)} |`);
    return `${lines.join('\n')}\n`;
  }
  function csvFallback() {
    const quote = (s) => (/[",\n]/.test(String(s)) ? `"${String(s).replace(/"/g, '""')}"` : String(s));
    const lines = ['path,type,output,params,trainable,macs,share'];
    for (const v of exportRows()) lines.push([v.path, v.type, v.output ? fmtShape(v.output) : '', v.params ?? '', v.trainable ?? '', v.macs ?? '', v.share ?? ''].map(quote).join(','));
    return `${lines.join('\n')}\n`;
  }

  // ---------- drawing ----------
  function showError(message) {
    app.replaceChildren(el('p', { cls: 'error', text: message, attrs: { role: 'alert', id: 'report-error' } }));
    const refresh = el('button', { cls: 'secondary', text: 'Try again', attrs: { id: 'refresh' } });
    refresh.addEventListener('click', () => vscode.postMessage({ type: 'refresh' }));
    app.append(refresh);
    app.setAttribute('aria-busy', 'false');
  }

  function draw(message) {
    const result = message.result;
    state.result = result;
    state.gpuMemoryGB = typeof message.gpuMemoryGB === 'number' ? message.gpuMemoryGB : 24;
    if (!result || typeof result !== 'object') { showError('The torchls server gave no usable answer.'); return; }
    if (typeof result.error === 'string') { showError(result.error); return; }
    const rows = Array.isArray(result.tree) ? result.tree : [];
    state.roots = buildTree(rows);
    state.modules = rows.length;
    if (!state.expanded) {
      // Small models open entirely; big ones down to their top blocks. Repeated runs stay folded.
      state.expanded = new Set();
      walk(state.roots, (node) => {
        if (node.kind === 'module' && node.children.length && (rows.length <= 80 || node.depth <= 1)) state.expanded.add(node.id);
      });
    }
    const where = message.file ? `${message.file}:${typeof result.line === 'number' ? result.line + 1 : message.line}` : '';
    const parts = [summary(result, where)];
    if (rows.length) parts.push(treeSection(result));
    else parts.push(section('Module tree', el('p', { cls: 'muted', text: result.tree_missing || 'This answer holds no module tree: the profile that made it is older than this version of torchls. Save the file to profile it again.' })));
    for (const part of [layersSection(result.layers), thopSection(result), trainingSection(result), sweepSection(result.sweep)]) if (part) parts.push(part);
    if (Array.isArray(result.notes) && result.notes.length) parts.push(section('Notes', el('ul', {}, ...result.notes.map((note) => rich('li', '', note)))));
    app.replaceChildren(...parts);
    app.setAttribute('aria-busy', 'false');
    drawTable();
  }

  window.addEventListener('message', (event) => {
    const message = event.data;
    if (!message || typeof message !== 'object') return;
    if (message.type === 'loading') {
      if (!state.result) {
        app.replaceChildren(el('p', { cls: 'status', text: `Profiling the model at ${message.where}…`, attrs: { role: 'status' } }));
      } else {
        document.body.classList.add('refreshing');
      }
      app.setAttribute('aria-busy', 'true');
    } else if (message.type === 'report') {
      document.body.classList.remove('refreshing');
      draw(message);
    }
  });
  vscode.postMessage({ type: 'ready' });
})();
