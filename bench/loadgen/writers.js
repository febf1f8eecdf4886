#!/usr/bin/env node
// Scenario E (bench/ef.py): appends. For each writer count W (1, 16, 256), W concurrent writers,
// each a loop of HTTP POSTs of ONE event each, awaiting every answer before the next, for
// cfg.durationS or until cfg.maxEvents events were sent in total, whichever comes first.
//   hub:   POST /api/streams/e-W-i/events {opcode 303, payload {t, k, note}} with the writer's
//          restaurant token (a member: each stream is opened by the platform with ORDER_CREATE
//          first, outside the measured window). 201 = committed. Afterwards every stream is read
//          back (GET /api/streams/e-W-i, paged): its seq must run 1..lastSeq without gaps and
//          hold every acknowledged k exactly once (lost / repeated / extra counted).
//   peers: POST /publish/e-W-i {"events": [{c, k, t, note}]} (the peer apps of bench/peers/);
//          200 = published. Nothing is stored, so nothing can be read back: only acknowledged
//          publishes are counted. No subscribers (E measures the write path alone).
// Per phase: events/s = acknowledged / (last answer - first request), request round trip
// p50/p99, server CPU (and redis-server's), the generator's own CPU.
'use strict';

const { performance } = require('perf_hooks');
const { cfg, log, sleep, Window, request, pool, quantiles, run } = require('./common');

const PUB_PORT = cfg.pubPort || cfg.port;

async function openStreams(ids) {
  await pool(ids.length, 16, async (i) => {
    const r = await request('POST', `/api/streams/${ids[i]}/events`, cfg.platformToken, {
      id: `${ids[i]}.create`,
      opcode: 501,
      payload: { customer: cfg.customer, restaurant: cfg.restaurants[i] },
    });
    if (r.status !== 201 && r.status !== 200) throw new Error(`opening ${ids[i]}: ${r.status} ${r.body}`);
  });
}

function append(i, id, k, t) {
  // resolves to null when acknowledged, else what went wrong
  const check = (want) => (r) => (r.status === want ? null : `${r.status} ${r.body.slice(0, 120)}`);
  if (cfg.hub) {
    return request('POST', `/api/streams/${id}/events`, cfg.writerTokens[i], {
      opcode: 303, nodeId: 'node-bench', payload: { t, k, note: cfg.note },
    }).then(check(201));
  }
  return request('POST', `/publish/${id}`, null, { events: [{ c: id, k, t, note: cfg.note }] }, PUB_PORT)
    .then(check(200));
}

function connectWriters(n) {
  // one keep-alive connection per writer before the window (a connect burst is not measured)
  return Promise.all(Array.from({ length: n }, () => (cfg.hub
    ? request('GET', '/healthz')
    : request('POST', '/publish/e-warm', null, { events: [{ c: 'e-warm', warm: 1 }] }, PUB_PORT))));
}

async function readBack(id, acked) {
  // the stream as stored: seq 1..lastSeq without gaps; each acknowledged k exactly once
  const seen = new Uint8Array(acked);
  let since = 0, lastSeq = 0, gaps = 0, lost = 0, repeated = 0, extra = 0;
  for (;;) {
    const r = await request('GET', `/api/streams/${id}?since=${since}&limit=10000`, cfg.platformToken);
    if (r.status !== 200) throw new Error(`reading ${id}: ${r.status} ${r.body.slice(0, 200)}`);
    const body = JSON.parse(r.body);
    lastSeq = body.lastSeq;
    for (const e of body.events) {
      if (e.seq !== since + 1) gaps++;
      since = e.seq;
      if (e.opcode !== 303) continue;
      const k = e.payload.k;
      if (!(k < acked)) extra++; // committed but not acknowledged (a failed request)
      else if (seen[k]) repeated++;
      else seen[k] = 1;
    }
    if (body.events.length < 10000) break;
  }
  for (let k = 0; k < acked; k++) if (!seen[k]) lost++;
  return { lost, repeated, extra, gaps: gaps + (since !== lastSeq ? 1 : 0) };
}

async function phase(writers) {
  const ids = [];
  for (let i = 0; i < writers; i++) ids.push(`e-${writers}-${i}`);
  if (cfg.hub) await openStreams(ids);
  await connectWriters(writers);
  await sleep(500);
  const acked = new Array(writers).fill(0);
  const rtt = [];
  const errorSamples = [];
  let issued = 0, errors = 0, tLast = 0;
  const win = new Window();
  win.start();
  const tStart = performance.now();
  const tEnd = tStart + cfg.durationS * 1000;
  await Promise.all(ids.map(async (id, i) => {
    while (issued < cfg.maxEvents && performance.now() < tEnd) {
      issued++;
      const t = performance.now();
      let problem;
      try { problem = await append(i, id, acked[i], t); } catch (e) { problem = e.message; }
      const now = performance.now();
      rtt.push(now - t);
      if (problem === null) { acked[i]++; tLast = now; continue; }
      errors++;
      if (errorSamples.length < 3) errorSamples.push(problem);
    }
  }));
  const w = win.stop();
  const total = acked.reduce((a, b) => a + b, 0);
  const out = {
    writers, acked: total, errors, errorSamples, seconds: (tLast - tStart) / 1000,
    eventsPerS: total / ((tLast - tStart) / 1000), latency: quantiles(rtt), window: w,
  };
  if (cfg.hub) {
    const v = { lost: 0, repeated: 0, extra: 0, gaps: 0 };
    await pool(ids.length, 8, async (i) => {
      const r = await readBack(ids[i], acked[i]);
      for (const key of Object.keys(v)) v[key] += r[key];
    });
    out.verify = { ...v, ok: v.lost === 0 && v.repeated === 0 && v.gaps === 0 };
  }
  log(`${writers} writers: ${total} acknowledged, ${out.eventsPerS.toFixed(0)}/s, ${errors} errors`);
  return out;
}

run(async () => {
  const phases = [];
  for (const w of cfg.writers) phases.push(await phase(w));
  return { scenario: 'E', durable: Boolean(cfg.hub), durationS: cfg.durationS, maxEvents: cfg.maxEvents, phases };
});
