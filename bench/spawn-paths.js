// Sections 1 and 2, run in a child node process at one parent size:
// spawn latency of the same sandbox through four paths, and the event-loop
// stall during a burst of spawns. run.js forks this with --max-old-space-size
// and reads the result over IPC; with PROCYARD_BENCH_STANDALONE=1 it prints
// the JSON instead.
//
// The C floor (bench/floor.c) runs beside it, holding the same resident size,
// and its batches interleave with the Node paths' batches: its bare kind
// (the native spawn's clone child) and its sandbox kind (the work of a
// ProcessBackend spawn with limits and policy on: issue 15's floor).
//
// argv[2]: JSON { residentMb, spawns, warmup, burst, burstInFlight: [n...], bundle,
//                 ports: [s,e], uids: [s,e], offPorts, offUids, hooksOffPorts, hooksOffUids, fullPorts, fullUids,
//                 peerUid, statusPort, floorBinary, floorReuseCpu }
//
// backendPolicyOff is the same backend with networkPolicy 'off' (no Landlock
// domain, no socket hooks), interleaved with the others: the cost of the policy,
// side by side. backendHooksOff keeps Landlock and drops only the socket hooks
// (issue 21), paired with the default backend in the same way.
import { spawn as cpSpawn } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setImmediate as yieldTurn } from 'node:timers/promises';
import { execa } from 'execa';
import { quietLogger } from '../dist/backend.js';
import { ProcessBackend } from '../dist/index.js';
import { PidWatcherNative } from '../dist/native.js';
import { resolveProcessConfig } from '../dist/config.js';
import { cpuQuotaUs, resolveLimitsConfig } from '../dist/process/limits.js';
import { SocketHooks, socketHooksConfig } from '../dist/process/socket-hooks.js';
import { startFloor } from './floor.js';
import {
  AS_ROOT,
  BWRAP,
  WORKER_GID,
  backendConfig,
  exitWaiter,
  sandboxCommand,
  summary,
  spawnPeer,
  withTimeout,
  workerSpec,
} from './lib.js';

const opts = JSON.parse(process.argv[2]);
// The parent went away: stop (the sandboxes die with us through PDEATHSIG).
process.on('disconnect', () => process.exit(1));

/** Allocates and touches residentMb of Buffers (off the V8 heap, but resident in this process). */
function makeResident(mb) {
  const chunks = [];
  const chunk = 64 * 1024 * 1024;
  for (let left = mb * 1024 * 1024, i = 0; left > 0 && i < 4096; left -= chunk, i++) {
    const b = Buffer.allocUnsafeSlow(Math.min(chunk, left));
    b.fill((i % 251) + 1); // write every page
    chunks.push(b);
  }
  return chunks;
}

const credentials = AS_ROOT ? { uid: opts.peerUid, gid: WORKER_GID } : {};
const peer = sandboxCommand(opts.bundle, opts.peerUid, opts.statusPort);
// bwrap's --json-status-fd 3: /dev/null for the three peer paths (the backend uses its own pipe).
const statusSink = openSync('/dev/null', 'w');

/**
 * Each path: start(i) resolves with { ms, done } once the spawn call has
 * resolved (ms = call to resolution); done settles when the sandbox has
 * exited and everything is cleaned up.
 */
function nativePath() {
  return async () => {
    const t0 = performance.now();
    const child = await spawnPeer(peer, credentials, statusSink);
    const ms = performance.now() - t0;
    closeSync(child.stdout);
    closeSync(child.stderr);
    const done = new Promise((resolve, reject) => {
      new PidWatcherNative(
        child.pidfd,
        (status) => {
          closeSync(child.pidfd);
          if (status.code === 0) resolve();
          else reject(new Error(`native sandbox exited ${JSON.stringify(status)}`));
        },
        true,
      );
    });
    return { ms, done };
  };
}

let pathSeq = 0;
function backendPath(backend, waiter) {
  let seq = 0;
  const prefix = `lat${pathSeq++}`;
  return async () => {
    const id = `${prefix}-${seq++}`;
    const exited = waiter.expect(id);
    const t0 = performance.now();
    await backend.spawn(workerSpec(id, opts.bundle));
    const ms = performance.now() - t0;
    const done = exited.then(async (event) => {
      await backend.removeResource({ id, kind: 'container', labels: {} });
      if (event.code !== 0) throw new Error(`backend sandbox exited ${JSON.stringify(event)}`);
    });
    return { ms, done };
  };
}

function childProcessPath() {
  return async () => {
    const t0 = performance.now();
    const child = cpSpawn(BWRAP, peer.args, {
      env: peer.envObject,
      ...credentials,
      stdio: ['ignore', 'pipe', 'pipe', statusSink],
    });
    const closed = new Promise((resolve, reject) =>
      child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`child_process sandbox exited ${code}`)))),
    );
    await new Promise((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    const ms = performance.now() - t0;
    return { ms, done: closed };
  };
}

function execaPath() {
  return async () => {
    const t0 = performance.now();
    const child = execa(BWRAP, peer.args, {
      env: peer.envObject,
      extendEnv: false,
      ...credentials,
      stdio: ['ignore', 'pipe', 'pipe', statusSink],
      reject: false,
    });
    await new Promise((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', reject);
    });
    const ms = performance.now() - t0;
    const done = child.then((result) => {
      if (result.exitCode !== 0) throw new Error(`execa sandbox exited ${result.exitCode}: ${result.stderr}`);
    });
    return { ms, done };
  };
}

/**
 * Sequential spawns, each waiting for the sandbox to exit; the paths (and
 * the C floor) take turns in batches of 10 so drift on a shared machine hits
 * all alike.
 */
async function latency(paths, floor) {
  const samples = Object.fromEntries([...Object.keys(paths), 'floor', 'floorSandbox'].map((k) => [k, []]));
  for (const [name, start] of Object.entries(paths)) {
    for (let i = 0; i < opts.warmup; i++) await withTimeout((await start()).done, 30000, `${name} warm-up`);
  }
  await floor.batch(opts.warmup, 'bare');
  await floor.batch(opts.warmup, 'sandbox');
  const rounds = Math.ceil(opts.spawns / 10);
  for (let r = 0; r < rounds; r++) {
    for (const [name, start] of Object.entries(paths)) {
      for (let i = 0; i < 10 && samples[name].length < opts.spawns; i++) {
        const { ms, done } = await start();
        samples[name].push(ms);
        await withTimeout(done, 30000, `${name} sandbox exit`);
      }
    }
    samples.floor.push(...(await floor.batch(Math.min(10, opts.spawns - samples.floor.length), 'bare')));
    samples.floorSandbox.push(...(await floor.batch(Math.min(10, opts.spawns - samples.floorSandbox.length), 'sandbox')));
  }
  return Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, { ...summary(v), samples: v }]));
}

/**
 * A feature's cost, paired: each round spawns once through the backend with
 * it on and once through the one with it off (alternating which goes first),
 * so machine drift hits both alike. Also the median of per-pair ratios.
 * Used for the network policy (1b) and the per-worker limits (1d).
 */
async function pairedSpawns(on, off, count) {
  const samples = { on: [], off: [] };
  const ratios = [];
  for (let i = 0; i < count; i++) {
    const order = i % 2 === 0 ? [['on', on], ['off', off]] : [['off', off], ['on', on]];
    const pair = {};
    for (const [name, start] of order) {
      const { ms, done } = await start();
      pair[name] = ms;
      await withTimeout(done, 30000, `paired ${name} sandbox exit`);
    }
    samples.on.push(pair.on);
    samples.off.push(pair.off);
    ratios.push(pair.on / pair.off);
  }
  return { on: summary(samples.on), off: summary(samples.off), pairRatio: summary(ratios) };
}

/**
 * The event loop during `count` spawns issued back to back, one per loop
 * turn, with at most `inFlight` sandboxes alive at once (1: each spawn waits
 * for the previous sandbox to exit; count: all in flight together).
 */
async function burst(start, count, inFlight) {
  const h = monitorEventLoopDelay({ resolution: 1 });
  let issued = 0;
  const lane = async () => {
    while (issued < count) {
      issued++;
      const { done } = await start();
      await yieldTurn();
      await done;
    }
  };
  const before = mainThread();
  h.enable();
  const t0 = performance.now();
  const lanes = [];
  for (let i = 0; i < Math.min(inFlight, count); i++) {
    lanes.push(lane());
    await yieldTurn();
  }
  await withTimeout(Promise.all(lanes), 300000, 'burst');
  const durationMs = performance.now() - t0;
  h.disable();
  const after = mainThread();
  return {
    spawns: count,
    inFlight,
    durationMs,
    mainCpuMs: after.cpuMs - before.cpuMs,
    runQueueWaitMs: after.waitMs - before.waitMs,
    involuntarySwitches: after.involuntary - before.involuntary,
    maxMs: h.max / 1e6,
    p99Ms: h.percentile(99) / 1e6,
    p50Ms: h.percentile(50) / 1e6,
    ticks: h.count,
  };
}

/**
 * The main thread's scheduling so far: CPU time it ran, time it waited
 * runnable for a CPU, and how often it was preempted. A loop stall with
 * little CPU of our own but much waiting is the machine's, not our code's.
 */
function mainThread() {
  const [run, wait] = readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ').map(Number);
  const status = readFileSync(`/proc/self/task/${process.pid}/status`, 'utf8');
  return { cpuMs: run / 1e6, waitMs: wait / 1e6, involuntary: Number(/nonvoluntary_ctxt_switches:\s+(\d+)/.exec(status)?.[1] ?? NaN) };
}

/** The same monitor with nothing to do: the machine's own jitter. */
async function idle(ms) {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  await new Promise((resolve) => setTimeout(resolve, ms));
  h.disable();
  return { spawns: 0, durationMs: ms, maxMs: h.max / 1e6, p99Ms: h.percentile(99) / 1e6, p50Ms: h.percentile(50) / 1e6, ticks: h.count };
}

// Issue 15's backend: the worker sandbox with everything on (limits, network
// policy, the builtin seccomp filter), as the C floor's sandbox kind starts it.
const FULL_CONFIG = {
  ...backendConfig(opts.fullPorts, opts.fullUids, { resourceLimits: 'auto', networkPolicy: 'auto', seccompProfile: 'builtin' }),
  server: { defaultMemoryLimit: '1g', defaultCpuLimit: 2 },
};

/**
 * A backend whose socket hooks are switched off and nothing else: there is no
 * public knob for that ('off' also drops Landlock), so its hooks object is
 * swapped for one built from the same config in mode 'off'.
 */
function withoutHooks(config) {
  const backend = new ProcessBackend(config);
  backend.hooks = new SocketHooks({ ...socketHooksConfig(config, resolveProcessConfig(config)), mode: 'off' }, quietLogger);
  return backend;
}

/** The one-off cost per backend: loading the programs and maps, making the hooks' directory and attaching (the first spawn's place()), then close(). */
async function hooksSetUp(config, rounds) {
  const hooksConfig = socketHooksConfig(config, resolveProcessConfig(config));
  const setUp = [];
  const tearDown = [];
  for (let i = 0; i < rounds; i++) {
    const hooks = new SocketHooks(hooksConfig, quietLogger);
    const t0 = performance.now();
    const placed = await hooks.place(hooksConfig.uids[0], hooksConfig.workerPorts[0], {}, null);
    const t1 = performance.now();
    await hooks.close();
    setUp.push(t1 - t0);
    tearDown.push(performance.now() - t1);
    if (placed.cgroupDir === undefined) return { unavailable: 'the socket hooks do not hold here (not root, or no cgroup2 mount)' };
  }
  return { setUp: summary(setUp), tearDown: summary(tearDown) };
}

async function main() {
  // The floor writes the limits the backend writes into its spare cgroups.
  const limits = resolveLimitsConfig(FULL_CONFIG);
  const floor = await startFloor(opts.floorBinary, {
    ...opts,
    sandbox: {
      dir: path.dirname(opts.bundle),
      limits: { memoryBytes: limits.memoryBytes, cpuQuotaUs: limits.cpus > 0 ? cpuQuotaUs(limits.cpus) : 0, pids: limits.pidsLimit },
      reuseCpu: opts.floorReuseCpu,
    },
  });
  const tAlloc = performance.now();
  const resident = makeResident(opts.residentMb);
  const allocMs = performance.now() - tAlloc;
  // Two backends, each on half of the ranges: per-worker limits on (a cgroup
  // per worker, default memory and CPU limits set) and off, side by side.
  const split = ([start, end]) => [[start, start + Math.floor((end - start) / 2)], [start + Math.floor((end - start) / 2) + 1, end]];
  const [portsOn, portsOff] = split(opts.ports);
  const [uidsOn, uidsOff] = split(opts.uids);
  const backend = new ProcessBackend({ ...backendConfig(portsOn, uidsOn), server: { defaultMemoryLimit: '1g', defaultCpuLimit: 2 } });
  const backendOff = new ProcessBackend(backendConfig(portsOff, uidsOff, { resourceLimits: 'off' }));
  const waiter = exitWaiter(backend);
  const waiterOff = exitWaiter(backendOff);
  // A third, for the network policy: the same limits as `backend`, Landlock off.
  const backendPolicyOff = new ProcessBackend({
    ...backendConfig(opts.offPorts, opts.offUids, { networkPolicy: 'off' }),
    server: { defaultMemoryLimit: '1g', defaultCpuLimit: 2 },
  });
  const waiterPolicyOff = exitWaiter(backendPolicyOff);
  // A fourth: the same as `backend` without the socket hooks only.
  const backendHooksOff = withoutHooks({ ...backendConfig(opts.hooksOffPorts, opts.hooksOffUids), server: { defaultMemoryLimit: '1g', defaultCpuLimit: 2 } });
  const waiterHooksOff = exitWaiter(backendHooksOff);
  const backendFull = new ProcessBackend(FULL_CONFIG);
  const waiterFull = exitWaiter(backendFull);
  try {
    // Their start-up /proc scans, finished before timing.
    await Promise.all([backend, backendOff, backendPolicyOff, backendHooksOff, backendFull].map((b) => b.cleanupOrphanResources()));
    const paths = {
      native: nativePath(),
      backend: backendPath(backend, waiter),
      backendOff: backendPath(backendOff, waiterOff),
      childProcess: childProcessPath(),
      execa: execaPath(),
    };
    const rssMb = process.memoryUsage().rss / 2 ** 20;
    const lat = await latency(
      { ...paths, backendPolicyOff: backendPath(backendPolicyOff, waiterPolicyOff), backendFull: backendPath(backendFull, waiterFull) },
      floor,
    );
    const policy = backend.network.decision;
    const pairs = await pairedSpawns(backendPath(backend, waiter), backendPath(backendPolicyOff, waiterPolicyOff), opts.spawns);
    const limitPairs = await pairedSpawns(backendPath(backend, waiter), backendPath(backendOff, waiterOff), opts.spawns);
    const hookPairs = await pairedSpawns(backendPath(backend, waiter), backendPath(backendHooksOff, waiterHooksOff), opts.spawns);
    const hooksOneOff = await hooksSetUp(backendConfig(opts.hooksOffPorts, opts.hooksOffUids), opts.warmup);
    const bursts = { idle: await idle(1000) };
    for (const inFlight of opts.burstInFlight) {
      for (const [name, start] of Object.entries(paths)) bursts[`${name}@${inFlight}`] = await burst(start, opts.burst, inFlight);
    }
    return {
      residentMb: opts.residentMb,
      rssMb,
      allocMs,
      residentChunks: resident.length,
      latency: lat,
      bursts,
      networkPolicy: { abi: policy.support.abi, enforced: policy.enforced, pairs },
      limits: { pairs: limitPairs },
      socketHooks: { pairs: hookPairs, oneOff: hooksOneOff },
      floorSandbox: { notes: floor.notes, reuseCpu: opts.floorReuseCpu },
    };
  } finally {
    waiter.dispose();
    waiterOff.dispose();
    waiterPolicyOff.dispose();
    waiterHooksOff.dispose();
    waiterFull.dispose();
    try {
      await Promise.all([backend.close(), backendOff.close(), backendPolicyOff.close(), backendHooksOff.close(), backendFull.close()]);
    } finally {
      // Its cgroups removed whatever else failed (it also removes them itself when we die).
      await floor.close();
      closeSync(statusSink);
    }
  }
}

main().then(
  (result) => {
    if (process.send) process.send({ ok: true, result }, () => process.exit(0));
    else {
      console.log(JSON.stringify(result));
      process.exit(0);
    }
  },
  (err) => {
    const message = err instanceof Error ? err.stack : String(err);
    if (process.send) process.send({ ok: false, error: message }, () => process.exit(1));
    else {
      console.error(message);
      process.exit(1);
    }
  },
);
