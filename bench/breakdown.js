// Where ProcessBackend.spawn's time goes: each step it takes, timed alone
// with the same inputs (small heap, one at a time, steps interleaved), and
// what one worker's life costs the main thread beyond the bare sandbox.
// Diagnostic: it drives procyard's internal modules from dist/, so run.js
// reports it as unavailable rather than failing when they change.
import { closeSync, readFileSync, readdirSync } from 'node:fs';
import fsPromises, { readFile, stat } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { ProcessBackend } from '../dist/index.js';
import { PidWatcherNative, pipe, sampleTrees } from '../dist/native.js';
import { memoryAllocators } from '../dist/process/allocators/memory.js';
import { LogRing } from '../dist/process/logs.js';
import { Sandbox, startSandbox } from '../dist/process/sandbox.js';
import { checkWorkerPaths, checkWorkerSpec } from '../dist/process/validate.js';
import { workerEnv, workerMounts } from '../dist/process/bwrap.js';
import { AS_ROOT, BWRAP, WORKER_GID, backendConfig, exitWaiter, sandboxCommand, spawnPeer, summary, withTimeout, workerSpec } from './lib.js';

function exitOf(pidfd) {
  return withTimeout(new Promise((resolve) => new PidWatcherNative(pidfd, resolve, true)), 30000, 'sandbox exit');
}

export async function runBreakdown({ bundle, runs, ports, uids, peerUid, statusPort }) {
  const spec = workerSpec('x', bundle);
  const alloc = memoryAllocators([ports[0], ports[0] + 9], [peerUid, peerUid]);
  const peer = sandboxCommand(bundle, peerUid, statusPort);
  const credentials = AS_ROOT ? { uid: peerUid, gid: WORKER_GID } : {};
  const backend = new ProcessBackend(backendConfig([ports[0] + 10, ports[1]], uids));
  const waiter = exitWaiter(backend);
  let seq = 0;

  const sandboxOptions = (lease) => ({
    bwrapPath: BWRAP,
    plan: { uid: peerUid, gid: WORKER_GID, tmpSizeBytes: 1024 ** 3, mounts: workerMounts(spec), cmd: ['/bin/true'] },
    seccompProfile: '',
    env: workerEnv(spec, lease.port),
    hostCredentials: AS_ROOT,
    closeBeforeClone: lease.listenerFd,
    onLine() {},
  });

  // Each step returns its own time (ms); set-up and clean-up around it are untimed.
  const steps = {
    'checkWorkerSpec + checkWorkerPaths (src/process/validate.ts; the stats overlap the spawn in spawn())': async () => {
      const t = performance.now();
      checkWorkerSpec(spec);
      await checkWorkerPaths(spec);
      return performance.now() - t;
    },
    'ports.reserve + uids.alloc (allocators/memory.ts)': async () => {
      const t = performance.now();
      const lease = await alloc.ports.reserve();
      const uid = await alloc.uids.alloc();
      const ms = performance.now() - t;
      await alloc.ports.release(lease);
      await alloc.uids.release(uid);
      return ms;
    },
    'new LogRing(10000) (src/process/logs.ts)': async () => {
      const t = performance.now();
      void new LogRing(10000);
      return performance.now() - t;
    },
    'pipe() + spawnNative (the bare spawn inside startSandbox)': async () => {
      const lease = await alloc.ports.reserve();
      const t = performance.now();
      const [r, w] = pipe();
      const child = await spawnPeer(peer, credentials, w, { closeBeforeClone: lease.listenerFd });
      const ms = performance.now() - t;
      lease.listenerFd = -1;
      for (const fd of [w, child.stdout, child.stderr]) closeSync(fd);
      // The status pipe stays open until bwrap exits: a closed one would SIGPIPE its
      // monitor mid-set-up and orphan the sandbox's init.
      await exitOf(child.pidfd);
      closeSync(r);
      closeSync(child.pidfd);
      await alloc.ports.release(lease);
      return ms;
    },
    'new Sandbox(...) (src/process/sandbox.ts: 2 sockets deferred a turn, watcher)': async () => {
      const [r, w] = pipe();
      const child = await spawnPeer(peer, credentials, w);
      closeSync(w);
      const t = performance.now();
      const sandbox = new Sandbox(child.pidfd, child.pid, child.stdout, child.stderr, r, () => {}, { bwrap: BWRAP, uid: AS_ROOT ? peerUid : null });
      const ms = performance.now() - t;
      await withTimeout(sandbox.exited, 30000, 'sandbox exit');
      return ms;
    },
    'startSandbox (src/process/sandbox.ts)': async () => {
      const lease = await alloc.ports.reserve();
      const t = performance.now();
      const sandbox = await startSandbox(sandboxOptions(lease));
      const ms = performance.now() - t;
      lease.listenerFd = -1;
      await withTimeout(sandbox.exited, 30000, 'sandbox exit');
      await alloc.ports.release(lease);
      return ms;
    },
    'ProcessBackend.spawn (all of the above)': async () => {
      const id = `bd-${seq++}`;
      const exited = waiter.expect(id);
      const t = performance.now();
      await backend.spawn(workerSpec(id, bundle));
      const ms = performance.now() - t;
      await withTimeout(exited, 30000, 'backend exit');
      await backend.removeResource({ id, kind: 'container', labels: {} });
      return ms;
    },
    'for scale: one libuv pool round trip (sampleTrees([]))': async () => {
      const t = performance.now();
      await sampleTrees([]);
      return performance.now() - t;
    },
    'for scale: fs/promises readFile of a /proc file': async () => {
      const t = performance.now();
      await readFile('/proc/self/stat', 'utf8');
      return performance.now() - t;
    },
    'for scale: readFileSync of a /proc file': async () => {
      const t = performance.now();
      readFileSync('/proc/self/stat', 'utf8');
      return performance.now() - t;
    },
    'for scale: fs/promises stat': async () => {
      const t = performance.now();
      await stat(bundle);
      return performance.now() - t;
    },
  };

  /** fs/promises calls made while fn runs (each is one or more libuv pool jobs: readFile is open + fstat + read + close). */
  const countFsCalls = async (fn) => {
    const counts = { readFile: 0, stat: 0, readdir: 0, readlink: 0 };
    const originals = {};
    for (const name of Object.keys(counts)) {
      originals[name] = fsPromises[name];
      fsPromises[name] = (...args) => {
        counts[name]++;
        return originals[name](...args);
      };
    }
    syncBuiltinESMExports();
    try {
      await fn();
    } finally {
      Object.assign(fsPromises, originals);
      syncBuiltinESMExports();
    }
    return counts;
  };
  const lifecycle = async (cmd) => {
    const id = `bd-${seq++}`;
    const exited = waiter.expect(id);
    await backend.spawn(workerSpec(id, bundle, cmd));
    if (cmd[0] !== '/bin/true') {
      await new Promise((resolve) => setTimeout(resolve, 300));
      await backend.stop(id);
    }
    await withTimeout(exited, 30000, 'backend exit');
    await backend.removeResource({ id, kind: 'container', labels: {} });
  };

  try {
    await backend.cleanupOrphanResources();
    const samples = Object.fromEntries(Object.keys(steps).map((k) => [k, []]));
    for (const step of Object.values(steps)) for (let i = 0; i < 5; i++) await step();
    for (let i = 0; i < runs; i++) for (const [name, step] of Object.entries(steps)) samples[name].push(await step());
    const fsCallsTrue = await countFsCalls(() => lifecycle(['/bin/true']));
    const fsCallsSleep = await countFsCalls(() => lifecycle(['/bin/sleep', '60']));
    const t = performance.now();
    await backend.cleanupOrphanResources();
    const orphanScanMs = performance.now() - t;
    // A new backend scans /proc for orphaned sandboxes (fs/promises, a few pool jobs per
    // host process); spawns issued meanwhile queue behind it on the same pool.
    const afterConstruction = [];
    for (let i = 0; i < Math.max(3, Math.round(runs / 20)); i++) {
      const fresh = new ProcessBackend(backendConfig([ports[0] + 10, ports[1]], uids));
      const freshWaiter = exitWaiter(fresh);
      try {
        const exited = freshWaiter.expect('fresh');
        const t = performance.now();
        await fresh.spawn(workerSpec('fresh', bundle));
        afterConstruction.push(performance.now() - t);
        await withTimeout(exited, 30000, 'fresh backend exit');
        // Outlasts the constructor's scan (same work, started later), so the next round starts clean.
        await fresh.cleanupOrphanResources();
      } finally {
        freshWaiter.dispose();
        await fresh.close();
      }
    }
    return {
      steps: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, summary(v)])),
      fsPromisesCallsPerWorker: { binTrue: fsCallsTrue, sleepThenStop: fsCallsSleep },
      spawnRightAfterConstruction: summary(afterConstruction),
      orphanScan: { ms: orphanScanMs, hostProcesses: readdirSync('/proc').filter((n) => /^\d+$/.test(n)).length },
    };
  } finally {
    waiter.dispose();
    await backend.close();
  }
}
