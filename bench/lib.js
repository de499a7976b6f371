// Shared helpers of the benchmark: statistics, the sandbox under test, /proc views.
import { readFileSync, readdirSync } from 'node:fs';
import { spawnNative } from '../dist/native.js';
import { BWRAP_ENV, bwrapArgs, envArgs, workerEnv, workerMounts } from '../dist/process/bwrap.js';
import { hasHostCgroups, hostRunPlan } from '../dist/process/run-dir.js';

export const BWRAP = '/usr/bin/bwrap';
export const WORKER_GID = 65534;
export const WORKER_MOUNT = '/tmp/app';
export const TMP_SIZE = 1024 ** 3; // procyard's default tmpSizeBytes
export const AS_ROOT = process.getuid?.() === 0;

// The ranges this bench may use, so it can run next to the test suites.
export const PORTS = { start: 30000, end: 31999 };
export const UIDS = { start: 50000, end: 51999 };
export const REDIS_PORTS = { start: 16500, end: 16509 };

/** A ProcessBackend config over a slice of the bench's ranges. */
export function backendConfig(ports, uids, extra = {}) {
  return {
    process: {
      portRangeStart: ports[0],
      portRangeEnd: ports[1],
      workerUidStart: uids[0],
      workerUidEnd: uids[1],
      stopGraceMs: 1000,
      ...extra,
    },
    storage: { bundleWorkerPath: WORKER_MOUNT },
  };
}

export function workerSpec(workerId, bundlePath, cmd = ['/bin/true']) {
  return { appId: 'bench', workerId, bundlePath, workerMount: WORKER_MOUNT, cmd };
}

/**
 * The argv (after the bwrap binary) and env of the sandbox a ProcessBackend
 * builds for workerSpec(): every peer starts exactly this. procyard hands
 * bwrap the app's environment options on an --args fd; peers have no such
 * fd, so they get the same options inline in argv.
 */
export function sandboxCommand(bundlePath, uid, port, cmd = ['/bin/true']) {
  const spec = workerSpec('x', bundlePath, cmd);
  // run: the host's /run hidden, as in every sandbox the backend starts.
  const args = bwrapArgs({ uid, gid: WORKER_GID, tmpSizeBytes: TMP_SIZE, mounts: workerMounts(spec), seccomp: false, cmd, run: hostRunPlan(), hideCgroups: hasHostCgroups() });
  const at = args.indexOf('--args');
  const inline = envArgs(workerEnv(spec, port)).toString('utf8').split('\0').slice(0, -1);
  args.splice(at, 2, ...inline);
  const env = [...BWRAP_ENV];
  return { args, env, envObject: Object.fromEntries(env.map((e) => [e.slice(0, e.indexOf('=')), e.slice(e.indexOf('=') + 1)])) };
}

/**
 * Starts a sandboxCommand() through procyard's native spawn, with bwrap's
 * status fd (3) on statusFd: the bare sandbox every path is compared with.
 */
export function spawnPeer(peer, credentials, statusFd, extra = {}) {
  return spawnNative({
    file: BWRAP,
    argv: [BWRAP, ...peer.args],
    env: peer.env,
    ...credentials,
    fds: [{ source: statusFd, target: 3 }],
    ...extra,
  });
}

/** Nearest-rank percentile of a numeric array (not mutated). */
export function percentile(values, p) {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))];
}

export function summary(values) {
  return {
    n: values.length,
    p50: percentile(values, 50),
    p99: percentile(values, 99),
    min: values.length ? Math.min(...values) : NaN,
    max: values.length ? Math.max(...values) : NaN,
    mean: values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN,
  };
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs fn over items with at most `limit` in flight. */
export async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  return out;
}

/** Rejects after ms with `what` in the message; the bench never waits forever. */
export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`bench: ${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Dispatches a backend's 'exit' events to per-worker waiters (one listener, any number of workers). */
export function exitWaiter(backend) {
  const waiting = new Map();
  const onExit = (event) => {
    const resolve = waiting.get(event.workerId);
    if (resolve) {
      waiting.delete(event.workerId);
      resolve(event);
    }
  };
  backend.on('exit', onExit);
  return {
    /** Call before spawn(): resolves with the worker's exit event. */
    expect(id) {
      return new Promise((resolve) => waiting.set(id, resolve));
    },
    dispose() {
      backend.off('exit', onExit);
      waiting.clear();
    },
  };
}

export function procStat(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const close = stat.lastIndexOf(')');
    const fields = stat.slice(close + 2).split(' ');
    // fields[0] is stat's field 3 (state), so field 22 (starttime) is fields[19].
    return { comm: stat.slice(stat.indexOf('(') + 1, close), state: fields[0], ppid: Number(fields[1]), starttime: Number(fields[19]) };
  } catch {
    return null;
  }
}

/** Direct children of this process, whichever of its threads cloned them (the native spawn runs on pool threads). */
export function ownChildren() {
  const pids = new Set();
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      for (const pid of readFileSync(`/proc/self/task/${tid}/children`, 'utf8').trim().split(/\s+/))
        if (pid) pids.add(Number(pid));
    } catch {
      // thread gone
    }
  }
  return [...pids];
}

/** Pids on the host whose real uid is in [lo, hi]. */
export function pidsWithUidIn(lo, hi) {
  const out = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const line = readFileSync(`/proc/${name}/status`, 'utf8').match(/^Uid:\s+(\d+)/m);
      const uid = line ? Number(line[1]) : -1;
      if (uid >= lo && uid <= hi) out.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

export function openFdCount() {
  return readdirSync('/proc/self/fd').length;
}
