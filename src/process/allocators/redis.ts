// Port and UID allocators coordinated through Redis, for several servers on
// one host. Both are thin adapters over one ClaimStore (redis-claims.ts).
import { randomBytes, randomInt } from 'node:crypto';
import { hostname } from 'node:os';
import type { Logger } from '../../backend.js';
import { runningUids } from '../orphans.js';
import { closeListener, tryBindPort } from './memory.js';
import { ClaimStore, HostLease, RedisLink, RedisUnreachableError, type RedisClient } from './redis-claims.js';
import { ExhaustedError, type Allocators, type PortAllocator, type PortLease, type UidAllocator } from './types.js';

export { RedisUnreachableError };

export interface RedisAllocatorOptions {
  /** Key prefix; the host's keys follow as `{<hostname>}:...`. The backend passes 'procyard:' by default. */
  prefix: string;
  /** Inclusive port range. */
  ports: [number, number];
  /** Inclusive worker UID range. */
  uids: [number, number];
  /** Lifetime of this instance's lease key; renewed every third of it. */
  leaseTtlMs: number;
  logger?: Logger;
  /** How long one Redis call may take before Redis counts as unreachable. Default 2000. */
  commandTimeoutMs?: number;
}

export interface RedisAllocators extends Allocators {
  /** This instance's owner id (`<hostname>:<pid>:<random>`), the value of its claims in Redis. */
  readonly owner: string;
}

const DEFAULT_COMMAND_TIMEOUT_MS = 2000;

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** The keys of one host: `<prefix>{<host>}:<name>`; the braces put them all in one cluster slot. */
export function redisHostKeys(prefix: string, host: string) {
  const base = `${prefix}{${host}}:`;
  return {
    leasePrefix: `${base}lease:`,
    port: { bits: `${base}port:bits`, owner: `${base}port:owner` },
    uid: { bits: `${base}uid:bits`, owner: `${base}uid:owner` },
    /** The UID range's round-robin cursor (one per range: peers with other ranges keep their own order). */
    uidCursor: (lo: number, hi: number) => `${base}uid:next:${lo}-${hi}`,
  };
}

class RedisPortAllocator implements PortAllocator {
  constructor(private readonly store: ClaimStore) {}

  async reserve(): Promise<PortLease> {
    const { lo, hi } = this.store;
    // From a random start (wrapping), so a worker cannot tell the next worker's port.
    const tried = new Set<number>();
    for (let start = lo + randomInt(hi - lo + 1); ; ) {
      const port = await this.store.claim(start);
      if (port === null) break;
      if (tried.has(port)) {
        // Wrapped around to one bound by another program: every free port was tried.
        await this.store.release(port);
        break;
      }
      tried.add(port);
      let listenerFd: number;
      try {
        listenerFd = tryBindPort(port);
      } catch (err) {
        await this.store.release(port);
        throw err;
      }
      if (listenerFd >= 0) return { port, listenerFd };
      // Another program has it: hand the claim back (peers may find it free later) and look past it.
      await this.store.release(port);
      start = port + 1;
    }
    throw new ExhaustedError('port', lo, hi);
  }

  async release(lease: PortLease): Promise<void> {
    closeListener(lease);
    await this.store.release(lease.port);
  }

  inUse(): number {
    return this.store.inUse;
  }
}

class RedisUidAllocator implements UidAllocator {
  constructor(private readonly store: ClaimStore) {}

  async alloc(): Promise<number> {
    const uid = await this.store.claim();
    if (uid === null) throw new ExhaustedError('uid', this.store.lo, this.store.hi);
    return uid;
  }

  async release(uid: number): Promise<void> {
    await this.store.release(uid);
  }

  inUse(): number {
    return this.store.inUse;
  }
}

function checkRange(name: string, [lo, hi]: [number, number]): void {
  // Bits are indexed by the value itself, so peers with different ranges still see each other.
  if (!Number.isSafeInteger(lo) || !Number.isSafeInteger(hi) || lo < 0 || hi < lo || hi >= 2 ** 32)
    throw new RangeError(`invalid ${name} range ${lo}-${hi}: need integers 0 <= start <= end < 2^32`);
}

/**
 * Allocators that claim ports and UIDs in Redis (a single server or an
 * ioredis Cluster), so servers sharing a host never hand out the same one.
 * Starts the lease renewal timer (unref'd); close() stops it, releases every
 * claim of this instance and deletes its lease.
 */
export function redisAllocators(redis: RedisClient, opts: RedisAllocatorOptions): RedisAllocators {
  checkRange('port', opts.ports);
  checkRange('uid', opts.uids);
  if (!(opts.leaseTtlMs >= 100)) throw new RangeError(`leaseTtlMs must be at least 100, got ${opts.leaseTtlMs}`);
  const logger = opts.logger ?? silent;
  const host = hostname();
  const owner = `${host}:${process.pid}:${randomBytes(4).toString('hex')}`;
  const keys = redisHostKeys(opts.prefix, host);
  const link = new RedisLink(redis, opts.commandTimeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS);
  const lease = new HostLease(link, keys.leasePrefix, owner, opts.leaseTtlMs, logger);
  const ports = new ClaimStore(link, lease, keys.port, 'port', opts.ports[0], opts.ports[1], logger);
  // UIDs round robin through a cursor per range: a released UID is handed out last.
  const uidKeys = { ...keys.uid, cursor: keys.uidCursor(opts.uids[0], opts.uids[1]) };
  const uids = new ClaimStore(link, lease, uidKeys, 'uid', opts.uids[0], opts.uids[1], logger);
  lease.stores = [ports, uids];

  // Failures are logged by the lease; the next tick or claim tries again.
  const tick = (): void => {
    lease.renew().then(
      () => {
        ports.retryPending();
        uids.retryPending();
      },
      () => {},
    );
  };
  const timer = setInterval(tick, lease.intervalMs);
  timer.unref();
  redis.on('ready', tick);
  tick();

  let closing: Promise<void> | null = null;
  return {
    owner,
    ports: new RedisPortAllocator(ports),
    uids: new RedisUidAllocator(uids),

    async cleanupOrphans(): Promise<void> {
      // A lapsed lease of our own would make our claims look orphaned to the sweep's peers; prove it first.
      await lease.prove();
      // A UID that still runs processes here is not free, whatever its owner's
      // lease says: a server cut off from Redis long enough for its lease to
      // lapse still runs its workers. (A port in use fails the reserve's bind.)
      const running = await runningUids(uids.lo, uids.hi);
      const freed = [...(await ports.sweep()).map((f) => ({ ...f, what: 'port' })), ...(await uids.sweep(running)).map((f) => ({ ...f, what: 'uid' }))];
      const byOwner = new Map<string, string[]>();
      for (const f of freed) byOwner.set(f.owner, [...(byOwner.get(f.owner) ?? []), `${f.what} ${f.value}`]);
      for (const [gone, claims] of byOwner)
        logger.info({ owner: gone, claims }, `procyard: freed ${claims.length} Redis claims of ${gone}, whose lease expired`);
    },

    close(): Promise<void> {
      closing ??= (async () => {
        clearInterval(timer);
        redis.off('ready', tick);
        lease.close();
        try {
          await Promise.all([ports.releaseAll(), uids.releaseAll()]);
          await lease.drop();
        } catch (err) {
          // Nothing renews the lease any more: it expires and any peer's sweep frees the claims.
          logger.warn(
            { err, owner },
            `procyard: could not release Redis claims on close; they return to the pool ${opts.leaseTtlMs} ms after the last lease refresh, at the next orphan sweep of a peer`,
          );
        }
      })();
      return closing;
    },
  };
}
