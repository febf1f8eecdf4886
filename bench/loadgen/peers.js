#!/usr/bin/env node
// Load generator for bench/suite.py: the same scenarios as fanout.js, against the PEER apps
// (bench/peers/*), which speak a plain protocol instead of the hub's:
//   publish:   POST /publish/{channel}  body {"events": [msg, ...]}  (the app publishes each msg)
//   subscribe: WebSocket /ws/{channel}, one text frame per msg, the msg's JSON as published
//              (socket.io: its own protocol via socket.io-client, query ?channel=, event "event")
// Peers assign no sequence numbers, so each msg carries the generator's own index k (0..n-1 per
// channel), its channel c and its send time t. Verification per subscriber: every k exactly once
// (lost / duplicates counted; out-of-order counted but only informative, as with several
// requests in flight the peers define no order between them) and no msg of another channel.
// Readiness: peers say nothing when a subscription is active (broadcaster, Channels and
// socket.io subscribe to Redis asynchronously), so after connecting the generator publishes
// warm-up msgs every 250 ms until every subscriber has received one.
// Scenario C (cross-instance) is B against two server processes sharing one Redis: msgs are
// published on `pubPort` (instance 1, `pubPid`), subscribers connect to `port` (instance 2,
// `hubPid`), so the warm-up also waits until every subscription is active through Redis.
// CPU and RSS: `hubPid` sampled every 250 ms, `pubPid` (C) and `auxPids` (redis-server, CPU
// summed) at the start and end of the measured window.
// Usage: node peers.js CONFIG.json ; prints {"result": {...}} (same shape as fanout.js).
'use strict';

const fs = require('fs');
const http = require('http');
const { performance } = require('perf_hooks');
const WebSocket = require('ws');
const { procSample, Window, quantiles, Sink, pool, sleep } = require('./measure');
const { request, counters } = require('./http');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const T0 = performance.now();
const DEADLINE = T0 + cfg.timeoutS * 1000;
const agent = new http.Agent({ keepAlive: true, maxSockets: cfg.httpSockets || 64 });
const PUB_PORT = cfg.pubPort || cfg.port;

function log(...a) {
  process.stderr.write(`[peers ${((performance.now() - T0) / 1000).toFixed(1)}s] ${a.join(' ')}\n`);
}

const publishTo = { agent, host: cfg.host, port: PUB_PORT };
const errorSamples = []; // the first few failed publishes, for the result
const noteError = (msg) => errorSamples.length < 3 && errorSamples.push(msg);
const publish = (ch, msgs) => request(publishTo, 'POST', `/publish/${encodeURIComponent(ch)}`, null, { events: msgs });

const K_KEY = Buffer.from('"k":');
const T_KEY = Buffer.from('"t":');
const C_KEY = Buffer.from('"c":');
const W_KEY = Buffer.from('"warm":');
function numAfter(buf, key) {
  let i = buf.indexOf(key);
  if (i < 0) return undefined;
  i += key.length;
  while (buf[i] === 32) i++;
  let j = i;
  while (j < buf.length) {
    const c = buf[j];
    if ((c >= 48 && c <= 57) || c === 46 || c === 45 || c === 101 || c === 69 || c === 43) j++;
    else break;
  }
  return Number(buf.toString('latin1', i, j));
}
function scan(buf) {
  // msgs are flat objects {"c": "...", "k"|"warm": n, "t": x, "note": "..."} (Python puts spaces after ':')
  let i = buf.indexOf(C_KEY);
  if (i < 0) return null;
  i += C_KEY.length;
  while (buf[i] === 32) i++;
  const j = buf.indexOf(34, i + 1); // closing quote (channel names have no escapes)
  const c = buf.toString('latin1', i + 1, j);
  const warm = numAfter(buf, W_KEY);
  if (warm !== undefined) return { c, warm };
  return { c, k: numAfter(buf, K_KEY), t: numAfter(buf, T_KEY) };
}

let ioClient = null;
let coldSubscribers = 0;
class Subscriber {
  constructor(channel, nEvents, lat) {
    this.channel = channel;
    this.seen = new Uint8Array(nEvents);
    this.lat = lat;
    this.received = 0;
    this.dups = 0;
    this.outOfOrder = 0;
    this.maxK = -1;
    this.wrong = 0;
    this.warm = false;
    this.lastRecv = 0;
    this.errors = [];
  }
  onMsg(m) {
    const now = performance.now();
    if (m.c !== this.channel) { this.wrong++; return; }
    if (m.warm !== undefined) { this.warm = true; return; }
    const k = m.k;
    if (this.seen[k]) { this.dups++; return; }
    this.seen[k] = 1;
    if (k < this.maxK) this.outOfOrder++;
    else this.maxK = k;
    this.received++;
    this.lastRecv = now;
    this.lat.push(now - m.t);
  }
  open() {
    return new Promise((resolve, reject) => {
      if (cfg.client === 'socketio') {
        ioClient = ioClient || require('socket.io-client');
        const s = (this.sock = ioClient.io(`http://${cfg.host}:${cfg.port}`, { transports: ['websocket'], query: { channel: this.channel }, reconnection: false, forceNew: true }));
        s.on('connect', () => resolve());
        s.on('connect_error', (e) => { this.errors.push(String(e.message || e)); reject(e); });
        s.on('event', (m) => this.onMsg(m));
        s.on('disconnect', (r) => { if (r !== 'io client disconnect') this.errors.push(`disconnect ${r}`); });
        return;
      }
      const ws = (this.ws = new WebSocket(`ws://${cfg.host}:${cfg.port}/ws/${encodeURIComponent(this.channel)}`, { perMessageDeflate: false }));
      ws.on('open', () => resolve());
      ws.on('message', (data) => {
        // fast path (as fanout.js does for the hub's frames): read c, k, t from the buffer
        // without JSON.parse, so the generator spends about as much per frame on every target
        const m = scan(data);
        if (m === null) { this.errors.push('bad frame'); return; }
        this.onMsg(m);
      });
      ws.on('close', (code) => { this.closed = code; reject(new Error(`closed ${code}`)); });
      ws.on('error', (e) => { this.errors.push(String(e.message || e)); reject(e); });
    });
  }
  close() {
    if (this.sock) this.sock.disconnect();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }
}

async function connectAll(subs) {
  if (cfg.staggerFirst) {
    // the first subscriber of every channel connects (and is warm) before the others, so no
    // two subscribers of one channel ever subscribe at the same moment
    const seen = new Set();
    const first = [];
    const rest = [];
    for (const s of subs) (seen.has(s.channel) ? rest : first).push(s), seen.add(s.channel);
    await connectSome(first);
    await connectSome(rest);
    return;
  }
  await connectSome(subs);
}

async function connectSome(subs) {
  const t = performance.now();
  await pool(subs.length, cfg.connectConcurrency || 50, async (i) => {
    if (performance.now() > DEADLINE) throw new Error('deadline while connecting');
    await subs[i].open();
  });
  log(`${subs.length} subscribers connected in ${((performance.now() - t) / 1000).toFixed(1)} s`);
  // warm-up until every subscription is active
  const channels = [...new Set(subs.map((s) => s.channel))];
  let round = 0;
  const warmDeadline = performance.now() + (cfg.warmupS || 10) * 1000;
  for (;;) {
    const cold = new Set(subs.filter((s) => !s.warm).map((s) => s.channel));
    if (cold.size === 0) break;
    if (performance.now() > warmDeadline || performance.now() > DEADLINE) {
      // a subscriber that never receives anything stays in the run: its losses are counted
      coldSubscribers = subs.filter((s) => !s.warm).length;
      log(`warm-up bound reached: ${coldSubscribers} subscribers never received a msg`);
      break;
    }
    const list = [...cold];
    await pool(list.length, 16, (i) => publish(list[i], [{ c: list[i], warm: round }]));
    round++;
    await sleep(250);
  }
  log(`all ${subs.length} subscriptions active (${round} warm-up rounds, ${channels.length} channels)`);
  await sleep(500);
}

let endedBy = 'complete'; // how waitDelivered ended: complete | quiet (nothing more arrived) | deadline
async function waitDelivered(subs, perSub, quietMs) {
  // until every subscriber has every msg, or nothing arrived for quietMs (losses), or deadline
  let lastTotal = -1;
  let lastChange = performance.now();
  for (;;) {
    let done = 0;
    let total = 0;
    for (const s of subs) { total += s.received; if (s.received >= perSub) done++; }
    if (done === subs.length) return true;
    const now = performance.now();
    if (total !== lastTotal) { lastTotal = total; lastChange = now; }
    if (now - lastChange > quietMs) { log(`no delivery for ${quietMs} ms: ${done}/${subs.length} subscribers complete`); endedBy = 'quiet'; return false; }
    if (now > DEADLINE) { log(`deadline: ${done}/${subs.length} complete`); endedBy = 'deadline'; return false; }
    await sleep(5);
  }
}

function verify(subs, perSub) {
  let expected = 0, received = 0, dups = 0, ooo = 0, wrong = 0, incomplete = 0;
  const errors = [];
  for (const s of subs) {
    expected += perSub; received += s.received; dups += s.dups; ooo += s.outOfOrder; wrong += s.wrong;
    if (s.received !== perSub) incomplete++;
    for (const e of s.errors) if (errors.length < 5) errors.push(e);
  }
  return {
    expectedDeliveries: expected, received, lost: expected - received, deliveredPct: (100 * received) / expected,
    duplicates: dups, outOfOrder: ooo, wrongStream: wrong, incompleteSubscribers: incomplete, errors,
    ok: received === expected && dups === 0 && wrong === 0,
  };
}

async function scenarioA() {
  const { subscribers, events, batch, inflight } = cfg.a;
  const ch = 'bench-a';
  const lat = new Sink(subscribers * events);
  const subs = [];
  for (let i = 0; i < subscribers; i++) subs.push(new Subscriber(ch, events, lat));
  await connectAll(subs);
  const win = new Window(cfg);
  win.start();
  const tFirst = performance.now();
  const rtt = [];
  let bad = 0;
  await pool(Math.ceil(events / batch), inflight, async (b) => {
    if (performance.now() > DEADLINE - 10000) return; // leave time to report what arrived
    const t = performance.now();
    const msgs = [];
    for (let k = b * batch; k < Math.min(events, (b + 1) * batch); k++) msgs.push({ c: ch, k, t, note: cfg.note });
    let r;
    try { r = await publish(ch, msgs); } catch (e) { r = { status: 0, body: String(e) }; }
    rtt.push(performance.now() - t);
    if (r.status !== 200) { bad++; noteError(`publish ${r.status} ${r.body.slice(0, 200)}`); if (bad < 3) log(`publish ${r.status} ${r.body.slice(0, 200)}`); }
  });
  const tAppended = performance.now();
  const allIn = await waitDelivered(subs, events, cfg.quietMs || 5000);
  let tLast = 0;
  for (const s of subs) tLast = Math.max(tLast, s.lastRecv);
  await sleep(300);
  const w = win.stop();
  for (const s of subs) s.close();
  const v = verify(subs, events);
  const elapsed = (tLast - tFirst) / 1000;
  return {
    scenario: 'A', streams: 1, subscribers, events, batch, inflight, appendErrors: bad, appendErrorSamples: errorSamples, staleRetries: counters.staleRetries,
    appendSeconds: (tAppended - tFirst) / 1000, appendsPerS: events / ((tAppended - tFirst) / 1000),
    appendRtt: quantiles(rtt), firstAppendToLastReceiptS: elapsed, deliveriesPerS: v.received / elapsed,
    allDelivered: allIn, latency: lat.stats(), verify: v, window: w, coldSubscribers, endedBy,
  };
}

async function scenarioB() {
  const { streams, perStream, rate } = cfg.b;
  const ids = [];
  for (let i = 0; i < streams; i++) ids.push(`bench-order-${String(i).padStart(5, '0')}`);
  const total = streams * perStream;
  const lat = new Sink(total * 3);
  const subs = [];
  for (let i = 0; i < streams; i++) for (let j = 0; j < 3; j++) subs.push(new Subscriber(ids[i], perStream, lat));
  await connectAll(subs);
  const win = new Window(cfg);
  win.start();
  const rtt = [];
  const lag = [];
  let bad = 0, inFlight = 0, maxInFlight = 0, k = 0;
  const start = performance.now() + 10;
  const interval = 1000 / rate;
  const pending = [];
  await new Promise((resolveAll) => {
    const tick = () => {
      const now = performance.now();
      while (k < total && start + k * interval <= now) {
        const i = k % streams;
        const kk = Math.floor(k / streams);
        lag.push(now - (start + k * interval));
        const t = performance.now();
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        pending.push(publish(ids[i], [{ c: ids[i], k: kk, t, note: cfg.note }]).then(
          (r) => { inFlight--; rtt.push(performance.now() - t); if (r.status !== 200) { bad++; noteError(`publish ${r.status} ${r.body.slice(0, 200)}`); if (bad < 3) log(`publish ${r.status} ${r.body.slice(0, 200)}`); } },
          (e) => { inFlight--; bad++; noteError(`publish error ${e.code || ''} ${e.message}`); if (bad < 3) log(`publish error ${e.message}`); },
        ));
        k++;
      }
      if (k >= total || now > DEADLINE) resolveAll();
      else setTimeout(tick, Math.max(0, Math.min(1, start + k * interval - performance.now())));
    };
    tick();
  });
  const tSent = performance.now();
  await Promise.all(pending);
  const allIn = await waitDelivered(subs, perStream, cfg.quietMs || 5000);
  await sleep(300);
  const w = win.stop();
  for (const s of subs) s.close();
  const v = verify(subs, perStream);
  return {
    scenario: cfg.scenario, streams, subscribers: subs.length, events: total, perStream, targetRate: rate,
    achievedRate: k / ((tSent - start) / 1000), sendLag: quantiles(lag), maxInFlight, appendErrors: bad, appendErrorSamples: errorSamples, staleRetries: counters.staleRetries,
    appendRtt: quantiles(rtt), allDelivered: allIn, latency: lat.stats(), verify: v, window: w, coldSubscribers, endedBy,
  };
}

async function scenarioD() {
  // idle subscribers: server RSS before and after connecting them (all subscriptions active)
  const { subscribers, channels } = cfg.d;
  const subs = [];
  for (let i = 0; i < subscribers; i++) subs.push(new Subscriber(`bench-d-${i % channels}`, 1, new Sink(1)));
  await sleep(500);
  const before = procSample(cfg.hubPid, cfg.clkTck);
  await connectAll(subs);
  await sleep(2000);
  const after = procSample(cfg.hubPid, cfg.clkTck);
  const errors = subs.flatMap((s) => s.errors).slice(0, 5);
  for (const s of subs) s.close();
  return { scenario: 'D', subscribers, channels, rssBeforeMB: before.rss / 2 ** 20, rssAfterMB: after.rss / 2 ** 20,
    kbPerConnection: (after.rss - before.rss) / 1024 / subscribers, errors, coldSubscribers };
}

async function main() {
  const killer = setTimeout(() => {
    process.stdout.write(JSON.stringify({ result: { scenario: cfg.scenario, error: 'hard deadline' } }) + '\n');
    process.exit(3);
  }, cfg.timeoutS * 1000 + 15000);
  killer.unref();
  let result;
  try {
    result = await ({ A: scenarioA, B: scenarioB, C: scenarioB, D: scenarioD }[cfg.scenario])();
  } catch (e) {
    result = { scenario: cfg.scenario, error: String(e && e.stack ? e.stack : e) };
  }
  process.stdout.write(JSON.stringify({ result }) + '\n');
  agent.destroy();
  setTimeout(() => process.exit(0), 200).unref();
}
main();
