// What every load generator measures the same way: /proc samples of the server processes,
// the machine's per-core jiffies, a measured window (server and generator CPU, RSS, the rest
// of the machine), latency sinks and quantiles, and a bounded worker pool.
'use strict';

const fs = require('fs');
const { performance, monitorEventLoopDelay } = require('perf_hooks');

function procSample(pid, clkTck = 100) {
  // CPU seconds (utime + stime), RSS and its high-water mark of one process; null once it is gone
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const cpu = (Number(f[11]) + Number(f[12])) / clkTck;
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const rss = Number((/VmRSS:\s+(\d+)/.exec(status) || [0, 0])[1]) * 1024;
    const hwm = Number((/VmHWM:\s+(\d+)/.exec(status) || [0, 0])[1]) * 1024;
    return { t: performance.now(), cpu, rss, hwm };
  } catch (e) {
    return null;
  }
}

function cpuStat() {
  // per-core busy/steal jiffies from /proc/stat ("cpu" is all cores)
  const out = {};
  try {
    for (const line of fs.readFileSync('/proc/stat', 'utf8').split('\n')) {
      if (!line.startsWith('cpu')) continue;
      const f = line.trim().split(/\s+/);
      const v = f.slice(1).map(Number);
      // user nice system idle iowait irq softirq steal
      out[f[0]] = {
        busy: v[0] + v[1] + v[2] + v[5] + v[6] + v[7],
        task: v[0] + v[1] + v[2], // user + nice + system: what processes are charged
        irq: v[5] + v[6], // irq + softirq (loopback TCP is mostly here)
        steal: v[7],
        all: v.slice(0, 8).reduce((a, b) => a + b, 0),
      };
    }
  } catch (e) {
    /* not Linux */
  }
  return out;
}

class Window {
  // Between start() and stop(): CPU and RSS of the server (`hubPid`, sampled every 250 ms, so
  // also its peak CPU over ~1 s), CPU and RSS of a publishing instance (`pubPid`, C), CPU of
  // redis-server (`auxPids`), this process's CPU and event-loop delay, and the machine's.
  constructor(cfg) {
    this.hubPid = cfg.hubPid;
    this.pubPid = cfg.pubPid;
    this.auxPids = cfg.auxPids;
    this.clkTck = cfg.clkTck || 100;
  }
  sample(pid) {
    return procSample(pid, this.clkTck);
  }
  start() {
    this.hub0 = this.sample(this.hubPid);
    this.pub0 = this.pubPid ? this.sample(this.pubPid) : null;
    this.aux0 = (this.auxPids || []).map((p) => this.sample(p));
    this.stat0 = cpuStat();
    this.self0 = process.cpuUsage();
    this.t0 = performance.now();
    this.samples = [this.hub0];
    this.eld = monitorEventLoopDelay({ resolution: 2 });
    this.eld.enable();
    this.timer = setInterval(() => {
      const s = this.sample(this.hubPid);
      if (s) this.samples.push(s);
    }, 250);
  }
  stop() {
    clearInterval(this.timer);
    this.eld.disable();
    const hub1 = this.sample(this.hubPid);
    const pub1 = this.pubPid ? this.sample(this.pubPid) : null;
    const aux1 = (this.auxPids || []).map((p) => this.sample(p));
    const stat1 = cpuStat();
    this.samples.push(hub1);
    const wall = (performance.now() - this.t0) / 1000;
    const self = process.cpuUsage(this.self0);
    const selfCpu = (self.user + self.system) / 1e6;
    // peak CPU over any ~1 s span of samples
    let peak = 0;
    const s = this.samples.filter(Boolean);
    for (let i = 0, j = 0; i < s.length; i++) {
      while (j < s.length && s[j].t - s[i].t < 1000) j++;
      if (j < s.length) peak = Math.max(peak, (s[j].cpu - s[i].cpu) / ((s[j].t - s[i].t) / 1000));
    }
    const hubCpu = hub1 && this.hub0 ? hub1.cpu - this.hub0.cpu : NaN;
    const pubCpu = pub1 && this.pub0 ? pub1.cpu - this.pub0.cpu : 0;
    let auxCpu = 0;
    aux1.forEach((a, i) => {
      if (a && this.aux0[i]) auxCpu += a.cpu - this.aux0[i].cpu;
    });
    const st0 = this.stat0;
    const pct = (k, f) => (st0[k] && stat1[k] ? (100 * (stat1[k][f] - st0[k][f])) / (stat1[k].all - st0[k].all) : NaN);
    const machineTaskS = st0.cpu && stat1.cpu ? (stat1.cpu.task - st0.cpu.task) / this.clkTck : NaN;
    const irqS = st0.cpu && stat1.cpu ? (stat1.cpu.irq - st0.cpu.irq) / this.clkTck : NaN;
    return {
      wallS: wall,
      hubCpuS: hubCpu,
      hubCpuPct: (100 * hubCpu) / wall,
      hubCpuPeak1sPct: 100 * peak,
      hubRssStartMB: this.hub0 ? this.hub0.rss / 2 ** 20 : NaN,
      hubRssEndMB: hub1 ? hub1.rss / 2 ** 20 : NaN,
      hubRssPeakMB: Math.max(...s.map((x) => x.rss)) / 2 ** 20,
      hubRssHwmMB: hub1 ? hub1.hwm / 2 ** 20 : NaN,
      ...(this.pubPid && {
        pubCpuPct: (100 * pubCpu) / wall,
        pubRssStartMB: this.pub0 ? this.pub0.rss / 2 ** 20 : NaN,
        pubRssEndMB: pub1 ? pub1.rss / 2 ** 20 : NaN,
      }),
      ...(this.auxPids && { auxCpuPct: (100 * auxCpu) / wall }), // redis-server
      genCpuS: selfCpu,
      genCpuPct: (100 * selfCpu) / wall,
      core0BusyPct: pct('cpu0', 'busy'),
      core1BusyPct: pct('cpu1', 'busy'),
      stealPct: pct('cpu', 'steal'),
      // CPU charged to other processes (user+system time on the machine minus the server
      // instances, redis-server and the generator), % of one core
      othersCpuPct: Math.max(0, (100 * (machineTaskS - hubCpu - pubCpu - auxCpu - selfCpu)) / wall),
      // interrupts + softirq on both cores (loopback TCP of this benchmark, mostly), % of one core
      irqCpuPct: (100 * irqS) / wall,
      genLoopDelayP99Ms: this.eld.percentile(99) / 1e6 - 2,
      genLoopDelayMaxMs: this.eld.max / 1e6 - 2,
    };
  }
}

function quantiles(values) {
  const a = Float64Array.from(values).sort();
  const q = (p) => (a.length ? a[Math.min(a.length - 1, Math.floor((p / 100) * a.length))] : NaN);
  return { n: a.length, p50Ms: q(50), p99Ms: q(99), p999Ms: q(99.9), maxMs: a.length ? a[a.length - 1] : NaN };
}

class Sink {
  // latencies (ms) of measured deliveries, preallocated
  constructor(n) {
    this.a = new Float64Array(n);
    this.n = 0;
  }
  push(v) {
    if (this.n < this.a.length) this.a[this.n++] = v;
  }
  stats() {
    const a = this.a.subarray(0, this.n).sort();
    const q = (p) => (a.length ? a[Math.min(a.length - 1, Math.floor((p / 100) * a.length))] : NaN);
    return { n: a.length, p50Ms: q(50), p90Ms: q(90), p99Ms: q(99), p999Ms: q(99.9), maxMs: a.length ? a[a.length - 1] : NaN };
  }
}

async function pool(n, concurrency, fn) {
  // fn(0..n-1), at most `concurrency` at a time
  let next = 0;
  const workers = [];
  for (let w = 0; w < Math.min(n, concurrency); w++) {
    workers.push((async () => { while (next < n) await fn(next++); })());
  }
  await Promise.all(workers);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

module.exports = { procSample, cpuStat, Window, quantiles, Sink, pool, sleep };
