#!/usr/bin/env node
// A city on one machine (bench/city.py): a realistic mix against one hub process (or two linked
// by Redis). Config: the JSON file written by bench/city.py (argv[2]). Prints one JSON line
// {"result": {...}} on stdout at the end; progress goes to stderr.
//
// The mix:
//   - R restaurants (POST /api/tenants + two products), each with a kitchen display: /ws/inbox;
//   - D drivers (POST /api/tenants + POST /api/drivers/status online), each with its driver app's
//     /ws/inbox socket, sending {"type": "location"} frames at cfg.gpsHz (1 Hz), evenly spread
//     (open loop: driver i's k-th ping is due at tStart + (k + i / D) / gpsHz);
//   - customers: C tenants placing orders; each order's customer watches /ws/streams/{orderId}
//     from the create's answer until the hub archives the stream (HUB_ARCHIVE_DELAY 0: the
//     `archived` frame, close 1000);
//   - idle: many more customer sockets, /ws/inbox of tenants idle-N, connected and silent (after
//     dinner);
//   - orders arriving at cfg.opm per minute (open loop), each through every step over HTTP:
//     create, pay (customer), accept, ready (restaurant: TASK_DONE + TASK_ASSIGN to the nearest
//     idle driver), pickup, deliver (the driver, when its inbox shows the TASK_ASSIGN); a share
//     is cancelled by the customer after paying, rejected by the restaurant (cancel while paid),
//     declined by the first driver (reassigned), or left by a driver who goes silent (no more
//     GPS: the hub unassigns him after HUB_DRIVER_TIMEOUT and reassigns the order).
//
// Measured (one clock, performance.now()):
//   - step -> screen: from a step's HTTP request being sent to each event it wrote arriving at the
//     customer's stream socket and at the kitchen's inbox (the frame may arrive before the
//     step's answer: fan-out starts at the commit); also answer -> screen and the steps' round
//     trip;
//   - GPS -> screen: from a location frame sent by a driver to the `location` frame of that ping
//     at the customer watching the driver's order;
//   - every frame checked: customer sockets get seq 1..n of their order exactly once in order then
//     `archived`; kitchens and drivers get strictly increasing pos, and per stream gap-free seq
//     (kitchens: all of it; n read back with GET /api/streams/{id} after the run); every GPS ping
//     the delivering driver sent from 1.5 s after his inbox showed the TASK_ASSIGN (the hub
//     refreshes a driver's orders at most once a second) until his deliver reaches that order's
//     customer exactly once, k increasing;
//   - rows: hub_db_writes_total{target} before/after the orders window; streams and public must
//     equal what the paths taken write (docs/protocol.md §4.2, §4.6), tenant minus the paths'
//     rows = the GPS rows (<= 1 per driver per second);
//   - CPU (server(s), redis-server, this process) and RSS from /proc (measure.js), in three
//     windows: idle sockets only, + GPS, + orders.
'use strict';

const fs = require('fs');
const http = require('http');
const crypto = require('crypto');
const { performance, monitorEventLoopDelay } = require('perf_hooks');
const WebSocket = require('ws');
const { procSample, cpuStat, quantiles, pool, sleep } = require('./measure');
const { request: httpRequest, counters } = require('./http');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const T0 = performance.now();
const DEADLINE = T0 + cfg.timeoutS * 1000;
const CLK_TCK = cfg.clkTck || 100;
const PORTS = cfg.ports; // one per hub instance
const agents = PORTS.map(() => new http.Agent({ keepAlive: true, maxSockets: 256 }));

function log(...a) {
  process.stderr.write(`[city ${((performance.now() - T0) / 1000).toFixed(1)}s] ${a.join(' ')}\n`);
}

// ------------------------------------------------------------------ tokens (HS256, as hub token)
const b64u = (b) => Buffer.from(b).toString('base64').replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_');
const JWT_HEAD = b64u(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
function token(sub, role) {
  const body = b64u(JSON.stringify({ sub, role, iat: Math.floor(Date.now() / 1000) }));
  const sig = b64u(crypto.createHmac('sha256', cfg.secret).update(`${JWT_HEAD}.${body}`).digest());
  return `${JWT_HEAD}.${body}.${sig}`;
}
const PLATFORM = token('city-ops', 'platform');

// ------------------------------------------------------------------ HTTP
const httpErrors = {}; // "METHOD path-kind status" -> count
function noteHttp(kind, status) {
  const k = `${kind} ${status}`;
  httpErrors[k] = (httpErrors[k] || 0) + 1;
}
function req(inst, method, path, tok, body) {
  return httpRequest({ agent: agents[inst], host: cfg.host, port: PORTS[inst], timeoutMs: 30000 }, method, path, tok, body);
}
async function must(inst, method, path, tok, body, ok = [200, 201]) {
  const r = await req(inst, method, path, tok, body);
  if (!ok.includes(r.status)) throw new Error(`${method} ${path}: ${r.status} ${r.body.slice(0, 200)}`);
  return r.body ? JSON.parse(r.body) : null;
}
const instOf = (i) => i % PORTS.length; // which instance a client uses (a load balancer's spread)

// ------------------------------------------------------------------ socket addresses
// loopback source addresses: ~28k ephemeral ports per address towards one port
let sockCount = 0;
function localAddress() {
  const n = Math.floor(sockCount++ / cfg.socketsPerAddress);
  return `127.0.0.${2 + n}`;
}
function openWs(inst, path, tok) {
  return new WebSocket(`ws://${cfg.host}:${PORTS[inst]}${path}`, {
    perMessageDeflate: false, headers: { authorization: `Bearer ${tok}` }, localAddress: localAddress(),
  });
}

// ------------------------------------------------------------------ the city
const R = cfg.restaurants, D = cfg.drivers, C = cfg.customers, IDLE = cfg.idle;
// a 20 km x 20 km box; restaurants and drivers spread over it
function spot(i, n, salt) {
  const g = Math.ceil(Math.sqrt(n));
  return { lat: 25.05 + (0.18 * ((i % g) + 0.5 * salt)) / g, lng: 55.10 + (0.18 * (Math.floor(i / g) + 0.5 * salt)) / g };
}
const restaurants = [];
for (let i = 0; i < R; i++) {
  const id = `city-rest-${i}`;
  restaurants.push({ i, id, tok: token(id, 'restaurant'), inst: instOf(i), ...spot(i, R, 0.3), lastPos: 0, seqs: new Map(), dups: 0, bad: 0, closed: null });
}
const drivers = [];
for (let i = 0; i < D; i++) {
  const id = `city-drv-${i}`;
  const p = spot(i, D, 0.7);
  drivers.push({ i, id, tok: token(id, 'driver'), inst: instOf(i + 1), base: p.lat, lng: p.lng, silent: false, lastPos: 0, seqs: new Map(), dups: 0, closed: null, orders: new Map() });
}
const driverById = new Map(drivers.map((d) => [d.id, d]));
const customers = [];
for (let i = 0; i < C; i++) {
  const id = `city-cust-${i}`;
  customers.push({ i, id, tok: token(id, 'customer'), inst: instOf(i) });
}

// ------------------------------------------------------------------ GPS
const GPS_STEP = 1e-6; // ping k of driver i is at lat base_i + k * GPS_STEP
const MAXK = Math.ceil((cfg.timeoutS + 5) * cfg.gpsHz) + 2;
const gpsSentAt = drivers.map(() => new Float64Array(MAXK));
const gps = { sent: 0, shed: 0, lagMax: 0, running: false, t0: 0, sentInWindow: 0 };
const gpsLat = []; // GPS -> screen latencies (ms)
const slow = []; // [seconds since the orders began, ms, what] of every late delivery (> cfg.slowMs)
let tOrders = 0;
function noteSlow(t, ms, what) {
  if (ms > cfg.slowMs && slow.length < 5000) slow.push([Math.round((t - tOrders) / 10) / 100, Math.round(ms), what]);
}

function startGps() {
  gps.running = true;
  const interval = 1000 / (D * cfg.gpsHz);
  const tStart = (gps.t0 = performance.now() + 10);
  let j = 0;
  const tick = () => {
    if (!gps.running) return;
    const now = performance.now();
    while (tStart + j * interval <= now) {
      const d = drivers[j % D];
      const k = Math.floor(j / D);
      gps.lagMax = Math.max(gps.lagMax, now - (tStart + j * interval));
      j++;
      if (k >= MAXK) { gps.running = false; return; }
      if (d.silent || !d.ws) continue;
      if (d.ws.readyState !== WebSocket.OPEN || d.ws.bufferedAmount > 65536) { gps.shed++; continue; }
      gpsSentAt[d.i][k] = performance.now();
      d.ws.send(`{"type":"location","lat":${(d.base + k * GPS_STEP).toFixed(7)},"lng":${d.lng.toFixed(6)}}`);
      gps.sent++;
    }
    setTimeout(tick, Math.max(0, Math.min(2, tStart + j * interval - performance.now())));
  };
  tick();
}

// ------------------------------------------------------------------ orders
const orders = [];
const orderById = new Map();
const stepLat = { customer: [], kitchen: [], customerAfterAnswer: [], kitchenAfterAnswer: [], http: [] };
const stepLatByName = {};
const failures = []; // the first few failed steps
let stepErrors = 0;
function fail(o, what) {
  stepErrors++;
  o.failed = o.failed || what;
  if (failures.length < 8) failures.push(`${o.id}: ${what}`);
}

function pickPath(i) {
  // a deterministic spread of the paths by order index (shares in cfg.shares)
  const u = ((i * 0.6180339887) % 1);
  const s = cfg.shares;
  let acc = 0;
  for (const p of ['cancel', 'reject', 'decline', 'silent']) {
    acc += s[p];
    if (u < acc) return p;
  }
  return 'deliver';
}

// rows each path writes (docs/protocol.md §4.2 write counts, §4.6 "What each path writes"),
// the seed's two items per order: [streams, tenant, public]
const PATH_ROWS = {
  deliver: [12, 7, 2],
  cancel: [4, 2, 0], // create (1 / 2 / 0) + pay (1) + cancel while paid (2)
  reject: [4, 2, 0],
  decline: [14, 10, 4], // delivered + decline and reassign to another idle driver (2 / 3 / 2)
  silent: [14, 10, 4], // delivered + silent driver and reassign (2 / 3 / 2)
};

async function step(o, name, inst, method, path, tok, body, expectStatus) {
  const t = performance.now();
  let r;
  try {
    r = await req(inst, method, path, tok, body);
  } catch (e) {
    fail(o, `${name}: ${e.message}`);
    return null;
  }
  const tAns = performance.now();
  stepLat.http.push(tAns - t);
  if (r.status !== expectStatus) {
    noteHttp(name, r.status);
    fail(o, `${name}: ${r.status} ${r.body.slice(0, 160)}`);
    return null;
  }
  const b = JSON.parse(r.body);
  for (const e of b.events || []) o.stepOf.set(e.seq, { name, t, tAns });
  return b;
}

function orderBody(o) {
  return {
    orderId: o.id, restaurant: o.rest.id, deliveryAddress: 'Marina Walk', notes: 'city bench',
    deliveryLocation: o.drop,
    items: [{ productId: 'prod-shw', qty: 1 + (o.i % 3) }, { productId: 'prod-lbn', qty: 1 }],
  };
}

function watch(o) {
  // the customer's screen: /ws/streams/{id} until archived
  return new Promise((resolve) => {
    const ws = (o.ws = openWs(o.cust.inst, `/ws/streams/${o.id}?since=0`, o.cust.tok));
    ws.on('message', (data) => {
      const now = performance.now();
      const m = JSON.parse(data);
      if (m.type === 'event') {
        if (m.streamId !== o.id) { o.bad++; return; }
        if (m.seq <= o.lastSeq) { o.dups++; return; }
        if (m.seq !== o.lastSeq + 1) o.gaps++;
        o.lastSeq = m.seq;
        o.custAt.set(m.seq, now);
        if (m.opcode === 302) { o.assignSeenAt = now; o.driver = m.payload.driver; }
        else if (m.opcode === 306) o.driver = null;
        else if (m.opcode === 502) o.pickedAt = now;
      } else if (m.type === 'location') {
        const d = driverById.get(m.driver);
        if (!d || m.streamId !== o.id) { o.bad++; return; }
        const k = Math.round((m.lat - d.base) / GPS_STEP);
        const t = k >= 0 && k < MAXK ? gpsSentAt[d.i][k] : 0;
        if (!t) { o.gpsUnknown++; return; }
        const key = d.i * MAXK + k;
        if (o.gpsSeen.has(key)) { o.gpsDups++; return; }
        if (d.i === o.gpsLastDrv && k < o.gpsLastK) o.gpsOutOfOrder++;
        o.gpsLastDrv = d.i;
        o.gpsLastK = k;
        o.gpsSeen.add(key);
        gpsLat.push(now - t);
        if (tOrders) noteSlow(now, now - t, 'gps');
      } else if (m.type === 'live') {
        o.live = true;
        resolve();
      } else if (m.type === 'archived') {
        o.archived = true;
      } else if (m.type === 'error') {
        o.errors++;
      }
    });
    ws.on('close', (code) => {
      o.closed = code;
      o.closedAt = performance.now();
      resolve();
      if (o.onClose) o.onClose();
    });
    ws.on('error', (e) => { if (!o.wsError) o.wsError = String(e.message || e); });
  });
}

async function runOrder(o) {
  const c = o.cust;
  const r = o.rest;
  const ri = r.inst;
  o.tStart = performance.now();
  if (!(await step(o, 'create', c.inst, 'POST', '/api/orders', c.tok, orderBody(o), 201))) return finish(o);
  await watch(o);
  if (!o.live) { fail(o, `customer socket closed ${o.closed} before live`); return finish(o); }
  await sleep(cfg.gaps.pay);
  if (!(await step(o, 'pay', c.inst, 'POST', `/api/orders/${o.id}/pay`, c.tok, { method: 'card', cardLast4: '4242' }, 200))) return finish(o);
  await sleep(cfg.gaps.accept);
  if (o.path === 'cancel') {
    await step(o, 'cancel', c.inst, 'POST', `/api/orders/${o.id}/cancel`, c.tok, { reason: 'changed my mind' }, 200);
    return finish(o);
  }
  if (o.path === 'reject') {
    await step(o, 'reject', ri, 'POST', `/api/orders/${o.id}/cancel`, r.tok, { reason: 'too busy' }, 200);
    return finish(o);
  }
  if (!(await step(o, 'accept', ri, 'POST', `/api/orders/${o.id}/accept`, r.tok, { chef: 'Hassan', station: 'grill' }, 200))) return finish(o);
  await sleep(cfg.gaps.ready);
  if (!(await step(o, 'ready', ri, 'POST', `/api/orders/${o.id}/ready`, r.tok, {}, 200))) return finish(o);
  // the drivers take it from here (their inboxes); the order ends when the customer's socket
  // is closed by the archiving
  return finish(o);
}

function finish(o) {
  // resolves when the customer's socket is closed (archived), or at once if the order failed
  return new Promise((resolve) => {
    if (o.failed || !o.ws || o.closed !== null) { o.done = true; resolve(); return; }
    o.onClose = () => { o.done = true; resolve(); };
  });
}

async function driverTakes(d, o) {
  // the driver's app on a TASK_ASSIGN naming it
  if (o.path === 'decline' && !o.declined) {
    o.declined = d.id;
    await sleep(cfg.gaps.decline);
    await step(o, 'decline', d.inst, 'POST', `/api/orders/${o.id}/decline`, d.tok, { reason: 'too far' }, 200);
    return;
  }
  if (o.path === 'silent' && !o.silenced) {
    o.silenced = d.id;
    d.silent = true; // no more positions: the hub unassigns him after HUB_DRIVER_TIMEOUT
    return;
  }
  o.deliverer = d.id;
  o.gpsFrom = performance.now() + 1500; // the hub refreshes a driver's orders at most once a second
  await sleep(cfg.gaps.pickup);
  if (!(await step(o, 'pickup', d.inst, 'POST', `/api/orders/${o.id}/pickup`, d.tok, {}, 200))) return;
  await sleep(cfg.gaps.deliver);
  o.gpsUntil = performance.now();
  await step(o, 'deliver', d.inst, 'POST', `/api/orders/${o.id}/deliver`, d.tok, o.drop, 200);
}

// ------------------------------------------------------------------ inbox sockets
function inboxFrame(who, data, isKitchen) {
  const now = performance.now();
  const m = JSON.parse(data);
  if (m.type === 'event') {
    if (m.pos <= who.lastPos) { who.dups++; return null; }
    who.lastPos = m.pos;
    const last = who.seqs.get(m.streamId);
    if (last !== undefined && m.seq !== last + 1) who.gaps = (who.gaps || 0) + 1;
    if (last === undefined && isKitchen && m.seq !== 1) who.gaps = (who.gaps || 0) + 1;
    who.seqs.set(m.streamId, m.seq);
    if (isKitchen) {
      const o = orderById.get(m.streamId);
      if (o) o.kitAt.set(m.seq, now);
      else who.bad++;
    }
    return m;
  }
  if (m.type === 'live') who.live = true;
  return null;
}

function openInbox(who, kind) {
  return new Promise((resolve, reject) => {
    const ws = (who.ws = openWs(who.inst, '/ws/inbox?since=0', who.tok));
    let settled = false;
    ws.on('message', (data) => {
      if (kind === 'idle') {
        who.frames = (who.frames || 0) + 1;
        if (!settled) { settled = true; resolve(); }
        return;
      }
      const m = inboxFrame(who, data, kind === 'kitchen');
      if (!settled && who.live) { settled = true; resolve(); }
      if (m && kind === 'driver') {
        const o = orderById.get(m.streamId);
        if (!o) return;
        if (m.opcode === 302 && m.payload.driver === who.id) driverTakes(who, o).catch((e) => fail(o, `driver: ${e.message}`));
      }
    });
    ws.on('close', (code) => {
      who.closed = code;
      if (!settled) { settled = true; reject(new Error(`${kind} closed ${code} before live`)); }
    });
    ws.on('error', (e) => {
      who.error = String(e.message || e);
      if (!settled) { settled = true; reject(e); }
    });
  });
}

// ------------------------------------------------------------------ windows and metrics
class Win {
  start() {
    this.s0 = cfg.serverPids.map((p) => procSample(p, CLK_TCK));
    this.a0 = (cfg.auxPids || []).map((p) => procSample(p, CLK_TCK));
    this.st0 = cpuStat();
    this.self0 = process.cpuUsage();
    this.t0 = performance.now();
    this.rssPeak = cfg.serverPids.map((_, i) => (this.s0[i] ? this.s0[i].rss : 0));
    this.samples = [];
    this.eld = monitorEventLoopDelay({ resolution: 5 });
    this.eld.enable();
    this.timer = setInterval(() => {
      const s = cfg.serverPids.map((p) => procSample(p, CLK_TCK));
      s.forEach((x, i) => { if (x) this.rssPeak[i] = Math.max(this.rssPeak[i], x.rss); });
      this.samples.push(s);
    }, 500);
    return this;
  }
  stop() {
    clearInterval(this.timer);
    this.eld.disable();
    const s1 = cfg.serverPids.map((p) => procSample(p, CLK_TCK));
    const a1 = (cfg.auxPids || []).map((p) => procSample(p, CLK_TCK));
    const st1 = cpuStat();
    const wall = (performance.now() - this.t0) / 1000;
    const self = process.cpuUsage(this.self0);
    const selfCpu = (self.user + self.system) / 1e6;
    const srvCpu = s1.map((x, i) => (x && this.s0[i] ? x.cpu - this.s0[i].cpu : NaN));
    const auxCpu = a1.map((x, i) => (x && this.a0[i] ? x.cpu - this.a0[i].cpu : NaN));
    // the busiest ~1 s of the first server, from the 500 ms samples
    let peak = 0;
    for (let i = 2; i < this.samples.length; i++) {
      const a = this.samples[i - 2][0], b = this.samples[i][0];
      if (a && b) peak = Math.max(peak, (b.cpu - a.cpu) / ((b.t - a.t) / 1000));
    }
    const machineS = st1.cpu && this.st0.cpu ? (st1.cpu.task - this.st0.cpu.task) / CLK_TCK : NaN;
    const sum = (a) => a.reduce((x, y) => x + (Number.isFinite(y) ? y : 0), 0);
    return {
      wallS: wall,
      serverCpuS: srvCpu,
      serverCpuPct: srvCpu.map((x) => (100 * x) / wall),
      serverCpuPeak1sPct: 100 * peak,
      serverRssMB: s1.map((x) => (x ? x.rss / 2 ** 20 : NaN)),
      serverRssPeakMB: this.rssPeak.map((x) => x / 2 ** 20),
      redisCpuS: auxCpu.length ? sum(auxCpu) : null,
      redisCpuPct: auxCpu.length ? (100 * sum(auxCpu)) / wall : null,
      genCpuPct: (100 * selfCpu) / wall,
      genLoopDelayP99Ms: this.eld.percentile(99) / 1e6 - 5,
      othersCpuPct: Math.max(0, (100 * (machineS - sum(srvCpu) - sum(auxCpu) - selfCpu)) / wall),
    };
  }
}

async function metrics() {
  // summed over the instances
  const want = {
    streams: 'hub_db_writes_total{target="streams"}',
    tenant: 'hub_db_writes_total{target="tenant"}',
    public: 'hub_db_writes_total{target="public"}',
    gpsPings: 'hub_gps_pings_total',
    gpsDropped: 'hub_gps_pings_dropped_total',
    events: 'hub_events_appended_total',
    framesSent: 'hub_ws_frames_sent_total',
    fallbacks: 'hub_ws_slow_consumer_fallbacks_total',
    stalled: 'hub_ws_stalled_closes_total',
    wsConnections: 'hub_ws_connections',
    backfilled: 'hub_backfilled_events_total',
    tenantOpens: 'hub_tenant_db_opens_total',
    tenantOpen: 'hub_tenant_dbs_open',
    gc2Count: 'hub_gc_pause_seconds_count{generation="2"}',
    gc2Sum: 'hub_gc_pause_seconds_sum{generation="2"}',
    gc1Sum: 'hub_gc_pause_seconds_sum{generation="1"}',
    gc0Sum: 'hub_gc_pause_seconds_sum{generation="0"}',
  };
  const out = Object.fromEntries(Object.keys(want).map((k) => [k, 0]));
  for (let i = 0; i < PORTS.length; i++) {
    const r = await req(i, 'GET', '/metrics');
    for (const line of r.body.split('\n')) {
      for (const [k, name] of Object.entries(want)) {
        if (line.startsWith(name + ' ')) out[k] = (out[k] || 0) + Number(line.slice(name.length + 1));
      }
    }
  }
  return out;
}
const diff = (a, b) => Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - (a[k] || 0)]));
const rss = () => cfg.serverPids.map((p) => { const s = procSample(p, CLK_TCK); return s ? s.rss : NaN; });

// ------------------------------------------------------------------ the run
async function setup() {
  let t = performance.now();
  await pool(R, 16, async (i) => {
    const r = restaurants[i];
    await must(r.inst, 'POST', '/api/tenants', PLATFORM, { id: r.id, role: 'restaurant', name: `Restaurant ${i}`, lat: r.lat, lng: r.lng, address: `Street ${i}`, currency: 'AED' });
    await must(r.inst, 'PUT', `/api/restaurants/${r.id}/menu/prod-shw`, r.tok, { title: 'Chicken Shawarma', desc: 'Grilled chicken wrap', price: 18, qty: 1000000 });
    await must(r.inst, 'PUT', `/api/restaurants/${r.id}/menu/prod-lbn`, r.tok, { title: 'Laban', desc: 'Traditional buttermilk', price: 5, qty: 1000000 });
  });
  await pool(C, 16, async (i) => {
    const c = customers[i];
    await must(c.inst, 'POST', '/api/tenants', PLATFORM, { id: c.id, role: 'customer', name: `Customer ${i}`, lat: 25.1, lng: 55.2, address: `Home ${i}` });
  });
  await pool(D, 16, async (i) => {
    const d = drivers[i];
    await must(d.inst, 'POST', '/api/tenants', PLATFORM, { id: d.id, role: 'driver', name: `Driver ${i}`, lat: d.base, lng: d.lng, vehicle: 'Motorcycle' });
    await must(d.inst, 'POST', '/api/drivers/status', d.tok, { status: 'online', lat: d.base, lng: d.lng });
  });
  log(`${R} restaurants, ${C} customers, ${D} drivers online in ${((performance.now() - t) / 1000).toFixed(1)} s`);
}

async function connectAll() {
  const t = performance.now();
  const rss0 = rss();
  const all = [];
  for (const r of restaurants) all.push([r, 'kitchen']);
  for (const d of drivers) all.push([d, 'driver']);
  const idle = [];
  for (let i = 0; i < IDLE; i++) idle.push({ i, id: `idle-${i}`, tok: token(`idle-${i}`, 'customer'), inst: instOf(i), closed: null });
  for (const x of idle) all.push([x, 'idle']);
  let errors = 0;
  const errSamples = [];
  await pool(all.length, cfg.connectConcurrency, async (j) => {
    if (performance.now() > DEADLINE) throw new Error('deadline while connecting');
    const [who, kind] = all[j];
    for (let attempt = 0; ; attempt++) {
      try {
        await openInbox(who, kind);
        return;
      } catch (e) {
        errors++;
        if (errSamples.length < 5) errSamples.push(`${kind}: ${e.message}`);
        if (attempt >= 3) throw new Error(`${kind} ${who.id}: ${e.message}`);
        await sleep(200 * (attempt + 1));
      }
    }
  });
  await sleep(2000); // let the hub settle (and its RSS)
  const rss1 = rss();
  const secs = (performance.now() - t) / 1000;
  log(`${all.length} sockets live in ${secs.toFixed(1)} s (${errors} retried)`);
  return { idle, sockets: all.length, connectS: secs, connectRetries: errors, connectErrors: errSamples, rss0, rss1 };
}

run(async () => {
  await setup();
  const conn = await connectAll();
  const rssPerSocketKB = conn.rss1.reduce((a, x, i) => a + (x - conn.rss0[i]), 0) / 1024 / conn.sockets;
  // window 1: idle sockets only
  const idleWin = new Win().start();
  await sleep(cfg.idleWindowS * 1000);
  const wIdle = idleWin.stop();
  // window 2: + GPS from every driver
  startGps();
  await sleep(3000);
  const g0 = await metrics();
  const gpsWin = new Win().start();
  const sent0 = gps.sent;
  await sleep(cfg.gpsWindowS * 1000);
  const wGps = gpsWin.stop();
  const gpsOnlySent = gps.sent - sent0;
  const g1 = await metrics();
  // window 3: + orders
  const m0 = await metrics();
  const tM0 = performance.now();
  const win = new Win().start();
  const sentW0 = gps.sent;
  const total = Math.round((cfg.opm * cfg.durationS) / 60);
  const interval = 60000 / cfg.opm;
  const tStart = (tOrders = performance.now());
  const running = [];
  let maxInFlight = 0, inFlight = 0;
  for (let i = 0; i < total; i++) {
    const wait = tStart + i * interval - performance.now();
    if (wait > 0) await sleep(wait);
    if (performance.now() > DEADLINE - 60000) { log('deadline: no more orders'); break; }
    const rest = restaurants[(i * 7919) % R];
    const o = {
      i, id: `city-${cfg.runId}-${i}`, rest, cust: customers[i % C], path: pickPath(i),
      drop: { lat: Number((rest.lat + 0.002).toFixed(6)), lng: Number((rest.lng + 0.001).toFixed(6)) },
      stepOf: new Map(), custAt: new Map(), kitAt: new Map(), lastSeq: 0, dups: 0, gaps: 0, bad: 0, errors: 0,
      closed: null, live: false, archived: false, failed: null, done: false,
      gpsSeen: new Set(), gpsDups: 0, gpsOutOfOrder: 0, gpsUnknown: 0, gpsLastDrv: -1, gpsLastK: -1,
    };
    orders.push(o);
    orderById.set(o.id, o);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    running.push(runOrder(o).catch((e) => fail(o, String(e))).then(() => { inFlight--; }));
  }
  const tSent = performance.now();
  log(`${orders.length} orders placed in ${((tSent - tStart) / 1000).toFixed(1)} s; waiting for them to end`);
  const allDone = Promise.all(running);
  const endBy = Math.min(DEADLINE - 30000, performance.now() + cfg.drainS * 1000);
  while (performance.now() < endBy && orders.some((o) => !o.done)) await sleep(100);
  const unfinished = orders.filter((o) => !o.done).length;
  const tEnd = performance.now();
  const w = win.stop();
  const gpsSentW = gps.sent - sentW0;
  await sleep(1500); // a coalesced GPS write lands within 1 s
  const m1 = await metrics();
  const tM1 = performance.now();
  // window 4: GPS alone again, after the orders (the GPS rate for "CPU per order" is the mean
  // of windows 2 and 4)
  const gpsWin2 = new Win().start();
  const sent2 = gps.sent;
  await sleep(cfg.gpsWindowS * 500);
  const wGps2 = gpsWin2.stop();
  const gpsOnlySent2 = gps.sent - sent2;
  gps.running = false;
  void allDone;
  // ---------------------------------------------------------------- checks
  const byPath = {};
  const expectRows = [0, 0, 0];
  let delivered = 0, cancelled = 0;
  const check = { orders: orders.length, unfinished, failedOrders: 0, custDups: 0, custGaps: 0, custWrong: 0, custNotArchived: 0,
    custShort: 0, kitchenShort: 0, kitchenDups: 0, kitchenGaps: 0, kitchenWrong: 0, driverDups: 0, driverGaps: 0,
    gpsExpected: 0, gpsReached: 0, gpsDups: 0, gpsOutOfOrder: 0, gpsUnknown: 0, socketsClosed: 0, errorFrames: 0 };
  await pool(orders.length, 16, async (j) => {
    const o = orders[j];
    try {
      const b = await must(instOf(j), 'GET', `/api/streams/${o.id}?since=0&limit=100`, PLATFORM);
      o.finalSeq = b.lastSeq;
      o.finalStatus = b.orderStatus;
    } catch (e) {
      o.finalSeq = -1;
    }
  });
  for (const o of orders) {
    byPath[o.path] = (byPath[o.path] || 0) + 1;
    if (o.failed) check.failedOrders++;
    if (o.finalStatus === 'delivered') delivered++;
    if (o.finalStatus === 'cancelled') cancelled++;
    const exp = PATH_ROWS[o.path];
    const ok = o.finalStatus === (o.path === 'cancel' || o.path === 'reject' ? 'cancelled' : 'delivered');
    if (ok) for (let k = 0; k < 3; k++) expectRows[k] += exp[k];
    check.custDups += o.dups;
    check.custGaps += o.gaps;
    check.custWrong += o.bad;
    check.errorFrames += o.errors;
    if (!o.archived || o.closed !== 1000) check.custNotArchived++;
    if (o.lastSeq !== o.finalSeq) check.custShort++;
    if (o.kitAt.size !== o.finalSeq) check.kitchenShort++;
    check.gpsDups += o.gpsDups;
    check.gpsOutOfOrder += o.gpsOutOfOrder;
    check.gpsUnknown += o.gpsUnknown;
    // GPS: every ping of the delivering driver sent between gpsFrom and gpsUntil reached this customer
    const d = o.deliverer && driverById.get(o.deliverer);
    if (d && o.gpsUntil) {
      for (let k = 0; k < MAXK; k++) {
        const t = gpsSentAt[d.i][k];
        if (t && t >= o.gpsFrom && t <= o.gpsUntil - 50) {
          check.gpsExpected++;
          if (o.gpsSeen.has(d.i * MAXK + k)) check.gpsReached++;
        }
      }
    }
    // step -> screen
    for (const [seq, s] of o.stepOf) {
      const a = o.custAt.get(seq);
      const b = o.kitAt.get(seq);
      const per = (stepLatByName[s.name] = stepLatByName[s.name] || []);
      if (a !== undefined && s.name !== 'create') { noteSlow(a, a - s.t, `cust-${s.name}`); stepLat.customer.push(a - s.t); stepLat.customerAfterAnswer.push(a - s.tAns); per.push(a - s.t); }
      if (b !== undefined) { noteSlow(b, b - s.t, `kit-${s.name}`); stepLat.kitchen.push(b - s.t); stepLat.kitchenAfterAnswer.push(b - s.tAns); per.push(b - s.t); }
    }
  }
  for (const r of restaurants) { check.kitchenDups += r.dups; check.kitchenGaps += r.gaps || 0; check.kitchenWrong += r.bad; if (r.closed !== null) check.socketsClosed++; }
  for (const d of drivers) { check.driverDups += d.dups; check.driverGaps += d.gaps || 0; if (d.closed !== null) check.socketsClosed++; }
  for (const x of conn.idle) if (x.closed !== null) check.socketsClosed++;
  const rows = diff(m0, m1);
  const windowS = (tM1 - tM0) / 1000;
  const gpsRows = rows.tenant - expectRows[1];
  const gpsDriversOn = D - orders.filter((o) => o.silenced).length;
  const stepQ = Object.fromEntries(Object.entries(stepLat).map(([k, v]) => [k, quantiles(v)]));
  const stepByName = Object.fromEntries(Object.entries(stepLatByName).map(([k, v]) => [k, quantiles(v)]));
  const srvCpu = (ww) => ww.serverCpuS.reduce((a, b) => a + b, 0);
  const idleRate = srvCpu(wIdle) / wIdle.wallS;
  const gpsRate = (srvCpu(wGps) + srvCpu(wGps2)) / (wGps.wallS + wGps2.wallS);
  const gpsPerS = (gpsOnlySent + gpsOnlySent2) / (wGps.wallS + wGps2.wallS);
  const orderCpuS = srvCpu(w) - gpsRate * w.wallS;
  const result = {
    config: { restaurants: R, drivers: D, customers: C, idle: IDLE, opm: cfg.opm, durationS: cfg.durationS, gpsHz: cfg.gpsHz,
      instances: PORTS.length, shares: cfg.shares, gaps: cfg.gaps },
    sockets: conn.sockets + maxInFlight, socketsAtStart: conn.sockets, maxInFlight, connectS: conn.connectS,
    connectRetries: conn.connectRetries, connectErrors: conn.connectErrors,
    rssBeforeMB: conn.rss0.map((x) => x / 2 ** 20), rssConnectedMB: conn.rss1.map((x) => x / 2 ** 20), rssPerSocketKB,
    ordersPlaced: orders.length, byPath, delivered, cancelled, placedSeconds: (tSent - tStart) / 1000, ordersSeconds: (tEnd - tStart) / 1000,
    stepToScreen: stepQ, stepToScreenByStep: stepByName, gpsToScreen: quantiles(gpsLat),
    gps: { sentInWindow: gpsSentW, perS: gpsSentW / w.wallS, shed: gps.shed, sendLagMaxMs: gps.lagMax,
      accepted: rows.gpsPings, dropped: rows.gpsDropped, gpsOnlyPerS: gpsPerS },
    rows: { measured: { streams: rows.streams, tenant: rows.tenant, public: rows.public }, expectedOrders: { streams: expectRows[0], tenant: expectRows[1], public: expectRows[2] },
      gpsRows, windowS, gpsRowsPerDriverS: gpsRows / (gpsDriversOn * windowS), gpsRowsMax: Math.ceil(gpsDriversOn * (windowS + 1)) + (D - gpsDriversOn),
      perDeliveredHappy: 21 },
    hub: { gc2Collections: rows.gc2Count, gc2PauseS: rows.gc2Sum, gc2MeanPauseMs: (1000 * rows.gc2Sum) / Math.max(1, rows.gc2Count),
      gc01PauseS: rows.gc0Sum + rows.gc1Sum, events: rows.events, framesSent: rows.framesSent, fallbacks: rows.fallbacks, stalled: rows.stalled, backfilled: rows.backfilled,
      tenantOpens: rows.tenantOpens, tenantOpen: m1.tenantOpen, wsConnections: m1.wsConnections },
    cpu: { idleCoreShare: idleRate, gpsCoreShare: gpsRate, perPingMs: (1000 * (gpsRate - idleRate)) / gpsPerS,
      perOrderMs: (1000 * orderCpuS) / Math.max(1, orders.length), perIdleSocketUsPerS: (1e6 * idleRate) / conn.sockets,
      redisPerEventUs: w.redisCpuS !== null ? (1e6 * w.redisCpuS) / Math.max(1, rows.events + gpsSentW) : null },
    windows: { idle: wIdle, gps: wGps, orders: w, gpsAfter: wGps2 },
    slow: slow.sort((x, y) => x[0] - y[0]), check, httpErrors, failures, stepErrors, staleRetries: counters.staleRetries,
  };
  result.rows.streamsOk = rows.streams === expectRows[0];
  result.rows.publicOk = rows.public === expectRows[2];
  result.rows.gpsOk = gpsRows >= 0 && gpsRows <= result.rows.gpsRowsMax;
  log(`orders ${orders.length} (delivered ${delivered}, cancelled ${cancelled}, failed ${check.failedOrders}, unfinished ${unfinished}); ` +
    `step p99 cust ${stepQ.customer.p99Ms.toFixed(1)} kit ${stepQ.kitchen.p99Ms.toFixed(1)} ms; gps p99 ${result.gpsToScreen.p99Ms.toFixed(1)} ms`);
  return result;
});

function run(scenario) {
  const killer = setTimeout(() => {
    process.stdout.write(JSON.stringify({ result: { error: 'hard deadline' } }) + '\n');
    process.exit(3);
  }, cfg.timeoutS * 1000 + 15000);
  killer.unref();
  scenario()
    .catch((e) => ({ error: String(e && e.stack ? e.stack : e) }))
    .then((result) => {
      process.stdout.write(JSON.stringify({ result }) + '\n');
      for (const a of agents) a.destroy();
      setTimeout(() => process.exit(0), 200).unref();
    });
}
