// Two ProcessBackends sharing one host through Redis (SPEC §5), judged by
// the host's view: /proc/net/tcp for ports, /proc/<pid>/status for UIDs.
// Worker ports 21500-21599 and UIDs 62500-62599 belong to this file.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config } from '../src/config.js';
import { redisHostKeys } from '../src/process/allocators/redis.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { tempDir } from './helpers/backend.js';
import { childrenOf, isDead, procStatus, settlesBefore, treeOf, waitFor } from './helpers/proc.js';
import { startRedis, type RedisServer } from './helpers/redis.js';

const PEER = fileURLToPath(new URL('./fixtures/redis-peer.mjs', import.meta.url));
const PORTS: [number, number] = [21500, 21599];
const UIDS: [number, number] = [62500, 62599];
const CONFIG: Config = {
  process: { portRangeStart: PORTS[0], portRangeEnd: PORTS[1], workerUidStart: UIDS[0], workerUidEnd: UIDS[1], stopGraceMs: 2000 },
  storage: { bundleWorkerPath: '/tmp/app' },
};
// A short-lived worker that also binds its port, so the host can show who has it.
const LISTEN_THEN_SLEEP =
  'my $s = IO::Socket::INET->new(LocalAddr => $ENV{SHINY_HOST}, LocalPort => $ENV{SHINY_PORT}, Listen => 5) ' +
  'or die "bind $ENV{SHINY_PORT}: $!\\n"; print "listening\\n"; sleep $ARGV[0];';

/** LISTEN sockets on 127.0.0.1 in the port range: port -> socket owner uids (one entry per socket). */
function listeners(): Map<number, number[]> {
  const out = new Map<number, number[]>();
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8 || f[3] !== '0A') continue;
    const port = parseInt(f[1]!.split(':')[1]!, 16);
    if (port >= PORTS[0] && port <= PORTS[1]) out.set(port, [...(out.get(port) ?? []), Number(f[7])]);
  }
  return out;
}

/** Worker UID -> the sandbox trees (children of this process) with a live process running as it. */
function uidTrees(): Map<number, Set<number>> {
  const out = new Map<number, Set<number>>();
  for (const root of childrenOf(process.pid)) {
    for (const pid of treeOf(root)) {
      let uid: number;
      try {
        if (isDead(pid)) continue;
        uid = Number(procStatus(pid).Uid!.split(/\s+/)[0]);
      } catch {
        continue; // exited meanwhile
      }
      if (uid < UIDS[0] || uid > UIDS[1]) continue;
      if (!out.has(uid)) out.set(uid, new Set());
      out.get(uid)!.add(root);
    }
  }
  return out;
}

describe('two ProcessBackends on one Redis', () => {
  let server: RedisServer;
  const clients: Redis[] = [];
  const backends: ProcessBackend[] = [];
  const children: ChildProcess[] = [];
  const bundle = tempDir('procyard-redis-bundle-');

  function client(url = server.url): Redis {
    const c = new Redis(url);
    c.on('error', () => {}); // reconnect noise while a server is stopped on purpose
    clients.push(c);
    return c;
  }

  function backend(redis: Redis, redisKeyPrefix: string, opts: { leaseTtlMs?: number; orphanSweepMs?: number } = {}): ProcessBackend {
    const b = new ProcessBackend(CONFIG, { redis, redisKeyPrefix, ...opts });
    backends.push(b);
    return b;
  }

  function spec(workerId: string, seconds: number) {
    return {
      appId: 'redis-test',
      workerId,
      bundlePath: bundle.dir,
      workerMount: '/tmp/app',
      cmd: ['/usr/bin/perl', '-MIO::Socket::INET', '-e', LISTEN_THEN_SLEEP, String(seconds)],
    };
  }

  beforeAll(async () => {
    server = await startRedis({ port: 16381 });
  });

  afterAll(async () => {
    for (const child of children) child.kill('SIGKILL');
    await Promise.allSettled(backends.map((b) => b.close()));
    for (const c of clients) c.disconnect();
    await server?.stop();
    bundle.cleanup();
  });

  it('spawn 2 x 40 workers at once: each port bound once, each UID on one live tree', async () => {
    const prefix = `rb-${randomBytes(3).toString('hex')}:`;
    const a = backend(client(), prefix);
    const b = backend(client(), prefix);
    const ids = Array.from({ length: 80 }, (_, i) => ({ backend: i % 2 ? b : a, id: `w${i}` }));
    await Promise.all(ids.map(({ backend: x, id }) => x.spawn(spec(id, 10))));

    expect(await waitFor(() => listeners().size === 80, 15_000, 100)).toBe(true);
    const socks = listeners();
    for (const [port, uids] of socks) expect(uids, `port ${port}`).toHaveLength(1);
    const addrs = await Promise.all(ids.map(({ backend: x, id }) => x.addr(id)));
    expect(new Set(addrs).size).toBe(80);
    expect(new Set(addrs.map((a) => Number(a.split(':')[1])))).toEqual(new Set(socks.keys()));
    // Each socket belongs to a different worker UID, and each UID runs in one sandbox tree only.
    expect(new Set([...socks.values()].map((u) => u[0])).size).toBe(80);
    const trees = uidTrees();
    expect(trees.size).toBe(80);
    for (const [uid, roots] of trees) expect(roots.size, `uid ${uid}`).toBe(1);
    expect(new Set([...trees.values()].map((r) => [...r][0])).size).toBe(80);
    expect([a.inUse, b.inUse]).toEqual([
      { ports: 40, uids: 40 },
      { ports: 40, uids: 40 },
    ]);

    // They exit on their own; every claim goes back to Redis.
    const keys = redisHostKeys(prefix, hostname());
    const r = clients[0]!;
    const drained = async () => (await r.hlen(keys.port.owner)) === 0 && (await r.hlen(keys.uid.owner)) === 0;
    expect(await waitFor(drained, 20_000, 200)).toBe(true);
    expect([a.inUse, b.inUse]).toEqual([
      { ports: 0, uids: 0 },
      { ports: 0, uids: 0 },
    ]);
  }, 60_000);

  it('the timer-driven orphan sweep frees a crashed peer’s claims and keeps a live worker’s', async () => {
    const prefix = `rb-${randomBytes(3).toString('hex')}:`;
    const a = backend(client(), prefix, { leaseTtlMs: 1000, orphanSweepMs: 200 });
    await a.spawn(spec('live', 30));
    const keys = redisHostKeys(prefix, hostname());
    const r = clients[0]!;

    const child = spawn(process.execPath, [PEER, JSON.stringify({ url: server.url, prefix, ports: PORTS, uids: UIDS, leaseTtlMs: 1000, nPorts: 3, nUids: 3 })], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(child);
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0]!);
      });
      child.once('exit', (code) => reject(new Error(`peer exited ${code}`)));
    });
    const dead = JSON.parse(line) as { owner: string; ports: number[]; uids: number[] };
    const gone = new Promise((res) => child.once('exit', res));
    child.kill('SIGKILL');
    await gone;

    const claimsOf = async (owner: string) =>
      Object.values({ ...(await r.hgetall(keys.port.owner)), ...(await r.hgetall(keys.uid.owner)) }).filter((o) => o === owner).length;
    expect(await claimsOf(dead.owner)).toBe(6);
    // Nobody calls cleanupOrphanResources(): the backend's own timer must.
    expect(await waitFor(async () => (await claimsOf(dead.owner)) === 0, 8000, 100)).toBe(true);
    const port = Number((await a.addr('live')).split(':')[1]);
    expect(Object.keys(await r.hgetall(keys.port.owner)).map(Number)).toEqual([port]);
    expect(await r.hlen(keys.uid.owner)).toBe(1);
    expect(a.inUse).toEqual({ ports: 1, uids: 1 });
    await a.stop('live');
  });

  it("a peer's sweep keeps the UID of a live worker whose server's lease lapsed (cut off from Redis)", async () => {
    const prefix = `rb-${randomBytes(3).toString('hex')}:`;
    const keys = redisHostKeys(prefix, hostname());
    const r = clients[0]!;
    // A long lease: nothing renews it during the test once it is gone.
    const a = backend(client(), prefix, { leaseTtlMs: 60_000 });
    const peer = backend(client(), prefix, { leaseTtlMs: 60_000 });
    await a.spawn(spec('cut-off', 30));
    const uid = Number(Object.keys(await r.hgetall(keys.uid.owner))[0]);
    const port = Number((await a.addr('cut-off')).split(':')[1]);
    // What a long enough cut-off from Redis leaves: a's lease key gone.
    const leases = await r.keys(`${keys.leasePrefix}*`);
    const owner = (await r.hget(keys.uid.owner, String(uid)))!;
    await r.del(`${keys.leasePrefix}${owner}`);
    expect(leases.length).toBe(2);
    await peer.cleanupOrphanResources();
    // The UID still runs a's worker: it stays claimed. The port goes (a bind would find it taken).
    expect(await r.hget(keys.uid.owner, String(uid))).toBe(owner);
    expect(await r.hget(keys.port.owner, String(port))).toBeNull();
    await a.stop('cut-off');
  });

  it('with Redis down, spawn rejects saying so and starts nothing; after it returns, spawn works', async () => {
    const down = await startRedis({ port: 16382 });
    try {
      const a = backend(client(down.url), `rb-${randomBytes(3).toString('hex')}:`);
      await a.spawn(spec('before', 30));
      await down.stop({ save: true });
      // Within the command timeout (2 s by default), whatever the host's load: see settlesBefore.
      const during = a.spawn(spec('during', 30));
      expect(await settlesBefore(during, 3000)).toBe(true);
      await expect(during).rejects.toThrow(/Redis unreachable at 127\.0\.0\.1:16382/);
      await expect(a.addr('during')).rejects.toThrow('not found');
      expect(a.inUse).toEqual({ ports: 1, uids: 1 });

      await down.restart();
      expect(await waitFor(() => clients[clients.length - 1]!.status === 'ready', 10_000, 50)).toBe(true);
      await a.spawn(spec('after', 30));
      expect(await a.addr('after')).not.toBe(await a.addr('before'));
      await Promise.all([a.stop('before'), a.stop('after')]);
    } finally {
      await down.stop();
    }
  });
});
