// procyard benchmarks: `npm run bench` (full, a few minutes) or
// `node bench/run.js --quick` (smoke run, about a minute). Prints markdown
// tables of procyard against peers measured in the same run, and writes the
// raw numbers to bench/results/<time>.json (and latest.json).
// `--only hostile` runs that section alone (full or --quick) and leaves
// latest.json as it is.
//
// Uses only ports 30000-31999, worker UIDs 50000-51999 and a private
// redis-server on 127.0.0.1:16500-16509, so it can run beside the tests.
import { execFileSync, fork } from 'node:child_process';
import { chmodSync, closeSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { PidWatcherNative, pidfdOpen, pidfdSignal, reservePort, spawnNative } from '../dist/native.js';
import { runAlloc } from './alloc.js';
import { buildFloor } from './floor.js';
import { runHostile } from './hostile.js';
import { BWRAP, PORTS, REDIS_PORTS, UIDS, pidsWithUidIn, procStat, sleep, withTimeout } from './lib.js';
import { runOverhead } from './overhead.js';
import { runReady } from './ready.js';
import { buildReport, machineMarkdown } from './report.js';
import { runSampling } from './sampling.js';
import { runTtfb } from './ttfb.js';
import { runScale } from './scale.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const quick = process.argv.includes('--quick');
// Sections that can run alone: `--only <name>`.
const ONLY = ['hostile', 'ttfb'];
const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1] : null;
if (only !== null && !ONLY.includes(only)) throw new Error(`bench: --only takes one of ${ONLY.join(', ')}, got ${only}`);
// The floor of issue 15 does what procyard does with the v1 cpu cgroup: one
// reused directory (the default, as procyard recycles it), or with this flag
// a fresh one per spawn (procyard before the recycling).
const floorReuseCpu = !process.argv.includes('--floor-fresh-cpu');
let interrupted = false;
const interrupt = new AbortController(); // sections that loop stop at their next step

const PARAMS = quick
  ? { spawns: 40, warmup: 5, burst: 30, residentMb: 512, overheadRounds: 3, readyRuns: 5, samplingWorkers: 20, samplingTicks: 3, allocOps: 200000, redisSamples: 20, scaleWorkers: 40, breakdownRuns: 20,
      hostile: { windowMs: 3000, timeWait: 20000, healthChecks: 20, procReads: 3, readyRuns: 3 }, ttfbRuns: 3 }
  : { spawns: 200, warmup: 10, burst: 100, residentMb: 2048, overheadRounds: 10, readyRuns: 30, samplingWorkers: 200, samplingTicks: 5, allocOps: 2000000, redisSamples: 200, scaleWorkers: 500, breakdownRuns: 100,
      hostile: { windowMs: 10000, timeWait: 130000, healthChecks: 100, procReads: 10, readyRuns: 10 }, ttfbRuns: 10 };

// Slices of the bench's ranges, one per section (nothing overlaps, so a slow exit never collides).
const RANGES = {
  spawn: { ports: [30000, 30249], uids: [50000, 50249] },
  spawnPolicyOff: { ports: [30250, 30499], uids: [50250, 50499] }, // the same backend with networkPolicy 'off'
  spawnFull: { ports: [31950, 31989], uids: [51900, 51939] }, // issue 15: limits + policy + seccomp, against the floor's same sandbox
  overhead: { ports: [30500, 30549], uids: [50500, 50549] },
  breakdown: { ports: [30550, 30599], uids: [50550, 50599] },
  ready: { ports: [30600, 30699], uids: [50600, 50699], plainPorts: [31900, 31949] },
  sampling: { ports: [30700, 30999], uids: [50700, 50999] },
  scale: { ports: [31000, 31699], uids: [51000, 51699] },
  ttfb: { ports: [31700, 31799], uids: [51700, 51799] }, // issue 22: bare Rscript, cold and warm to the first byte
  spawnHooksOff: { ports: [31800, 31899], uids: [51800, 51899] }, // issue 21: the default backend without its socket hooks
  hostile: { ports: [31990, 31998], uids: [51940, 51949] }, // issue 20: log flood and TIME_WAIT bloat, run last
  alloc: { ports: [31000, 31999], uids: [51000, 51999] }, // Redis keys only: no process, no bind
  peerUid: 51990, // peers' sandboxes (native, child_process, execa, floor): outside every backend's range
  statusPort: 31999, // only the SHINY_PORT value in the peers' env; never bound
};

for (const [name, r] of Object.entries(RANGES)) {
  const inside = (range, allowed) => !range || (range[0] >= allowed.start && range[1] <= allowed.end && range[0] <= range[1]);
  if (typeof r === 'object' && !(inside(r.ports, PORTS) && inside(r.plainPorts, PORTS) && inside(r.uids, UIDS)))
    throw new Error(`bench: range ${name} leaves the bench's ports ${PORTS.start}-${PORTS.end} / UIDs ${UIDS.start}-${UIDS.end}`);
}
if (RANGES.peerUid < UIDS.start || RANGES.peerUid > UIDS.end || RANGES.statusPort < PORTS.start || RANGES.statusPort > PORTS.end)
  throw new Error('bench: peerUid / statusPort outside the bench ranges');
// Every range that binds or runs something is its section's alone (alloc's are Redis keys only).
for (const kind of ['ports', 'uids']) {
  const taken = [];
  for (const [name, r] of Object.entries(RANGES)) {
    if (name === 'alloc' || typeof r !== 'object') continue;
    if (r[kind]) taken.push([name, r[kind]]);
    if (kind === 'ports' && r.plainPorts) taken.push([`${name}.plainPorts`, r.plainPorts]);
  }
  taken.push(kind === 'ports' ? ['statusPort', [RANGES.statusPort, RANGES.statusPort]] : ['peerUid', [RANGES.peerUid, RANGES.peerUid]]);
  for (const [i, [a, ra]] of taken.entries())
    for (const [b, rb] of taken.slice(i + 1))
      if (ra[0] <= rb[1] && rb[0] <= ra[1]) throw new Error(`bench: ${kind} of ${a} (${ra.join('-')}) and ${b} (${rb.join('-')}) overlap`);
}

function log(message) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}

function machine() {
  let bwrap = 'unknown';
  try {
    bwrap = execFileSync(BWRAP, ['--version'], { encoding: 'utf8' }).trim();
  } catch {
    // reported as unknown
  }
  return {
    cores: os.cpus().length,
    cpu: os.cpus()[0]?.model ?? 'unknown',
    memoryGb: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    node: process.version,
    bwrap,
    root: process.getuid?.() === 0,
    loadStart: os.loadavg().map((x) => x.toFixed(2)).join(' '),
  };
}

/** A private redis-server, started with the native spawn so it dies with us (PDEATHSIG) whatever happens. */
async function startRedis(dir) {
  for (let port = REDIS_PORTS.start; port <= REDIS_PORTS.end; port++) {
    try {
      closeSync(reservePort(port));
    } catch {
      continue; // taken
    }
    const child = await spawnNative({
      file: '/usr/bin/redis-server',
      argv: ['redis-server', '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--logfile', path.join(dir, 'redis.log')],
      env: ['PATH=/usr/bin:/bin'],
    });
    closeSync(child.stdout);
    closeSync(child.stderr);
    let exited = false;
    const exit = new Promise((resolve) => new PidWatcherNative(child.pidfd, (s) => resolve((exited = s)), true));
    const redis = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null });
    redis.on('error', () => {}); // connection errors surface as rejected commands
    const stop = async () => {
      redis.disconnect();
      if (!exited) {
        pidfdSignal(child.pidfd, 15);
        await Promise.race([exit, sleep(5000)]);
        if (!exited) pidfdSignal(child.pidfd, 9);
        await Promise.race([exit, sleep(5000)]);
      }
      closeSync(child.pidfd);
    };
    const deadline = Date.now() + 10000;
    for (;;) {
      try {
        await redis.connect();
        await redis.ping();
        log(`redis-server on 127.0.0.1:${port}`);
        return { redis, port, stop };
      } catch (err) {
        if (exited || Date.now() > deadline) {
          await stop();
          if (exited) break; // e.g. the port was taken meanwhile: try the next one
          throw new Error(`bench: redis-server on ${port} did not answer: ${err.message}`);
        }
        redis.disconnect();
        await sleep(50);
      }
    }
  }
  throw new Error(`bench: no free port for redis-server in ${REDIS_PORTS.start}-${REDIS_PORTS.end}`);
}

/**
 * Every process left with a bench UID once the run is over. Worker UIDs
 * 50000-51999 belong to this bench alone, so anything alive there is ours: a
 * leak to report (and kill). Zombies orphaned to the host's PID 1 (bwrap's
 * monitor exits without reaping its init) are waited out first, bounded.
 */
async function leftovers(waitMs = 15000) {
  const deadline = Date.now() + waitMs;
  const ours = () => pidsWithUidIn(UIDS.start, UIDS.end).filter((pid) => !before.has(`${pid}:${procStat(pid)?.starttime}`));
  let pids = ours();
  while (pids.length > 0 && Date.now() < deadline) {
    if (pids.every((pid) => procStat(pid)?.state !== 'Z')) break; // nothing left to reap: no point waiting
    await sleep(100);
    pids = ours();
  }
  const live = pids.filter((pid) => !['Z', 'X', undefined].includes(procStat(pid)?.state));
  for (const pid of live) {
    try {
      const fd = pidfdOpen(pid);
      pidfdSignal(fd, 9);
      closeSync(fd);
    } catch {
      // gone meanwhile
    }
  }
  return { live: live.length, zombies: pids.length - live.length, pids: live.slice(0, 20) };
}

/**
 * Processes that had a bench UID before this run started (pid:starttime):
 * another run's, not ours to kill or to count as our leak. Reported once.
 */
const before = new Set();
function notePreexisting() {
  for (const pid of pidsWithUidIn(UIDS.start, UIDS.end)) before.add(`${pid}:${procStat(pid)?.starttime}`);
  if (before.size > 0)
    log(`${before.size} processes had a bench UID (${UIDS.start}-${UIDS.end}) before this run: not ours, left alone and not counted`);
  return before.size;
}

const children = new Set();

/** Sections 1 and 2 in a child node process holding residentMb of touched memory. */
function spawnPaths(residentMb, bundle, floorBinary) {
  const opts = {
    residentMb,
    spawns: PARAMS.spawns,
    warmup: PARAMS.warmup,
    burst: PARAMS.burst,
    burstInFlight: [1, PARAMS.burst],
    bundle,
    ports: RANGES.spawn.ports,
    uids: RANGES.spawn.uids,
    offPorts: RANGES.spawnPolicyOff.ports,
    offUids: RANGES.spawnPolicyOff.uids,
    hooksOffPorts: RANGES.spawnHooksOff.ports,
    hooksOffUids: RANGES.spawnHooksOff.uids,
    fullPorts: RANGES.spawnFull.ports,
    fullUids: RANGES.spawnFull.uids,
    floorReuseCpu,
    peerUid: RANGES.peerUid,
    statusPort: RANGES.statusPort,
    floorBinary,
  };
  const heapMb = Math.max(4096, residentMb * 2);
  const child = fork(path.join(HERE, 'spawn-paths.js'), [JSON.stringify(opts)], {
    execArgv: [`--max-old-space-size=${heapMb}`],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  children.add(child);
  const result = new Promise((resolve, reject) => {
    child.once('message', (m) => (m.ok ? resolve(m.result) : reject(new Error(`spawn-paths (${residentMb} MB): ${m.error}`))));
    child.once('exit', (code, signal) => reject(new Error(`spawn-paths (${residentMb} MB) exited ${code ?? signal} without a result`)));
  });
  return withTimeout(result, quick ? 120000 : 480000, `spawn paths at ${residentMb} MB`).finally(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
    children.delete(child);
  });
}

async function main() {
  const started = Date.now();
  const m = machine();
  m.preexistingBenchUidProcesses = notePreexisting();
  log(`${quick ? 'quick' : 'full'} run on ${m.cores} cores, kernel ${m.kernel}, Node ${m.node}`);
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'procyard-bench-'));
  // Worker UIDs must reach the bundle: mkdtemp makes 0700.
  chmodSync(tmp, 0o755);
  const bundle = path.join(tmp, 'bundle');
  mkdirSync(bundle, { mode: 0o755 });
  let redis = null;
  const cleanup = async () => {
    for (const child of children) child.kill('SIGKILL');
    if (redis) await redis.stop().catch(() => {});
    redis = null;
    // A sandbox whose bwrap monitor died mid-set-up (its parent killed) keeps its init: sweep our UIDs.
    const left = await leftovers(2000);
    if (left.live > 0) log(`killed ${left.live} leftover processes with bench UIDs`);
    rmSync(tmp, { recursive: true, force: true });
  };
  const onSignal = (sig) => {
    interrupted = true;
    interrupt.abort();
    log(`${sig}: cleaning up`);
    cleanup().finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    const results = { quick, params: PARAMS, machine: m, spawn: {}, floorReuseCpu, only };

    if (!only) {
      const floorBinary = await buildFloor(tmp);

      log('sections 1+2 and the floor, small heap');
      results.spawn.small = await spawnPaths(0, bundle, floorBinary);
      log(`sections 1+2 and the floor, ${PARAMS.residentMb} MB resident`);
      results.spawn.big = await spawnPaths(PARAMS.residentMb, bundle, floorBinary);

      log('section 3: backend overhead over the bare sandbox');
      results.overhead = await runOverhead({ bundle, rounds: PARAMS.overheadRounds, ...RANGES.overhead, peerUid: RANGES.peerUid, statusPort: RANGES.statusPort });
      log('section 3b: where ProcessBackend.spawn spends its time');
      try {
        // Loaded here: it drives procyard internals, and a change there must not stop the run.
        const { runBreakdown } = await import('./breakdown.js');
        results.breakdown = await runBreakdown({ bundle, runs: PARAMS.breakdownRuns, ...RANGES.breakdown, peerUid: RANGES.peerUid, statusPort: RANGES.statusPort });
      } catch (err) {
        results.breakdown = { unavailable: err instanceof Error ? err.message : String(err) };
        log(`breakdown unavailable: ${results.breakdown.unavailable}`);
      }
      log('section 4: spawn to ready');
      results.ready = await runReady({ bundle, runs: PARAMS.readyRuns, ...RANGES.ready });
      log(`section 5: sampling ${PARAMS.samplingWorkers} workers`);
      results.sampling = await runSampling({ bundle, workers: PARAMS.samplingWorkers, ticks: PARAMS.samplingTicks, ...RANGES.sampling });

      redis = await startRedis(tmp);
      log('section 6: allocation');
      results.alloc = await runAlloc({ redis: redis.redis, ops: PARAMS.allocOps, redisSamples: PARAMS.redisSamples, ...RANGES.alloc });
      log(`scale: ${PARAMS.scaleWorkers} workers`);
      results.scale = await runScale({ bundle, workers: PARAMS.scaleWorkers, redis: redis.redis, ...RANGES.scale });
    }

    if (!only || only === 'ttfb') {
      log('section 9: time to first byte of a Shiny app: bare Rscript, cold, warm');
      try {
        results.ttfb = await runTtfb({ runs: PARAMS.ttfbRuns, ...RANGES.ttfb });
      } catch (err) {
        // Needs R with shiny, and root for the pool: say why it is missing rather than stop the run.
        results.ttfb = { unavailable: err instanceof Error ? err.message : String(err) };
        log(`ttfb unavailable: ${results.ttfb.unavailable}`);
      }
    }

    // Last: its TIME_WAIT sockets outlive it by 60 s, and its flood must not overlap the others' measurements.
    if (!only || only === 'hostile') {
      log('section 8: hostile tenant (log flood, TIME_WAIT bloat)');
      results.hostile = await runHostile({ bundle, ...PARAMS.hostile, ...RANGES.hostile, signal: interrupt.signal });
    }

    results.leftovers = await leftovers();
    if (results.leftovers.live > 0)
      log(`LEAK: ${results.leftovers.live} live processes with bench UIDs after the run (killed): ${results.leftovers.pids.join(' ')}`);
    m.loadEnd = os.loadavg().map((x) => x.toFixed(2)).join(' ');
    results.durationS = (Date.now() - started) / 1000;
    const report = buildReport(results);
    const command = only ? `node bench/run.js --only ${only}${quick ? ' --quick' : ''}` : quick ? 'node bench/run.js --quick' : 'npm run bench';
    const busy = Math.max(...[m.loadStart, m.loadEnd].map((l) => Number(l.split(' ')[0]))) > m.cores;
    const markdown =
      `## procyard benchmarks (${only ? `${only} section only, ` : ''}${quick ? 'quick smoke run' : 'full run'}, ${new Date().toISOString().slice(0, 10)})\n\n` +
      `Command: \`${command}\` (${results.durationS.toFixed(0)} s). Machine:\n\n${machineMarkdown(m)}\n\n` +
      (busy ? `**The 1-minute load average exceeded the core count: other work competed for the CPUs, so absolute times (and the loop delays) are inflated; ratios within a section are measured side by side and hold up better.**\n\n` : '') +
      `${report.markdown}\n\n### Targets\n\n${report.targetTable}\n`;
    process.stdout.write(`${markdown}\n`);

    const outDir = path.join(HERE, 'results');
    mkdirSync(outDir, { recursive: true });
    const file = `${new Date().toISOString().replace(/[:.]/g, '-')}${only ? `-${only}` : ''}${quick ? '-quick' : ''}.json`;
    const json = JSON.stringify({ ...results, targets: report.targets, markdown }, null, 1);
    writeFileSync(path.join(outDir, file), json);
    if (!only) writeFileSync(path.join(outDir, 'latest.json'), json); // the whole run's, not one section's
    log(`wrote bench/results/${file} in ${results.durationS.toFixed(0)} s`);
  } finally {
    await cleanup();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    if (interrupted) return; // the signal handler exits once cleanup is done
    console.error(err instanceof Error ? err.stack : err);
    process.exit(1);
  },
);
