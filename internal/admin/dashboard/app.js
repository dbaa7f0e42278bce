// brood dashboard. Everything from the cluster is inserted as text
// (textContent, setAttribute); nothing here parses markup from data.
(function () {
  'use strict';

  var params = new URLSearchParams(location.search);
  // poll: the /status interval in ms (default 1 s). The sparklines keep the
  // last HISTORY polls: 5 minutes at the default.
  var POLL = clamp(parseInt(params.get('poll') || '1000', 10) || 1000, 50, 60000);
  var HISTORY = 300;
  var WINDOW = HISTORY * POLL;
  var MAX_EVENTS = 200;
  var EVENT_TYPES = ['started', 'ready', 'exited', 'restarting', 'restarted', 'replaced',
    'cluster-ready', 'start-failed', 'reload-begun', 'reload-ended', 'scaled',
    'schedule-run', 'logs-rotated', 'stopping', 'stopped', 'fleet', 'leader',
    'upgrade-begun', 'upgrade-ended'];
  var SVG = 'http://www.w3.org/2000/svg';

  var $ = function (id) { return document.getElementById(id); };

  var state = {
    status: null,
    statusOK: null,     // null before the first answer
    streamOK: false,
    streamNote: '',
    lastPoll: 0,
    hist: new Map(),    // slot key -> {samples: [{t, rss, cpu, pid}], marks: [t], pid}
    master: { samples: [], marks: [], pid: 0 },
    rows: new Map(),    // slot key -> row parts
    events: [],         // newest first: {seq, row}
    pending: [],
    flushing: false,
    loaded: false,
    lastSeq: 0
  };

  function clamp(v, lo, hi) { return Math.max(lo, Math.min(hi, v)); }

  // el builds an element; string children become text nodes.
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(SVG, tag);
    for (var k in attrs) e.setAttribute(k, String(attrs[k]));
    return e;
  }
  function setText(node, text) {
    text = text == null ? '' : String(text);
    if (node.textContent !== text) node.textContent = text;
  }
  function setData(node, key, value) {
    value = value == null ? '' : String(value);
    if (node.getAttribute('data-' + key) !== value) node.setAttribute('data-' + key, value);
  }
  function badge(text, tone, pulse) {
    var b = el('span', 'badge', text);
    setBadge(b, text, tone, pulse);
    return b;
  }
  function setBadge(b, text, tone, pulse) {
    setText(b, text);
    setData(b, 'tone', tone || '');
    setData(b, 'pulse', pulse ? '1' : '');
  }

  // ---- formatting ----
  function pad(n, w) { n = String(n); while (n.length < (w || 2)) n = '0' + n; return n; }
  function fmtBytes(b) {
    if (!b) return '–';
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b.toFixed(0) : b >= 100 ? b.toFixed(0) : b.toFixed(1)) + ' ' + u[i];
  }
  function fmtCPU(p) {
    if (p == null || isNaN(p)) return '–';
    return (p >= 100 ? p.toFixed(0) : p.toFixed(1)) + '%';
  }
  function fmtDur(s) {
    if (s == null || isNaN(s) || s < 0) return '–';
    s = Math.floor(s);
    var d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60), x = s % 60;
    if (d) return d + 'd ' + h + 'h';
    if (h) return h + 'h ' + pad(m) + 'm';
    if (m) return m + 'm ' + pad(x) + 's';
    return x + 's';
  }
  function fmtSecs(s) {
    if (!s) return '–';
    if (s < 1) return Math.round(s * 1000) + ' ms';
    if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + ' s';
    return fmtDur(s);
  }
  function fmtNum(n) { return n == null ? '–' : Number(n).toLocaleString('en-US'); }
  function fmtClock(d) {
    return pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
  }
  // fmtStamp: the clock time, with the date when it is not today.
  function fmtStamp(d) {
    var now = new Date();
    var day = d.getFullYear() === now.getFullYear() && d.getMonth() === now.getMonth() && d.getDate() === now.getDate();
    return (day ? '' : d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ') + fmtClock(d);
  }
  function fmtWindow(ms) {
    return ms % 60000 === 0 ? ms / 60000 + ' min' : Math.round(ms / 1000) + ' s';
  }
  function validTime(t) {
    if (!t) return null;
    var d = new Date(t);
    return isNaN(d.getTime()) || d.getFullYear() < 1971 ? null : d;
  }
  function fmtRel(t) {
    var d = validTime(t);
    if (!d) return '–';
    var s = (d.getTime() - Date.now()) / 1000;
    if (Math.abs(s) < 1) return 'now';
    return s < 0 ? fmtDur(-s) + ' ago' : 'in ' + fmtDur(s);
  }
  function slotName(role, id) {
    if (!role) return '';
    return role === 'agent' && !id ? 'agent' : role + ' ' + id;
  }

  // ---- tones ----
  var CRASH = { signal: 1, panic: 1, hang: 1, exit: 1 };
  function stateTone(s) {
    switch (s) {
      case 'ready': case 'running': return ['good', false];
      case 'starting': return ['info', true];
      case 'stopping': return ['warn', true];
      case 'restarting': return ['bad', true];
      default: return ['', false];
    }
  }
  function kindTone(k) {
    if (CRASH[k]) return 'bad';
    switch (k) {
      case 'memory': return 'warn';
      case 'reload': case 'upgrade': return 'info';
      case 'scale': return 'violet';
      default: return '';
    }
  }
  function resultTone(r) {
    switch (r) {
      case 'ok': case 'success': return 'good';
      case 'failed': case 'error': case 'crashed': case 'timeout': case 'panic': return 'bad';
      case 'skipped': return '';
      default: return r ? 'warn' : '';
    }
  }
  // eventTone: the tone of the row ('bad' for crashes and failures).
  function eventTone(e) {
    if (resultTone(e.result) === 'bad' || e.type === 'start-failed') return 'bad';
    if (e.type === 'exited') return CRASH[e.reason] ? 'bad' : e.reason === 'memory' ? 'warn' : '';
    if (e.type === 'restarting') return 'warn';
    return '';
  }
  function typeTone(e) {
    var t = eventTone(e);
    if (t) return t;
    switch (e.type) {
      case 'ready': case 'cluster-ready': case 'restarted': return 'good';
      case 'started': return 'info';
      case 'replaced': case 'reload-begun': case 'scaled': return 'violet';
      case 'reload-ended': case 'schedule-run': return resultTone(e.result) || 'good';
      case 'stopping': return 'warn';
      case 'leader': return e.result === 'start' ? 'violet' : '';
      case 'fleet': return e.result === 'connected' ? 'good' : 'warn';
      default: return '';
    }
  }

  // ---- sparklines ----
  function record(h, t, pid, rss, cpu) {
    // The slot's process went away or changed: a restart. One mark for
    // old -> new and for old -> (none) -> new alike.
    if (h.pid && pid !== h.pid) h.marks.push(t);
    h.pid = pid;
    h.samples.push({ t: t, pid: pid, rss: pid ? rss : null, cpu: pid ? cpu : null });
    var cut = t - WINDOW;
    while (h.samples.length && h.samples[0].t < cut) h.samples.shift();
    while (h.marks.length && h.marks[0] < cut) h.marks.shift();
  }

  function drawSpark(box, h, key, kind, unit) {
    var W = Math.max(40, Math.round(box.clientWidth || 140)), H = Math.round(box.clientHeight || 28) || 28;
    var now = state.lastPoll || Date.now(), t0 = now - WINDOW;
    var vals = [];
    h.samples.forEach(function (s) { if (s[key] != null) vals.push(s[key]); });
    var lo = 0, hi = 1;
    if (vals.length) {
      lo = Math.min.apply(null, vals); hi = Math.max.apply(null, vals);
      if (kind === 'cpu') {
        lo = 0; hi = Math.max(hi * 1.15, 1);
      } else {
        var span = Math.max(hi - lo, hi * 0.08, 1);
        var mid = (hi + lo) / 2;
        lo = Math.max(0, mid - span * 0.62); hi = lo + span * 1.24;
      }
    }
    var x = function (t) { return ((t - t0) / WINDOW) * (W - 3) + 1; };
    var y = function (v) { return H - 2 - ((v - lo) / (hi - lo)) * (H - 5); };

    var root = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img' });
    var title = svg('title', {});
    title.textContent = vals.length
      ? (kind === 'cpu' ? 'CPU ' : 'RSS ') + unit(Math.min.apply(null, vals)) + ' – ' + unit(Math.max.apply(null, vals)) +
        ' over the last ' + fmtWindow(WINDOW) + (h.marks.length ? ' · ' + h.marks.length + ' restart(s)' : '')
      : 'no samples yet';
    root.appendChild(title);
    root.appendChild(svg('line', { class: 'base', x1: 0, x2: W, y1: H - 1.5, y2: H - 1.5 }));

    // One segment per process: a restart (or a gap with no process) breaks the line.
    var segs = [], cur = null, lastPid = null;
    h.samples.forEach(function (s) {
      var v = s[key];
      if (v == null || s.pid !== lastPid) { cur = null; }
      lastPid = s.pid;
      if (v == null) return;
      if (!cur) { cur = []; segs.push(cur); }
      cur.push([x(s.t), y(v)]);
    });
    segs.forEach(function (pts) {
      var d = pts.map(function (p, i) { return (i ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1); }).join('');
      if (pts.length > 1) {
        root.appendChild(svg('path', { class: 'area', d: d + 'L' + pts[pts.length - 1][0].toFixed(1) + ' ' + (H - 1.5) + 'L' + pts[0][0].toFixed(1) + ' ' + (H - 1.5) + 'Z' }));
      }
      root.appendChild(svg('path', { class: 'line', d: d }));
    });
    h.marks.forEach(function (t) {
      var mx = x(t).toFixed(1);
      root.appendChild(svg('line', { class: 'mark', x1: mx, x2: mx, y1: 2, y2: H - 1 }));
      root.appendChild(svg('circle', { class: 'mark-dot', cx: mx, cy: 2.5, r: 2 }));
    });
    var last = segs.length && segs[segs.length - 1];
    if (last) {
      var p = last[last.length - 1];
      root.appendChild(svg('circle', { class: 'end', cx: p[0].toFixed(1), cy: p[1].toFixed(1), r: 2.2 }));
    }
    box.replaceChildren(root);
    setData(box, 'samples', h.samples.length);
    setData(box, 'span', h.samples.length ? Math.round(now - h.samples[0].t) : 0);
    var gap = 0;
    for (var i = h.samples.length - 1; i >= 0 && h.samples[i][key] == null; i--) gap++;
    setData(box, 'gap', gap); // samples since the slot last had a process
  }

  // ---- status ----
  function poll() {
    var ctl = typeof AbortController === 'function' ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, Math.max(3000, POLL * 3)) : 0;
    fetch('status', { cache: 'no-store', signal: ctl ? ctl.signal : undefined, headers: { Accept: 'application/json' } })
      .then(function (r) {
        if (!r.ok) throw new Error('status ' + r.status);
        return r.json();
      })
      .then(function (st) { state.statusOK = true; applyStatus(st); })
      .catch(function () { state.statusOK = false; })
      .then(function () {
        clearTimeout(timer);
        renderConn();
        setTimeout(poll, POLL);
      });
  }

  function applyStatus(st) {
    state.status = st;
    var now = Date.now();
    state.lastPoll = now;

    setText($('name'), st.name || $('name').textContent);
    if (st.name) document.title = st.name + ' · brood';
    var tone = stateTone(st.state);
    setBadge($('state'), st.state || 'unknown', tone[0], tone[1]);
    setData($('state'), 'state', st.state || '');
    var op = $('operation');
    op.hidden = !st.operation;
    if (st.operation) setBadge(op, st.operation + ' in progress', 'violet', true);

    setText($('m-pid'), st.pid || '–');
    // The master's build and in-place upgrades, as `status` shows them.
    var b = st.build || {};
    var build = [b.version === '(devel)' ? 'devel' : b.version, b.revision ? 'rev ' + b.revision.slice(0, 12) : '',
      b.modified ? 'modified' : '', b.go].filter(Boolean).join(' ') || 'unknown build';
    var ups = st.upgrades || 0;
    setText($('m-build'), build + ' · ' + ups + (ups === 1 ? ' upgrade' : ' upgrades'));
    var started = validTime(st.started_at);
    setText($('m-uptime'), started ? fmtDur((now - started.getTime()) / 1000) : '–');
    setText($('m-started'), started ? 'since ' + fmtStamp(started) : '');
    var procs = Array.isArray(st.processes) ? st.processes.slice() : [];
    var workers = procs.filter(function (p) { return p.role === 'worker'; });
    var readyW = workers.filter(function (p) { return p.state === 'ready'; }).length;
    setText($('m-workers'), readyW + ' / ' + (st.workers != null ? st.workers : workers.length));
    var notReady = workers.length - readyW;
    setText($('m-workers-s'), notReady ? notReady + ' not ready' : workers.length ? 'all ready' : '');
    var listen = $('m-listen');
    var addrs = Array.isArray(st.listen) ? st.listen : [];
    var key = addrs.join('\n');
    if (listen.getAttribute('data-addrs') !== key) {
      listen.setAttribute('data-addrs', key);
      listen.replaceChildren.apply(listen, addrs.length ? addrs.map(function (a) { return el('span', 'addr', a); }) : [el('span', 'muted', 'none')]);
    }
    setText($('m-rss'), fmtBytes(st.rss_bytes));
    setText($('m-cpu'), fmtCPU(st.cpu_percent));
    record(state.master, now, st.pid || 0, st.rss_bytes || 0, st.cpu_percent || 0);
    drawSpark($('m-rss-spark'), state.master, 'rss', 'rss', fmtBytes);
    drawSpark($('m-cpu-spark'), state.master, 'cpu', 'cpu', fmtCPU);

    var m = st.messages || {};
    setText($('c-relayed'), fmtNum(m.relayed || 0));
    setText($('c-direct'), fmtNum(m.direct || 0));
    setText($('c-held'), fmtNum(m.held || 0));
    setText($('c-refused'), fmtNum(m.refused || 0));
    setText($('c-redelivered'), fmtNum(m.redelivered || 0));
    setText($('c-lost'), fmtNum(m.lost_replies || 0));
    setText($('c-dropped'), fmtNum(st.dropped_output_lines || 0));
    setData($('c-refused').parentNode, 'alert', m.refused ? '1' : '');
    setData($('c-lost').parentNode, 'alert', m.lost_replies ? '1' : '');
    setData($('c-dropped').parentNode, 'alert', st.dropped_output_lines ? '1' : '');

    renderProcs(procs, now);
    renderSchedules(st.schedules);
    setText($('foot-text'), 'brood admin · status at ' + fmtClock(new Date(now)) + ' · polling every ' +
      (POLL >= 1000 ? POLL / 1000 + ' s' : POLL + ' ms') + ' · sparklines cover ' + fmtWindow(WINDOW) +
      (st.run_dir ? ' · run dir ' + st.run_dir : ''));
  }

  function renderProcs(procs, now) {
    procs.sort(function (a, b) {
      var ra = a.role === 'agent' ? 0 : 1, rb = b.role === 'agent' ? 0 : 1;
      return ra - rb || String(a.role).localeCompare(String(b.role)) || a.id - b.id;
    });
    var body = $('procs-body'), seen = new Set(), restarts = 0;
    procs.forEach(function (p) {
      var k = p.role + '/' + p.id;
      seen.add(k);
      restarts += p.restarts || 0;
      var h = state.hist.get(k);
      if (!h) { h = { samples: [], marks: [], pid: 0 }; state.hist.set(k, h); }
      record(h, now, p.pid || 0, p.rss_bytes || 0, p.cpu_percent || 0);
      var r = state.rows.get(k) || newRow(k);
      var pidChanged = r.tr.getAttribute('data-pid') !== String(p.pid || 0) && r.tr.getAttribute('data-pid') !== '';
      setData(r.tr, 'role', p.role);
      setData(r.tr, 'id', p.id);
      setData(r.tr, 'pid', p.pid || 0);
      setData(r.tr, 'state', p.state);
      setData(r.tr, 'restarts', p.restarts || 0);
      setText(r.role, p.role);
      setText(r.slot, p.id);
      setText(r.pid, p.pid || '–');
      var tone = stateTone(p.state);
      setBadge(r.state, p.state || 'unknown', tone[0], tone[1]);
      setText(r.uptime, p.pid ? fmtDur(p.uptime_seconds) : '–');
      setText(r.restarts, p.restarts || 0);
      setData(r.restarts, 'nonzero', p.restarts ? '1' : '');
      var kind = p.last_restart_kind || '';
      r.kind.hidden = !kind;
      if (kind) setBadge(r.kind, kind, kindTone(kind));
      setText(r.reason, p.last_restart_reason || (kind ? '' : '—'));
      setText(r.rss, p.pid ? fmtBytes(p.rss_bytes) : '–');
      setText(r.cpu, p.pid ? fmtCPU(p.cpu_percent) : '–');
      if (pidChanged) {
        r.tr.classList.remove('changed');
        void r.tr.offsetWidth; // restart the animation
        r.tr.classList.add('changed');
      }
      body.appendChild(r.tr); // keeps the sorted order; a no-op for rows in place
      drawSpark(r.rssSpark, h, 'rss', 'rss', fmtBytes);
      drawSpark(r.cpuSpark, h, 'cpu', 'cpu', fmtCPU);
    });
    state.rows.forEach(function (r, k) {
      if (!seen.has(k)) { r.tr.remove(); state.rows.delete(k); }
    });
    state.hist.forEach(function (h, k) {
      if (!seen.has(k) && (!h.samples.length || h.samples[h.samples.length - 1].t < now - WINDOW)) state.hist.delete(k);
    });
    $('procs-empty').hidden = procs.length > 0;
    setText($('proc-summary'), procs.length + (procs.length === 1 ? ' process' : ' processes') +
      ' · ' + restarts + (restarts === 1 ? ' restart' : ' restarts'));
  }

  function newRow(k) {
    var tr = el('tr');
    tr.setAttribute('data-slot', k);
    tr.setAttribute('data-pid', '');
    var r = { tr: tr };
    var cell = function (cls) { var td = el('td', cls); tr.appendChild(td); return td; };
    r.role = cell('role');
    r.slot = cell('num');
    r.pid = cell('num pid');
    r.state = badge('', '');
    cell('state').appendChild(r.state);
    r.uptime = cell('num');
    r.restarts = cell('num restarts');
    var reason = cell('reason');
    r.kind = badge('', '');
    r.kind.classList.add('plain');
    r.kind.setAttribute('data-kind', '');
    r.reason = el('span', 'text');
    reason.appendChild(r.kind);
    reason.appendChild(r.reason);
    r.rss = cell('num');
    r.rssSpark = el('div', 'spark rss');
    cell('spark').appendChild(r.rssSpark);
    r.cpu = cell('num');
    r.cpuSpark = el('div', 'spark cpu');
    cell('spark').appendChild(r.cpuSpark);
    state.rows.set(k, r);
    return r;
  }

  function renderSchedules(raw) {
    var list = Array.isArray(raw) ? raw : [];
    $('sched-card').hidden = list.length === 0;
    if (!list.length) return;
    var body = $('sched-body');
    var rows = list.map(function (s) {
      var tr = el('tr');
      tr.setAttribute('data-task', s.name || '');
      tr.setAttribute('data-disabled', s.disabled ? '1' : '');
      var name = el('td');
      name.appendChild(el('strong', null, s.name || '?'));
      if (s.disabled) { name.appendChild(document.createTextNode(' ')); name.appendChild(badge('disabled', '')); }
      tr.appendChild(name);
      tr.appendChild(el('td', null, s.type || ''));
      tr.appendChild(el('td', 'when', s.every ? 'every ' + s.every : s.cron || '–'));
      var lr = el('td', null, fmtRel(s.last_run));
      var lrd = validTime(s.last_run);
      if (lrd) lr.title = lrd.toLocaleString();
      tr.appendChild(lr);
      var res = el('td');
      if (s.running) res.appendChild(badge('running' + (s.running > 1 ? ' ×' + s.running : ''), 'info', true));
      else if (s.last_result) res.appendChild(badge(s.last_result, resultTone(s.last_result)));
      else res.appendChild(el('span', 'muted', '—'));
      tr.appendChild(res);
      tr.appendChild(el('td', 'num', fmtSecs(s.last_duration_seconds)));
      var nx = el('td', null, s.disabled ? '–' : fmtRel(s.next));
      tr.appendChild(nx);
      tr.appendChild(el('td', 'num', fmtNum(s.runs || 0)));
      var f = el('td', 'num', fmtNum(s.failures || 0));
      tr.appendChild(f);
      tr.appendChild(el('td', 'num', fmtNum(s.skips || 0)));
      return tr;
    });
    body.replaceChildren.apply(body, rows);
    var failing = list.filter(function (s) { return resultTone(s.last_result) === 'bad'; }).length;
    setText($('sched-summary'), list.length + (list.length === 1 ? ' task' : ' tasks') + (failing ? ' · ' + failing + ' failing' : ''));
  }

  // ---- events ----
  var stream = null, retryTimer = 0;
  function connect() {
    if (typeof EventSource !== 'function') { state.streamNote = 'EventSource unsupported'; renderConn(); return; }
    var url = 'events' + (state.lastSeq ? '?since=' + state.lastSeq : '');
    var es = new EventSource(url);
    stream = es;
    es.onopen = function () { state.streamOK = true; state.streamNote = ''; renderConn(); };
    es.onerror = function () {
      state.streamOK = false;
      if (es.readyState === EventSource.CLOSED) {
        // Refused outright (not a stream): try again from the last event we have.
        state.streamNote = 'event stream closed';
        clearTimeout(retryTimer);
        retryTimer = setTimeout(connect, 3000);
      } else {
        state.streamNote = 'event stream reconnecting';
      }
      renderConn();
    };
    var onEvent = function (m) {
      var e;
      try { e = JSON.parse(m.data); } catch (err) { return; }
      if (!e || typeof e !== 'object') return;
      queueEvent(e);
    };
    EVENT_TYPES.forEach(function (t) { es.addEventListener(t, onEvent); });
    es.addEventListener('message', onEvent);
    es.addEventListener('end', function (m) {
      var why = '';
      try { why = JSON.parse(m.data).reason || ''; } catch (err) { /* keep it empty */ }
      state.streamOK = false;
      state.streamNote = 'event stream ended' + (why ? ' (' + why + ')' : '') + ', reconnecting';
      renderConn();
    });
  }

  function queueEvent(e) {
    state.pending.push(e);
    if (state.pending.length > 4 * MAX_EVENTS) {
      state.pending.sort(function (a, b) { return b.seq - a.seq; });
      state.pending.length = MAX_EVENTS;
    }
    if (!state.flushing) { state.flushing = true; setTimeout(flushEvents, 16); }
  }

  function flushEvents() {
    state.flushing = false;
    var have = new Set(state.events.map(function (x) { return x.seq; }));
    var fresh = state.pending.filter(function (e) { return e.seq != null && !have.has(e.seq); });
    state.pending = [];
    var uniq = new Map();
    fresh.forEach(function (e) { uniq.set(e.seq, e); });
    fresh = Array.from(uniq.values()).sort(function (a, b) { return b.seq - a.seq; }).slice(0, MAX_EVENTS);
    var body = $('events-body');
    // Insert oldest first so that each insertion point is found from the top.
    for (var i = fresh.length - 1; i >= 0; i--) {
      var e = fresh[i];
      if (state.events.length >= MAX_EVENTS && e.seq < state.events[state.events.length - 1].seq) continue;
      var row = eventRow(e);
      if (state.loaded) row.classList.add('fresh');
      var at = 0;
      while (at < state.events.length && state.events[at].seq > e.seq) at++;
      body.insertBefore(row, at < state.events.length ? state.events[at].row : null);
      state.events.splice(at, 0, { seq: e.seq, row: row });
      if (e.seq > state.lastSeq) state.lastSeq = e.seq;
    }
    while (state.events.length > MAX_EVENTS) state.events.pop().row.remove();
    state.loaded = true;
    $('events-empty').hidden = state.events.length > 0;
    var bad = state.events.filter(function (x) { return x.row.getAttribute('data-tone') === 'bad'; }).length;
    setText($('events-summary'), (state.events.length >= MAX_EVENTS ? 'last ' : '') + state.events.length +
      (state.events.length === 1 ? ' event' : ' events') + (bad ? ' · ' + bad + ' crash' + (bad === 1 ? '' : 'es') + ' or failure' + (bad === 1 ? '' : 's') : ''));
  }

  function eventRow(e) {
    var tr = el('tr');
    tr.setAttribute('data-seq', e.seq);
    tr.setAttribute('data-type', e.type || '');
    tr.setAttribute('data-tone', eventTone(e));
    if (e.role) tr.setAttribute('data-slot', e.role + '/' + (e.id || 0));
    if (e.pid) tr.setAttribute('data-pid', e.pid);
    if (e.reason) tr.setAttribute('data-reason', e.reason);
    if (e.result) tr.setAttribute('data-result', e.result);

    var d = validTime(e.time);
    var time = el('td', 'time', d ? fmtStamp(d) : '–');
    if (d) time.title = d.toLocaleString() + ' · #' + e.seq;
    tr.appendChild(time);
    var type = el('td');
    type.appendChild(badge(e.type || '?', typeTone(e)));
    tr.appendChild(type);
    tr.appendChild(el('td', null, slotName(e.role, e.id) || '—'));
    var pid = el('td', 'num pid', e.old_pid && e.pid ? e.old_pid + ' → ' + e.pid : e.pid || e.old_pid || '—');
    tr.appendChild(pid);
    var reason = el('td');
    if (e.reason) {
      var rb = badge(e.reason, kindTone(e.reason));
      rb.classList.add('plain');
      reason.appendChild(rb);
    } else reason.appendChild(el('span', 'muted', '—'));
    tr.appendChild(reason);

    var detail = el('td', 'detail');
    var extras = [];
    if (e.result) extras.push(e.result);
    if (e.task) extras.push('task ' + e.task);
    if (e.type === 'scaled' || e.from || e.to) extras.push((e.from || 0) + ' → ' + (e.to || 0) + ' workers');
    if (e.restarts) extras.push('restart #' + e.restarts);
    if (e.backoff_seconds) extras.push('backoff ' + fmtSecs(e.backoff_seconds));
    if (e.uptime_seconds) extras.push('after ' + fmtDur(e.uptime_seconds));
    if (e.took_seconds) extras.push('took ' + fmtSecs(e.took_seconds));
    if (e.detail) detail.appendChild(el('span', null, e.detail));
    if (extras.length) detail.appendChild(el('span', 'extra', extras.join(' · ')));
    if (!e.detail && !extras.length) detail.appendChild(el('span', 'muted', ''));
    tr.appendChild(detail);
    return tr;
  }

  function renderConn() {
    var c = $('conn'), s, text;
    if (state.statusOK === null && !state.streamOK) { s = 'connecting'; text = 'connecting'; }
    else if (state.statusOK && state.streamOK) { s = 'live'; text = 'live'; }
    else if (!state.statusOK && !state.streamOK) { s = 'down'; text = 'disconnected · showing the last state'; }
    else if (!state.statusOK) { s = 'degraded'; text = 'status unavailable'; }
    else { s = 'degraded'; text = state.streamNote || 'event stream reconnecting'; }
    setData(c, 'conn', s);
    setText($('conn-text'), text);
    setData(document.body, 'stale', state.statusOK === false ? '1' : '');
  }

  document.body.setAttribute('data-window', WINDOW);
  Array.prototype.forEach.call(document.querySelectorAll('.window'), function (n) { n.textContent = fmtWindow(WINDOW); });
  connect();
  poll();
})();
