// The host-wide allocator (OFD byte locks in a runtime dir) and the order in
// which every local allocator hands values out. Real lock files, real child
// processes killed with SIGKILL, real port binds.
// Ports 24320-24339 and UIDs 65320-65339 belong to this file.
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../src/config.js';
import { hostAllocators, prepareRuntimeDir } from '../src/process/allocators/host.js';
import { closeListener, memoryAllocators } from '../src/process/allocators/memory.js';
import type { Allocators, PortLease } from '../src/process/allocators/types.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { testConfig } from './helpers/backend.js';
import { isRoot } from './helpers/proc.js';

const HOST_JS = fileURLToPath(new URL('../dist/process/allocators/host.js', import.meta.url));
const base = mkdtempSync(path.join(os.tmpdir(), 'procyard-host-alloc-'));
const open: Allocators[] = [];
const leases: PortLease[] = [];
let n = 0;

function runtimeDir(): string {
  return path.join(base, `rt-${n++}`);
}

function allocators(dir: string, ports: [number, number], uids: [number, number]): Allocators {
  const a = hostAllocators(dir, ports, uids);
  open.push(a);
  return a;
}

/**
 * Another process holding claims: resolves with what it got once it holds
 * them; it then waits to be killed.
 */
async function holder(dir: string, ports: [number, number], uids: [number, number], nPorts: number, nUids: number) {
  const code = `
    import { hostAllocators } from ${JSON.stringify(HOST_JS)};
    const a = hostAllocators(${JSON.stringify(dir)}, ${JSON.stringify(ports)}, ${JSON.stringify(uids)});
    const ports = [], uids = [];
    for (let i = 0; i < ${nPorts}; i++) ports.push((await a.ports.reserve()).port);
    for (let i = 0; i < ${nUids}; i++) uids.push(await a.uids.alloc());
    console.log(JSON.stringify({ ports, uids }));
    setInterval(() => {}, 1 << 30);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const got = await new Promise<{ ports: number[]; uids: number[] }>((resolve, reject) => {
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('\n')) resolve(JSON.parse(out.split('\n')[0]!) as { ports: number[]; uids: number[] });
    });
    child.once('exit', (code) => reject(new Error(`holder exited ${code}: ${err}`)));
  });
  const kill = async () => {
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await gone;
  };
  return { ...got, kill };
}

async function reserveAll(a: Allocators, max: number): Promise<number[]> {
  const got: number[] = [];
  for (let i = 0; i < max; i++) {
    try {
      const lease = await a.ports.reserve();
      leases.push(lease);
      got.push(lease.port);
    } catch {
      break;
    }
  }
  return got;
}

/** The distinct ports of `draws` reserve-and-release rounds. */
async function portsDrawn(a: Allocators, draws: number): Promise<Set<number>> {
  const seen = new Set<number>();
  for (let i = 0; i < draws; i++) {
    const lease = await a.ports.reserve();
    seen.add(lease.port);
    await a.ports.release(lease);
  }
  return seen;
}

async function allocAll(a: Allocators, max: number): Promise<number[]> {
  const got: number[] = [];
  for (let i = 0; i < max; i++) {
    try {
      got.push(await a.uids.alloc());
    } catch {
      break;
    }
  }
  return got;
}

// Held listeners keep their ports bound: each test starts with the range free.
afterEach(() => {
  for (const lease of leases.splice(0)) closeListener(lease);
});

afterAll(async () => {
  await Promise.allSettled(open.map((a) => a.close()));
  rmSync(base, { recursive: true, force: true });
});

describe('host-wide allocator', () => {
  it('never gives two instances the same port or UID, and each gets what the other frees', async () => {
    const dir = runtimeDir();
    const a = allocators(dir, [24320, 24329], [65320, 65329]);
    const b = allocators(dir, [24320, 24329], [65320, 65329]);
    const portLeases = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).ports.reserve()));
    leases.push(...portLeases);
    const uids = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).uids.alloc()));
    expect(new Set(portLeases.map((l) => l.port)).size).toBe(10);
    expect(new Set(uids).size).toBe(10);
    await expect(a.ports.reserve()).rejects.toThrow('no free port in 24320-24329');
    await expect(b.uids.alloc()).rejects.toThrow('no free worker UID in 65320-65329');
    expect([a.ports.inUse(), b.ports.inUse(), a.uids.inUse(), b.uids.inUse()]).toEqual([5, 5, 5, 5]);

    // a frees one of each; b gets exactly those.
    const aLease = portLeases[1]!;
    await a.ports.release(aLease);
    await a.uids.release(uids[1]!);
    const bLease = await b.ports.reserve();
    leases.push(bLease);
    expect(bLease.port).toBe(aLease.port);
    expect(await b.uids.alloc()).toBe(uids[1]);
    // close() frees everything an instance holds.
    await a.close();
    expect((await allocAll(b, 10)).length).toBe(4);
  });

  it("frees a SIGKILLed process's claims at once, and only those", async () => {
    const dir = runtimeDir();
    const ports: [number, number] = [24330, 24339];
    const uids: [number, number] = [65330, 65339];
    const other = await holder(dir, ports, uids, 3, 4);
    const mine = allocators(dir, ports, uids);
    const held = { ports: await reserveAll(mine, 2), uids: await allocAll(mine, 2) };
    const other2 = await holder(dir, ports, uids, 2, 2);
    // While they live, their claims are out of reach.
    const check = allocators(dir, ports, uids);
    expect((await reserveAll(check, 10)).length).toBe(10 - 3 - 2 - 2);
    expect((await allocAll(check, 10)).length).toBe(10 - 4 - 2 - 2);
    await check.close();

    await other.kill();
    const t = performance.now();
    const freedPorts = await reserveAll(mine, 10);
    const freedUids = await allocAll(mine, 10);
    // No lease to expire, no sweep: free the moment the process is gone.
    expect(performance.now() - t).toBeLessThan(500);
    for (const p of other.ports) expect(freedPorts).toContain(p);
    for (const u of other.uids) expect(freedUids).toContain(u);
    for (const p of other2.ports) expect(freedPorts).not.toContain(p);
    for (const u of other2.uids) expect(freedUids).not.toContain(u);
    for (const p of held.ports) expect(freedPorts).not.toContain(p);
    await other2.kill();
  });

  it('hands UIDs out least recently used across instances; a killed holder’s UID comes last', async () => {
    const dir = runtimeDir();
    const uids: [number, number] = [65320, 65323];
    const killed = await holder(dir, [24320, 24329], uids, 0, 1);
    await killed.kill();
    const a = allocators(dir, [24320, 24329], uids);
    const b = allocators(dir, [24320, 24329], uids);
    const first = await a.uids.alloc();
    const second = await b.uids.alloc();
    const third = await a.uids.alloc();
    // Never-used UIDs before the one whose holder died holding it.
    expect([first, second, third]).not.toContain(killed.uids[0]);
    await b.uids.release(second);
    await a.uids.release(first);
    // Released UIDs, oldest release first, still before the killed holder's.
    expect(await b.uids.alloc()).toBe(second);
    expect(await a.uids.alloc()).toBe(first);
    expect(await b.uids.alloc()).toBe(killed.uids[0]);
    void third;
  });

  it('starts ports anywhere in the range: a worker cannot tell the next port', async () => {
    const a = allocators(runtimeDir(), [24320, 24339], [65320, 65339]);
    const seen = await portsDrawn(a, 20);
    // Lowest-first would give one port 20 times; 20 draws from 20 ports give fewer than 4 distinct ones with odds below 1e-15.
    expect(seen.size).toBeGreaterThanOrEqual(4);
  });

  it('refuses a closed allocator instead of touching fds that may belong to other files now', async () => {
    const a = hostAllocators(runtimeDir(), [24320, 24329], [65320, 65329]);
    const uid = await a.uids.alloc();
    await a.close();
    await expect(a.uids.alloc()).rejects.toThrow('closed');
    await expect(a.ports.reserve()).rejects.toThrow('closed');
    await a.uids.release(uid); // a late release is harmless
  });
});

describe('the runtime dir', () => {
  it('is created 0700', () => {
    const dir = path.join(runtimeDir(), 'nested', 'procyard');
    prepareRuntimeDir(dir);
    const a = allocators(dir, [24320, 24329], [65320, 65329]);
    expect(a.uids.inUse()).toBe(0);
    expect((lstatSync(dir).mode & 0o777).toString(8)).toBe('700');
  });

  it.each([
    ['a symlink', (dir: string) => symlinkSync(mkdtempSync(path.join(base, 'target-')), dir), 'not a directory'],
    ['writable by others', (dir: string) => (mkdirSync(dir), chmodSync(dir, 0o777)), 'writable by group or others'],
    ['a file', (dir: string) => writeFileSync(dir, 'x'), 'cannot create'],
    ['relative', () => {}, 'absolute path'],
  ])('is refused when it is %s', (what, make, message) => {
    const dir = what === 'relative' ? 'relative/procyard' : runtimeDir();
    make(dir);
    expect(() => hostAllocators(dir, [24320, 24329], [65320, 65329])).toThrow(message);
  });

  it.runIf(isRoot)("is refused when another user owns it (they could forge claims)", () => {
    const dir = runtimeDir();
    mkdirSync(dir, { mode: 0o700 });
    chownSync(dir, 65534, 65534);
    expect(() => hostAllocators(dir, [24320, 24329], [65320, 65329])).toThrow('owned by uid 65534');
  });

  it('refuses a lock file planted as a symlink', () => {
    const dir = runtimeDir();
    mkdirSync(dir, { mode: 0o700 });
    symlinkSync(path.join(base, 'elsewhere'), path.join(dir, 'uids.lock'));
    expect(() => hostAllocators(dir, [24320, 24329], [65320, 65329])).toThrow(/ELOOP/);
  });

  it('makes ProcessBackend fail closed with a ConfigError naming the fix, never fall back to memory', () => {
    const dir = runtimeDir();
    writeFileSync(dir, 'not a dir');
    let err: unknown;
    try {
      new ProcessBackend(testConfig([24320, 24329], [65320, 65329], { runtimeDir: dir }));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toContain(dir);
    expect((err as ConfigError).message).toContain('process.allocator to "memory"');
    expect((err as ConfigError).key).toBe('process.runtimeDir');
  });
});

describe('in-memory allocator order', () => {
  it('hands UIDs out least recently used and ports from a random start', async () => {
    const a = memoryAllocators([24320, 24339], [65320, 65324]);
    const seq: number[] = [];
    for (let i = 0; i < 7; i++) {
      const uid = await a.uids.alloc();
      seq.push(uid);
      await a.uids.release(uid);
    }
    // A queue of 5: each released UID waits behind the other 4.
    expect(new Set(seq.slice(0, 5)).size).toBe(5);
    expect(seq.slice(5)).toEqual(seq.slice(0, 2));
    // A double release does not put a UID in the queue twice.
    const u = await a.uids.alloc();
    await a.uids.release(u);
    await a.uids.release(u);
    expect(new Set(await allocAll(a, 10)).size).toBe(5);

    const seen = await portsDrawn(a, 20);
    expect(seen.size).toBeGreaterThanOrEqual(4);
    // Every port is still reachable from any start.
    expect(new Set(await reserveAll(a, 25)).size).toBe(20);
  });

  it("is what ProcessBackend uses with allocator: 'memory'", async () => {
    const b = new ProcessBackend(testConfig([24320, 24329], [65320, 65329], { allocator: 'memory', runtimeDir: '/nonexistent/never-made' }));
    try {
      expect(b.inUse).toEqual({ ports: 0, uids: 0 });
    } finally {
      await b.close();
    }
  });
});
