// The claim store behind both Redis allocators (ports and UIDs), the lease
// that proves this instance is alive, and the bounded link every call uses.
import type { Cluster, Redis } from 'ioredis';
import type { Logger } from '../../backend.js';
import { CLAIM, DROP_LEASE, RELEASE, RELEASE_ALL_EXCEPT, RENEW, SWEEP, type Script } from './redis-scripts.js';

export type RedisClient = Redis | Cluster;

/** Redis did not answer: nothing was claimed (and nothing falls back to local state). */
export class RedisUnreachableError extends Error {
  constructor(
    /** host:port of the server, or the cluster's nodes. */
    readonly where: string,
    readonly reason: string,
  ) {
    super(`Redis unreachable at ${where}: ${reason}`);
    this.name = 'RedisUnreachableError';
  }
}

// ioredis queues commands while these last; waiting on them would hang a spawn.
const DOWN = new Set(['reconnecting', 'disconnecting', 'close', 'end']);
// Replies that mean "the server can't serve now", not "the script is wrong".
const UNAVAILABLE_REPLY = /^(CLUSTERDOWN|TRYAGAIN|LOADING|MASTERDOWN|BUSY|READONLY)\b/;

/** Runs scripts on the client with a deadline, turning connection trouble into RedisUnreachableError. */
export class RedisLink {
  constructor(
    readonly client: RedisClient,
    readonly timeoutMs: number,
  ) {}

  where(): string {
    const client = this.client;
    if (client.isCluster) {
      const nodes = (client as Cluster).nodes('master').map((n) => `${n.options.host}:${n.options.port}`);
      return `cluster ${nodes.length > 0 ? nodes.join(',') : '(no node reachable)'}`;
    }
    const o = (client as Redis).options;
    return o.path ? o.path : `${o.host}:${o.port}`;
  }

  /** Rejects at once when the connection is known to be down, so a caller fails fast. */
  checkUp(): void {
    if (DOWN.has(this.client.status)) throw new RedisUnreachableError(this.where(), `connection is ${this.client.status}`);
  }

  /** Sends a script (EVALSHA, EVAL when the server lacks it); no deadline. */
  send(script: Script, keys: string[], args: (string | number)[]): Promise<unknown> {
    const client = this.client as Redis; // Cluster has the same command methods
    return client.evalsha(script.sha, keys.length, ...keys, ...args).catch((err: unknown) => {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT'))
        return client.eval(script.source, keys.length, ...keys, ...args);
      throw err;
    });
  }

  /**
   * Waits for `sent` at most timeoutMs. `onAbandon` runs when the caller gives
   * up first: the command may still run later (ioredis keeps it queued).
   */
  bound<T>(sent: Promise<T>, onAbandon?: () => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        onAbandon?.();
        reject(new RedisUnreachableError(this.where(), `no reply within ${this.timeoutMs} ms (connection is ${this.client.status})`));
      }, this.timeoutMs);
      sent.then(
        (value) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          resolve(value);
        },
        (err: unknown) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          onAbandon?.();
          reject(this.explain(err));
        },
      );
    });
  }

  /** checkUp + send + bound. */
  async call(script: Script, keys: string[], args: (string | number)[]): Promise<unknown> {
    this.checkUp();
    return this.bound(this.send(script, keys, args));
  }

  /** A script error stays as it is; anything about the connection becomes RedisUnreachableError. */
  explain(err: unknown): Error {
    if (err instanceof RedisUnreachableError) return err;
    const message = err instanceof Error ? err.message : String(err);
    if (err instanceof Error && err.name === 'ReplyError' && !UNAVAILABLE_REPLY.test(message)) return err;
    return new RedisUnreachableError(this.where(), message);
  }
}

export interface StoreKeys {
  bits: string;
  owner: string;
  /** Round-robin cursor: the value last handed out (UIDs). */
  cursor?: string;
}

/**
 * Claims of one resource (ports or UIDs) for one owner. `held` is what the
 * caller really has; Redis follows it: releases that fail and claims whose
 * reply was lost are set right by a reconcile once Redis answers again.
 */
export class ClaimStore {
  readonly held = new Set<number>();
  /** Redis may hold claims of ours not in `held` (a failed release, a lost reply). */
  private dirty = false;
  private inflight = 0;
  private reconciling: Promise<void> | null = null;

  constructor(
    private readonly link: RedisLink,
    private readonly lease: HostLease,
    readonly keys: StoreKeys,
    readonly what: 'port' | 'uid',
    readonly lo: number,
    readonly hi: number,
    private readonly logger: Logger,
  ) {}

  get inUse(): number {
    return this.held.size;
  }

  /**
   * A free value, now held; null when none is free. The scan starts at
   * `start` (wrapping), or after the cursor's value when the store has one.
   */
  async claim(start = this.lo): Promise<number | null> {
    for (let attempt = 0; ; attempt++) {
      await this.lease.prove();
      // A reconcile frees our claims missing from `held`: none may be half-done meanwhile.
      while (this.reconciling) await this.reconciling;
      this.link.checkUp();
      const pos = await this.sendClaim(start);
      if (pos >= 0) return pos;
      if (pos === -1) return null;
      // -2: our lease key is gone (lapsed, or Redis lost its data); renew it, which re-asserts what we hold.
      this.lease.markUnproven();
      if (attempt > 0) throw new Error(`Redis lease ${this.lease.key} vanished again right after renewal; refusing to claim a ${this.what}`);
    }
  }

  private sendClaim(start: number): Promise<number> {
    let abandoned = false;
    this.inflight++;
    const keys = [this.keys.bits, this.keys.owner, this.lease.prefix, ...(this.keys.cursor ? [this.keys.cursor] : [])];
    const sent = this.link.send(CLAIM, keys, [this.lease.owner, start, this.lo, this.hi]).then((reply) => {
      const pos = Number(reply);
      // Recorded here, not after the await below, so a reconcile never sees the claim without it.
      if (pos >= 0) {
        if (abandoned) this.dirty = true;
        else this.held.add(pos);
      }
      return pos;
    });
    sent
      .catch(() => {
        // It may have run before the connection dropped.
        this.dirty = true;
      })
      .finally(() => {
        this.inflight--;
        this.retryPending();
      });
    return this.link.bound(sent, () => {
      abandoned = true;
      this.dirty = true;
    });
  }

  /** Frees a held value. When Redis does not answer, the release is retried once it does. */
  async release(value: number): Promise<void> {
    if (!this.held.delete(value)) return;
    try {
      await this.link.call(RELEASE, [this.keys.bits, this.keys.owner], [this.lease.owner, value]);
    } catch (err) {
      this.dirty = true;
      this.logger.warn({ err, [this.what]: value }, `procyard: Redis release of ${this.what} ${value} failed; retrying when Redis answers`);
    }
  }

  /** Retries failed releases (and drops claims whose reply was lost) when that is safe. */
  retryPending(): void {
    if (!this.dirty || this.inflight > 0 || this.reconciling || this.link.client.status !== 'ready') return;
    this.dirty = false;
    const keep = [...this.held];
    this.reconciling = this.link
      .call(RELEASE_ALL_EXCEPT, [this.keys.bits, this.keys.owner], [this.lease.owner, ...keep])
      .then(
        (freed) => {
          const list = freed as string[];
          if (list.length > 0)
            this.logger.info({ [`${this.what}s`]: list.map(Number) }, `procyard: released ${this.what} claims that failed releases or lost replies had left in Redis`);
        },
        (err: unknown) => {
          this.dirty = true;
          this.logger.warn({ err }, `procyard: retrying Redis ${this.what} releases failed; will try again`);
        },
      )
      .finally(() => {
        this.reconciling = null;
      });
  }

  /** Frees claims whose owner's lease is gone, but those in `keep`; returns what was freed. */
  async sweep(keep: readonly number[] = []): Promise<{ value: number; owner: string }[]> {
    const reply = (await this.link.call(SWEEP, [this.keys.bits, this.keys.owner, this.lease.prefix], [this.lease.owner, ...keep])) as string[];
    const freed: { value: number; owner: string }[] = [];
    for (let i = 0; i < reply.length; i += 2) freed.push({ value: Number(reply[i]), owner: reply[i + 1]! });
    return freed;
  }

  /** Releases everything this owner holds in Redis (close). */
  async releaseAll(): Promise<void> {
    this.held.clear();
    await this.link.call(RELEASE_ALL_EXCEPT, [this.keys.bits, this.keys.owner], [this.lease.owner]);
  }
}

/**
 * This instance's lease: `<prefix><owner>` with a TTL, renewed every third of
 * it. Claims need a lease proven recently; the renewal also re-claims held
 * values Redis lost, so a lapse or an empty restart does not hand them out.
 */
export class HostLease {
  readonly key: string;
  /** Local clock: the lease is certainly alive before this. */
  private provenUntil = 0;
  private failing = false;
  private renewing: Promise<void> | null = null;
  private closed = false;
  stores: ClaimStore[] = [];

  constructor(
    private readonly link: RedisLink,
    /** Lease key prefix; the owner id follows it. */
    readonly prefix: string,
    readonly owner: string,
    readonly ttlMs: number,
    private readonly logger: Logger,
  ) {
    this.key = prefix + owner;
  }

  get intervalMs(): number {
    return Math.max(1, Math.floor(this.ttlMs / 3));
  }

  /** Renews now (one renewal at a time); rejects when Redis does not answer. */
  renew(): Promise<void> {
    this.renewing ??= this.doRenew().finally(() => {
      this.renewing = null;
    });
    return this.renewing;
  }

  private async doRenew(): Promise<void> {
    const sentAt = Date.now();
    const keys = [this.key];
    const args: (string | number)[] = [this.owner, this.ttlMs];
    for (const store of this.stores) {
      keys.push(store.keys.bits, store.keys.owner);
      args.push(store.held.size, ...store.held);
    }
    let reply: unknown[];
    try {
      reply = (await this.link.call(RENEW, keys, args)) as unknown[];
    } catch (err) {
      this.provenUntil = 0;
      if (!this.failing)
        this.logger.warn({ err, owner: this.owner }, 'procyard: Redis lease refresh failed; no new ports or UIDs until it succeeds');
      this.failing = true;
      throw err;
    }
    if (this.closed) return;
    this.provenUntil = sentAt + this.ttlMs;
    if (this.failing) this.logger.info({ owner: this.owner }, 'procyard: Redis lease refreshed again');
    this.failing = false;
    if (reply[0] === 0 && this.stores.some((s) => s.held.size > 0))
      this.logger.warn({ owner: this.owner }, 'procyard: Redis lease had lapsed; re-claimed the ports and UIDs this instance holds');
    for (let i = 1; i < reply.length; i += 3) {
      const store = this.stores[Number(reply[i]) - 1]!;
      // Our lease lapsed, a peer swept our claims and reused one: nothing can undo that here.
      this.logger.error(
        { [store.what]: Number(reply[i + 1]), holder: reply[i + 2], owner: this.owner },
        `procyard: ${store.what} ${String(reply[i + 1])} held by this instance is now claimed by ${String(reply[i + 2])} in Redis (this instance's lease lapsed); two workers may share it`,
      );
    }
  }

  /** Resolves when the lease is known alive; renews first when that is not certain. */
  async prove(): Promise<void> {
    if (this.closed) throw new Error('procyard: the Redis allocators are closed');
    if (!this.failing && Date.now() < this.provenUntil - this.intervalMs) return;
    try {
      await this.renew();
    } catch (err) {
      const suffix = `; the lease ${this.key} cannot be refreshed, so no new ports or UIDs are claimed until it is`;
      if (err instanceof RedisUnreachableError) throw new RedisUnreachableError(err.where, err.reason + suffix);
      throw new Error(`Redis lease refresh failed: ${(err as Error).message}${suffix}`, { cause: err });
    }
  }

  markUnproven(): void {
    this.provenUntil = 0;
  }

  /** Stops claims and deletes the lease (after the stores released their claims). */
  async drop(): Promise<void> {
    this.closed = true;
    await this.link.call(DROP_LEASE, [this.key], [this.owner]);
  }

  close(): void {
    this.closed = true;
  }
}
