// Section 6: allocation. The in-memory bitset and allocator, the host-wide
// allocator (OFD byte locks on files in a runtime dir, the default without
// Redis) as alloc + release pairs per second, and the Redis reserve latency
// at 10% and 90% occupancy of a 1000-slot range, against the original
// server's algorithm: scan from the first slot with one `SET key owner NX PX
// ttl` per slot until one succeeds. All use UIDs, which need no port
// binding, so only the allocator's own work is measured; one row adds the
// port reserve + release of both local allocators, bind and close included.
import { mkdtempSync, rmSync, statfsSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import path from 'node:path';
import { Bitset } from '../dist/native.js';
import { hostAllocators } from '../dist/process/allocators/host.js';
import { memoryAllocators } from '../dist/process/allocators/memory.js';
import { redisAllocators } from '../dist/process/allocators/redis.js';
import { summary } from './lib.js';

const SLOTS = 1000;

/** alloc + release pairs per second on a range `fill` full. */
function bitsetRate(fill, ops) {
  const bits = new Bitset(SLOTS);
  for (let i = 0; i < fill; i++) bits.alloc();
  const t0 = performance.now();
  for (let i = 0; i < ops; i++) bits.release(bits.alloc());
  return ops / ((performance.now() - t0) / 1000);
}

/** The naive JS reference: a boolean array scanned from the first slot. */
function arrayScanRate(fill, ops) {
  const used = new Array(SLOTS).fill(false);
  for (let i = 0; i < fill; i++) used[i] = true;
  const alloc = () => {
    for (let i = 0; i < SLOTS; i++)
      if (!used[i]) {
        used[i] = true;
        return i;
      }
    return -1;
  };
  const t0 = performance.now();
  for (let i = 0; i < ops; i++) used[alloc()] = false;
  return ops / ((performance.now() - t0) / 1000);
}

/** The backend's async UID allocator (bitset behind a promise). */
async function memoryAllocatorRate(fill, ops, uids, ports) {
  const { uids: alloc } = memoryAllocators(ports, uids); // ports unused: nothing is bound
  for (let i = 0; i < fill; i++) await alloc.alloc();
  const t0 = performance.now();
  for (let i = 0; i < ops; i++) await alloc.release(await alloc.alloc());
  return ops / ((performance.now() - t0) / 1000);
}

/** The host-wide UID allocator in a fresh runtime dir: alloc + release pairs per second. */
async function hostAllocatorRate(dir, fill, ops, uids, ports) {
  const allocators = hostAllocators(dir, ports, uids);
  try {
    for (let i = 0; i < fill; i++) await allocators.uids.alloc();
    const t0 = performance.now();
    for (let i = 0; i < ops; i++) await allocators.uids.release(await allocators.uids.alloc());
    return ops / ((performance.now() - t0) / 1000);
  } finally {
    await allocators.close();
  }
}

/** Port reserve (a real 127.0.0.1 bind + listen) + release (close) per second, on an empty range. */
async function portRate(allocators, ops) {
  const t0 = performance.now();
  for (let i = 0; i < ops; i++) await allocators.ports.release(await allocators.ports.reserve());
  return ops / ((performance.now() - t0) / 1000);
}

/** Where the lock files live: the production default (/run, a tmpfs) when we may write there. */
function benchRuntimeParent() {
  return process.getuid?.() === 0 ? '/run' : tmpdir();
}

export async function runAlloc({ redis, ops, redisSamples, uids, ports }) {
  const range = [uids[0], uids[0] + SLOTS - 1];
  const fills = { '10%': SLOTS / 10, '90%': (SLOTS * 9) / 10 };
  const out = { slots: SLOTS, bitset: {}, arrayScan: {}, memoryAllocator: {}, hostAllocator: {}, portReserve: {}, redis: {} };
  const runtime = mkdtempSync(path.join(benchRuntimeParent(), 'procyard-bench-'));
  out.hostAllocator.fs = statfsSync(runtime).type === 0x01021994 ? 'tmpfs' : `fs type 0x${statfsSync(runtime).type.toString(16)}`;
  try {
    for (const [label, fill] of Object.entries(fills)) {
      bitsetRate(fill, ops / 10); // warm-up
      arrayScanRate(fill, ops / 10);
      out.bitset[label] = bitsetRate(fill, ops);
      out.arrayScan[label] = arrayScanRate(fill, ops);
      out.memoryAllocator[label] = await memoryAllocatorRate(fill, ops / 10, range, ports);
      await hostAllocatorRate(path.join(runtime, `warm-${label}`), fill, ops / 100, range, ports);
      out.hostAllocator[label] = await hostAllocatorRate(path.join(runtime, label), fill, ops / 10, range, ports);
    }
    const portOps = Math.max(100, ops / 100);
    const memory = memoryAllocators(ports, range);
    const host = hostAllocators(path.join(runtime, 'ports'), ports, range);
    try {
      await portRate(memory, portOps / 10); // warm-up
      out.portReserve.memory = await portRate(memory, portOps);
      out.portReserve.host = await portRate(host, portOps);
    } finally {
      await host.close();
    }
  } finally {
    rmSync(runtime, { recursive: true, force: true });
  }

  const tag = `{${hostname()}}`;
  const prefix = `procyard-bench:${process.pid}:`;
  const scanKey = (uid) => `procyard-bench-scan:${process.pid}:${tag}:uid:${uid}`;
  const allocators = redisAllocators(redis, { prefix, ports, uids: range, leaseTtlMs: 15000 });
  const scanOwner = `bench-scan-${process.pid}`;
  const ttl = 15000;
  /** The original's reserve: one SETNX round trip per slot, from the first. */
  const scanReserve = async () => {
    for (let uid = range[0]; uid <= range[1]; uid++)
      if ((await redis.set(scanKey(uid), scanOwner, 'PX', ttl, 'NX')) === 'OK') return uid;
    throw new Error('bench: scan baseline found no free slot');
  };
  const held = { procyard: [], scan: [] };
  try {
    const ping = [];
    for (let i = 0; i < 200; i++) {
      const t = performance.now();
      await redis.ping();
      ping.push(performance.now() - t);
    }
    out.redis.pingMs = summary(ping);
    for (const [label, fill] of Object.entries(fills)) {
      while (held.procyard.length < fill) held.procyard.push(await allocators.uids.alloc());
      // Other owners' claims, set directly (a scan per fill would take minutes) and long-lived.
      const fillKeys = [];
      while (held.scan.length < fill) {
        const uid = range[0] + held.scan.length;
        held.scan.push(uid);
        fillKeys.push(scanKey(uid));
      }
      const pipeline = redis.pipeline();
      for (const key of fillKeys) pipeline.set(key, 'bench-other-owner', 'PX', 600000, 'NX');
      await pipeline.exec();
      const samples = { procyard: [], scan: [] };
      for (let i = 0; i < redisSamples + 5; i++) {
        let t = performance.now();
        const a = await allocators.uids.alloc();
        if (i >= 5) samples.procyard.push(performance.now() - t);
        await allocators.uids.release(a);
        t = performance.now();
        const b = await scanReserve();
        if (i >= 5) samples.scan.push(performance.now() - t);
        await redis.del(scanKey(b));
        // procyard hands UIDs out round robin (any free slot); the scan always finds the first free one.
        if (held.procyard.includes(a) || b !== range[0] + fill)
          throw new Error(`bench: expected a free slot and slot ${range[0] + fill} at ${label}, got ${a} and ${b}`);
      }
      out.redis[label] = { procyard: summary(samples.procyard), scan: summary(samples.scan) };
    }
    return out;
  } finally {
    for (const uid of held.procyard) await allocators.uids.release(uid).catch(() => {});
    await allocators.close();
    const keys = held.scan.map(scanKey);
    for (let i = 0; i < keys.length; i += 500) await redis.del(...keys.slice(i, i + 500));
  }
}
