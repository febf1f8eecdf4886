#!/usr/bin/env node
// Scenario F (bench/ef.py): GPS. cfg.drivers drivers, each on its own order stream with one
// watcher, send position pings at cfg.rate pings/s each (open loop, evenly spread: the offered
// load is drivers x rate per second) for cfg.durationS seconds.
//   hub:   setup (not measured): each driver comes online (POST /api/drivers/status: its tenant DB
//          gets its driver node and location point, as the seed's rami / pt-rami-loc), the
//          platform opens its order stream gps-i (ORDER_CREATE + TASK_ASSIGN naming the driver),
//          a watcher (the stream's customer) subscribes to /ws/streams/gps-i and the driver opens
//          its inbox socket /ws/inbox, as the driver app does. Pings are {"type": "location",
//          "lat", "lng"} frames on the driver's socket; the watcher must receive each as a
//          `location` frame of its stream and driver. The ping's index k is encoded in lat.
//          /metrics before and after: pings accepted / dropped by the rate limit, tenant-DB writes.
//   peers: a watcher per channel gps-i (/ws/gps-i, or socket.io with ?channel=), warmed up as
//          peers.js does; each ping is POST /publish/gps-i {"events": [{c, k, t, lat, lng}]}.
//          Accepted = 200. Nothing is stored.
// A driver whose socket buffers more than 64 KB (hub) or pings beyond cfg.maxInFlight unanswered
// requests (peers) are not sent and counted ("shed": the server fell behind).
'use strict';

const { performance } = require('perf_hooks');
const WebSocket = require('ws');
const { cfg, log, sleep, Window, request, pool, quantiles, hubMetrics, run, DEADLINE } = require('./common');

const N = cfg.drivers;
const PER_DRIVER = Math.ceil(cfg.rate * cfg.durationS) + 1; // ping indexes k per driver
const LAT0 = 10;
const K_SCALE = 1e4; // lat = LAT0 + k / K_SCALE
const PUB_PORT = cfg.pubPort || cfg.port;
const ids = [];
for (let i = 0; i < N; i++) ids.push(`gps-${i}`);
const sentAt = ids.map(() => new Float64Array(PER_DRIVER));
const latencies = [];

function wsUrl(path, token) {
  return `ws://${cfg.host}:${cfg.port}${path}${token ? `${path.includes('?') ? '&' : '?'}token=${token}` : ''}`;
}

class Watcher {
  // one stream's subscriber: every ping of its driver exactly once, nothing else
  constructor(i) {
    this.i = i;
    this.seen = new Uint8Array(PER_DRIVER);
    this.received = 0;
    this.dups = 0;
    this.wrong = 0;
    this.warm = false;
    this.lastRecv = 0;
    this.errors = [];
  }
  onPing(k, streamOk) {
    const now = performance.now();
    if (!streamOk || !(k >= 0 && k < PER_DRIVER) || !sentAt[this.i][k]) { this.wrong++; return; }
    if (this.seen[k]) { this.dups++; return; }
    this.seen[k] = 1;
    this.received++;
    this.lastRecv = now;
    latencies.push(now - sentAt[this.i][k]);
  }
  onPeerMsg(m) {
    if (m.warm !== undefined) { if (m.c === ids[this.i]) this.warm = true; return; }
    this.onPing(m.k, m.c === ids[this.i]);
  }
  open() {
    return new Promise((resolve, reject) => {
      if (cfg.client === 'socketio') {
        const s = (this.sock = require('socket.io-client').io(`http://${cfg.host}:${cfg.port}`, {
          transports: ['websocket'], query: { channel: ids[this.i] }, reconnection: false, forceNew: true,
        }));
        s.on('connect', () => resolve());
        s.on('connect_error', (e) => { this.errors.push(String(e.message || e)); reject(e); });
        s.on('event', (m) => this.onPeerMsg(m));
        return;
      }
      const path = cfg.hub ? `/ws/streams/${ids[this.i]}?since=0` : `/ws/${ids[this.i]}`;
      const ws = (this.ws = new WebSocket(wsUrl(path, cfg.hub && cfg.customerTokens[this.i]), { perMessageDeflate: false }));
      if (!cfg.hub) ws.on('open', () => resolve());
      ws.on('message', (data) => {
        const m = JSON.parse(data);
        if (!cfg.hub) { this.onPeerMsg(m); return; }
        if (m.type === 'location') {
          const k = Math.round((m.lat - LAT0) * K_SCALE);
          this.onPing(k, m.streamId === ids[this.i] && m.driver === cfg.driverIds[this.i]);
        } else if (m.type === 'live') {
          this.warm = true;
          resolve();
        } else if (m.type === 'error') {
          this.errors.push(JSON.stringify(m.error));
        }
      });
      ws.on('close', (code) => { this.errors.push(`watcher closed ${code}`); reject(new Error(`watcher closed ${code}`)); });
      ws.on('error', (e) => { this.errors.push(String(e.message || e)); reject(e); });
    });
  }
  close() {
    if (this.sock) this.sock.disconnect();
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.close(1000);
  }
}

class Driver {
  // the hub's driver app: its inbox socket, location frames on it
  constructor(i) {
    this.i = i;
    this.errorFrames = 0;
    this.errors = [];
  }
  open() {
    return new Promise((resolve, reject) => {
      const ws = (this.ws = new WebSocket(wsUrl('/ws/inbox?since=0', cfg.driverTokens[this.i]), { perMessageDeflate: false }));
      ws.on('message', (data) => {
        const m = JSON.parse(data);
        if (m.type === 'live') resolve();
        else if (m.type === 'error') { this.errorFrames++; if (this.errors.length < 3) this.errors.push(JSON.stringify(m.error)); }
      });
      ws.on('close', (code) => { this.errors.push(`driver closed ${code}`); reject(new Error(`driver closed ${code}`)); });
      ws.on('error', (e) => { this.errors.push(String(e.message || e)); reject(e); });
    });
  }
}

async function setupHub() {
  const t = performance.now();
  await pool(N, 16, async (i) => {
    const r = await request('POST', '/api/drivers/status', cfg.driverTokens[i], {
      status: 'online', lat: 25.2 + i * 1e-4, lng: 55.3, vehicle: 'Motorcycle',
    });
    if (r.status !== 200) throw new Error(`driver ${i} online: ${r.status} ${r.body}`);
    const s = await request('POST', `/api/streams/${ids[i]}/events`, cfg.platformToken, { events: [
      { id: `${ids[i]}.create`, opcode: 501, payload: { customer: cfg.customers[i], restaurant: cfg.restaurant } },
      { id: `${ids[i]}.assign`, opcode: 302, nodeId: cfg.driverIds[i],
        payload: { task: 'delivery', driver: cfg.driverIds[i], vehicle: 'Motorcycle', eta: 10 } },
    ] });
    if (s.status !== 201 && s.status !== 200) throw new Error(`stream ${ids[i]}: ${s.status} ${s.body}`);
  });
  log(`${N} drivers online with an assigned order in ${((performance.now() - t) / 1000).toFixed(1)} s`);
}

async function connect(socks, what) {
  const t = performance.now();
  await pool(socks.length, cfg.connectConcurrency || 50, async (i) => {
    if (performance.now() > DEADLINE) throw new Error(`deadline while connecting ${what}`);
    await socks[i].open();
  });
  log(`${socks.length} ${what} connected in ${((performance.now() - t) / 1000).toFixed(1)} s`);
}

async function warmUp(watchers) {
  // peers: publish until every watcher has received something (subscriptions are asynchronous)
  const until = performance.now() + 10000;
  for (let round = 0; ; round++) {
    const cold = watchers.filter((w) => !w.warm);
    if (cold.length === 0) return 0;
    if (performance.now() > until) { log(`${cold.length} watchers never received a warm-up msg`); return cold.length; }
    await pool(cold.length, 16, (j) => request('POST', `/publish/${ids[cold[j].i]}`, null, { events: [{ c: ids[cold[j].i], warm: round }] }, PUB_PORT));
    await sleep(250);
  }
}

function sendPings(drivers) {
  // open loop: ping j at tStart + j / (N x rate), driver j mod N, its k-th ping, k = j div N
  const total = N * PER_DRIVER - N;
  const interval = 1000 / (N * cfg.rate);
  const st = { sent: 0, shed: 0, acked: 0, failed: 0, inFlight: 0, lastAck: 0, rtt: [], sendLagMax: 0 };
  const tStart = performance.now() + 10;
  let j = 0;
  let settle;
  const answered = new Promise((r) => (settle = r));
  let sending = true;
  const done = () => { if (--st.inFlight === 0 && !sending) settle(); };
  return new Promise((resolveSent) => {
    const tick = () => {
      const now = performance.now();
      while (j < total && tStart + j * interval <= now) {
        const i = j % N;
        const k = Math.floor(j / N);
        st.sendLagMax = Math.max(st.sendLagMax, now - (tStart + j * interval));
        j++;
        const la = LAT0 + k / K_SCALE;
        const ln = 55 + i * 1e-5;
        if (cfg.hub) {
          const ws = drivers[i].ws;
          if (ws.readyState !== WebSocket.OPEN || ws.bufferedAmount > 65536) { st.shed++; continue; }
          sentAt[i][k] = performance.now();
          ws.send(JSON.stringify({ type: 'location', lat: la, lng: ln }));
          st.sent++;
          continue;
        }
        if (st.inFlight >= cfg.maxInFlight) { st.shed++; continue; }
        const t = (sentAt[i][k] = performance.now());
        st.sent++;
        st.inFlight++;
        request('POST', `/publish/${ids[i]}`, null, { events: [{ c: ids[i], k, t, lat: la, lng: ln }] }, PUB_PORT).then(
          (r) => { if (r.status === 200) { st.acked++; st.lastAck = performance.now(); st.rtt.push(st.lastAck - t); } else st.failed++; done(); },
          () => { st.failed++; done(); },
        );
      }
      if (j >= total || now > DEADLINE) {
        sending = false;
        st.tStart = tStart;
        st.tSent = performance.now();
        st.answered = st.inFlight === 0 ? Promise.resolve() : answered;
        resolveSent(st);
      } else setTimeout(tick, Math.max(0, Math.min(1, tStart + j * interval - performance.now())));
    };
    tick();
  });
}

async function waitDelivered(watchers, st) {
  // until every sent ping arrived, or nothing arrived for 10 s, or the deadline
  let last = -1, changed = performance.now();
  for (;;) {
    let got = 0;
    for (const w of watchers) got += w.received;
    const now = performance.now();
    if (got >= st.sent) return 'complete';
    if (got !== last) { last = got; changed = now; }
    if (now - changed > 10000) return 'quiet';
    if (now > DEADLINE - 5000) return 'deadline';
    await sleep(10);
  }
}

run(async () => {
  if (cfg.hub) await setupHub();
  const watchers = ids.map((_, i) => new Watcher(i));
  await connect(watchers, 'watchers');
  const cold = cfg.hub ? 0 : await warmUp(watchers);
  const drivers = cfg.hub ? ids.map((_, i) => new Driver(i)) : [];
  if (cfg.hub) await connect(drivers, 'driver sockets');
  await sleep(1000);
  const m0 = cfg.hub ? await hubMetrics() : null;
  const win = new Window();
  win.start();
  const st = await sendPings(drivers);
  await st.answered;
  const endedBy = await waitDelivered(watchers, st);
  let tLast = 0;
  for (const x of watchers) tLast = Math.max(tLast, x.lastRecv);
  // a coalesced write lands within 1 s of the last ping the server took
  await sleep(Math.max(0, 1300 - (performance.now() - Math.max(tLast, st.tSent))));
  const w = win.stop();
  const m1 = cfg.hub ? await hubMetrics() : null;
  let received = 0, dups = 0, wrong = 0;
  const errors = []; // the first few, and how many sockets closed under the run
  let closed = 0;
  for (const x of [...watchers, ...drivers]) {
    closed += x.errors.filter((e) => e.includes('closed')).length;
    for (const e of x.errors) if (errors.length < 5) errors.push(e);
  }
  for (const x of watchers) {
    received += x.received; dups += x.dups; wrong += x.wrong;
    x.close();
  }
  for (const d of drivers) d.ws.close(1000);
  const sendS = (st.tSent - st.tStart) / 1000;
  // until the last ping was taken: the sending, or longer when the server fell behind
  const ingestS = (Math.max(tLast, st.lastAck, st.tSent) - st.tStart) / 1000;
  const accepted = cfg.hub ? m1.gpsPings - m0.gpsPings : st.acked;
  const out = {
    scenario: 'F', durable: Boolean(cfg.hub), drivers: N, ratePerDriver: cfg.rate, durationS: cfg.durationS,
    offeredPerS: N * cfg.rate, sent: st.sent, shed: st.shed, sentPerS: st.sent / sendS, sendSeconds: sendS,
    sendLagMaxMs: st.sendLagMax, accepted, failed: st.failed,
    ingestSeconds: ingestS, ingestedPerS: accepted / ingestS,
    received, reachedPct: (100 * received) / Math.max(1, st.sent), duplicates: dups, wrong,
    latency: quantiles(latencies), publishRtt: cfg.hub ? null : quantiles(st.rtt), endedBy, coldWatchers: cold,
    closedSockets: closed, errors, window: w,
  };
  if (cfg.hub) {
    out.dropped = m1.gpsDropped - m0.gpsDropped;
    out.errorFrames = drivers.reduce((a, d) => a + d.errorFrames, 0);
    out.tenantWrites = m1.tenantWrites - m0.tenantWrites;
    out.streamsWrites = m1.streamsWrites - m0.streamsWrites;
    // per driver per second, from the first ping until the last coalesced write was due (+1 s)
    out.tenantWritesPerDriverS = out.tenantWrites / (N * (ingestS + 1));
    out.tenantWritesMax = N * (Math.ceil(ingestS) + 1); // first ping at once, then <= 1 per second
    out.tenantWritesMin = N * Math.floor(sendS); // a ping >= 1 s after the last write writes
  }
  log(`sent ${st.sent}, accepted ${accepted}, received ${received} (${out.reachedPct.toFixed(2)} %), ended ${endedBy}`);
  return out;
});
