// Redis-coordinated ports and UIDs (SPEC §5) against real redis-server
// processes: one server, a second one that is stopped mid-run, and a
// 3-master cluster. Worker ports 21000-21499 and UIDs 62000-62499 belong to
// this file.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Cluster, Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Logger } from '../src/backend.js';
import { redisAllocators, redisHostKeys, type RedisAllocators } from '../src/process/allocators/redis.js';
import { closeListener } from '../src/process/allocators/memory.js';
import type { PortLease } from '../src/process/allocators/types.js';
import { settlesBefore } from './helpers/proc.js';
import { startCluster, startRedis, type RedisCluster, type RedisServer } from './helpers/redis.js';

const PEER = fileURLToPath(new URL('./fixtures/redis-peer.mjs', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Client = Redis | Cluster;

/** A logger that keeps what it was told. */
function recorder(): Logger & { lines: { level: string; msg: string }[] } {
  const lines: { level: string; msg: string }[] = [];
  const at = (level: string) => (_obj: object, msg?: string) => void lines.push({ level, msg: msg ?? '' });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

function freshPrefix(): string {
  return `t-${randomBytes(3).toString('hex')}:`;
}

async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/** What Redis says about one resource: value -> owner, and the bitmap's set bits (must agree). */
async function claimsInRedis(client: Client, prefix: string, what: 'port' | 'uid'): Promise<Map<number, string>> {
  const keys = redisHostKeys(prefix, hostname())[what];
  const hash = await client.hgetall(keys.owner);
  const claims = new Map(Object.entries(hash).map(([k, v]) => [Number(k), v]));
  expect(await client.bitcount(keys.bits)).toBe(claims.size);
  for (const value of claims.keys()) expect(await client.getbit(keys.bits, value)).toBe(1);
  return claims;
}

function ownedBy(claims: Map<number, string>, owner: string): number[] {
  return [...claims].filter(([, o]) => o === owner).map(([v]) => v).sort((a, b) => a - b);
}

const sorted = (values: number[]) => [...values].sort((a, b) => a - b);

describe('Redis allocators', () => {
  let server: RedisServer;
  const clients: Client[] = [];
  const open: RedisAllocators[] = [];
  const children: ChildProcess[] = [];
  const listeners: PortLease[] = [];

  function client(url = server.url): Redis {
    const c = new Redis(url);
    // Stopped servers are the point of some tests: keep ioredis's reconnect noise out of the output.
    c.on('error', () => {});
    clients.push(c);
    return c;
  }

  function peer(
    redis: Client,
    prefix: string,
    ports: [number, number],
    uids: [number, number],
    extra: { leaseTtlMs?: number; logger?: Logger; commandTimeoutMs?: number } = {},
  ): RedisAllocators {
    const a = redisAllocators(redis, { prefix, ports, uids, leaseTtlMs: 15_000, ...extra });
    open.push(a);
    // Remember every held listener so afterAll can close those a test did not release.
    const reserve = a.ports.reserve.bind(a.ports);
    a.ports.reserve = async () => {
      const lease = await reserve();
      listeners.push(lease);
      return lease;
    };
    return a;
  }

  /** A peer in a child process; resolves with what it claimed. */
  async function childPeer(opts: object): Promise<{ child: ChildProcess; owner: string; ports: number[]; uids: number[] }> {
    const child = spawn(process.execPath, [PEER, JSON.stringify(opts)], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let out = '';
    let err = '';
    child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    const line = await new Promise<string>((resolve, reject) => {
      child.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0]!);
      });
      child.once('exit', (code) => reject(new Error(`peer exited ${code}: ${err}`)));
    });
    return { child, ...(JSON.parse(line) as { owner: string; ports: number[]; uids: number[] }) };
  }

  async function kill(child: ChildProcess): Promise<void> {
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
  }

  beforeAll(async () => {
    server = await startRedis({ port: 16379 });
  });

  afterAll(async () => {
    for (const child of children) child.kill('SIGKILL');
    for (const lease of listeners) closeListener(lease);
    await Promise.allSettled(open.map((a) => a.close()));
    for (const c of clients) c.disconnect();
    await server?.stop();
  });

  it('two peers allocating 2 x 40 ports and UIDs at once never get the same one', async () => {
    const prefix = freshPrefix();
    const a = peer(client(), prefix, [21000, 21099], [62000, 62099]);
    const b = peer(client(), prefix, [21000, 21099], [62000, 62099]);
    const both = (n: number) => Array.from({ length: n }, (_, i) => (i % 2 ? b : a));
    const [leases, uids] = await Promise.all([
      Promise.all(both(80).map(async (p) => ({ p, lease: await p.ports.reserve() }))),
      Promise.all(both(80).map(async (p) => ({ p, uid: await p.uids.alloc() }))),
    ]);
    expect(new Set(leases.map((l) => l.lease.port)).size).toBe(80);
    expect(new Set(uids.map((u) => u.uid)).size).toBe(80);
    expect([a.ports.inUse(), b.ports.inUse(), a.uids.inUse(), b.uids.inUse()]).toEqual([40, 40, 40, 40]);

    // Redis agrees on who holds what.
    const portClaims = await claimsInRedis(clients[0]!, prefix, 'port');
    const uidClaims = await claimsInRedis(clients[0]!, prefix, 'uid');
    for (const { p, lease } of leases) expect(portClaims.get(lease.port)).toBe(p.owner);
    for (const { p, uid } of uids) expect(uidClaims.get(uid)).toBe(p.owner);
    // UIDs round robin from a fresh cursor: together they hold exactly the first 80.
    expect(sorted([...uidClaims.keys()])).toEqual(Array.from({ length: 80 }, (_, i) => 62000 + i));

    await Promise.all(leases.map(({ p, lease }) => p.ports.release(lease)));
    await Promise.all(uids.map(({ p, uid }) => p.uids.release(uid)));
    expect((await claimsInRedis(clients[0]!, prefix, 'port')).size).toBe(0);
    expect((await claimsInRedis(clients[0]!, prefix, 'uid')).size).toBe(0);
    expect(a.ports.inUse() + b.ports.inUse() + a.uids.inUse() + b.uids.inUse()).toBe(0);
  });

  it('a 5-port range is exhausted across both peers, and released slots come back', async () => {
    const prefix = freshPrefix();
    const a = peer(client(), prefix, [21100, 21104], [62100, 62104]);
    const b = peer(client(), prefix, [21100, 21104], [62100, 62104]);
    const leases = await Promise.all([a, b, a, b, a].map(async (p) => ({ p, lease: await p.ports.reserve() })));
    const uids = await Promise.all([b, a, b, a, b].map(async (p) => ({ p, uid: await p.uids.alloc() })));
    expect(sorted(leases.map((l) => l.lease.port))).toEqual([21100, 21101, 21102, 21103, 21104]);
    expect(sorted(uids.map((u) => u.uid))).toEqual([62100, 62101, 62102, 62103, 62104]);

    await expect(a.ports.reserve()).rejects.toThrow('no free port in 21100-21104');
    await expect(b.ports.reserve()).rejects.toThrow('no free port in 21100-21104');
    await expect(a.uids.alloc()).rejects.toThrow('no free worker UID in 62100-62104');

    // One of a's comes back and b gets exactly it.
    const back = leases.find((l) => l.p === a)!;
    await a.ports.release(back.lease);
    expect((await b.ports.reserve()).port).toBe(back.lease.port);
    const backUid = uids.find((u) => u.p === b)!;
    await b.uids.release(backUid.uid);
    expect(await a.uids.alloc()).toBe(backUid.uid);

    // close() frees all of a peer's claims (and only those) and deletes its lease.
    const keys = redisHostKeys(prefix, hostname());
    const bPortsBefore = ownedBy(await claimsInRedis(clients[0]!, prefix, 'port'), b.owner);
    await a.close();
    for (const { p, lease } of leases) if (p === a) closeListener(lease);
    expect(await clients[0]!.exists(keys.leasePrefix + a.owner)).toBe(0);
    const portsAfter = await claimsInRedis(clients[0]!, prefix, 'port');
    expect(ownedBy(portsAfter, a.owner)).toEqual([]);
    expect(ownedBy(portsAfter, b.owner)).toEqual(bPortsBefore);
    expect(ownedBy(await claimsInRedis(clients[0]!, prefix, 'uid'), a.owner)).toEqual([]);
    await expect(a.ports.reserve()).rejects.toThrow('closed');
    // The freed ports are b's to take now.
    const more = await Promise.all([b.ports.reserve(), b.ports.reserve()]);
    expect(more.map((l) => l.port).every((p) => !bPortsBefore.includes(p))).toBe(true);
    await b.close();
  });

  it('skips a port an outside program listens on and leaves no claim for it', async () => {
    const prefix = freshPrefix();
    const outside = net.createServer();
    await new Promise<void>((r) => outside.listen(21110, '127.0.0.1', r));
    try {
      const a = peer(client(), prefix, [21110, 21119], [62110, 62119]);
      const b = peer(client(), prefix, [21110, 21119], [62110, 62119]);
      // Every other port of the range, wherever the random start falls.
      const got: number[] = [];
      for (let i = 0; i < 9; i++) {
        const lease = await (i % 2 ? b : a).ports.reserve();
        expect(lease.listenerFd).toBeGreaterThanOrEqual(0);
        got.push(lease.port);
      }
      expect(sorted(got)).toEqual([21111, 21112, 21113, 21114, 21115, 21116, 21117, 21118, 21119]);
      await expect(a.ports.reserve()).rejects.toThrow('no free port in 21110-21119');
      const keys = redisHostKeys(prefix, hostname());
      expect(await clients[0]!.hget(keys.port.owner, '21110')).toBeNull();
      expect(await clients[0]!.getbit(keys.port.bits, 21110)).toBe(0);
      expect(a.ports.inUse()).toBe(5);

      // Once the outside program is gone the port is ours again.
      await new Promise<void>((r) => outside.close(() => r()));
      expect((await a.ports.reserve()).port).toBe(21110);
    } finally {
      if (outside.listening) outside.close();
    }
  });

  it('hands UIDs out round robin across peers (a released one comes last) and ports from unpredictable starts', async () => {
    const prefix = freshPrefix();
    const a = peer(client(), prefix, [21360, 21399], [62360, 62364]);
    const b = peer(client(), prefix, [21360, 21399], [62360, 62364]);
    // alloc + release in turn: a lowest-first allocator would give 62360 every time.
    const seq: number[] = [];
    for (let i = 0; i < 7; i++) {
      const p = i % 2 ? b : a;
      const uid = await p.uids.alloc();
      seq.push(uid);
      await p.uids.release(uid);
    }
    expect(seq).toEqual([62360, 62361, 62362, 62363, 62364, 62360, 62361]);
    // A peer with another range keeps its own order.
    const c = peer(client(), prefix, [21360, 21399], [62365, 62369]);
    expect(await c.uids.alloc()).toBe(62365);
    expect(await a.uids.alloc()).toBe(62362);

    // Ports: reserve + release 12 times; lowest-first would give one port every time.
    const ports = new Set<number>();
    for (let i = 0; i < 12; i++) {
      const lease = await a.ports.reserve();
      ports.add(lease.port);
      await a.ports.release(lease);
    }
    expect(ports.size).toBeGreaterThan(3);
  });

  it('after a SIGKILLed peer’s lease expires, cleanupOrphans frees exactly its claims', async () => {
    const prefix = freshPrefix();
    const ports: [number, number] = [21120, 21159];
    const uids: [number, number] = [62120, 62159];
    const ttl = 1000;
    const a = peer(client(), prefix, ports, uids, { leaseTtlMs: ttl });
    const c = peer(client(), prefix, ports, uids, { leaseTtlMs: ttl });
    const held = { a: [] as PortLease[], c: [] as PortLease[] };
    for (let i = 0; i < 2; i++) held.a.push(await a.ports.reserve());
    for (let i = 0; i < 2; i++) held.c.push(await c.ports.reserve());
    const aUids = [await a.uids.alloc(), await a.uids.alloc()];
    const cUids = [await c.uids.alloc()];
    const b = await childPeer({ url: server.url, prefix, ports, uids, leaseTtlMs: ttl, nPorts: 3, nUids: 3 });
    expect(b.ports).toHaveLength(3);
    await kill(b.child);
    const killedAt = Date.now();

    const r = clients[0]!;
    const before = await claimsInRedis(r, prefix, 'port');
    expect(ownedBy(before, b.owner)).toEqual(sorted(b.ports));
    // Its lease is still alive: a sweep now must not touch its claims.
    await a.cleanupOrphans();
    expect(ownedBy(await claimsInRedis(r, prefix, 'port'), b.owner)).toEqual(sorted(b.ports));

    const leaseKey = redisHostKeys(prefix, hostname()).leasePrefix + b.owner;
    await until('the killed peer’s lease to expire', async () => (await r.exists(leaseKey)) === 0);
    // Longer than one TTL: a's and c's leases only live because their timers renew them.
    await sleep(Math.max(0, killedAt + ttl + 300 - Date.now()));
    await a.cleanupOrphans();

    const portClaims = await claimsInRedis(r, prefix, 'port');
    const uidClaims = await claimsInRedis(r, prefix, 'uid');
    expect(ownedBy(portClaims, b.owner)).toEqual([]);
    expect(ownedBy(uidClaims, b.owner)).toEqual([]);
    expect(ownedBy(portClaims, a.owner)).toEqual(sorted(held.a.map((l) => l.port)));
    expect(ownedBy(portClaims, c.owner)).toEqual(sorted(held.c.map((l) => l.port)));
    expect(ownedBy(uidClaims, a.owner)).toEqual(sorted(aUids));
    expect(ownedBy(uidClaims, c.owner)).toEqual(sorted(cUids));
    expect(portClaims.size).toBe(4);
    expect(uidClaims.size).toBe(3);
    // Its slots are free to claim (and its listeners died with it): taking every free one takes them too.
    const rest = { ports: [] as number[], uids: [] as number[] };
    for (let i = 0; i < 36; i++) rest.ports.push((await c.ports.reserve()).port);
    for (let i = 0; i < 37; i++) rest.uids.push(await c.uids.alloc());
    for (const port of b.ports) expect(rest.ports).toContain(port);
    for (const uid of b.uids) expect(rest.uids).toContain(uid);
  });

  it('with Redis stopped, claims reject fast; afterwards no double allocation and outage releases are applied', async () => {
    const down = await startRedis({ port: 16380 });
    try {
      const prefix = freshPrefix();
      const ports: [number, number] = [21200, 21249];
      const uids: [number, number] = [62200, 62249];
      const log = recorder();
      const opts = { leaseTtlMs: 3000, commandTimeoutMs: 1000 };
      const a = peer(client(down.url), prefix, ports, uids, { ...opts, logger: log });
      const b = peer(client(down.url), prefix, ports, uids, opts);
      const aLeases = [await a.ports.reserve(), await a.ports.reserve(), await a.ports.reserve()];
      const aUids = [await a.uids.alloc(), await a.uids.alloc(), await a.uids.alloc()];
      const bLeases = [await b.ports.reserve(), await b.ports.reserve()];
      const bUids = [await b.uids.alloc(), await b.uids.alloc()];

      await down.stop({ save: true });
      // Each rejects within its command timeout: nothing waits on a dead Redis.
      const reserve = a.ports.reserve();
      expect(await settlesBefore(reserve, opts.commandTimeoutMs + 500)).toBe(true);
      await expect(reserve).rejects.toThrow(/^Redis unreachable at 127\.0\.0\.1:16380: /);
      const alloc = b.uids.alloc();
      expect(await settlesBefore(alloc, opts.commandTimeoutMs + 500)).toBe(true);
      await expect(alloc).rejects.toThrow(/^Redis unreachable at 127\.0\.0\.1:16380: /);
      expect(a.ports.inUse()).toBe(3);

      // Releases during the outage resolve; Redis learns of them later.
      const gonePort = aLeases.pop()!;
      const goneUid = aUids.pop()!;
      await a.ports.release(gonePort);
      await a.uids.release(goneUid);
      expect([a.ports.inUse(), a.uids.inUse()]).toEqual([2, 2]);

      // The lease refresh fails, is logged, and claims say why they are refused.
      await until('a failed lease refresh to be logged', () => log.lines.some((l) => l.level === 'warn' && /lease refresh failed/.test(l.msg)));
      const refused = a.uids.alloc();
      expect(await settlesBefore(refused, opts.commandTimeoutMs + 500)).toBe(true);
      await expect(refused).rejects.toThrow(/^Redis unreachable at 127\.0\.0\.1:16380: .*lease .* cannot be refreshed/);

      await down.restart();
      const r = client(down.url);
      await until('the outage releases to reach Redis', async () => {
        const keys = redisHostKeys(prefix, hostname());
        return (await r.hget(keys.port.owner, String(gonePort.port))) === null && (await r.hget(keys.uid.owner, String(goneUid))) === null;
      });

      // Both go on claiming; nothing is handed out twice and Redis agrees with both.
      const more = await Promise.all([a, b, a, b, a, b].map(async (p) => ({ p, lease: await p.ports.reserve() })));
      const moreUids = await Promise.all([a, b, a, b].map(async (p) => ({ p, uid: await p.uids.alloc() })));
      const allPorts = [...aLeases, ...bLeases, ...more.map((m) => m.lease)].map((l) => l.port);
      const allUids = [...aUids, ...bUids, ...moreUids.map((m) => m.uid)];
      expect(new Set(allPorts).size).toBe(allPorts.length);
      expect(new Set(allUids).size).toBe(allUids.length);
      const portClaims = await claimsInRedis(r, prefix, 'port');
      const uidClaims = await claimsInRedis(r, prefix, 'uid');
      expect(ownedBy(portClaims, a.owner)).toEqual(sorted([...aLeases, ...more.filter((m) => m.p === a).map((m) => m.lease)].map((l) => l.port)));
      expect(ownedBy(portClaims, b.owner)).toEqual(sorted([...bLeases, ...more.filter((m) => m.p === b).map((m) => m.lease)].map((l) => l.port)));
      expect(ownedBy(uidClaims, a.owner)).toEqual(sorted([...aUids, ...moreUids.filter((m) => m.p === a).map((m) => m.uid)]));
      expect(ownedBy(uidClaims, b.owner)).toEqual(sorted([...bUids, ...moreUids.filter((m) => m.p === b).map((m) => m.uid)]));
      expect(log.lines.some((l) => l.level === 'info' && /refreshed again/.test(l.msg))).toBe(true);
    } finally {
      await down.stop();
    }
  });

  it('when Redis loses a live peer’s claims, its next lease renewal re-claims them before anyone else can', async () => {
    const prefix = freshPrefix();
    const log = recorder();
    const a = peer(client(), prefix, [21260, 21269], [62260, 62269], { leaseTtlMs: 1500, logger: log });
    const held = [await a.ports.reserve(), await a.ports.reserve()].map((l) => l.port);
    const heldUid = await a.uids.alloc();
    // An empty restart, as far as this host's keys go.
    const keys = redisHostKeys(prefix, hostname());
    const r = clients[0]!;
    await r.del(keys.leasePrefix + a.owner, keys.port.bits, keys.port.owner, keys.uid.bits, keys.uid.owner);

    await until('the held claims to be back in Redis', async () => ownedBy(await claimsInRedis(r, prefix, 'port'), a.owner).length === 2);
    expect(ownedBy(await claimsInRedis(r, prefix, 'port'), a.owner)).toEqual(sorted(held));
    expect(ownedBy(await claimsInRedis(r, prefix, 'uid'), a.owner)).toEqual([heldUid]);
    expect(log.lines.some((l) => l.level === 'warn' && /lease had lapsed/.test(l.msg))).toBe(true);
    const b = peer(client(), prefix, [21260, 21269], [62260, 62269]);
    expect(held).not.toContain((await b.ports.reserve()).port);
    expect(await b.uids.alloc()).not.toBe(heldUid);
  });

  it('a claim that finds its own lease gone renews it and re-claims what it holds first', async () => {
    const prefix = freshPrefix();
    // A long TTL: the renewal timer stays out of the way; the claim itself must notice.
    const a = peer(client(), prefix, [21280, 21289], [62280, 62289], { leaseTtlMs: 15_000 });
    const heldUids = [await a.uids.alloc(), await a.uids.alloc()];
    const heldPort = (await a.ports.reserve()).port;
    const keys = redisHostKeys(prefix, hostname());
    const r = clients[0]!;
    await r.del(keys.leasePrefix + a.owner, keys.port.bits, keys.port.owner, keys.uid.bits, keys.uid.owner);

    const uid = await a.uids.alloc();
    expect(heldUids).not.toContain(uid);
    expect(ownedBy(await claimsInRedis(r, prefix, 'uid'), a.owner)).toEqual(sorted([...heldUids, uid]));
    expect(ownedBy(await claimsInRedis(r, prefix, 'port'), a.owner)).toEqual([heldPort]);
    expect(await r.exists(keys.leasePrefix + a.owner)).toBe(1);
  });

  it('rejects within the command timeout, with a clear error, when Redis was never reachable', async () => {
    const nowhere = client('redis://127.0.0.1:16399');
    const a = peer(nowhere, freshPrefix(), [21270, 21279], [62270, 62279], { commandTimeoutMs: 1000 });
    const reserve = a.ports.reserve();
    expect(await settlesBefore(reserve, 1000 + 500)).toBe(true);
    await expect(reserve).rejects.toThrow(/^Redis unreachable at 127\.0\.0\.1:16399: /);
    const alloc = a.uids.alloc();
    expect(await settlesBefore(alloc, 1000 + 500)).toBe(true);
    await expect(alloc).rejects.toThrow(/^Redis unreachable at 127\.0\.0\.1:16399: /);
    expect(a.ports.inUse()).toBe(0);
  });

  describe('on a 3-master Redis Cluster', () => {
    let cluster: RedisCluster;

    beforeAll(async () => {
      cluster = await startCluster([17000, 17001, 17002]);
    });
    afterAll(async () => {
      await cluster?.stop();
    });

    it('allocates, releases and sweeps through ioredis Cluster', async () => {
      const prefix = freshPrefix();
      const ports: [number, number] = [21300, 21349];
      const uids: [number, number] = [62300, 62349];
      const ttl = 1000;
      const connect = () => {
        const c = new Cluster(cluster.nodes);
        c.on('error', () => {});
        clients.push(c);
        return c;
      };
      const a = peer(connect(), prefix, ports, uids, { leaseTtlMs: ttl });
      const b = peer(connect(), prefix, ports, uids, { leaseTtlMs: ttl });
      const both = (n: number) => Array.from({ length: n }, (_, i) => (i % 2 ? b : a));
      const leases = await Promise.all(both(20).map(async (p) => ({ p, lease: await p.ports.reserve() })));
      const uidsGot = await Promise.all(both(20).map(async (p) => ({ p, uid: await p.uids.alloc() })));
      expect(new Set(leases.map((l) => l.lease.port)).size).toBe(20);
      expect(new Set(uidsGot.map((u) => u.uid)).size).toBe(20);

      const r = connect();
      // Every key of the host lives in one slot (else the scripts could not run at all).
      const keys = redisHostKeys(prefix, hostname());
      const slots = new Set(
        await Promise.all([keys.port.bits, keys.port.owner, keys.uid.bits, keys.uid.owner, keys.leasePrefix + a.owner].map((k) => r.cluster('KEYSLOT', k))),
      );
      expect(slots.size).toBe(1);
      const portClaims = await claimsInRedis(r, prefix, 'port');
      for (const { p, lease } of leases) expect(portClaims.get(lease.port)).toBe(p.owner);

      // Release half of a's; they come back.
      const aLeases = leases.filter((l) => l.p === a).map((l) => l.lease);
      for (const lease of aLeases.splice(0, 5)) await a.ports.release(lease);
      expect(a.ports.inUse()).toBe(5);
      expect((await claimsInRedis(r, prefix, 'port')).size).toBe(15);

      // A crashed peer's claims are swept once its lease expires; the live peers' stay.
      const dead = await childPeer({ cluster: cluster.nodes, prefix, ports, uids, leaseTtlMs: ttl, nPorts: 3, nUids: 2 });
      await kill(dead.child);
      await a.cleanupOrphans();
      expect(ownedBy(await claimsInRedis(r, prefix, 'port'), dead.owner)).toEqual(sorted(dead.ports));
      await until('the dead peer’s lease to expire', async () => (await r.exists(keys.leasePrefix + dead.owner)) === 0);
      await b.cleanupOrphans();
      const after = await claimsInRedis(r, prefix, 'port');
      const uidAfter = await claimsInRedis(r, prefix, 'uid');
      expect(ownedBy(after, dead.owner)).toEqual([]);
      expect(ownedBy(uidAfter, dead.owner)).toEqual([]);
      expect(ownedBy(after, a.owner)).toEqual(sorted(aLeases.map((l) => l.port)));
      expect(ownedBy(after, b.owner)).toEqual(sorted(leases.filter((l) => l.p === b).map((l) => l.lease.port)));
      expect(uidAfter.size).toBe(20);

      await Promise.all([a.close(), b.close()]);
      expect((await claimsInRedis(r, prefix, 'port')).size).toBe(0);
      expect((await claimsInRedis(r, prefix, 'uid')).size).toBe(0);
    });
  });
});
