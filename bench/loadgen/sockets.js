#!/usr/bin/env node
// Load generator for bench/sockets.py: N WebSockets on one hub, held idle, then a broadcast on
// a thousand of them, then a check that every one is still open.
//
// Usage: node sockets.js CONFIG.json   (written by bench/sockets.py; see there for the fields)
//
// Phases, each measured here on one clock (performance.now()) and from /proc:
//   1. setup: the order streams (and the broadcast streams) are opened over HTTP by the
//      platform (ORDER_CREATE, plus TASK_ASSIGN for the assigned orders);
//   2. connect: every socket of cfg.sockets, `connectConcurrency` handshakes in flight, each
//      from its own source address and port (cfg.sources: 127.0.0.x and a port band outside
//      the ephemeral range, so the machine's ephemeral ports stay free for everyone else); a
//      socket counts as connected at its `live` frame;
//   3. hold: nothing is sent for `holdS` seconds; the hub's RSS, open descriptors
//      (/proc/PID/fd) and CPU are sampled every `sampleEveryS` seconds; the keepalive pings
//      the hub sends are counted (ws answers them itself);
//   4. broadcast: events appended over HTTP to the broadcast streams at `rate` events/s
//      (round robin, one event per request, by each stream's restaurant) for `seconds`;
//      every frame of the broadcast subscribers is checked (exactly once, in seq order, of
//      its own stream) and its latency is receipt - payload.t (payload.t is set just before
//      the request is created: it includes the HTTP request and the commit);
//   5. check: every socket must still be open, and answer an application ping
//      ({"type":"ping"} -> {"type":"pong"}).
// At the end every socket is reset (RST, so neither side keeps a TIME_WAIT) and one JSON line
// {"result": {...}} is printed on stdout; progress goes to stderr.
'use strict';

const fs = require('fs');
const http = require('http');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');
const { procSample, cpuStat, Window, quantiles, Sink, pool, sleep } = require('./measure');
const { request, counters } = require('./http');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const T0 = performance.now();
const DEADLINE = T0 + cfg.timeoutS * 1000;
const CLK = cfg.clkTck || 100;
const agent = new http.Agent({ keepAlive: true, maxSockets: cfg.httpSockets || 64 });
const to = { agent, host: cfg.host, port: cfg.port, timeoutMs: 30000 };
const post = (path, token, body) => request(to, 'POST', path, token, body);

function log(...a) {
  process.stderr.write(`[sockets ${((performance.now() - T0) / 1000).toFixed(1)}s] ${a.join(' ')}\n`);
}
const mb = (bytes) => bytes / 2 ** 20;

// ---------------------------------------------------------------- /proc and /metrics
function countFds(pid) {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch (e) {
    return null;
  }
}

function meminfo() {
  const out = {};
  for (const line of fs.readFileSync('/proc/meminfo', 'utf8').split('\n')) {
    const m = /^(\w+):\s+(\d+)/.exec(line);
    if (m) out[m[1]] = Number(m[2]) * 1024;
  }
  return { slab: out.Slab, sunreclaim: out.SUnreclaim, memAvailable: out.MemAvailable };
}

function sockstat() {
  // TCP: inuse, orphan, tw, alloc, mem (pages of socket buffers)
  const text = fs.readFileSync('/proc/net/sockstat', 'utf8');
  const m = /TCP: inuse (\d+) orphan (\d+) tw (\d+) alloc (\d+) mem (\d+)/.exec(text);
  return m ? { inuse: +m[1], orphan: +m[2], tw: +m[3], alloc: +m[4], memPages: +m[5] } : null;
}

function netstat() {
  // TcpExt ListenOverflows / ListenDrops (accept queue full), and SYN cookies sent
  const lines = fs.readFileSync('/proc/net/netstat', 'utf8').split('\n');
  for (let i = 0; i + 1 < lines.length; i++) {
    if (lines[i].startsWith('TcpExt:') && lines[i + 1].startsWith('TcpExt:')) {
      const k = lines[i].split(/\s+/);
      const v = lines[i + 1].split(/\s+/).map(Number);
      const get = (name) => v[k.indexOf(name)] || 0;
      return { listenOverflows: get('ListenOverflows'), listenDrops: get('ListenDrops'), synCookiesSent: get('SyncookiesSent') };
    }
  }
  return { listenOverflows: 0, listenDrops: 0, synCookiesSent: 0 };
}

function snapshot() {
  // the hub process and the kernel, now
  const p = procSample(cfg.hubPid, CLK);
  return {
    t: (performance.now() - T0) / 1000,
    hubRssMB: p ? mb(p.rss) : null,
    hubCpuS: p ? p.cpu : null,
    hubFds: countFds(cfg.hubPid),
    genRssMB: mb(process.memoryUsage().rss),
    kernel: { ...meminfo(), tcp: sockstat() },
    netstat: netstat(),
  };
}

const METRICS = [
  'hub_ws_connections', 'hub_ws_subscriptions', 'hub_ws_sessions', 'hub_ws_closing', 'hub_ws_aborted_total',
  'hub_ws_stalled_closes_total', 'hub_ws_frames_sent_total', 'hub_ws_slow_consumer_fallbacks_total',
  'hub_open_fds', 'hub_fd_limit', 'hub_connections_open', 'hub_connections_max', 'hub_connections_refused_total',
  'hub_connections_evicted_total', 'hub_gc_pause_seconds', 'hub_events_appended_total', 'hub_store_commits_total',
  'process_resident_memory_bytes',
];
async function hubMetrics() {
  try {
    const r = await request(to, 'GET', '/metrics');
    const out = {};
    for (const line of r.body.split('\n')) {
      if (line.startsWith('#') || !METRICS.some((m) => line.startsWith(m))) continue;
      const sp = line.lastIndexOf(' ');
      out[line.slice(0, sp)] = Number(line.slice(sp + 1));
    }
    return out;
  } catch (e) {
    return { error: String(e.message || e) };
  }
}

// ---------------------------------------------------------------- the sockets
const N = cfg.sockets.length;
const streamIds = cfg.streams.map((s) => s[0]);
const wss = new Array(N).fill(null);
const state = new Uint8Array(N); // 0 not yet, 1 connecting, 2 live, 3 closed, 4 failed
const closeCode = new Uint16Array(N);
const unexpected = new Uint32Array(N); // frames after `live` that are neither a pong nor (broadcast) an event
const pongs = new Uint8Array(N);
const unexpectedSamples = []; // the first few
let pingsFromHub = 0; // keepalive pings (WebSocket ping frames) received
let livePhase = 'connect';
const closesByPhase = {};
const closeCodes = {};
const connectErrors = {};
let connectRetries = 0;
let bindRetries = 0;

const EVENT = Buffer.from('{"type":"event",');
const SEQ_KEY = Buffer.from('"seq":');
const T_KEY = Buffer.from('"payload":{"t":');
const startsWith = (data, p) => data.length >= p.length && data.compare(p, 0, p.length, 0, p.length) === 0;

function numberAt(buf, i) {
  let j = i;
  while (j < buf.length) {
    const c = buf[j];
    if ((c >= 48 && c <= 57) || c === 46 || c === 45 || c === 101 || c === 69 || c === 43) j++;
    else break;
  }
  return Number(buf.toString('latin1', i, j));
}

// the broadcast subscribers: checked frame by frame
let bcLat = null; // this round's latencies
let bcBase = cfg.broadcast.baseSeq; // events up to here are not this round's
class Checked {
  constructor(streamId) {
    this.streamKey = Buffer.from(`"streamId":${JSON.stringify(streamId)}`);
    this.last = 0;
    this.received = 0;
    this.dups = 0;
    this.gaps = 0;
    this.wrongStream = 0;
    this.lastRecv = 0;
  }
  event(data, now) {
    const seq = numberAt(data, data.indexOf(SEQ_KEY) + SEQ_KEY.length);
    if (data.indexOf(this.streamKey) < 0) this.wrongStream++;
    if (seq <= this.last) {
      this.dups++;
      return;
    }
    if (seq !== this.last + 1) this.gaps++;
    this.last = seq;
    if (seq > bcBase) {
      this.received++;
      this.lastRecv = now;
      const ti = data.indexOf(T_KEY);
      if (ti >= 0) bcLat.push(now - numberAt(data, ti + T_KEY.length));
    }
  }
}
const checked = new Map(); // socket index -> Checked
let bcDups = 0; // duplicates, gaps and wrong-stream frames of the rounds before
let bcGaps = 0;
let bcWrong = 0;

// Source addresses and ports: socket i uses address i % A, and the next free port of that
// address's band (a port still held, e.g. in TIME_WAIT from an earlier run, is skipped).
const nextPort = cfg.sources.addresses.map(() => cfg.sources.portLo);
function takePort(a) {
  if (nextPort[a] > cfg.sources.portHi) throw new Error(`no port left in ${cfg.sources.portLo}-${cfg.sources.portHi} on ${cfg.sources.addresses[a]}`);
  return nextPort[a]++;
}

// Shared listeners (`this` is the WebSocket): no closure per socket.
function onMessage(data) {
  const i = this.i;
  if (startsWith(data, EVENT)) {
    // events are scanned, not parsed: the replay, the broadcast; none is due on the others
    const c = checked.get(i);
    if (c) c.event(data, performance.now());
    else if (state[i] === 2) {
      unexpected[i]++;
      if (unexpectedSamples.length < 3) unexpectedSamples.push(data.toString().slice(0, 200));
    }
    return;
  }
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (e) {
    msg = { type: '?' };
  }
  if (state[i] === 2) {
    if (msg.type === 'pong') pongs[i] = 1;
    else {
      unexpected[i]++;
      if (unexpectedSamples.length < 3) unexpectedSamples.push(data.toString().slice(0, 200));
    }
    return;
  }
  if (msg.type === 'live') {
    state[i] = 2;
    const done = this.done;
    this.done = null;
    if (done) done(null);
  } else if (msg.type === 'error' && connectErrors['error frame'] === undefined) {
    connectErrors['error frame'] = JSON.stringify(msg.error).slice(0, 200);
  }
}
function onPing() {
  pingsFromHub++;
}
function onClose(code) {
  const i = this.i;
  const was = state[i];
  state[i] = was === 2 ? 3 : 4;
  closeCode[i] = code;
  if (was === 2) {
    closesByPhase[livePhase] = (closesByPhase[livePhase] || 0) + 1;
    closeCodes[code] = (closeCodes[code] || 0) + 1;
  }
  const done = this.done;
  this.done = null;
  if (done) done(new Error(`closed ${code} before live`));
}
function onError(e) {
  const done = this.done;
  if (done) {
    this.done = null;
    done(e);
  }
}

function openOnce(i) {
  return new Promise((resolve) => {
    const [sIdx, tokIdx] = cfg.sockets[i];
    const path = sIdx < 0 ? '/ws/inbox' : `/ws/streams/${encodeURIComponent(streamIds[sIdx])}`;
    const a = i % cfg.sources.addresses.length;
    let ws;
    try {
      ws = new WebSocket(`ws://${cfg.host}:${cfg.port}${path}?since=0&token=${cfg.tokens[tokIdx]}`, {
        perMessageDeflate: false,
        localAddress: cfg.sources.addresses[a],
        localPort: takePort(a),
        handshakeTimeout: 120000,
      });
    } catch (e) {
      resolve(e);
      return;
    }
    ws.i = i;
    ws.done = resolve;
    wss[i] = ws;
    state[i] = 1;
    ws.on('message', onMessage);
    ws.on('ping', onPing);
    ws.on('close', onClose);
    ws.on('error', onError);
  });
}

async function open(i) {
  for (let attempt = 0; ; attempt++) {
    const err = await openOnce(i);
    if (!err) return;
    const code = err.code || String(err.message || err).slice(0, 80);
    if (code === 'EADDRINUSE') {
      bindRetries++; // the port is held (TIME_WAIT of an earlier run, a listener): take the next
      attempt--;
      continue;
    }
    connectErrors[code] = (connectErrors[code] || 0) + 1;
    if (attempt >= 2 || performance.now() > DEADLINE) throw new Error(`socket ${i}: ${code}`);
    connectRetries++;
    await sleep(1000);
  }
}

// ---------------------------------------------------------------- phases
async function setup() {
  // every stream: ORDER_CREATE (+ TASK_ASSIGN), by the platform
  const t = performance.now();
  let events = 0;
  await pool(cfg.streams.length, 64, async (k) => {
    const [id, customer, restaurant, driver] = cfg.streams[k];
    const evs = [{ opcode: 501, payload: { customer, restaurant } }];
    if (driver) evs.push({ opcode: 302, nodeId: driver, payload: { driver } });
    events += evs.length;
    const r = await post(`/api/streams/${encodeURIComponent(id)}/events`, cfg.platformToken, { events: evs });
    if (r.status !== 201) throw new Error(`setup ${id}: ${r.status} ${r.body.slice(0, 200)}`);
  });
  const s = (performance.now() - t) / 1000;
  log(`${cfg.streams.length} streams opened (${events} events) in ${s.toFixed(1)} s`);
  return { streams: cfg.streams.length, events, seconds: s };
}

function sampler(series, everyS) {
  // the hub's RSS, descriptors and CPU (% of a core since the previous sample), every everyS
  let prev = snapshot();
  series.push({ t: prev.t, phase: livePhase, hubRssMB: prev.hubRssMB, hubFds: prev.hubFds, hubCpuPct: null, genRssMB: prev.genRssMB, live: 0 });
  const timer = setInterval(() => {
    const p = procSample(cfg.hubPid, CLK);
    const t = (performance.now() - T0) / 1000;
    if (!p) return;
    let live = 0;
    for (let i = 0; i < N; i++) if (state[i] === 2) live++;
    series.push({
      t,
      phase: livePhase,
      hubRssMB: mb(p.rss),
      hubFds: countFds(cfg.hubPid),
      hubCpuPct: (100 * (p.cpu - prev.hubCpuS)) / (t - prev.t),
      genRssMB: mb(process.memoryUsage().rss),
      live,
    });
    prev = { t, hubCpuS: p.cpu };
  }, everyS * 1000);
  return () => clearInterval(timer);
}

async function connect() {
  const before = snapshot();
  const t = performance.now();
  let lastLog = t;
  let done = 0;
  await pool(N, cfg.connectConcurrency, async (i) => {
    if (performance.now() > DEADLINE) throw new Error('deadline while connecting');
    await open(i);
    done++;
    if (performance.now() - lastLog > 10000) {
      lastLog = performance.now();
      const p = procSample(cfg.hubPid, CLK);
      log(`${done}/${N} live (${(done / ((lastLog - t) / 1000)).toFixed(0)}/s), hub RSS ${p ? mb(p.rss).toFixed(0) : '?'} MB`);
    }
  });
  const seconds = (performance.now() - t) / 1000;
  const end = snapshot();
  log(`${N} sockets live in ${seconds.toFixed(1)} s (${(N / seconds).toFixed(0)}/s)`);
  return {
    seconds,
    perS: N / seconds,
    hubCpuPct: (100 * (end.hubCpuS - before.hubCpuS)) / seconds,
    retries: connectRetries,
    bindRetries,
    errors: connectErrors,
    listenOverflows: end.netstat.listenOverflows - before.netstat.listenOverflows,
    listenDrops: end.netstat.listenDrops - before.netstat.listenDrops,
    synCookiesSent: end.netstat.synCookiesSent - before.netstat.synCookiesSent,
  };
}

function profileHold() {
  // diagnostics (--profile): py-spy on the hub for the hold, non-blocking, on this core
  if (!cfg.profile) return null;
  const { spawn } = require('child_process');
  const spy = spawn(cfg.profile.pyspy, ['record', '--nonblocking', '--pid', String(cfg.hubPid), '--rate', String(cfg.profile.rate),
    '--duration', String(Math.max(1, Math.floor(cfg.holdS))), '--format', 'raw', '-o', cfg.profile.out], { stdio: 'ignore' });
  spy.on('error', (e) => log(`py-spy: ${e.message}`));
  return spy;
}

async function hold() {
  const spy = profileHold();
  const s0 = snapshot();
  const stat0 = cpuStat();
  const self0 = process.cpuUsage();
  const pings0 = pingsFromHub;
  const t = performance.now();
  let lastLog = t;
  while (performance.now() - t < cfg.holdS * 1000) {
    await sleep(Math.min(1000, cfg.holdS * 1000 - (performance.now() - t)));
    if (performance.now() - lastLog > 30000) {
      lastLog = performance.now();
      const p = procSample(cfg.hubPid, CLK);
      log(`holding: ${((lastLog - t) / 1000).toFixed(0)}/${cfg.holdS} s, hub RSS ${p ? mb(p.rss).toFixed(0) : '?'} MB, ${pingsFromHub - pings0} keepalive pings`);
    }
  }
  const s1 = snapshot();
  const wall = (performance.now() - t) / 1000;
  const self = process.cpuUsage(self0);
  const genCpuS = (self.user + self.system) / 1e6;
  const stat1 = cpuStat();
  const taskS = (stat1.cpu.task - stat0.cpu.task) / CLK;
  const hubCpuS = s1.hubCpuS - s0.hubCpuS;
  if (spy) await new Promise((r) => (spy.exitCode !== null ? r() : spy.on('exit', r)));
  return {
    genCpuPct: (100 * genCpuS) / wall,
    othersCpuPct: Math.max(0, (100 * (taskS - hubCpuS - genCpuS)) / wall),
    irqCpuPct: (100 * (stat1.cpu.irq - stat0.cpu.irq)) / CLK / wall,
    seconds: wall,
    start: s0,
    end: s1,
    hubCpuPct: (100 * (s1.hubCpuS - s0.hubCpuS)) / wall,
    keepalivePings: pingsFromHub - pings0,
    keepalivePingsPerS: (pingsFromHub - pings0) / wall,
  };
}

async function broadcast(round) {
  // one round: perStream events on each stream; a subscriber's count restarts, its seq check goes on
  const { streams, rate, perStream, appendTokens } = cfg.broadcast;
  const baseSeq = cfg.broadcast.baseSeq + round * perStream;
  bcBase = baseSeq;
  bcLat = new Sink(Math.max(1, cfg.broadcast.subscribers * perStream));
  for (const c of checked.values()) c.received = 0;
  const total = streams.length * perStream;
  const win = new Window(cfg);
  win.start();
  const rtt = [];
  const lag = [];
  let bad = 0;
  const errorSamples = [];
  let inFlight = 0;
  let maxInFlight = 0;
  const start = performance.now() + 10;
  const interval = 1000 / rate;
  let k = 0;
  let sendingDone = false;
  let settleAll = null;
  const allAnswered = new Promise((r) => (settleAll = r));
  const answered = () => {
    inFlight--;
    if (inFlight === 0 && sendingDone) settleAll();
  };
  await new Promise((resolveAll) => {
    const tick = () => {
      const now = performance.now();
      while (k < total && start + k * interval <= now) {
        const g = k % streams.length;
        lag.push(now - (start + k * interval));
        const t = performance.now();
        const kk = k;
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        post(`/api/streams/${encodeURIComponent(streamIds[streams[g]])}/events`, cfg.tokens[appendTokens[g]], {
          opcode: 303,
          nodeId: 'node-bench',
          payload: { t, k: kk, note: cfg.note },
        }).then(
          (r) => {
            answered();
            rtt.push(performance.now() - t);
            if (r.status !== 201) {
              bad++;
              if (errorSamples.length < 3) errorSamples.push(`${r.status} ${r.body.slice(0, 200)}`);
            }
          },
          (e) => {
            answered();
            bad++;
            if (errorSamples.length < 3) errorSamples.push(String(e.message || e));
          },
        );
        k++;
      }
      if (k >= total || now > DEADLINE) resolveAll();
      else setTimeout(tick, Math.max(0, Math.min(1, start + k * interval - performance.now())));
    };
    tick();
  });
  const tSent = performance.now();
  sendingDone = true;
  if (inFlight > 0) await allAnswered;
  // every broadcast subscriber has every event (bounded)
  const subs = [...checked.values()];
  let allIn = false;
  for (;;) {
    let complete = 0;
    for (const c of subs) if (c.last >= baseSeq + perStream) complete++;
    if (complete === subs.length) {
      allIn = true;
      break;
    }
    if (performance.now() > DEADLINE || performance.now() - tSent > 60000) {
      log(`broadcast: ${complete}/${subs.length} subscribers complete when the wait ended`);
      break;
    }
    await sleep(5);
  }
  await sleep(300); // late duplicates would show up here
  const w = win.stop();
  let expected = 0;
  let received = 0;
  let dups = -bcDups;
  let gaps = -bcGaps;
  let wrong = -bcWrong;
  let incomplete = 0;
  for (const c of subs) {
    expected += perStream;
    received += c.received;
    dups += c.dups;
    gaps += c.gaps;
    wrong += c.wrongStream;
    if (c.received !== perStream) incomplete++;
  }
  bcDups += dups;
  bcGaps += gaps;
  bcWrong += wrong;
  return {
    round: round + 1,
    streams: streams.length,
    subscribers: subs.length,
    events: total,
    perStream,
    targetRate: rate,
    achievedRate: k / ((tSent - start) / 1000),
    sendLag: quantiles(lag),
    maxInFlight,
    appendErrors: bad,
    appendErrorSamples: errorSamples,
    appendRtt: quantiles(rtt),
    allDelivered: allIn,
    latency: bcLat.stats(),
    verify: {
      expectedDeliveries: expected,
      received,
      lost: expected - received,
      duplicates: dups,
      outOfOrder: gaps,
      wrongStream: wrong,
      incompleteSubscribers: incomplete,
      ok: received === expected && dups === 0 && gaps === 0 && wrong === 0,
    },
    window: w,
  };
}

async function check() {
  // every socket still open, and each answers an application ping
  let open = 0;
  for (let i = 0; i < N; i++) if (state[i] === 2 && wss[i] && wss[i].readyState === WebSocket.OPEN) open++;
  pongs.fill(0);
  const ping = '{"type":"ping"}'; // a string: a text frame (a Buffer would go as binary)
  const t = performance.now();
  for (let i = 0; i < N; i += 1000) {
    for (let j = i; j < Math.min(N, i + 1000); j++) if (state[j] === 2) wss[j].send(ping);
    await sleep(0);
  }
  let answered = 0;
  for (;;) {
    answered = 0;
    for (let i = 0; i < N; i++) answered += pongs[i];
    if (answered >= open || performance.now() - t > 120000 || performance.now() > DEADLINE) break;
    await sleep(50);
  }
  const seconds = (performance.now() - t) / 1000;
  log(`check: ${open}/${N} open, ${answered} answered a ping in ${seconds.toFixed(1)} s`);
  let unexpectedFrames = 0;
  let socketsWithUnexpected = 0;
  for (let i = 0; i < N; i++) {
    unexpectedFrames += unexpected[i];
    if (unexpected[i]) socketsWithUnexpected++;
  }
  return { open, pongs: answered, pingSeconds: seconds, unexpectedFrames, socketsWithUnexpected, unexpectedSamples };
}

async function main() {
  const killer = setTimeout(() => {
    log('hard deadline reached, exiting');
    process.stdout.write(JSON.stringify({ result: { error: 'hard deadline' } }) + '\n');
    process.exit(3);
  }, cfg.timeoutS * 1000 + 15000);
  killer.unref();
  const result = { sockets: N };
  const series = [];
  let stopSampler = null;
  try {
    result.setup = await setup();
    for (const [i, g] of cfg.broadcast.socketGroups) checked.set(i, new Checked(streamIds[cfg.broadcast.streams[g]]));
    await sleep(2000);
    result.metricsBefore = await hubMetrics();
    await sleep(1000);
    result.before = snapshot();
    stopSampler = sampler(series, cfg.sampleEveryS);
    result.connect = await connect();
    livePhase = 'settle';
    await sleep(cfg.settleS * 1000);
    result.after = snapshot();
    result.metricsAfterConnect = await hubMetrics();
    livePhase = 'hold';
    log(`holding ${N} sockets for ${cfg.holdS} s`);
    result.hold = await hold();
    result.metricsAfterHold = await hubMetrics();
    livePhase = 'broadcast';
    result.broadcast = [];
    for (let round = 0; round < cfg.broadcast.rounds; round++) {
      if (round > 0) await sleep(5000);
      log(`broadcast ${round + 1}/${cfg.broadcast.rounds}: ${cfg.broadcast.streams.length} streams x ${cfg.broadcast.subscribers / cfg.broadcast.streams.length} subscribers, ${cfg.broadcast.rate} events/s, ${cfg.broadcast.perStream} events per stream`);
      result.broadcast.push(await broadcast(round));
    }
    livePhase = 'check';
    result.metricsAfterBroadcast = await hubMetrics();
    result.check = await check();
    result.final = snapshot();
    result.metricsFinal = await hubMetrics();
  } catch (e) {
    result.error = String(e && e.stack ? e.stack : e);
    let live = 0;
    for (let i = 0; i < N; i++) if (state[i] === 2) live++;
    result.liveAtError = live;
    result.connectErrors = connectErrors;
    try {
      result.atError = snapshot();
      result.metricsAtError = await hubMetrics();
    } catch (e2) {
      /* the hub may be gone */
    }
  }
  if (stopSampler) stopSampler();
  result.series = series;
  result.closesByPhase = closesByPhase;
  result.closeCodes = closeCodes;
  result.staleRetries = counters.staleRetries;
  result.genPeakRssMB = Math.max(0, ...series.map((s) => s.genRssMB || 0));
  process.stdout.write(JSON.stringify({ result }) + '\n');
  // reset every connection (RST): no TIME_WAIT on either side, the ports are free at once
  for (const ws of wss) {
    if (ws && ws._socket) {
      ws.removeAllListeners('close');
      ws._socket.resetAndDestroy();
    }
  }
  agent.destroy();
  setTimeout(() => process.exit(0), 500).unref();
}

main();
