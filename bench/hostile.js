// Section 8: a hostile tenant (issue 20). What one tenant's worker costs the
// server and its neighbours, each number against the same one without the
// attack, measured in the same run.
//
// Log flood: a worker at 0.25 CPU runs `yes ''`; the server reads, splits
// and keeps its empty lines on the event loop. Over a window: the server's
// CPU (every thread of this process, % of one core), its event-loop delay
// p99, and a quiet neighbour's healthCheck p50 (sequential, one every 20 ms).
// The peer is the same window with the neighbour alone. Before the log
// budget, the server spent a whole core on such a worker and the
// neighbour's check took seconds.
//
// TIME_WAIT bloat: TIME_WAIT sockets belong to no cgroup, and /proc/net/tcp
// lists every one on the host. With N of them (made here, on loopback) a live
// worker's healthCheck p50 against one read and scan of /proc/net/tcp + tcp6
// (what every check cost before sock_diag), and how long after the first
// accepted connect waitReady resolves. Runs last: the sockets outlive the
// section by 60 s, and would slow anything that reads /proc/net/tcp.
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { ProcessBackend } from '../dist/index.js';
import { procListeners } from '../dist/process/listeners.js';
import { backendConfig, exitWaiter, sleep, summary, withTimeout, workerSpec } from './lib.js';
import { SERVER, firstAccept } from './ready.js';

const FLOOD_CMD = ['/usr/bin/yes', ''];
const FLOOD_CPUS = 0.25;
const HEALTH_EVERY_MS = 20;
const ELD_RESOLUTION_MS = 2;
const SETTLE_MS = 300; // after a spawn, before a window: the flood is up to speed, the spawn's own work done
// Connections per destination. connect() walks the ~28k ephemeral ports in
// random steps per destination; once it wraps it may reuse (end) a TIME_WAIT
// over 1 s old on loopback (tcp_tw_reuse 2): 10000 per sink kept ~89%, 2000 ~99%.
const TW_PER_SINK = 2000;
const TW_LANES = 128;
const TW_CAP_MS = 60000; // TIME_WAIT lasts 60 s: made slower than that, the first ones are gone
const TW_MAX_FAILED = 1000;
// The app's own start-up, after node's. Spread over 100 ms across the runs,
// so the listen lands anywhere between two of waitReady's polls (a fixed
// delay lands at the same spot each time).
const LISTEN_DELAY_MS = [150, 250];

export const TARGETS = { cpuPercent: 40, eldP99Ms: 30, floodHealthMs: 50, twHealthMs: 5, readyLagMs: 20 };

/**
 * One window of the neighbour's life: the server's CPU and loop delay while
 * it health-checks `id` every HEALTH_EVERY_MS, for windowMs.
 */
async function measureWindow(backend, id, windowMs, signal) {
  const eld = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
  const latencies = [];
  let unhealthy = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  eld.enable();
  try {
    for (let i = 0; i < windowMs / HEALTH_EVERY_MS && performance.now() - t0 < windowMs; i++) {
      signal?.throwIfAborted();
      const t = performance.now();
      if (!(await backend.healthCheck(id))) unhealthy++;
      latencies.push(performance.now() - t);
      await sleep(HEALTH_EVERY_MS);
    }
  } finally {
    eld.disable();
  }
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  return {
    wallMs,
    cpuPercent: ((cpu.user + cpu.system) / 1000 / wallMs) * 100,
    eldP99Ms: eld.percentile(99) / 1e6,
    eldMaxMs: eld.max / 1e6,
    health: summary(latencies),
    unhealthy,
  };
}

/** Spawns a node server worker and waits until it is ready (as the backend sees it). */
async function startServer(backend, id, bundle) {
  await backend.spawn(workerSpec(id, bundle, [process.execPath, '-e', SERVER]));
  await backend.waitReady(id, { timeoutMs: 15000 });
}

async function logFlood({ backend, waiter, bundle, windowMs, signal }) {
  const neighbour = 'hostile-neighbour';
  const flooder = 'hostile-flood';
  await startServer(backend, neighbour, bundle);
  await sleep(SETTLE_MS);
  const alone = await measureWindow(backend, neighbour, windowMs, signal);

  let floodExit = null;
  waiter.expect(flooder).then((e) => (floodExit = e));
  await backend.spawn({ ...workerSpec(flooder, bundle, FLOOD_CMD), cpuLimit: FLOOD_CPUS });
  await backend.workerResourceUsage(flooder); // sets its CPU baseline
  await sleep(SETTLE_MS);
  const flood = await measureWindow(backend, neighbour, windowMs, signal);
  const usage = await backend.workerResourceUsage(flooder);
  if (floodExit) throw new Error(`bench: the flood worker exited during its window: ${JSON.stringify(floodExit)}`);
  await Promise.all([backend.stop(flooder), backend.stop(neighbour)]);
  return { windowMs, floodCpus: FLOOD_CPUS, floodWorkerCpuPercent: usage?.cpuPercent ?? NaN, alone, flood };
}

/** Loopback listeners that read to EOF and close second: each connection's TIME_WAIT stays on the client side. */
async function startSinks(count) {
  const servers = [];
  const sockets = new Set();
  const close = async () => {
    for (const s of sockets) s.destroy();
    await Promise.all(servers.map((server) => new Promise((resolve) => server.close(() => resolve()))));
  };
  try {
    for (let i = 0; i < count; i++) {
      const server = net.createServer((s) => {
        sockets.add(s);
        s.on('error', () => {});
        s.on('close', () => sockets.delete(s));
        s.resume();
      });
      servers.push(server);
      await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
    }
  } catch (err) {
    await close();
    throw err;
  }
  return { ports: servers.map((s) => s.address().port), open: () => sockets.size, close };
}

function connectAndClose(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy(); // the client closes first: TIME_WAIT is its side's
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/** Up to `target` connections, TW_LANES in flight, for at most TW_CAP_MS. */
async function makeTimeWait(target, sinks, signal) {
  const t0 = performance.now();
  let next = 0;
  let made = 0;
  let failed = 0;
  const lane = async () => {
    while (next < target && failed < TW_MAX_FAILED && performance.now() - t0 < TW_CAP_MS && !signal?.aborted) {
      const port = sinks.ports[next++ % sinks.ports.length];
      if (await connectAndClose(port)) made++;
      else failed++;
    }
  };
  await Promise.all(Array.from({ length: TW_LANES }, lane));
  signal?.throwIfAborted();
  // The sinks close their side as they read EOF: only then is each client socket in TIME_WAIT.
  for (let i = 0; i < 100 && sinks.open() > 0; i++) await sleep(20);
  return { made, failed, ms: performance.now() - t0 };
}

/**
 * The peer: one read and scan of /proc/net/tcp + tcp6 (procyard's own
 * fallback, what each health check did before sock_diag), then, untimed, the
 * files' size and TIME_WAIT count.
 */
async function procScan(port) {
  const t = performance.now();
  const listeners = (await procListeners(port)).length;
  const ms = performance.now() - t;
  const [v4, v6] = await Promise.all([readFile('/proc/net/tcp', 'utf8'), readFile('/proc/net/tcp6', 'utf8').catch(() => '')]);
  return { ms, listeners, bytes: v4.length + v6.length, timeWait: countTimeWait(v4) + countTimeWait(v6) };
}

function countTimeWait(text) {
  return text.match(/^\s*\d+: \S+ \S+ 06 /gm)?.length ?? 0;
}

/** How long after the first accepted connect waitReady resolves, for an app that listens delayMs after node starts. */
async function readyLag(backend, waiter, bundle, id, delayMs) {
  let dead = false;
  waiter.expect(id).then(() => (dead = true));
  const app = `setTimeout(() => ${SERVER}, ${delayMs})`;
  const t0 = performance.now();
  await backend.spawn(workerSpec(id, bundle, [process.execPath, '-e', app]));
  try {
    const ready = backend.waitReady(id, { timeoutMs: 15000 }).then(() => performance.now());
    ready.catch(() => {}); // awaited below; firstAccept may throw first
    const accepted = await firstAccept(Number((await backend.addr(id)).split(':')[1]), 15000, () => dead);
    const readyAt = await withTimeout(ready, 15000, 'waitReady');
    return { lagMs: readyAt - accepted, acceptMs: accepted - t0 };
  } finally {
    await backend.stop(id);
  }
}

async function timeWaitBloat({ backend, waiter, bundle, timeWait, healthChecks, procReads, readyRuns, signal }) {
  const live = 'hostile-live';
  await startServer(backend, live, bundle);
  const port = Number((await backend.addr(live)).split(':')[1]);
  const before = (await procScan(port)).timeWait;
  const sinks = await startSinks(Math.ceil(timeWait / TW_PER_SINK));
  let made;
  try {
    made = await makeTimeWait(timeWait, sinks, signal);
  } finally {
    await sinks.close();
  }
  const peer = [];
  for (let i = 0; i < procReads; i++) peer.push(await procScan(port));
  if (peer.some((p) => p.listeners !== 1)) throw new Error(`bench: /proc/net/tcp showed ${peer.map((p) => p.listeners)} listeners on the live worker's port`);
  const health = [];
  let unhealthy = 0;
  for (let i = 0; i < healthChecks; i++) {
    signal?.throwIfAborted();
    const t = performance.now();
    if (!(await backend.healthCheck(live))) unhealthy++;
    health.push(performance.now() - t);
  }
  await backend.stop(live);
  const ready = [];
  for (let i = 0; i < readyRuns; i++) {
    signal?.throwIfAborted();
    const [lo, hi] = LISTEN_DELAY_MS;
    ready.push(await readyLag(backend, waiter, bundle, `hostile-ready-${i}`, Math.round(lo + ((hi - lo) * i) / readyRuns)));
  }
  const after = await procScan(port);
  return {
    requested: timeWait,
    made: made.made,
    failed: made.failed,
    makeMs: made.ms,
    timeWaitBefore: before,
    timeWaitAtScan: peer[0].timeWait,
    timeWaitAtEnd: after.timeWait,
    procBytes: peer[0].bytes,
    procScan: summary(peer.map((p) => p.ms)),
    health: summary(health),
    unhealthy,
    listenDelayMs: LISTEN_DELAY_MS,
    readyLag: { ...summary(ready.map((r) => r.lagMs)), samples: ready.map((r) => r.lagMs) },
    spawnToAccept: summary(ready.map((r) => r.acceptMs)),
  };
}

export async function runHostile({ bundle, windowMs, timeWait, healthChecks, procReads, readyRuns, ports, uids, signal }) {
  const backend = new ProcessBackend(backendConfig(ports, uids));
  const waiter = exitWaiter(backend);
  try {
    await backend.cleanupOrphanResources();
    const flood = await logFlood({ backend, waiter, bundle, windowMs, signal });
    const tw = await timeWaitBloat({ backend, waiter, bundle, timeWait, healthChecks, procReads, readyRuns, signal });
    return { targets: TARGETS, flood, timeWait: tw };
  } finally {
    waiter.dispose();
    await backend.close();
  }
}
