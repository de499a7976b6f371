// Where ProcessBackend.spawn's time goes: real spawns (limits, policy and
// seccomp on, small heap, one at a time), each step timed through the
// 'procyard:spawn' diagnostics channel, and what one worker's life costs the
// main thread beyond the bare sandbox.
// Diagnostic: it drives procyard's internal modules from dist/, so run.js
// reports it as unavailable rather than failing when they change.
import diagnosticsChannel from 'node:diagnostics_channel';
import { readFileSync, readdirSync } from 'node:fs';
import fsPromises, { readFile } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { ProcessBackend } from '../dist/index.js';
import { sampleTrees } from '../dist/native.js';
import { SPAWN_CHANNEL } from '../dist/process/trace.js';
import { backendConfig, exitWaiter, summary, withTimeout, workerSpec } from './lib.js';

/** The traced steps of a spawn, in order, as bench tables name them (see src/process/trace.ts). */
const TRACED = [
  ['checked', 'spec checks, command, path-check list, mount targets (JS)'],
  ['cgroup', 'a spare cgroup taken (JS)'],
  ['port', 'port reserved: OFD byte lock + bind/listen (host-wide allocator)'],
  ['uid', 'UID claimed: OFD byte lock + LRU stamps (host-wide allocator)'],
  ['options', 'bwrap argv, env bytes, Landlock rules, cgroup options (JS)'],
  ['cloned', 'spawnStart, the native call: path stats, pipes, data fds, cgroup tasks opens, Landlock ruleset, clone'],
  ['sandbox', 'new Sandbox while the child sets up (pidfd watcher; readers deferred a turn)'],
  ['exec', "the child's set-up and exec, and the loop's wake-up on the report pipe"],
  ['registered', 'worker entry'],
  ['resolved', "spawn()'s promise back to the caller"],
];

export async function runBreakdown({ bundle, runs, ports, uids }) {
  // The backend of section 1c: limits, network policy and the builtin seccomp filter on.
  const backend = new ProcessBackend(backendConfig(ports, uids, { resourceLimits: 'auto', networkPolicy: 'auto', seccompProfile: 'builtin' }));
  const waiter = exitWaiter(backend);
  let seq = 0;
  const marks = new Map();
  const onStep = (m) => marks.get(m.workerId)?.push([m.step, m.at]);
  diagnosticsChannel.subscribe(SPAWN_CHANNEL, onStep);

  // One real spawn, its steps timed through the diagnostics channel: each step's time since the previous mark.
  const tracedSpawn = async () => {
    const id = `bd-${seq++}`;
    const exited = waiter.expect(id);
    const steps = [];
    marks.set(id, steps);
    const t0 = performance.now();
    await backend.spawn(workerSpec(id, bundle));
    steps.push(['resolved', performance.now()]);
    marks.delete(id);
    await withTimeout(exited, 30000, 'backend exit');
    await backend.removeResource({ id, kind: 'container', labels: {} });
    const out = { total: steps.at(-1)[1] - t0 };
    let prev = t0;
    for (const [step, at] of steps) {
      out[step] = at - prev;
      prev = at;
    }
    return out;
  };

  // Each step returns its own time (ms); set-up and clean-up around it are untimed.
  const steps = {
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
    const traced = [];
    for (let i = 0; i < 5; i++) await tracedSpawn();
    for (const step of Object.values(steps)) for (let i = 0; i < 5; i++) await step();
    for (let i = 0; i < runs; i++) {
      traced.push(await tracedSpawn());
      for (const [name, step] of Object.entries(steps)) samples[name].push(await step());
    }
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
      traced: [
        ...TRACED.map(([step, what]) => [what, summary(traced.map((t) => t[step]).filter((v) => v !== undefined))]),
        ['ProcessBackend.spawn, call to resolution (all of the above)', summary(traced.map((t) => t.total))],
      ],
      steps: Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, summary(v)])),
      fsPromisesCallsPerWorker: { binTrue: fsCallsTrue, sleepThenStop: fsCallsSleep },
      spawnRightAfterConstruction: summary(afterConstruction),
      orphanScan: { ms: orphanScanMs, hostProcesses: readdirSync('/proc').filter((n) => /^\d+$/.test(n)).length },
    };
  } finally {
    diagnosticsChannel.unsubscribe(SPAWN_CHANNEL, onStep);
    waiter.dispose();
    await backend.close();
  }
}
