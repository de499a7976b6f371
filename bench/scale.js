// Scale (the item 7): many sandboxed `sleep` workers on this machine,
// with Redis allocators. Time to spawn all (all requested at once), one
// sampling tick over all, time to stop all (the graceful path), the parent's
// RSS per worker, and a leak check afterwards: ports, UIDs, fds, zombies,
// stray worker processes, Redis claims.
import { hostname } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ProcessBackend } from '../dist/index.js';
import { redisHostKeys } from '../dist/process/allocators/redis.js';
import { backendConfig, openFdCount, ownChildren, pidsWithUidIn, procStat, sleep, withTimeout, workerSpec } from './lib.js';

// A full GC before each RSS reading, so garbage does not count as per-worker memory.
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc');

async function allStarted(backend, ids, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const usage = await Promise.all(ids.map((id) => backend.workerResourceUsage(id)));
    if (usage.every((u) => u !== null && u.memoryUsageBytes > 0)) return;
    if (Date.now() > deadline) throw new Error('bench: scale workers did not all start within the deadline');
    await sleep(100);
  }
}

async function redisClaims(redis, prefix) {
  const keys = redisHostKeys(prefix, hostname());
  const [portBits, uidBits, portOwners, uidOwners] = await Promise.all([
    redis.bitcount(keys.port.bits),
    redis.bitcount(keys.uid.bits),
    redis.hlen(keys.port.owner),
    redis.hlen(keys.uid.owner),
  ]);
  return { portBits, uidBits, portOwners, uidOwners, leaseKeys: (await redis.keys(`${keys.leasePrefix}*`)).length };
}

export async function runScale({ bundle, workers, redis, ports, uids }) {
  const prefix = `procyard-bench-scale:${process.pid}:`;
  const fdsBefore = openFdCount();
  const backend = new ProcessBackend(backendConfig(ports, uids), { redis, redisKeyPrefix: prefix });
  const ids = Array.from({ length: workers }, (_, i) => `scale-${i}`);
  let closed = false;
  try {
    await backend.cleanupOrphanResources();
    gc();
    const rssBefore = process.memoryUsage().rss;

    let t = performance.now();
    await withTimeout(Promise.all(ids.map((id) => backend.spawn(workerSpec(id, bundle, ['/bin/sleep', '120'])))), 120000, 'spawning all');
    const spawnAllMs = performance.now() - t;
    await allStarted(backend, ids, 60000);
    const allRunningMs = performance.now() - t;

    t = performance.now();
    await Promise.all(ids.map((id) => backend.workerResourceUsage(id)));
    const tickMs = performance.now() - t;
    gc();
    const rssWith = process.memoryUsage().rss;
    const fdsWith = openFdCount();

    t = performance.now();
    await withTimeout(Promise.all(ids.map((id) => backend.stop(id))), 120000, 'stopping all');
    const stopAllMs = performance.now() - t;

    // Leak check, before close() (which would hide a claim leak by releasing everything).
    const inUse = backend.inUse;
    const claims = await redisClaims(redis, prefix);
    const listed = (await backend.listManaged()).length;
    // bwrap's monitor exits without reaping its init (pid 1 of the sandbox), which is
    // then reparented to the host's PID 1; this machine's PID 1 reaps such zombies
    // only now and then. Wait (bounded) for them; what is left, or alive, is a leak.
    t = performance.now();
    let strays = pidsWithUidIn(uids[0], uids[1]);
    const orphanZombies = strays.filter((pid) => procStat(pid)?.state === 'Z' && procStat(pid)?.ppid === 1).length;
    while (strays.length > 0 && performance.now() - t < 15000) {
      await sleep(50);
      strays = pidsWithUidIn(uids[0], uids[1]);
    }
    const straysGoneMs = performance.now() - t;
    const zombies = ownChildren().filter((pid) => procStat(pid)?.state === 'Z');
    const children = ownChildren().filter((pid) => procStat(pid)?.comm === 'bwrap');
    await backend.close();
    closed = true;
    const fdsAfter = openFdCount();
    const afterClose = await redisClaims(redis, prefix);
    const leaks = {
      portsInUse: inUse.ports,
      uidsInUse: inUse.uids,
      managedEntries: listed,
      redisPortClaims: Math.max(claims.portBits, claims.portOwners),
      redisUidClaims: Math.max(claims.uidBits, claims.uidOwners),
      redisLeaseKeysAfterClose: afterClose.leaseKeys,
      fdsLeaked: fdsAfter - fdsBefore,
      zombies: zombies.length,
      strayWorkerProcesses: strays.length,
      bwrapChildren: children.length,
    };
    return {
      workers,
      spawnAllMs,
      allRunningMs,
      tickMs,
      stopAllMs,
      parentRssPerWorkerKb: (rssWith - rssBefore) / workers / 1024,
      fdsPerWorker: (fdsWith - fdsBefore) / workers,
      leaks,
      orphanZombiesAfterStop: orphanZombies,
      straysGoneMs,
      leakFree: Object.values(leaks).every((v) => v === 0),
    };
  } finally {
    if (!closed) await backend.close();
  }
}
