// Shared pieces of the E and F generators (writers.js, gps.js): their measured window (on
// measure.js's /proc sampling), HTTP with a keep-alive agent, and the hub's /metrics. Config is
// the JSON file written by bench/ef.py (argv[2]).
'use strict';

const fs = require('fs');
const http = require('http');
const { performance, monitorEventLoopDelay } = require('perf_hooks');
const { procSample, cpuStat, quantiles, pool, sleep } = require('./measure');
const { request: httpRequest, counters } = require('./http');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const T0 = performance.now();
const DEADLINE = T0 + cfg.timeoutS * 1000;
const agent = new http.Agent({ keepAlive: true, maxSockets: cfg.httpSockets || 256 });
const CLK_TCK = cfg.clkTck || 100;

function log(...a) {
  process.stderr.write(`[${cfg.scenario} ${((performance.now() - T0) / 1000).toFixed(1)}s] ${a.join(' ')}\n`);
}

class Window {
  // CPU of the server, redis-server (auxPids) and this process between start() and stop().
  start() {
    this.srv0 = procSample(cfg.serverPid, CLK_TCK);
    this.aux0 = (cfg.auxPids || []).map((p) => procSample(p, CLK_TCK));
    this.task0 = cpuStat().cpu.task;
    this.self0 = process.cpuUsage();
    this.t0 = performance.now();
    this.rssPeak = this.srv0 ? this.srv0.rss : 0;
    this.eld = monitorEventLoopDelay({ resolution: 2 });
    this.eld.enable();
    this.timer = setInterval(() => {
      const s = procSample(cfg.serverPid, CLK_TCK);
      if (s) this.rssPeak = Math.max(this.rssPeak, s.rss);
    }, 250);
  }
  stop() {
    clearInterval(this.timer);
    this.eld.disable();
    const srv1 = procSample(cfg.serverPid, CLK_TCK);
    const aux1 = (cfg.auxPids || []).map((p) => procSample(p, CLK_TCK));
    const wall = (performance.now() - this.t0) / 1000;
    const self = process.cpuUsage(this.self0);
    const selfCpu = (self.user + self.system) / 1e6;
    const srvCpu = srv1 && this.srv0 ? srv1.cpu - this.srv0.cpu : NaN;
    let auxCpu = 0;
    aux1.forEach((a, i) => {
      if (a && this.aux0[i]) auxCpu += a.cpu - this.aux0[i].cpu;
    });
    const machineS = (cpuStat().cpu.task - this.task0) / CLK_TCK;
    return {
      wallS: wall,
      serverCpuPct: (100 * srvCpu) / wall,
      redisCpuPct: cfg.auxPids && cfg.auxPids.length ? (100 * auxCpu) / wall : null,
      serverRssStartMB: this.srv0 ? this.srv0.rss / 2 ** 20 : NaN,
      serverRssEndMB: srv1 ? srv1.rss / 2 ** 20 : NaN,
      serverRssPeakMB: Math.max(this.rssPeak, srv1 ? srv1.rss : 0) / 2 ** 20,
      genCpuS: selfCpu,
      genCpuPct: (100 * selfCpu) / wall,
      genLoopDelayP99Ms: this.eld.percentile(99) / 1e6 - 2,
      // user+system time of every other process, % of one core (the machine is shared)
      othersCpuPct: Math.max(0, (100 * (machineS - srvCpu - auxCpu - selfCpu)) / wall),
    };
  }
}

function request(method, path, token, body, port) {
  return httpRequest({ agent, host: cfg.host, port: port || cfg.port }, method, path, token, body);
}

async function hubMetrics() {
  // the hub's counters this benchmark reads (Prometheus text, one sample per line)
  const r = await request('GET', '/metrics');
  const want = {
    tenantWrites: 'hub_db_writes_total{target="tenant"}',
    streamsWrites: 'hub_db_writes_total{target="streams"}',
    gpsPings: 'hub_gps_pings_total',
    gpsDropped: 'hub_gps_pings_dropped_total',
  };
  const out = {};
  for (const line of r.body.split('\n')) {
    for (const [k, name] of Object.entries(want)) {
      if (line.startsWith(name + ' ')) out[k] = Number(line.slice(name.length + 1));
    }
  }
  return out;
}

function run(scenario) {
  // run the scenario, print {"result": ...} on stdout; a hard bound ends it whatever happens
  const killer = setTimeout(() => {
    process.stdout.write(JSON.stringify({ result: { error: 'hard deadline' } }) + '\n');
    process.exit(3);
  }, cfg.timeoutS * 1000 + 15000);
  killer.unref();
  scenario()
    .catch((e) => ({ error: String(e && e.stack ? e.stack : e) }))
    .then((result) => {
      result.staleRetries = counters.staleRetries;
      process.stdout.write(JSON.stringify({ result }) + '\n');
      agent.destroy();
      setTimeout(() => process.exit(0), 200).unref();
    });
}

module.exports = { cfg, T0, DEADLINE, log, sleep, Window, request, pool, quantiles, hubMetrics, run };
