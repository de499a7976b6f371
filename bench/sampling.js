// Section 5: resource sampling of many live workers. One tick =
// workerResourceUsage() for every worker, all at once, against pidusage +
// pidtree on the same process trees (pidtree(root, {root: true}) then
// pidusage(pids), every tree at once).
import pidtree from 'pidtree';
import pidusage from 'pidusage';
import { ProcessBackend } from '../dist/index.js';
import { sampleTrees } from '../dist/native.js';
import { backendConfig, mapLimit, ownChildren, procStat, sleep, summary, workerSpec } from './lib.js';

/** The bwrap monitors this process started: the roots of the workers' trees. */
function sandboxRoots() {
  return ownChildren().filter((pid) => procStat(pid)?.comm === 'bwrap');
}

/** Waits (bounded) until every tree holds monitor, init and app. */
async function settled(roots, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const samples = await sampleTrees(roots);
    if (samples.every((s) => s.alive && s.pids.length >= 3)) return;
    await sleep(50);
  }
  throw new Error('bench: sleep workers did not all start within the deadline');
}

export async function runSampling({ bundle, workers, ticks, ports, uids }) {
  const backend = new ProcessBackend(backendConfig(ports, uids));
  const ids = Array.from({ length: workers }, (_, i) => `sample-${i}`);
  try {
    const t0 = performance.now();
    await backend.cleanupOrphanResources();
    const orphanScanMs = performance.now() - t0;
    // Long enough to outlast the peer's ticks on a host crowded with processes
    // (each pidtree runs ps over all of them); close() stops them anyway.
    await mapLimit(ids, 16, (id) => backend.spawn(workerSpec(id, bundle, ['/bin/sleep', '600'])));
    const roots = sandboxRoots();
    if (roots.length !== workers) throw new Error(`bench: expected ${workers} sandbox roots, found ${roots.length}`);
    await settled(roots, 30000);
    await Promise.all(ids.map((id) => backend.workerResourceUsage(id))); // first call sets the CPU baseline

    const procyard = async () => {
      const t = performance.now();
      const usage = await Promise.all(ids.map((id) => backend.workerResourceUsage(id)));
      const ms = performance.now() - t;
      if (usage.some((u) => u === null)) throw new Error('bench: a sleep worker exited during sampling');
      return { ms, rssBytes: usage.reduce((a, u) => a + u.memoryUsageBytes, 0) };
    };
    const peer = async () => {
      const t = performance.now();
      const stats = await Promise.all(
        roots.map(async (root) => {
          const pids = await pidtree(root, { root: true });
          return pidusage(pids);
        }),
      );
      const ms = performance.now() - t;
      let rssBytes = 0;
      for (const byPid of stats) for (const s of Object.values(byPid)) rssBytes += s.memory;
      return { ms, rssBytes };
    };
    const batch = async () => {
      const t = performance.now();
      await sampleTrees(roots);
      return { ms: performance.now() - t };
    };

    await peer(); // warm-up (first pidusage call per pid sets its history)
    const results = { procyard: [], peer: [], batch: [] };
    const rss = { procyard: 0, peer: 0 };
    for (let i = 0; i < ticks; i++) {
      const a = await procyard();
      const b = await peer();
      const c = await batch();
      results.procyard.push(a.ms);
      results.peer.push(b.ms);
      results.batch.push(c.ms);
      rss.procyard = a.rssBytes;
      rss.peer = b.rssBytes;
    }
    return {
      workers,
      ticks,
      orphanScanMs,
      procyard: { ...summary(results.procyard), rssBytes: rss.procyard },
      peer: { ...summary(results.peer), rssBytes: rss.peer },
      sampleTreesOneCall: summary(results.batch),
    };
  } finally {
    pidusage.clear();
    await backend.close();
  }
}
