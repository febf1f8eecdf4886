#!/usr/bin/env node
// Load generator for bench/fanout.py: WebSocket subscribers + HTTP appenders, one process.
//
// Usage: node fanout.js CONFIG.json   (written by bench/fanout.py; see there for the fields)
//
// Scenario C (run by bench/suite.py) is scenario B against two hub instances: every HTTP request
// goes to `pubPort` (instance 1), every WebSocket to `port` (instance 2).
//
// Prints one JSON line {"result": {...}} on stdout at the end (progress goes to stderr).
// Every figure is measured here, on one clock (performance.now()):
//   - latency of a delivery = receipt time - payload.t, where payload.t is set just before the
//     append's HTTP request is created (so it includes the HTTP request and the commit: an upper
//     bound of commit -> receipt);
//   - hub CPU and RSS are read from /proc/<hub pid> at the start and end of the measured window
//     (and sampled every 250 ms for peaks); likewise, at the start and end only, the publishing
//     instance `pubPid` (scenario C) and `auxPids` (redis-server, whose CPU is summed);
//   - the generator's own CPU comes from process.cpuUsage() over the same window.
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
const PUB_PORT = cfg.pubPort || cfg.port; // HTTP appends go here (C: the other instance)

function log(...a) {
  process.stderr.write(`[loadgen ${((performance.now() - T0) / 1000).toFixed(1)}s] ${a.join(' ')}\n`);
}

// ---------------------------------------------------------------- HTTP
const appendsTo = { agent, host: cfg.host, port: PUB_PORT, timeoutMs: 30000 };
const post = (path, token, body) => request(appendsTo, 'POST', path, token, body);
const errorSamples = []; // the first few failed appends, for the result
function noteError(msg) {
  if (errorSamples.length < 3) errorSamples.push(msg);
}

// ---------------------------------------------------------------- subscribers
const EVENT_PREFIX = Buffer.from('{"type":"event",');
const SEQ_KEY = Buffer.from('"seq":');
const T_KEY = Buffer.from('"payload":{"t":');

function numberAt(buf, i) {
  // parse a JSON number starting at buf[i]
  let j = i;
  while (j < buf.length) {
    const c = buf[j];
    if ((c >= 48 && c <= 57) || c === 46 || c === 45 || c === 101 || c === 69 || c === 43) j++;
    else break;
  }
  return Number(buf.toString('latin1', i, j));
}

class Subscriber {
  constructor(idx, streamId, token, baseSeq, lat) {
    this.idx = idx;
    this.streamId = streamId;
    this.streamKey = Buffer.from(`"streamId":${JSON.stringify(streamId)}`);
    this.token = token;
    this.baseSeq = baseSeq; // events up to here are setup (replayed), not measured
    this.lat = lat; // shared latency sink
    this.last = 0;
    this.received = 0; // measured events received (seq > baseSeq), dups excluded
    this.dups = 0;
    this.gaps = 0; // times a seq jumped forward (events lost)
    this.wrongStream = 0;
    this.live = false;
    this.closed = null;
    this.lastRecv = 0;
    this.errors = [];
  }

  open() {
    return new Promise((resolve, reject) => {
      const url = `ws://${cfg.host}:${cfg.port}/ws/streams/${encodeURIComponent(this.streamId)}?since=0&token=${this.token}`;
      const ws = (this.ws = new WebSocket(url, { perMessageDeflate: false }));
      let settled = false;
      const fail = (err) => {
        if (!settled) {
          settled = true;
          reject(err);
        }
      };
      ws.on('message', (data, isBinary) => {
        const now = performance.now();
        if (!isBinary && data.length > EVENT_PREFIX.length && data.compare(EVENT_PREFIX, 0, EVENT_PREFIX.length, 0, EVENT_PREFIX.length) === 0) {
          const si = data.indexOf(SEQ_KEY);
          const seq = numberAt(data, si + SEQ_KEY.length);
          if (data.indexOf(this.streamKey) < 0) this.wrongStream++;
          if (seq <= this.last) {
            this.dups++;
            return;
          }
          if (seq !== this.last + 1) this.gaps += 1;
          this.last = seq;
          if (seq > this.baseSeq) {
            this.received++;
            this.lastRecv = now;
            const ti = data.indexOf(T_KEY);
            if (ti >= 0) this.lat.push(now - numberAt(data, ti + T_KEY.length));
          }
          return;
        }
        let msg;
        try {
          msg = JSON.parse(data.toString());
        } catch (e) {
          this.errors.push('bad frame');
          return;
        }
        if (msg.type === 'live') {
          if (!this.live) {
            this.live = true;
            settled = true;
            resolve();
          }
        } else if (msg.type === 'error') {
          this.errors.push(JSON.stringify(msg.error));
        }
      });
      ws.on('close', (code) => {
        this.closed = code;
        fail(new Error(`closed ${code} before live`));
      });
      ws.on('error', (e) => {
        this.errors.push(String(e.message || e));
        fail(e);
      });
    });
  }

  close() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }
}

async function connectAll(subs) {
  const t = performance.now();
  await pool(subs.length, cfg.connectConcurrency || 50, async (i) => {
    if (performance.now() > DEADLINE) throw new Error('deadline while connecting');
    await subs[i].open();
  });
  log(`${subs.length} subscribers live in ${((performance.now() - t) / 1000).toFixed(1)} s`);
}

function payload(k) {
  return { t: performance.now(), k, note: cfg.note };
}

async function waitDelivered(subs, expected) {
  let lastLog = performance.now();
  for (;;) {
    let done = 0;
    for (const s of subs) if (s.last >= expected(s)) done++;
    if (done === subs.length) return true;
    if (performance.now() > DEADLINE) {
      log(`deadline: ${done}/${subs.length} subscribers complete`);
      return false;
    }
    if (performance.now() - lastLog > 5000) {
      lastLog = performance.now();
      log(`waiting: ${done}/${subs.length} subscribers complete`);
    }
    await sleep(5);
  }
}

function verify(subs, perSub) {
  let expected = 0;
  let received = 0;
  let dups = 0;
  let gaps = 0;
  let wrong = 0;
  let incomplete = 0;
  const errors = [];
  for (const s of subs) {
    expected += perSub;
    received += s.received;
    dups += s.dups;
    gaps += s.gaps;
    wrong += s.wrongStream;
    if (s.received !== perSub) incomplete++;
    for (const e of s.errors) if (errors.length < 5) errors.push(e);
  }
  return {
    expectedDeliveries: expected,
    received,
    lost: expected - received,
    deliveredPct: (100 * received) / expected,
    duplicates: dups,
    outOfOrder: gaps,
    wrongStream: wrong,
    incompleteSubscribers: incomplete,
    errors,
    ok: received === expected && dups === 0 && gaps === 0 && wrong === 0,
  };
}

// ---------------------------------------------------------------- scenario A: one stream
async function scenarioA() {
  const { streamId, subscribers, events, batch, inflight } = cfg.a;
  const setup = await post(`/api/streams/${streamId}/events`, cfg.platformToken, {
    opcode: 501,
    payload: { customer: cfg.a.customer, restaurant: cfg.a.restaurant },
  });
  if (setup.status !== 201) throw new Error(`setup append: ${setup.status} ${setup.body}`);
  const baseSeq = 1;
  const lat = new Sink(subscribers * events);
  const subs = [];
  for (let i = 0; i < subscribers; i++) subs.push(new Subscriber(i, streamId, cfg.a.tokens[i % cfg.a.tokens.length], baseSeq, lat));
  await connectAll(subs);
  await sleep(500);

  const win = new Window(cfg);
  win.start();
  const tFirst = performance.now();
  const nBatches = Math.ceil(events / batch);
  const rtt = [];
  let bad = 0;
  let sent = 0;
  await pool(nBatches, inflight, async (b) => {
    const n = Math.min(batch, events - b * batch);
    const evs = [];
    const t = performance.now();
    for (let i = 0; i < n; i++) evs.push({ opcode: 303, nodeId: 'node-bench', payload: { t, k: sent + i, note: cfg.note } });
    sent += n;
    const r = await post(`/api/streams/${streamId}/events`, cfg.platformToken, { events: evs });
    rtt.push(performance.now() - t);
    if (r.status !== 201) {
      bad++;
      noteError(`append ${r.status} ${r.body.slice(0, 200)}`);
      if (bad < 3) log(`append ${r.status} ${r.body.slice(0, 200)}`);
    }
  });
  const tAppended = performance.now();
  const allIn = await waitDelivered(subs, () => baseSeq + events);
  let tLast = 0;
  for (const s of subs) tLast = Math.max(tLast, s.lastRecv);
  await sleep(300); // late duplicates would show up here
  const w = win.stop();
  for (const s of subs) s.close();
  const v = verify(subs, events);
  const elapsed = (tLast - tFirst) / 1000;
  return {
    scenario: 'A',
    streams: 1,
    subscribers,
    events,
    batch,
    inflight,
    appendErrors: bad,
    appendErrorSamples: errorSamples,
    staleRetries: counters.staleRetries,
    appendSeconds: (tAppended - tFirst) / 1000,
    appendsPerS: events / ((tAppended - tFirst) / 1000),
    appendRtt: quantiles(rtt),
    firstAppendToLastReceiptS: elapsed,
    deliveriesPerS: v.received / elapsed,
    allDelivered: allIn,
    latency: lat.stats(),
    verify: v,
    window: w,
  };
}

// ---------------------------------------------------------------- scenario B (and C): orders
// C: the streams are opened and every event appended on instance 1 (PUB_PORT), the subscribers
// are on instance 2; each is live (its replay of the 2 setup events done) before the first
// measured event is sent.
async function scenarioB() {
  const { streams, perStream, rate } = cfg.b;
  const ids = [];
  for (let i = 0; i < streams; i++) ids.push(`bench-order-${String(i).padStart(5, '0')}`);
  const tSetup = performance.now();
  await pool(streams, 16, async (i) => {
    const r = await post(`/api/streams/${ids[i]}/events`, cfg.platformToken, {
      events: [
        { opcode: 501, payload: { customer: cfg.b.customers[i], restaurant: cfg.b.restaurants[i] } },
        { opcode: 302, nodeId: cfg.b.drivers[i], payload: { driver: cfg.b.drivers[i] } },
      ],
    });
    if (r.status !== 201) throw new Error(`setup append ${ids[i]}: ${r.status} ${r.body}`);
  });
  log(`${streams} streams opened in ${((performance.now() - tSetup) / 1000).toFixed(1)} s`);
  const baseSeq = 2;
  const total = streams * perStream;
  const lat = new Sink(total * 3);
  const subs = [];
  for (let i = 0; i < streams; i++) {
    for (const tok of [cfg.b.customerTokens[i], cfg.b.restaurantTokens[i], cfg.b.driverTokens[i]]) {
      subs.push(new Subscriber(subs.length, ids[i], tok, baseSeq, lat));
    }
  }
  await connectAll(subs);
  await sleep(1000);

  const win = new Window(cfg);
  win.start();
  const rtt = [];
  const lag = [];
  const trace = cfg.traceFile ? [] : null;
  let bad = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  const start = performance.now() + 10;
  const interval = 1000 / rate;
  let k = 0;
  let sendingDone = false;
  let settledAll = null; // resolves when the last request has been answered
  const allAnswered = new Promise((r) => (settledAll = r));
  const answered = () => {
    inFlight--;
    if (inFlight === 0 && sendingDone) settledAll();
  };
  await new Promise((resolveAll) => {
    const tick = () => {
      const now = performance.now();
      while (k < total && start + k * interval <= now) {
        const i = k % streams;
        const kk = k;
        lag.push(now - (start + k * interval));
        const t = performance.now();
        inFlight++;
        maxInFlight = Math.max(maxInFlight, inFlight);
        post(`/api/streams/${ids[i]}/events`, cfg.b.restaurantTokens[i], {
          opcode: 303,
          nodeId: 'node-bench',
          payload: { t, k: kk, note: cfg.note },
        }).then(
          (r) => {
            answered();
            rtt.push(performance.now() - t);
            if (trace) trace.push([kk, t - start, performance.now() - t]);
            if (r.status !== 201) {
              bad++;
              noteError(`append ${r.status} ${r.body.slice(0, 200)}`);
              if (bad < 3) log(`append ${r.status} ${r.body.slice(0, 200)}`);
            }
          },
          (e) => {
            answered();
            bad++;
            noteError(`append error ${e.code || ''} ${e.message}`);
            if (bad < 3) log(`append error ${e.message}`);
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
  const allIn = await waitDelivered(subs, () => baseSeq + perStream);
  if (trace) fs.writeFileSync(cfg.traceFile, JSON.stringify(trace));
  let tLast = 0;
  for (const s of subs) tLast = Math.max(tLast, s.lastRecv);
  await sleep(300);
  const w = win.stop();
  for (const s of subs) s.close();
  const v = verify(subs, perStream);
  return {
    scenario: cfg.scenario,
    streams,
    subscribers: subs.length,
    events: total,
    perStream,
    targetRate: rate,
    achievedRate: k / ((tSent - start) / 1000),
    sendLag: quantiles(lag),
    maxInFlight,
    appendErrors: bad,
    appendErrorSamples: errorSamples,
    staleRetries: counters.staleRetries,
    appendRtt: quantiles(rtt),
    deliveriesPerS: v.received / ((tLast - start) / 1000),
    allDelivered: allIn,
    latency: lat.stats(),
    verify: v,
    window: w,
  };
}

// ---------------------------------------------------------------- scenario D: idle connections
// (driven by bench/suite.py) subscribers on `channels` streams with a platform token (it may
// subscribe to streams that do not exist yet); hub RSS before connecting and once all are live.
async function scenarioD() {
  const { subscribers, channels, tokens } = cfg.d;
  const subs = [];
  for (let i = 0; i < subscribers; i++) subs.push(new Subscriber(i, `bench-d-${i % channels}`, tokens[i % tokens.length], 0, new Sink(1)));
  await sleep(500);
  const before = procSample(cfg.hubPid, cfg.clkTck);
  await connectAll(subs);
  await sleep(2000);
  const after = procSample(cfg.hubPid, cfg.clkTck);
  const errors = subs.flatMap((s) => s.errors).slice(0, 5);
  for (const s of subs) s.close();
  return {
    scenario: 'D', subscribers, channels, rssBeforeMB: before.rss / 2 ** 20, rssAfterMB: after.rss / 2 ** 20,
    kbPerConnection: (after.rss - before.rss) / 1024 / subscribers, errors,
  };
}

async function main() {
  const killer = setTimeout(() => {
    log('hard deadline reached, exiting');
    process.stdout.write(JSON.stringify({ result: { error: 'hard deadline' } }) + '\n');
    process.exit(3);
  }, cfg.timeoutS * 1000 + 15000);
  killer.unref();
  let result;
  try {
    result = await { A: scenarioA, B: scenarioB, C: scenarioB, D: scenarioD }[cfg.scenario]();
  } catch (e) {
    result = { scenario: cfg.scenario, error: String(e && e.stack ? e.stack : e) };
  }
  process.stdout.write(JSON.stringify({ result }) + '\n');
  agent.destroy();
  setTimeout(() => process.exit(0), 200).unref();
}

main();
