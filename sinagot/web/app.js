/* Sinagot status page: vanilla ES2020, no build step, no external resources.
 *
 * Live mode: polls api/status (relative URL) with the query of the page's own URL.
 * Report mode: reads {"status": ..., "records": {...}} from <script id="sinagot-data"> and
 * filters, orders and pages the embedded rows itself (the same rules as the server).
 * Every string from the data is escaped before it reaches innerHTML (esc()).
 * This file is inlined into a <script> element by the report writer: it must never contain
 * a closing script tag or an HTML comment opener in its text.
 */
(() => {
  'use strict';

  // ---- constants ------------------------------------------------------------------------

  /** Every cell status, in the legend's order, with a label and a glyph (never colour only). */
  const STATUSES = [
    ['DONE', 'done', '✓'],
    ['STALE', 'stale', '↻'],
    ['DATA_READY', 'data ready', '◆'],
    ['QUEUED', 'queued', '⋯'],
    ['PROCESSING', 'processing', '▶'],
    ['ERROR', 'error', '✕'],
    ['DATA_NOT_AVAILABLE', 'data not available', '∅'],
    ['ARRIVING', 'arriving', '↓'],
    ['INIT', 'waiting on earlier step', '·'],
  ];
  const META = Object.create(null);
  for (const [name, label, glyph] of STATUSES) META[name] = { label, glyph };
  const metaOf = (status) => META[status] || { label: String(status || 'unknown').toLowerCase(), glyph: '?' };
  const statusClass = (status) => (META[status] ? 's-' + status : 's-unknown');

  /** The `show` filter: a row is shown when one of its cells has one of these statuses. */
  const SHOWS = {
    all: null,
    failed: new Set(['ERROR']),
    stale: new Set(['STALE', 'DATA_READY']),
    in_flight: new Set(['PROCESSING']),
    queued: new Set(['QUEUED']),
    arriving: new Set(['ARRIVING']),
  };
  const ORDERS = ['natural', 'newest'];
  const DEFAULTS = { page: 0, per_page: 100, show: 'all', task: '', modality: '', q: '', order: 'natural' };
  const PARAMS = Object.keys(DEFAULTS); // the only parameters api/status accepts
  const POLL_MS = 1000;
  const POLL_HIDDEN_MS = 10000;
  const FETCH_TIMEOUT_MS = 15000;
  const SEARCH_DEBOUNCE_MS = 200;

  // ---- small helpers --------------------------------------------------------------------

  const $ = (sel) => document.querySelector(sel);
  const ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  /** Text (or an attribute value in double quotes) safe for innerHTML. */
  const esc = (value) => String(value ?? '').replace(/[&<>"']/g, (c) => ESCAPES[c]);
  const fmtInt = (n) => (typeof n === 'number' && isFinite(n) ? n.toLocaleString('en-US') : '–');
  const plural = (n, one, many) => `${fmtInt(n)} ${n === 1 ? one : many || one + 's'}`;
  const has = (obj, key) => obj != null && Object.prototype.hasOwnProperty.call(obj, key);

  const pad = (n) => String(n).padStart(2, '0');
  /** "2026-11-30 20:39:59" in the browser's time zone. */
  function fmtLocal(iso) {
    const d = parseTime(iso);
    if (!d) return '';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function parseTime(iso) {
    if (!iso) return null;
    const d = new Date(iso);
    return isNaN(d.getTime()) ? null : d;
  }
  /** A run's duration: "0.8 s", "42 s", "3 min 5 s", "2 h 4 min". */
  function fmtDuration(s) {
    if (typeof s !== 'number' || !isFinite(s) || s < 0) return '';
    if (s < 10) return `${Math.round(s * 10) / 10} s`;
    if (s < 60) return `${Math.round(s)} s`;
    if (s < 3600) {
      const m = Math.floor(s / 60);
      const r = Math.round(s - m * 60);
      return r ? `${m} min ${r} s` : `${m} min`;
    }
    const h = Math.floor(s / 3600);
    return `${h} h ${Math.round((s - h * 3600) / 60)} min`;
  }
  /** An estimate: "~45 s", "~3 min", "~2 h 10 min", "~3 d 4 h". */
  function fmtEta(s) {
    if (s === null || s === undefined || typeof s !== 'number' || !isFinite(s)) return '—';
    if (s <= 0) return 'none';
    if (s < 60) return `~${Math.max(1, Math.round(s))} s`;
    if (s < 3600) return `~${Math.round(s / 60)} min`;
    if (s < 86400) {
      const h = Math.floor(s / 3600);
      const m = Math.round((s - h * 3600) / 60);
      return m ? `~${h} h ${m} min` : `~${h} h`;
    }
    const d = Math.floor(s / 86400);
    const h = Math.round((s - d * 86400) / 3600);
    return h ? `~${d} d ${h} h` : `~${d} d`;
  }
  /** "just now", "2 s ago", "5 min ago", "3 h 2 min ago", or a date past a day. */
  function fmtAgo(date) {
    const s = Math.max(0, Math.floor((Date.now() - date.getTime()) / 1000));
    if (s < 1) return 'just now';
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) {
      const m = Math.floor((s % 3600) / 60);
      return `${Math.floor(s / 3600)} h ${m} min ago`;
    }
    return `on ${fmtLocal(date.toISOString())}`;
  }

  // ---- the query (the page's own URL holds it) ------------------------------------------

  function readQuery() {
    const p = new URLSearchParams(location.search);
    const int = (key, low, high, dflt) => {
      const n = Number.parseInt(p.get(key) ?? '', 10);
      return Number.isInteger(n) && n >= low && n <= high ? n : dflt;
    };
    const show = p.get('show');
    const order = p.get('order');
    return {
      page: int('page', 0, 1e9, 0),
      per_page: int('per_page', 1, 1000, DEFAULTS.per_page),
      show: has(SHOWS, show) ? show : 'all',
      task: p.get('task') || '',
      modality: p.get('modality') || '',
      q: (p.get('q') || '').slice(0, 200),
      order: ORDERS.includes(order) ? order : 'natural',
    };
  }

  /** The query as a query string: only the known parameters, only when not the default. */
  function queryString(q) {
    const p = new URLSearchParams();
    for (const key of PARAMS) {
      if (q[key] !== DEFAULTS[key] && q[key] !== null && q[key] !== undefined) p.set(key, String(q[key]));
    }
    return p.toString();
  }

  function writeURL() {
    const qs = queryString(state.query);
    const url = location.pathname + (qs ? '?' + qs : '') + location.hash;
    try {
      history.replaceState(null, '', url);
    } catch (err) {
      /* some file:// setups refuse it: the view still works, only the URL is not updated */
    }
  }

  // ---- state ----------------------------------------------------------------------------

  const state = {
    query: readQuery(),
    report: null, // the embedded {status, records} in report mode
    data: null, // the last status answer rendered
    renderedKey: null, // query string + generation of the last render
    seq: 0, // the current api/status request
    inflight: null,
    timer: 0,
    failures: 0,
    stopped: false, // a 400: polling waits for the user to change the query
    detail: null, // {record, task, modality, step, data, error, seq, generation, opener}
    searchTimer: 0,
    legendBuilt: false,
    grid: null, // what the grid shows: {layout, keys, rows, shown}
    optionsKey: '',
  };

  // ---- fetching (live mode) -------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function getJSON(url, signal) {
    const res = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' }, signal });
    let body = null;
    try {
      body = await res.json();
    } catch (err) {
      body = null;
    }
    if (!res.ok) {
      const msg = body && typeof body.error === 'string' ? body.error : `HTTP ${res.status} ${res.statusText}`;
      throw new HttpError(res.status, msg);
    }
    if (body === null || typeof body !== 'object') throw new Error('the server did not answer JSON');
    return body;
  }

  async function load() {
    clearTimeout(state.timer);
    state.timer = 0;
    if (state.inflight) state.inflight.abort();
    const seq = ++state.seq;
    const ctrl = new AbortController();
    state.inflight = ctrl;
    const timeout = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
    const qs = queryString(state.query);
    try {
      const body = await getJSON('api/status' + (qs ? '?' + qs : ''), ctrl.signal);
      if (seq !== state.seq) return;
      state.failures = 0;
      state.stopped = false;
      onStatus(body, qs);
    } catch (err) {
      if (seq !== state.seq) return; // superseded by a newer request
      onFailure(err);
    } finally {
      clearTimeout(timeout);
      if (seq === state.seq) {
        state.inflight = null;
        schedule();
      }
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    if (state.report || state.stopped) return;
    if (state.data && !state.data.live && !state.failures) return; // the server is not live
    let delay = document.hidden ? POLL_HIDDEN_MS : POLL_MS;
    if (state.failures) delay = Math.min(1000 * 2 ** (state.failures - 1), 5000);
    state.timer = setTimeout(load, delay);
  }

  /** The query changed: show it (report) or ask for it (live), now. */
  function refresh() {
    if (state.report) {
      const d = localStatus(state.query); // may clamp the page
      writeURL();
      renderStatus(d, queryString(state.query));
    } else {
      writeURL();
      state.stopped = false;
      load();
    }
  }

  function onStatus(body, qs) {
    if (body.api !== 1) {
      showBanner(`This page speaks status API 1; the server answered API ${esc(body.api)}. Some things may look wrong.`, false);
    } else {
      hideBanner();
    }
    setLive(body.live ? 'live' : 'snapshot');
    const rows = Array.isArray(body.rows) ? body.rows : [];
    const total = typeof body.total === 'number' ? body.total : rows.length;
    // Past the last page (the board shrank, or a stale URL): go to the last page.
    if (!rows.length && total > 0 && state.query.page > 0) {
      state.query.page = Math.max(0, Math.ceil(total / state.query.per_page) - 1);
      writeURL();
      state.seq++; // this answer is superseded
      load();
      return;
    }
    const changed = renderStatus(body, qs);
    if (changed && state.detail && !state.detail.local && state.detail.generation !== body.generation) {
      fetchDetail(false);
    }
  }

  function onFailure(err) {
    if (err instanceof HttpError && err.status === 400) {
      state.stopped = true;
      showBanner(`The server refused this view: ${esc(err.message)} `, true, true);
      setLive(state.data && state.data.live ? 'live' : 'snapshot');
      return;
    }
    state.failures++;
    const why = err && err.name === 'AbortError' ? 'no answer in time' : esc(err && err.message ? err.message : err);
    showBanner(`⚠ connection lost — retrying… <small>(${why})</small>`, true);
    setLive('down');
    if (!state.data) {
      $('#grid tbody').innerHTML = '<tr><td class="empty">Cannot reach the server — retrying…</td></tr>';
    }
  }

  // ---- report mode ----------------------------------------------------------------------

  function readEmbedded() {
    const el = document.getElementById('sinagot-data');
    const text = el ? el.textContent.trim() : '';
    if (!text) return null;
    try {
      const data = JSON.parse(text);
      if (!data || typeof data !== 'object' || !data.status) throw new Error('no "status" in it');
      if (!Array.isArray(data.status.rows)) data.status.rows = [];
      if (!data.records || typeof data.records !== 'object') data.records = {};
      return data;
    } catch (err) {
      showBanner(`The report's embedded data cannot be read: ${esc(err.message)}`, true);
      return { status: { rows: [], counts: {}, live: false }, records: {}, broken: true };
    }
  }

  /** The api/status answer for a query, computed over the embedded rows (same rules). */
  function localStatus(q) {
    const st = state.report.status;
    const wanted = SHOWS[q.show] || null;
    const needle = q.q.toLowerCase();
    const filtering = wanted || needle || q.task || q.modality;
    let rows = st.rows;
    if (filtering) {
      rows = rows.filter((r) =>
        (!q.task || r.task === q.task) &&
        (!q.modality || r.modality === q.modality) &&
        (!needle || String(r.record_id).toLowerCase().includes(needle)) &&
        (!wanted || (r.cells || []).some((c) => wanted.has(c.status))));
    }
    const total = rows.length;
    const lastPage = Math.max(0, Math.ceil(total / q.per_page) - 1);
    if (q.page > lastPage) q.page = lastPage;
    const start = q.page * q.per_page;
    let page;
    if (q.order === 'newest') {
      page = [];
      for (let i = total - 1 - start; i >= 0 && page.length < q.per_page; i--) page.push(rows[i]);
    } else {
      page = rows.slice(start, start + q.per_page);
    }
    return Object.assign({}, st, {
      live: false,
      query: { page: q.page, per_page: q.per_page, show: q.show, task: q.task || null,
        modality: q.modality || null, q: q.q, order: q.order },
      total,
      rows: page,
    });
  }

  // ---- rendering ------------------------------------------------------------------------

  /** Renders an api/status answer; false when nothing changed since the last render. */
  function renderStatus(d, qs) {
    const key = `${qs}|${d.generation}`;
    if (key === state.renderedKey) {
      state.data = d;
      renderHeader(d); // throughput and the time to clear move without a new generation
      return false;
    }
    state.renderedKey = key;
    state.data = d;
    renderHeader(d);
    renderOptions(d);
    syncControls();
    renderLegend(d);
    renderGrid(d);
    renderPager(d);
    document.body.dataset.generation = String(d.generation ?? '');
    return true;
  }

  function renderHeader(d) {
    const ws = $('#workspace');
    ws.textContent = d.workspace || '';
    ws.title = d.workspace ? `Workspace: ${d.workspace}` : '';
    $('#version').textContent = d.version ? `sinagot ${d.version}` : '';
    const c = d.counts || {};
    for (const el of document.querySelectorAll('#counts [data-count]')) {
      const name = el.dataset.count;
      const n = typeof c[name] === 'number' ? c[name] : null;
      el.textContent = fmtInt(n);
      el.dataset.value = n === null ? '' : String(n);
      const tile = el.closest('.count');
      tile.classList.toggle('nonzero', !!n);
      if (tile.dataset.show) {
        tile.setAttribute('aria-pressed', String(tile.dataset.show === state.query.show));
      }
    }
    const units = $('#units');
    units.textContent = d.scoped && typeof c.units === 'number' ? `${plural(c.units, 'unit')}` : '';
    units.hidden = !units.textContent;

    const tp = d.throughput;
    const spm = tp && typeof tp.steps_per_minute === 'number' ? tp.steps_per_minute : null;
    const tpEl = $('#throughput');
    tpEl.textContent = spm === null ? '—' : `${spm < 10 ? Math.round(spm * 10) / 10 : fmtInt(Math.round(spm))} steps/min`;
    tpEl.title = spm === null ? 'no throughput measured' : `over the last ${fmtDuration(tp.window_s || 0) || '?'}`;
    const bl = d.backlog || {};
    $('#backlog').textContent = typeof bl.steps === 'number' ? plural(bl.steps, 'step') : '—';
    const eta = $('#eta');
    eta.textContent = typeof bl.steps === 'number' && bl.steps === 0 ? 'none' : fmtEta(bl.eta_s);
    eta.title = bl.eta_s === null || bl.eta_s === undefined ? 'unknown: no recent throughput' : '';

    renderSummary(c);
    tickUpdated();
  }

  function renderSummary(c) {
    const el = $('#summary');
    if (!c || typeof c.records !== 'number') {
      el.textContent = '';
      return;
    }
    if (!c.records) {
      el.textContent = 'No records on the board yet.';
      return;
    }
    const parts = [];
    if (c.failed) {
      parts.push(`<span class="bad">✕ ${plural(c.failed, 'step')} failed</span>` +
        (state.query.show !== 'failed' ? ' <button type="button" class="link" data-action="failed">show them</button>' : ''));
    }
    if (c.in_flight) parts.push(`${fmtInt(c.in_flight)} running`);
    if (c.queued) parts.push(`${fmtInt(c.queued)} queued`);
    if (c.stale) parts.push(`${fmtInt(c.stale)} to run`);
    if (c.arriving) parts.push(`${fmtInt(c.arriving)} arriving`);
    let html;
    if (!parts.length) {
      const by = c.by_status || {};
      const other = Object.keys(by).filter((k) => k !== 'DONE' && by[k]);
      html = other.length
        ? `<span class="ok">✓ Nothing failed, nothing pending</span> · ${plural(c.done || 0, 'step')} done` +
          other.map((k) => `, ${fmtInt(by[k])} ${esc(metaOf(k).label)}`).join('')
        : `<span class="ok">✓ All ${plural(c.done || 0, 'step')} of ${plural(c.records, 'record')} done</span>`;
    } else {
      html = parts.join(' · ');
      if (!c.failed) html = '<span class="ok">✓ Nothing failed</span> · ' + html;
    }
    el.innerHTML = html;
  }

  function tickUpdated() {
    const el = $('#updated');
    const d = state.data;
    if (!d) return;
    const when = parseTime(d.generated);
    if (state.report) {
      el.textContent = when ? `report generated ${fmtLocal(d.generated)}` : 'report';
      el.title = d.generated ? `${d.generated} (UTC)` : '';
      return;
    }
    el.textContent = when ? `updated ${fmtAgo(when)}` : 'not brought up to date yet';
    el.title = when ? `board last changed ${fmtLocal(d.generated)} (local time)` : '';
  }

  function setLive(mode) {
    const el = $('#live');
    el.classList.toggle('is-live', mode === 'live');
    el.classList.toggle('is-down', mode === 'down');
    el.classList.toggle('is-report', mode === 'report' || mode === 'snapshot');
    const text = { live: 'live', down: 'offline', report: 'static report', snapshot: 'snapshot (not updating)' }[mode];
    const t = $('#live-text');
    if (t.textContent !== text) t.textContent = text;
  }

  function showBanner(html, isError, offerReset) {
    const b = $('#banner');
    b.innerHTML = html + (offerReset ? '<button type="button" data-action="reset">Reset filters</button>' : '');
    b.classList.toggle('is-error', !!isError);
    b.hidden = false;
  }
  function hideBanner() {
    const b = $('#banner');
    if (!b.hidden) {
      b.hidden = true;
      b.textContent = '';
    }
  }

  /** Task and modality selects: shown only for a scoped workspace. */
  function renderOptions(d) {
    const tasks = Array.isArray(d.tasks) ? d.tasks : [];
    const mods = Array.isArray(d.modalities) ? d.modalities : [];
    const key = JSON.stringify([!!d.scoped, tasks, mods, state.query.task, state.query.modality]);
    if (key === state.optionsKey) return;
    state.optionsKey = key;
    const fill = (sel, values, current, allLabel) => {
      const list = values.slice();
      if (current && !list.includes(current)) list.push(current);
      sel.innerHTML = `<option value="">${allLabel}</option>` +
        list.map((v) => `<option value="${esc(v)}">${esc(v)}</option>`).join('');
      sel.value = current || '';
    };
    const scoped = !!d.scoped || !!state.query.task || !!state.query.modality;
    $('#task-field').hidden = !scoped || (!tasks.length && !state.query.task);
    $('#modality-field').hidden = !scoped || (!mods.length && !state.query.modality);
    fill($('#task'), tasks, state.query.task, 'all tasks');
    fill($('#modality'), mods, state.query.modality, 'all modalities');
  }

  function syncControls() {
    const q = state.query;
    $('#show').value = q.show;
    $('#order').value = q.order;
    const pp = $('#per-page');
    if (![...pp.options].some((o) => o.value === String(q.per_page))) {
      pp.insertAdjacentHTML('beforeend', `<option>${q.per_page}</option>`);
    }
    pp.value = String(q.per_page);
    const search = $('#search');
    if (document.activeElement !== search && search.value !== q.q) search.value = q.q;
    for (const tile of document.querySelectorAll('#counts [data-show]')) {
      tile.setAttribute('aria-pressed', String(tile.dataset.show === q.show));
    }
  }

  function renderLegend(d) {
    const by = (d.counts && d.counts.by_status) || {};
    const ul = $('#legend');
    if (!state.legendBuilt) {
      ul.innerHTML = STATUSES.map(([name, label, glyph]) =>
        `<li data-status="${name}"><span class="chip ${statusClass(name)}" aria-hidden="true">${glyph}</span>` +
        `<span>${esc(label)}</span> <span class="num"></span></li>`).join('');
      state.legendBuilt = true;
    }
    for (const li of ul.children) {
      const n = by[li.dataset.status];
      li.querySelector('.num').textContent = n ? fmtInt(n) : '';
    }
  }

  function cellLabels(row, cell) {
    const m = metaOf(cell.status);
    const unit = row.task || row.modality ? ` · ${[row.task, row.modality].filter(Boolean).join('/')}` : '';
    return {
      title: `${row.record_id}${unit} · ${cell.step} · ${cell.status}`,
      aria: `${row.record_id}${unit}, ${cell.step}: ${m.label}`,
      glyph: m.glyph,
    };
  }

  function cellHTML(row, cell, withName, scoped) {
    const status = cell.status;
    const L = cellLabels(row, cell);
    const scopedAttrs = scoped
      ? ` data-task="${esc(row.task ?? '')}" data-modality="${esc(row.modality ?? '')}"` : '';
    const inner = withName
      ? `<span class="g" aria-hidden="true">${L.glyph}</span><span class="sn">${esc(cell.step)}</span>`
      : `<span class="g" aria-hidden="true">${L.glyph}</span>`;
    return `<button type="button" class="cell chip ${statusClass(status)}" data-record="${esc(row.record_id)}"` +
      ` data-step="${esc(cell.step)}" data-status="${esc(status)}"${scopedAttrs}` +
      ` title="${esc(L.title)}" aria-label="${esc(L.aria)}">${inner}</button>`;
  }

  /** The cells a row shows, in display order: by header step when there is a header
   * (null where the row lacks that step), else the row's own cells. */
  function shownCells(row, steps) {
    const cells = Array.isArray(row.cells) ? row.cells : [];
    if (!steps.length) return cells;
    const aligned = cells.length === steps.length && cells.every((c, i) => c.step === steps[i]);
    return aligned ? cells : steps.map((s) => cells.find((c) => c.step === s) || null);
  }

  function renderGrid(d) {
    const scoped = !!d.scoped;
    const steps = Array.isArray(d.steps) ? d.steps : [];
    const rows = Array.isArray(d.rows) ? d.rows : [];
    const shown = rows.map((r) => shownCells(r, steps));
    const layout = JSON.stringify([scoped, steps]);
    const keys = rows.map((r, i) => JSON.stringify([r.record_id, r.task, r.modality, shown[i].map((c) => c && c.step)]));
    const prev = state.grid;
    if (prev && rows.length && prev.layout === layout && prev.keys.length === keys.length &&
      prev.keys.every((k, i) => k === keys[i])) {
      patchGrid(rows, shown, steps, scoped);
      return;
    }
    state.grid = { layout, keys, rows, shown };

    const head = ['<tr><th scope="col" class="rec">Record</th>'];
    if (scoped) head.push('<th scope="col">Task</th><th scope="col">Modality</th>');
    if (steps.length) {
      for (const s of steps) head.push(`<th scope="col" class="step" title="${esc(s)}">${esc(s)}</th>`);
      head.push('<td class="fill" aria-hidden="true"></td>');
    } else {
      head.push('<th scope="col">Steps</th>');
    }
    head.push('</tr>');
    const ncols = 1 + (scoped ? 2 : 0) + Math.max(1, steps.length) + (steps.length ? 1 : 0);

    const out = [];
    // Scoped: a record's units are consecutive rows; when the page has such groups, a
    // stronger line ends each record and its repeated IDs are muted.
    const sameAsPrev = (i) => i > 0 && rows[i - 1].record_id === rows[i].record_id;
    const grouped = scoped && rows.some((r, i) => sameAsPrev(i));
    rows.forEach((row, i) => {
      const same = grouped && sameAsPrev(i);
      const end = grouped && i + 1 < rows.length && !sameAsPrev(i + 1) ? ' class="end"' : '';
      out.push(`<tr${end}>${rowHeadHTML(row, same)}`);
      if (scoped) out.push(`<td class="tm">${esc(row.task ?? '')}</td><td class="tm">${esc(row.modality ?? '')}</td>`);
      if (steps.length) {
        for (const cell of shown[i]) {
          out.push(cell ? `<td class="c">${cellHTML(row, cell, false, scoped)}</td>` : '<td class="c"></td>');
        }
        out.push('<td class="fill"></td>');
      } else {
        out.push('<td class="cells">');
        for (const cell of shown[i]) out.push(cellHTML(row, cell, true, scoped));
        out.push('</td>');
      }
      out.push('</tr>');
    });
    if (!rows.length) {
      state.grid = null;
      out.push(`<tr><td class="empty${emptyIsGood(d) ? ' good' : ''}" colspan="${ncols}">${emptyMessage(d)}</td></tr>`);
    }

    const table = $('#grid');
    const focused = focusedCell();
    table.tHead.innerHTML = head.join('');
    table.tBodies[0].innerHTML = out.join('');
    table.classList.toggle('scoped', scoped);
    markCurrentCell();
    if (focused) {
      // Live re-render: keep keyboard focus on the same cell.
      const again = findCell(focused);
      if (again) again.focus({ preventScroll: true });
    }
  }

  function rowHeadHTML(row, repeated) {
    const id = row.record_id;
    return `<th scope="row"${repeated ? ' class="rep"' : ''} title="${esc(id)}">${esc(id)}` +
      (row.arriving ? '<span class="tag" title="files still settling">arriving</span>' : '') + '</th>';
  }

  /** Same rows, same cells: change only what changed, in place. Focus, hover, a text
   * selection and element references (a browser test's) survive the live update. */
  function patchGrid(rows, shown, steps, scoped) {
    const prev = state.grid;
    const trs = $('#grid').tBodies[0].rows;
    const first = 1 + (scoped ? 2 : 0);
    rows.forEach((row, i) => {
      const tr = trs[i];
      if (!tr) return;
      if (!!row.arriving !== !!prev.rows[i].arriving) {
        tr.cells[0].outerHTML = rowHeadHTML(row, tr.cells[0].classList.contains('rep'));
      }
      const before = prev.shown[i];
      shown[i].forEach((cell, j) => {
        if (!cell || (before[j] && before[j].status === cell.status)) return;
        const el = steps.length ? tr.cells[first + j].firstElementChild : tr.cells[first].children[j];
        if (!el) return;
        const L = cellLabels(row, cell);
        el.className = `cell chip ${statusClass(cell.status)}${el.classList.contains('current') ? ' current' : ''}`;
        el.dataset.status = cell.status;
        el.title = L.title;
        el.setAttribute('aria-label', L.aria);
        el.firstElementChild.textContent = L.glyph;
      });
    });
    state.grid = { layout: prev.layout, keys: prev.keys, rows, shown };
  }

  function emptyIsGood(d) {
    const q = state.query;
    return !q.q && !q.task && !q.modality && d.counts && d.counts.records > 0 &&
      ['failed', 'in_flight', 'queued', 'stale', 'arriving'].includes(q.show);
  }

  function emptyMessage(d) {
    const q = state.query;
    if (d.counts && d.counts.records === 0) return 'The board is empty: no records found yet.';
    const filtered = q.q || q.task || q.modality;
    const what = {
      failed: 'Nothing failed',
      in_flight: 'Nothing is processing',
      queued: 'Nothing is queued',
      stale: 'Nothing is waiting to run',
      arriving: 'Nothing is arriving',
    }[q.show];
    if (what && !filtered) return `✓ ${what}.`;
    const bits = [];
    if (q.q) bits.push(`record ID containing “${esc(q.q)}”`);
    if (q.task) bits.push(`task ${esc(q.task)}`);
    if (q.modality) bits.push(`modality ${esc(q.modality)}`);
    return `No ${q.show === 'all' ? '' : esc($('#show').selectedOptions[0]?.textContent || q.show) + ' '}rows` +
      (bits.length ? ` with ${bits.join(', ')}` : '') + '.';
  }

  function renderPager(d) {
    const q = state.query;
    const total = typeof d.total === 'number' ? d.total : 0;
    const n = Array.isArray(d.rows) ? d.rows.length : 0;
    const start = q.page * q.per_page;
    $('#range').textContent = total && n
      ? `${fmtInt(start + 1)}–${fmtInt(start + n)} of ${fmtInt(total)}`
      : `0 of ${fmtInt(total)}`;
    $('#prev').disabled = q.page <= 0;
    $('#next').disabled = start + n >= total;
  }

  // ---- cells: focus and keyboard --------------------------------------------------------

  function cellKey(el) {
    return { record: el.dataset.record, step: el.dataset.step, task: el.dataset.task, modality: el.dataset.modality };
  }
  function focusedCell() {
    const a = document.activeElement;
    return a && a.classList && a.classList.contains('cell') && $('#grid').contains(a) ? cellKey(a) : null;
  }
  function findCell(k) {
    for (const el of $('#grid').querySelectorAll('.cell')) {
      if (el.dataset.record === k.record && el.dataset.step === k.step &&
        (k.task === undefined || (el.dataset.task || '') === (k.task || '')) &&
        (k.modality === undefined || (el.dataset.modality || '') === (k.modality || ''))) return el;
    }
    return null;
  }
  function markCurrentCell() {
    for (const el of $('#grid').querySelectorAll('.cell.current')) el.classList.remove('current');
    const det = state.detail;
    if (!det) return;
    const k = { record: det.record, step: det.step };
    if (state.data && state.data.scoped) {
      k.task = det.task || '';
      k.modality = det.modality || '';
    }
    const el = findCell(k);
    if (el) el.classList.add('current');
  }

  function onGridKey(ev) {
    const el = ev.target;
    if (!el.classList || !el.classList.contains('cell')) return;
    const moves = { ArrowLeft: [0, -1], ArrowRight: [0, 1], ArrowUp: [-1, 0], ArrowDown: [1, 0] };
    const mv = moves[ev.key];
    if (!mv) return;
    const tr = el.closest('tr');
    const inRow = [...tr.querySelectorAll('.cell')];
    const i = inRow.indexOf(el);
    let target = null;
    if (mv[0] === 0) {
      target = inRow[i + mv[1]] || null;
    } else {
      let other = mv[0] < 0 ? tr.previousElementSibling : tr.nextElementSibling;
      while (other && !other.querySelector('.cell')) other = mv[0] < 0 ? other.previousElementSibling : other.nextElementSibling;
      if (other) {
        const cells = other.querySelectorAll('.cell');
        target = cells[Math.min(i, cells.length - 1)];
      }
    }
    if (target) {
      ev.preventDefault();
      target.focus();
    }
  }

  // ---- the detail panel -----------------------------------------------------------------

  function openDetail(cell) {
    const k = cellKey(cell);
    state.detail = {
      record: k.record,
      task: k.task || null,
      modality: k.modality || null,
      step: k.step,
      data: null,
      text: '',
      error: null,
      seq: 0,
      generation: null,
      opener: k,
      local: !!state.report,
    };
    const panel = $('#detail');
    panel.hidden = false;
    $('#detail-title').textContent = k.record;
    $('#detail-body').innerHTML = '<p class="msg">Loading…</p>';
    markCurrentCell();
    panel.focus();
    if (state.report) {
      const recs = state.report.records;
      if (has(recs, k.record)) state.detail.data = recs[k.record];
      else state.detail.error = 'There is no detail in this report for this record.';
      renderDetail();
    } else {
      fetchDetail(true);
    }
  }

  async function fetchDetail(first) {
    const det = state.detail;
    if (!det) return;
    const seq = ++det.seq;
    const generation = state.data ? state.data.generation : null;
    try {
      const body = await getJSON('api/records/' + encodeURIComponent(det.record));
      if (state.detail !== det || seq !== det.seq) return;
      det.generation = generation;
      const text = JSON.stringify(body);
      if (!first && !det.error && text === det.text) return; // unchanged: keep the DOM (and a selection)
      det.text = text;
      det.data = body;
      det.error = null;
    } catch (err) {
      if (state.detail !== det || seq !== det.seq) return;
      if (err instanceof HttpError && err.status === 404) {
        det.data = null;
        det.error = 'This record is not on the board (any more).';
      } else if (first || !det.data) {
        det.error = `Could not load the record: ${err && err.message ? err.message : err}`;
      } else {
        return; // keep the detail shown; the status poll shows the connection banner
      }
      det.generation = generation;
    }
    renderDetail();
  }

  function sameUnit(u, det) {
    return (u.task ?? null) === (det.task ?? null) && (u.modality ?? null) === (det.modality ?? null);
  }

  function unitLabel(u) {
    const bits = [];
    if (u.task) bits.push(`task ${esc(u.task)}`);
    if (u.modality) bits.push(`modality ${esc(u.modality)}`);
    return bits.join(' · ');
  }

  function renderDetail() {
    const det = state.detail;
    if (!det) return;
    const body = $('#detail-body');
    const scroll = body.scrollTop;
    $('#detail-title').textContent = det.record;
    if (det.error) {
      body.innerHTML = `<p class="msg">${esc(det.error)}</p>`;
      return;
    }
    const units = (det.data && Array.isArray(det.data.units)) ? det.data.units : [];
    const unit = units.find((u) => sameUnit(u, det)) || units[0];
    if (!unit) {
      body.innerHTML = '<p class="msg">This record has no steps.</p>';
      return;
    }
    const steps = Array.isArray(unit.steps) ? unit.steps : [];
    const step = steps.find((s) => s.step === det.step) || steps[0];
    const out = [];
    const label = unitLabel(unit);
    if (label || unit.arriving) {
      out.push(`<p class="unit-label">${label}${unit.arriving ? ' <span class="chip s-ARRIVING">↓ files still arriving</span>' : ''}</p>`);
    }
    out.push(step ? stepCard(step, steps.length) : '<div id="detail-step" class="step-card"><p class="msg">Step not found.</p></div>');

    out.push(`<h3>Steps of this ${units.length > 1 ? 'unit' : 'record'}</h3><ul class="steps-list">`);
    for (const s of steps) {
      const m = metaOf(s.status);
      const why = Array.isArray(s.reasons) && s.reasons.length ? s.reasons[0] : m.label;
      out.push(`<li><button type="button" data-detail-step="${esc(s.step)}"` +
        `${step && s.step === step.step ? ' aria-current="true"' : ''}>` +
        `<span class="chip ${statusClass(s.status)}" title="${esc(s.status)}">${m.glyph}</span>` +
        `<span class="nm">${esc(s.step)}</span><span class="why">${esc(why)}</span></button></li>`);
    }
    out.push('</ul>');

    const others = units.filter((u) => u !== unit);
    if (others.length) {
      out.push('<h3>Other units of this record</h3><ul class="units-list">');
      for (const u of others) {
        out.push(`<li><span class="ul">${unitLabel(u) || 'unit'}</span>`);
        for (const s of Array.isArray(u.steps) ? u.steps : []) {
          const m = metaOf(s.status);
          out.push(`<button type="button" class="chip ${statusClass(s.status)}" data-detail-unit-task="${esc(u.task ?? '')}"` +
            ` data-detail-unit-modality="${esc(u.modality ?? '')}" data-detail-step="${esc(s.step)}"` +
            ` title="${esc(`${s.step} · ${s.status}`)}" aria-label="${esc(`${s.step}: ${m.label}`)}">${m.glyph}</button>`);
        }
        out.push('</li>');
      }
      out.push('</ul>');
    }
    body.innerHTML = out.join('');
    body.scrollTop = scroll;
  }

  function pathList(paths) {
    if (!Array.isArray(paths) || !paths.length) return '<span class="none">none</span>';
    const li = (p) => `<li>${esc(p)}</li>`;
    const SHOWN = 8;
    let html = `<ul class="paths">${paths.slice(0, SHOWN).map(li).join('')}</ul>`;
    if (paths.length > SHOWN) {
      html += `<details class="more"><summary>${fmtInt(paths.length - SHOWN)} more</summary>` +
        `<ul class="paths">${paths.slice(SHOWN).map(li).join('')}</ul></details>`;
    }
    return html;
  }

  function stepCard(s, count) {
    const m = metaOf(s.status);
    const out = [`<section id="detail-step" class="step-card s-border-${esc(s.status)}" data-step="${esc(s.step)}" data-status="${esc(s.status)}" aria-label="Step ${esc(s.step)}">`];
    out.push(`<div class="head"><span class="name">${esc(s.step)}</span>`);
    if (typeof s.index === 'number') out.push(`<span class="idx">step ${s.index}${count ? ` of ${count}` : ''}</span>`);
    out.push(`<span class="chip ${statusClass(s.status)}">${m.glyph} ${esc(m.label)}</span></div>`);
    const reasons = Array.isArray(s.reasons) ? s.reasons : [];
    if (reasons.length) out.push(`<ul class="reasons">${reasons.map((r) => `<li>${esc(r)}</li>`).join('')}</ul>`);

    out.push('<h3>Last run</h3>');
    const run = s.last_run;
    if (run && typeof run === 'object') {
      out.push('<dl class="kv">');
      out.push(`<dt>result</dt><dd>${esc(run.result ?? '')}</dd>`);
      if (run.started) out.push(`<dt>started</dt><dd title="${esc(run.started)}">${esc(fmtLocal(run.started))}</dd>`);
      if (run.finished) out.push(`<dt>finished</dt><dd title="${esc(run.finished)}">${esc(fmtLocal(run.finished))}</dd>`);
      if (typeof run.duration_s === 'number') out.push(`<dt>duration</dt><dd>${esc(fmtDuration(run.duration_s))}</dd>`);
      if (run.error) out.push(`<dt>error</dt><dd class="err">${esc(run.error)}</dd>`);
      out.push('</dl>');
    } else {
      out.push('<p class="none">never ran</p>');
    }

    out.push(`<h3>Inputs</h3>${pathList(s.inputs)}<h3>Outputs</h3>${pathList(s.outputs)}`);

    const log = Array.isArray(s.log) ? s.log : [];
    out.push('<h3>Log (last lines)</h3>');
    if (log.length) {
      out.push('<table class="log"><thead><tr><th scope="col">time</th><th scope="col">status</th><th scope="col">message</th></tr></thead><tbody>');
      for (const line of log) {
        const lv = META[line.status] ? ` class="lv-${line.status}"` : '';
        out.push(`<tr${lv}><td class="t" title="${esc(line.time)}">${esc(fmtLocal(line.time) || line.time)}</td>` +
          `<td class="st">${esc(line.status)}</td><td class="m">${esc(line.message)}</td></tr>`);
      }
      out.push('</tbody></table>');
    } else {
      out.push('<p class="none">no log lines for this step</p>');
    }
    out.push('</section>');
    return out.join('');
  }

  function closeDetail() {
    const det = state.detail;
    if (!det) return;
    state.detail = null;
    $('#detail').hidden = true;
    $('#detail-body').innerHTML = '';
    markCurrentCell();
    const back = det.opener ? findCell(det.opener) : null;
    if (back) back.focus();
  }

  function onDetailClick(ev) {
    if (ev.target.closest('#detail-close')) {
      closeDetail();
      return;
    }
    const btn = ev.target.closest('[data-detail-step]');
    const det = state.detail;
    if (!btn || !det) return;
    if (btn.hasAttribute('data-detail-unit-task')) {
      det.task = btn.dataset.detailUnitTask || null;
      det.modality = btn.dataset.detailUnitModality || null;
    }
    det.step = btn.dataset.detailStep;
    renderDetail();
    markCurrentCell();
    const card = $('#detail-step');
    if (card) card.scrollIntoView({ block: 'nearest' });
  }

  // ---- events ---------------------------------------------------------------------------

  function setQuery(changes) {
    Object.assign(state.query, changes);
    if (!('page' in changes)) state.query.page = 0;
    refresh();
  }

  function bind() {
    $('#show').addEventListener('change', (e) => setQuery({ show: e.target.value }));
    $('#order').addEventListener('change', (e) => setQuery({ order: e.target.value }));
    $('#task').addEventListener('change', (e) => setQuery({ task: e.target.value }));
    $('#modality').addEventListener('change', (e) => setQuery({ modality: e.target.value }));
    $('#per-page').addEventListener('change', (e) => {
      const pp = Number.parseInt(e.target.value, 10) || DEFAULTS.per_page;
      // Keep the first shown row on the new page.
      const first = state.query.page * state.query.per_page;
      setQuery({ per_page: pp, page: Math.floor(first / pp) });
    });
    const search = $('#search');
    search.addEventListener('input', () => {
      clearTimeout(state.searchTimer);
      state.searchTimer = setTimeout(() => {
        if (search.value !== state.query.q) setQuery({ q: search.value.slice(0, 200) });
      }, SEARCH_DEBOUNCE_MS);
    });
    $('#filters').addEventListener('submit', (e) => {
      e.preventDefault();
      clearTimeout(state.searchTimer);
      if (search.value !== state.query.q) setQuery({ q: search.value.slice(0, 200) });
    });
    $('#counts').addEventListener('click', (e) => {
      const tile = e.target.closest('[data-show]');
      if (tile) setQuery({ show: tile.dataset.show });
    });
    $('#summary').addEventListener('click', (e) => {
      if (e.target.closest('[data-action="failed"]')) setQuery({ show: 'failed' });
    });
    $('#banner').addEventListener('click', (e) => {
      if (e.target.closest('[data-action="reset"]')) {
        state.query = Object.assign({}, DEFAULTS);
        hideBanner();
        refresh();
      }
    });
    $('#prev').addEventListener('click', () => {
      if (state.query.page > 0) setQuery({ page: state.query.page - 1 });
    });
    $('#next').addEventListener('click', () => setQuery({ page: state.query.page + 1 }));

    const grid = $('#grid');
    grid.addEventListener('click', (e) => {
      const cell = e.target.closest('.cell');
      if (cell && grid.contains(cell)) openDetail(cell);
    });
    grid.addEventListener('keydown', onGridKey);
    $('#detail').addEventListener('click', onDetailClick);

    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && state.detail) {
        e.preventDefault();
        closeDetail();
      } else if (e.key === '/' && !e.ctrlKey && !e.metaKey && !e.altKey &&
        !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement?.tagName || '')) {
        e.preventDefault();
        search.focus();
        search.select();
      }
    });
    document.addEventListener('visibilitychange', () => {
      // Back to the tab: ask now instead of waiting for the slow hidden-tab poll.
      if (!document.hidden && !state.report && state.timer && !state.failures) load();
    });
    window.addEventListener('popstate', () => {
      state.query = readQuery();
      refresh();
    });
  }

  function init() {
    bind();
    state.report = readEmbedded();
    if (state.report) {
      document.body.classList.add('report');
      setLive('report');
      refresh();
    } else {
      writeURL(); // drop unknown or invalid parameters from the address
      load();
    }
    setInterval(tickUpdated, 1000); // the clock only; polling chains setTimeout after each answer
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
