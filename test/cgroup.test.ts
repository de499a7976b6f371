// Per-worker limits on this host's kernel (SPEC §8), as root: a memory hog
// killed at its limit (and the exit event saying so), the limit raised live,
// a fork bomb held at pidsLimit (by a cgroup, and by RLIMIT_NPROC without
// one), a CPU quota against an unlimited neighbour, 'required' refusing and
// 'auto' running without cgroups, and no cgroup left behind however a worker
// ends (on v1 a worker's cpu directory may stay, empty, in its backend's
// bounded pool for the next worker: see the recycling case). The same cases on cgroup v2 run in User-Mode Linux (cgroup-v2.test.ts).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { NotSupportedError, type WorkerExitEvent, type WorkerSpec } from '../src/backend.js';
import type { Config } from '../src/config.js';
import { clockTicksPerSecond, sampleTrees } from '../src/native.js';
import { runPreflight } from '../src/preflight/index.js';
import { inspectCgroups, type CgroupSupport } from '../src/process/cgroup.js';
import { detectLayout, dirOf, parseProcCgroup } from '../src/process/cgroup-hierarchy.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { NODE, appSpec, testConfig } from './helpers/backend.js';
import { isDead, isRoot, openFds, procStatus, waitFor } from './helpers/proc.js';

// Ports 24100-24169 and UIDs 65100-65169 (of 24100-24199 / 65100-65199,
// the range of the cgroup work), in slices, one per backend.
type Ranges = [[number, number], [number, number]];
const MAIN: Ranges = [[24100, 24129], [65100, 65129]];
const NO_CGROUP: Ranges = [[24130, 24134], [65130, 65134]];
const AUTO: Ranges = [[24135, 24139], [65135, 65139]];
const CLOSING: Ranges = [[24140, 24144], [65140, 65144]];
const OFF: Ranges = [[24150, 24159], [65150, 65159]];
const REQUIRED: Ranges = [[24160, 24169], [65160, 65169]];
// Two copies of procyard in one process: 24170-24179 / 65170-65179, split.
const COPY_A: Ranges = [[24170, 24174], [65170, 65174]];
const COPY_B: Ranges = [[24175, 24179], [65175, 65179]];
// A backend that sweeps a dead server's cgroups: 24145-24149 / 65145-65149.
const SWEEPER: Ranges = [[24145, 24149], [65145, 65149]];
// The cpu-recycling case: ports 33000-33009, UIDs 53000-53009.
const RECYCLING: Ranges = [[33000, 33009], [53000, 53009]];
/** Cgroups a backend makes ahead (cgroup.ts SPARES); its pool of cpu directories holds no more. */
const SPARES = 2;
const PIDS_LIMIT = 64;
const MiB = 2 ** 20;
// A cgroup parent no cgroup can be made under: a control file at the top of every hierarchy.
const BROKEN_PARENT = '/cgroup.procs';

let support: CgroupSupport = { version: 0, controllers: [], missing: [], actions: [] };
let skip: string | null = 'not checked yet';
let backend: ProcessBackend;
const exits: WorkerExitEvent[] = [];
const others: ProcessBackend[] = [];

beforeAll(async () => {
  if (!isRoot) {
    skip = 'needs root (cgroups and per-worker UIDs)';
    return;
  }
  support = await inspectCgroups('');
  const have = new Set(support.controllers.map((c) => c.controller));
  skip =
    support.problem?.message ??
    (['memory', 'cpu', 'pids'].every((c) => have.has(c as 'memory')) ? null : `this host lacks controllers: ${support.missing.map((m) => m.why).join('; ')}`);
  if (skip) return;
  backend = new ProcessBackend(config(MAIN, { pidsLimit: PIDS_LIMIT }));
  backend.on('exit', (e: WorkerExitEvent) => exits.push(e));
});

// A case that fails midway leaves nothing running for the next one.
afterEach(async () => {
  for (const r of (await backend?.listManaged()) ?? []) await backend.removeResource(r);
});

afterAll(async () => {
  await Promise.all([backend?.close(), ...others.map((b) => b.close())]);
});

function config([ports, uids]: Ranges, extra: Config['process'] = {}, server: Config['server'] = {}): Config {
  return { ...testConfig(ports, uids, { stopGraceMs: 2000, ...extra }), server };
}

function other(cfg: Config): ProcessBackend {
  const b = new ProcessBackend(cfg);
  others.push(b);
  return b;
}

interface WorkerView {
  uid: number;
  sandbox: { pid: number; appPid: Promise<number | null> };
  cgroup: { dirs: ReadonlyMap<string, string>; memoryCharged(): number; killAll(): Promise<void> } | null;
  ring: { snapshot(): string[] };
}

function internals(b: ProcessBackend, id: string): WorkerView {
  const w = (b as unknown as { workers: Map<string, WorkerView> }).workers.get(id);
  if (!w) throw new Error(`no worker ${id}`);
  return w;
}

/** This backend's instance directories (one per hierarchy). */
function instanceDirs(b: ProcessBackend): string[] {
  return [...(b as unknown as { cgroups: { instanceDirs: string[] } }).cgroups.instanceDirs];
}

/** v1: the empty cpu directories a backend keeps for its next cgroups. */
function cpuPool(b: ProcessBackend): string[] {
  return [...(b as unknown as { cgroups: { cpuPool: string[] } }).cgroups.cpuPool];
}

/**
 * What is left of a gone worker's cgroup beyond what may stay: nothing, but
 * a cpu directory that is in the backend's pool with no task in it.
 */
function leftOver(b: ProcessBackend, dirs: ReadonlyMap<string, string>): string[] {
  const pool = cpuPool(b);
  return [...dirs]
    .filter(([, dir]) => existsSync(dir))
    .filter(([controller, dir]) => !(controller === 'cpu' && pool.includes(dir) && readFileSync(path.join(dir, 'tasks'), 'utf8') === ''))
    .map(([, dir]) => dir);
}

/** The directory of pid's cgroup in the hierarchy that carries `controller`, from /proc/<pid>/cgroup. */
async function cgroupDirOf(pid: number, controller: 'memory' | 'cpu' | 'pids'): Promise<string> {
  const layout = await detectLayout();
  if (layout.version === 0) throw new Error(layout.reason);
  const h = layout.hierarchies.find((x) => x.controllers.includes(controller))!;
  const lines = parseProcCgroup(readFileSync(`/proc/${pid}/cgroup`, 'utf8'));
  const line = layout.version === 2 ? lines.find((l) => l.id === 0) : lines.find((l) => l.controllers.includes(controller));
  return dirOf(h, line!.path)!;
}

/** The worker cgroups (c<n>) under a backend's instance directories. */
function workerCgroups(b: ProcessBackend): string[] {
  return instanceDirs(b).flatMap((dir) =>
    existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => path.join(dir, e.name)) : [],
  );
}

function exitOf(id: string, timeoutMs = 20000): Promise<WorkerExitEvent> {
  const seen = exits.find((e) => e.workerId === id);
  if (seen) return Promise.resolve(seen);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${id}: no exit within ${timeoutMs} ms`)), timeoutMs);
    const check = (e: WorkerExitEvent) => {
      if (e.workerId !== id) return;
      clearTimeout(timer);
      backend.off('exit', check);
      resolve(e);
    };
    backend.on('exit', check);
  });
}

function hog(id: string, mode: string[], extra: Partial<WorkerSpec> = {}): WorkerSpec {
  return appSpec(id, 'serve', { cmd: [NODE, '/tmp/app/hog.mjs', ...mode], ...extra });
}

async function waitLine(b: ProcessBackend, id: string, line: string): Promise<void> {
  const stream = await b.logs(id);
  try {
    for await (const l of stream) if (l === line) return;
  } finally {
    stream.close();
  }
  throw new Error(`${id} ended without printing ${line}`);
}

function ask(addr: string, text: string): Promise<string> {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port: Number(port) });
    let reply = '';
    socket.setTimeout(30000, () => socket.destroy(new Error('no reply')));
    socket.on('data', (d) => (reply += d));
    socket.once('end', () => resolve(reply.trim()));
    socket.once('error', reject);
    socket.write(text);
  });
}

/** Live (not zombie) host processes running as uid. */
function processesOf(uid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (Number(procStatus(Number(name)).Uid.split(/\s+/)[0]) === uid && !isDead(Number(name))) out.push(Number(name));
    } catch {
      // gone meanwhile
    }
  }
  return out;
}

describe('per-worker limits on this kernel', () => {
  it('a 64 MiB limit kills a worker touching 200 MiB: oomKilled in its exit event, and the server lives on', async (ctx) => {
    if (skip) return ctx.skip(skip);
    await backend.spawn(hog('oom', ['now', '200'], { memoryLimit: '64m' }));
    const event = await exitOf('oom');
    expect(event).toMatchObject({ workerId: 'oom', oomKilled: true, reason: 'oom' });
    expect(event.code === 137 || event.signal === 'SIGKILL').toBe(true);
    expect(internals(backend, 'oom').ring.snapshot()).not.toContain('held 200');
    // The same worker with room to spare: the limit, not the app, was the killer.
    await backend.spawn(hog('roomy', ['now', '200'], { memoryLimit: '512m' }));
    expect(await exitOf('roomy')).toEqual({ workerId: 'roomy', code: 0, signal: null, oomKilled: false, reason: 'exited' });
    expect(internals(backend, 'roomy').ring.snapshot()).toContain('held 200');
    // The server is fine and keeps spawning.
    await backend.spawn(appSpec('after-oom', 'serve', { cmd: ['/bin/sh', '-c', 'echo still-here'] }));
    expect(await exitOf('after-oom')).toEqual({ workerId: 'after-oom', code: 0, signal: null, oomKilled: false, reason: 'exited' });
    for (const id of ['oom', 'roomy', 'after-oom']) await backend.removeResource({ id, kind: 'container', labels: {} });
  });

  it('socket buffers count against the memory limit: a worker cannot queue more than it in TCP connections to itself', async (ctx) => {
    if (skip) return ctx.skip(skip);
    // 64 loopback connections, each written to until the kernel says EAGAIN
    // and never read: ~4 MiB each with nothing in the way (~240 MiB in all).
    const flood = [
      'import os, socket, time',
      "port = int(os.environ['SHINY_PORT'])",
      // SO_REUSEADDR: a run of this test a minute ago may have left the port in TIME_WAIT.
      'srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)',
      'srv.bind(("127.0.0.1", port)); srv.listen(128)',
      "chunk, queued, keep = b'x' * 65536, 0, []",
      'for i in range(64):',
      '    c = socket.create_connection(("127.0.0.1", port)); s, _ = srv.accept(); keep += [c, s]',
      '    c.setblocking(False)',
      '    for _ in range(1000):',
      '        try: queued += c.send(chunk)',
      '        except OSError: break',
      "print('queued', queued, flush=True)",
      'time.sleep(60)',
    ].join('\n');
    await backend.spawn(appSpec('sockets', 'serve', { cmd: ['python3', '-c', flood], memoryLimit: '64m' }));
    const stream = await backend.logs('sockets');
    let queued = -1;
    const timer = setTimeout(() => stream.close(), 20000);
    for await (const line of stream) {
      const m = /^queued (\d+)$/.exec(line);
      if (m) {
        queued = Number(m[1]);
        break;
      }
    }
    clearTimeout(timer);
    stream.close();
    const memory = internals(backend, 'sockets').cgroup!.dirs.get('memory')!;
    try {
      expect(queued, internals(backend, 'sockets').ring.snapshot().join('\n')).toBeGreaterThan(0);
      // Capped at the limit (v1: the socket counter, cgroup.ts limitWrite; v2: memory.max).
      expect(queued).toBeLessThan(96 * MiB);
      if (support.version === 1) {
        expect(Number(readFileSync(path.join(memory, 'memory.kmem.tcp.limit_in_bytes'), 'utf8'))).toBe(64 * MiB);
        expect(Number(readFileSync(path.join(memory, 'memory.kmem.tcp.max_usage_in_bytes'), 'utf8'))).toBeGreaterThan(32 * MiB);
      }
    } finally {
      await backend.removeResource({ id: 'sockets', kind: 'container', labels: {} });
    }
  });

  it("usage counts what the worker's live processes do not show: its tmpfs, and the CPU of short-lived children", async (ctx) => {
    if (skip) return ctx.skip(skip);
    // 48 MiB in the sandbox's /tmp (tmpfs: in no process's RSS), then
    // children that each burn a few ms and exit, one after another.
    const script = 'head -c 48M /dev/zero > /tmp/fill; echo filled; while :; do sh -c "i=0; while [ \\$i -lt 2000 ]; do i=\\$((i+1)); done"; done';
    await backend.spawn(appSpec('usage', 'serve', { cmd: ['/bin/sh', '-c', script], memoryLimit: '256m' }));
    try {
      await waitLine(backend, 'usage', 'filled');
      const app = (await internals(backend, 'usage').sandbox.appPid)!;
      // What the kernel charged the app's shell and the children it reaped.
      const appTicks = () => {
        const stat = readFileSync(`/proc/${app}/stat`, 'utf8');
        const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // from field 3 (state) on
        return [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0); // utime stime cutime cstime
      };
      await backend.workerResourceUsage('usage');
      const [ticks0, t0] = [appTicks(), performance.now()];
      await new Promise((r) => setTimeout(r, 1500));
      const usage = (await backend.workerResourceUsage('usage'))!;
      const truth = ((appTicks() - ticks0) / clockTicksPerSecond / ((performance.now() - t0) / 1000)) * 100;
      const [tree] = await sampleTrees([internals(backend, 'usage').sandbox.pid]);
      console.log(`usage: ${usage.cpuPercent.toFixed(0)}% CPU (its children used ${truth.toFixed(0)}%), ${(usage.memoryUsageBytes / MiB).toFixed(0)} MiB (RSS of the live tree ${(tree!.rssBytes / MiB).toFixed(0)} MiB)`);
      expect(truth).toBeGreaterThan(5); // the machine gave it some CPU
      expect(usage.cpuPercent).toBeGreaterThan(truth * 0.7);
      expect(usage.memoryUsageBytes).toBeGreaterThan(48 * MiB);
      expect(tree!.rssBytes).toBeLessThan(48 * MiB);
    } finally {
      await backend.removeResource({ id: 'usage', kind: 'container', labels: {} });
    }
  });

  it('updateResources raises the limit of a live worker, and the same allocation then succeeds', async (ctx) => {
    if (skip) return ctx.skip(skip);
    await backend.spawn(hog('live', ['serve'], { memoryLimit: '64m', cpuLimit: 2 }));
    await waitLine(backend, 'live', 'listening');
    expect((await backend.workerResourceUsage('live'))!.memoryLimitBytes).toBe(64 * MiB);
    await backend.updateResources('live', 256 * MiB, 0);
    const raised = (await backend.workerResourceUsage('live'))!;
    expect(raised.memoryLimitBytes).toBe(256 * MiB);
    expect(await ask(await backend.addr('live'), '200\n')).toBe('held 200');
    expect((await backend.workerResourceUsage('live'))!.memoryUsageBytes).toBeGreaterThan(200 * MiB);
    // What the limit counts, the cgroup's charge, holds the 200 MiB under the new limit.
    const charged = internals(backend, 'live').cgroup!.memoryCharged();
    expect(charged).toBeGreaterThan(200 * MiB);
    expect(charged).toBeLessThanOrEqual(256 * MiB);
    // 0 leaves a limit as it is; the CPU quota changes alone.
    await backend.updateResources('live', 0, 500_000_000);
    expect((await backend.workerResourceUsage('live'))!.memoryLimitBytes).toBe(256 * MiB);
    const cpuDir = internals(backend, 'live').cgroup!.dirs.get('cpu')!;
    expect(readFileSync(path.join(cpuDir, support.version === 2 ? 'cpu.max' : 'cpu.cfs_quota_us'), 'utf8')).toMatch(/^50000\b/);
    // Bad values are refused naming the argument.
    await expect(backend.updateResources('live', -1, 0)).rejects.toThrow(/memoryBytes/);
    await expect(backend.updateResources('live', 0, Number.NaN)).rejects.toThrow(/nanoCpus/);
    await expect(backend.updateResources('nope', MiB, 0)).rejects.toThrow('worker "nope" not found');
    expect(exits.some((e) => e.workerId === 'live')).toBe(false);
    await backend.stop('live');
  });

  it("killing what is in a worker's cgroup resolves once it has ended: a killed 1 GiB worker runs no more", async (ctx) => {
    if (skip) return ctx.skip(skip);
    // Its 1 GiB in 4 KiB pages takes the kernel 0.1-0.2 s to free after the SIGKILL.
    await backend.spawn(appSpec('big-kill', 'serve', { cmd: ['/usr/bin/python3', '/tmp/app/slow-exit.py', 'serve', '1024'], memoryLimit: '2g' }));
    await waitLine(backend, 'big-kill', 'held');
    const { uid, cgroup } = internals(backend, 'big-kill');
    expect(processesOf(uid).length).toBeGreaterThan(0);
    await cgroup!.killAll();
    expect(processesOf(uid)).toEqual([]);
    // Its monitor, our child, was killed too and reaped by its own watcher
    // alone: the exit says how it ended (a stolen reap left both null).
    const e = await exitOf('big-kill');
    expect(e.signal === 'SIGKILL' || e.code === 137, JSON.stringify(e)).toBe(true);
    await backend.removeResource({ id: 'big-kill', kind: 'container', labels: {} });
  });

  it("a dead server's cgroups go with what runs in them, and a child of this process's there still gets its 'exit'", async (ctx) => {
    if (skip) return ctx.skip(skip);
    // As a SIGKILLed server leaves them: an instance directory per hierarchy,
    // named for a server that is gone, with a cgroup holding processes; here
    // children of this process (as a host's own child_process could be).
    const ns = /\d+/.exec(readlinkSync('/proc/self/ns/pid'))![0];
    const orphans = instanceDirs(backend).map((dir) => path.join(path.dirname(dir), `procyard-${ns}-999999-1-0`));
    const kids = Array.from({ length: 8 }, () => spawn('/bin/sleep', ['60'], { stdio: 'ignore' }));
    const signals = Promise.all(kids.map((k) => new Promise((resolve) => k.once('exit', (_code, signal) => resolve(signal)))));
    try {
      for (const dir of orphans) {
        mkdirSync(path.join(dir, 'c1'), { recursive: true });
        for (const k of kids) writeFileSync(path.join(dir, 'c1', 'cgroup.procs'), String(k.pid));
      }
      other(config(SWEEPER)); // a new backend sweeps at its start
      expect(await waitFor(() => orphans.every((dir) => !existsSync(dir)), 10_000, 50)).toBe(true);
      // The sweep's kill waits for them to end but leaves their reaping to
      // libuv: a stolen reap was an 'exit' that never came.
      const timeout = new Promise((resolve) => setTimeout(() => resolve('an exit never came'), 5000).unref());
      expect(await Promise.race([signals, timeout])).toEqual(kids.map(() => 'SIGKILL'));
    } finally {
      for (const k of kids) k.kill('SIGKILL');
      for (const dir of orphans) for (const d of [path.join(dir, 'c1'), dir]) if (existsSync(d)) rmdirSync(d);
    }
  });

  it(`a fork bomb stays at or under pidsLimit (${PIDS_LIMIT}) while the backend keeps spawning other workers`, async (ctx) => {
    if (skip) return ctx.skip(skip);
    // Every process forks for ever, retrying when the kernel says no; the CPU
    // quota keeps the machine usable meanwhile.
    await backend.spawn(appSpec('bomb', 'serve', { cmd: ['/usr/bin/perl', '-e', 'fork while 1'], cpuLimit: 0.5 }));
    const uid = internals(backend, 'bomb').uid;
    const pidsDir = internals(backend, 'bomb').cgroup!.dirs.get('pids')!;
    let most = 0;
    let mostOnHost = 0;
    const watching = (async () => {
      const until = Date.now() + 2500;
      while (Date.now() < until) {
        most = Math.max(most, Number(readFileSync(path.join(pidsDir, 'pids.current'), 'utf8')));
        mostOnHost = Math.max(mostOnHost, processesOf(uid).length);
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    // Meanwhile the backend goes on: other workers start and finish.
    for (let i = 0; i < 5; i++) {
      await backend.spawn(appSpec(`beside-${i}`, 'serve', { cmd: ['/bin/sh', '-c', `echo beside-${i}`] }));
      expect(await exitOf(`beside-${i}`)).toEqual({ workerId: `beside-${i}`, code: 0, signal: null, oomKilled: false, reason: 'exited' });
      expect(internals(backend, `beside-${i}`).ring.snapshot()).toEqual([`beside-${i}`]);
      await backend.removeResource({ id: `beside-${i}`, kind: 'container', labels: {} });
    }
    await watching;
    // It reached the cap and was refused there.
    const events = readFileSync(path.join(pidsDir, 'pids.events'), 'utf8');
    expect(Number(/max (\d+)/.exec(events)?.[1])).toBeGreaterThan(0);
    expect(most).toBeLessThanOrEqual(PIDS_LIMIT);
    expect(mostOnHost).toBeLessThanOrEqual(PIDS_LIMIT);
    expect(most).toBeGreaterThan(PIDS_LIMIT / 2);
    await backend.removeResource({ id: 'bomb', kind: 'container', labels: {} });
    expect(processesOf(uid)).toEqual([]);
  });

  it('without any usable cgroup, as root, RLIMIT_NPROC on the worker\'s UID still holds the fork bomb', async (ctx) => {
    if (skip) return ctx.skip(skip);
    const b = other(config(NO_CGROUP, { pidsLimit: PIDS_LIMIT, cgroupParent: BROKEN_PARENT }));
    // No CPU quota without a cgroup: nice keeps the machine usable.
    await b.spawn(appSpec('bomb', 'serve', { cmd: ['/usr/bin/nice', '-n', '19', '/usr/bin/perl', '-e', 'fork while 1'] }));
    const { uid, cgroup } = internals(b, 'bomb');
    expect(cgroup).toBeNull();
    // Watched for 1 s after it first passed half the cap (niced, it may take a
    // while to get there on a busy machine), at most 10 s in all.
    let most = 0;
    let over: number | undefined;
    for (const deadline = Date.now() + 10_000; Date.now() < deadline && (over === undefined || Date.now() < over + 1000); ) {
      most = Math.max(most, processesOf(uid).length);
      if (over === undefined && most > PIDS_LIMIT / 2) over = Date.now();
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(most).toBeLessThanOrEqual(PIDS_LIMIT);
    expect(most).toBeGreaterThan(PIDS_LIMIT / 2);
    await b.removeResource({ id: 'bomb', kind: 'container', labels: {} });
    expect(processesOf(uid)).toEqual([]);
  });

  it('cpuLimit 0.5 holds busy loops near half a CPU while an unlimited worker beside them gets more', async (ctx) => {
    if (skip) return ctx.skip(skip);
    const busy = ['/bin/sh', '-c', 'for i in 1 2 3; do (while :; do :; done) & done; wait'];
    try {
      await backend.spawn(appSpec('capped', 'serve', { cmd: busy, cpuLimit: 0.5 }));
      await backend.spawn(appSpec('free', 'serve', { cmd: busy }));
      // A shared machine gives each cgroup one share among many: both get a
      // large weight, so that they win CPU from the rest and only the quota
      // tells them apart.
      for (const id of ['capped', 'free']) {
        const dir = internals(backend, id).cgroup!.dirs.get('cpu')!;
        const v1 = existsSync(path.join(dir, 'cpu.shares'));
        writeFileSync(path.join(dir, v1 ? 'cpu.shares' : 'cpu.weight'), v1 ? '100000' : '10000');
      }
      await new Promise((r) => setTimeout(r, 300));
      await Promise.all([backend.workerResourceUsage('capped'), backend.workerResourceUsage('free')]);
      await new Promise((r) => setTimeout(r, 2500));
      const [capped, free] = (await Promise.all([backend.workerResourceUsage('capped'), backend.workerResourceUsage('free')])).map((u) => u!.cpuPercent);
      const stat = readFileSync(path.join(internals(backend, 'capped').cgroup!.dirs.get('cpu')!, 'cpu.stat'), 'utf8');
      const throttled = Number(/^(?:throttled_time|throttled_usec) (\d+)$/m.exec(stat)?.[1] ?? 0);
      console.log(`cpu over 2.5 s: capped at 0.5 used ${capped!.toFixed(0)}%, unlimited ${free!.toFixed(0)}%; capped throttled ${throttled}`);
      // The quota holds whatever the machine does, and the kernel says it throttled.
      expect(capped).toBeLessThanOrEqual(60);
      // Each worker's cgroup is one scheduling entity: on a machine too busy to
      // give even one of them over half a CPU, both get the same share, the
      // quota is never reached, and there is nothing to compare.
      if (free! >= 70) {
        expect(throttled).toBeGreaterThan(0);
        expect(free).toBeGreaterThan(capped! * 1.2);
      } else console.log(`cpu: the machine left the unlimited worker ${free!.toFixed(0)}%: too busy to compare`);
    } finally {
      // Back to the kernel's default weight: on v1 the cpu directory may be recycled for a later worker.
      for (const id of ['capped', 'free']) {
        const dir = internals(backend, id).cgroup?.dirs.get('cpu');
        if (dir && existsSync(path.join(dir, 'cpu.shares'))) writeFileSync(path.join(dir, 'cpu.shares'), '1024');
      }
      await Promise.all(['capped', 'free'].map((id) => backend.removeResource({ id, kind: 'container', labels: {} })));
    }
  });

  it('leaves no cgroup after stop, removal, a SIGKILLed worker, its own exit, a build, and close()', async (ctx) => {
    if (skip) return ctx.skip(skip);
    const dirsOf = (id: string) => internals(backend, id).cgroup!.dirs;
    const spawnHeld = async (id: string) => {
      await backend.spawn(appSpec(id, 'serve', { cmd: ['/bin/sh', '-c', 'echo ready; exec sleep 60'] }));
      await waitLine(backend, id, 'ready');
      const dirs = dirsOf(id);
      expect([...dirs.values()].every((d) => existsSync(d))).toBe(true);
      return dirs;
    };
    // Memory and pids go; cpu goes too, or (v1) waits empty in the pool.
    const stopped = await spawnHeld('gone-stop');
    await backend.stop('gone-stop');
    expect(existsSync(stopped.get('memory')!)).toBe(false);
    expect(existsSync(stopped.get('pids')!)).toBe(false);
    expect(leftOver(backend, stopped)).toEqual([]);

    const removed = await spawnHeld('gone-remove');
    await backend.removeResource({ id: 'gone-remove', kind: 'container', labels: {} });
    expect(leftOver(backend, removed)).toEqual([]);

    const killed = await spawnHeld('gone-kill');
    process.kill(internals(backend, 'gone-kill').sandbox.pid, 'SIGKILL');
    await exitOf('gone-kill');
    expect(leftOver(backend, killed)).toEqual([]);

    await backend.spawn(appSpec('gone-exit', 'serve', { cmd: ['/bin/sh', '-c', 'exit 3'] }));
    const exited = dirsOf('gone-exit');
    expect(await exitOf('gone-exit')).toMatchObject({ code: 3, oomKilled: false });
    expect(leftOver(backend, exited)).toEqual([]);
    await backend.removeResource({ id: 'gone-exit', kind: 'container', labels: {} });

    // A build runs in a cgroup of its own below this backend's, gone once it is.
    const populated = () => workerCgroups(backend).filter((d) => readFileSync(path.join(d, 'cgroup.procs'), 'utf8') !== '');
    expect(populated()).toEqual([]);
    const building = backend.build({ appId: 'a', bundleId: 'b', cmd: ['/bin/sh', '-c', 'sleep 1'] });
    expect(await waitFor(() => populated().length > 0, 5000)).toBe(true);
    const buildDirs = populated();
    expect((await building).success).toBe(true);
    const pool = cpuPool(backend);
    expect(buildDirs.filter((d) => existsSync(d) && !pool.includes(d))).toEqual([]);
    // What remains below the instance dirs is the cgroups made ahead and the
    // pooled cpu directories (at most SPARES), all empty.
    expect(pool.length).toBeLessThanOrEqual(SPARES);
    expect(workerCgroups(backend).length).toBeLessThanOrEqual(SPARES * instanceDirs(backend).length + pool.length);
    expect(populated()).toEqual([]);

    // close() takes the instance dirs too, with a pooled cpu directory (v1) in one.
    const b = other(config(CLOSING));
    await b.spawn(appSpec('x', 'serve', { cmd: ['/bin/sh', '-c', 'exec sleep 60'] }));
    await b.stop('x');
    if (support.version === 1) expect(cpuPool(b).length).toBe(1);
    await b.spawn(appSpec('y', 'serve', { cmd: ['/bin/sh', '-c', 'exec sleep 60'] }));
    const dirs = instanceDirs(b);
    expect(dirs.length).toBeGreaterThan(0);
    await b.close();
    expect(dirs.filter(existsSync)).toEqual([]);
  });

  it('two copies of procyard loaded in one process keep their cgroups apart, and each close() takes only its own', async (ctx) => {
    if (skip) return ctx.skip(skip);
    // A second copy, module state and all (dist/, built by the global setup,
    // beside the sources), as when two packages each bring their own procyard.
    const copy = await import('../dist/process/process-backend.js');
    expect(copy.ProcessBackend).not.toBe(ProcessBackend);
    const warnings: unknown[][] = [];
    const logger = { debug() {}, info() {}, warn: (...args: unknown[]) => warnings.push(args), error: (...args: unknown[]) => warnings.push(args) };
    const a = new ProcessBackend(config(COPY_A), { logger });
    others.push(a);
    const b = new copy.ProcessBackend(config(COPY_B), { logger });
    others.push(b as unknown as ProcessBackend);
    const held = { cmd: ['/bin/sh', '-c', 'echo ready; exec sleep 60'] };
    await Promise.all([a.spawn(appSpec('copy-a', 'serve', held)), b.spawn(appSpec('copy-b', 'serve', held))]);
    await Promise.all([waitLine(a, 'copy-a', 'ready'), waitLine(b as unknown as ProcessBackend, 'copy-b', 'ready')]);
    const dirsA = instanceDirs(a);
    const dirsB = instanceDirs(b as unknown as ProcessBackend);
    expect(dirsA.length).toBeGreaterThan(0);
    expect(dirsA.filter((d) => dirsB.includes(d))).toEqual([]);
    const memA = await cgroupDirOf(internals(a, 'copy-a').sandbox.pid, 'memory');
    const memB = await cgroupDirOf(internals(b as unknown as ProcessBackend, 'copy-b').sandbox.pid, 'memory');
    expect(dirsA.some((d) => memA.startsWith(`${d}/`))).toBe(true);
    expect(dirsB.some((d) => memB.startsWith(`${d}/`))).toBe(true);
    // Closing one leaves the other's worker and cgroups as they were.
    await a.close();
    expect(dirsA.filter(existsSync)).toEqual([]);
    expect(dirsB.every(existsSync)).toBe(true);
    expect(readFileSync(path.join(memB, 'cgroup.procs'), 'utf8')).not.toBe('');
    await b.close();
    expect(dirsB.filter(existsSync)).toEqual([]);
    // Neither said anything of the other's cgroups (or its own). A server
    // another test file SIGKILLed meanwhile is a dead server to both: sweeping
    // its cgroups is their job, and says so.
    const mine = [...dirsA, ...dirsB];
    const about = (w: unknown[]) => (w[0] as { dir?: string } | undefined)?.dir;
    expect(warnings.filter((w) => about(w) === undefined || mine.some((d) => about(w) === d || about(w)!.startsWith(`${d}/`)))).toEqual([]);
  });

  it('v1: a recycled cpu cgroup comes back empty and with the default quota, after updateResources changed it', async (ctx) => {
    if (skip) return ctx.skip(skip);
    if (support.version !== 1) return ctx.skip('cpu directories are recycled on cgroup v1 only');
    const parentOf = (c: string) => support.controllers.find((x) => x.controller === c)!.parent;
    if (parentOf('cpu') === parentOf('memory') || parentOf('cpu') === parentOf('pids'))
      return ctx.skip('cpu shares a v1 hierarchy with memory or pids here: nothing is recycled');
    // Default 1 CPU: the spares claim a 100000 µs quota, so a stale one would not be rewritten.
    const b = other(config(RECYCLING, {}, { defaultCpuLimit: 1 }));
    const held = (id: string, extra: Partial<WorkerSpec> = {}) =>
      b.spawn(appSpec(id, 'serve', { cmd: ['/bin/sh', '-c', 'echo ready; exec sleep 60'], ...extra }));
    const quota = (dir: string) => readFileSync(path.join(dir, 'cpu.cfs_quota_us'), 'utf8').trim();
    const tasks = (dir: string) => readFileSync(path.join(dir, 'tasks'), 'utf8').split('\n').filter(Boolean).map(Number).sort();

    await held('first', { cpuLimit: 0.3 });
    await waitLine(b, 'first', 'ready');
    const first = internals(b, 'first');
    const firstCpu = await cgroupDirOf(first.sandbox.pid, 'cpu');
    const firstMemory = await cgroupDirOf(first.sandbox.pid, 'memory');
    expect(quota(firstCpu)).toBe('30000');
    await b.updateResources('first', 0, 250_000_000);
    expect(quota(firstCpu)).toBe('25000');
    await b.stop('first');
    expect(existsSync(firstMemory)).toBe(false);
    expect(cpuPool(b)).toEqual([firstCpu]);
    expect(tasks(firstCpu)).toEqual([]);

    // The spares made before come first; the pooled directory goes into the next one made.
    let reused: string | undefined;
    for (let i = 0; i < 2 * SPARES + 1 && !reused; i++) {
      await held(`next-${i}`);
      await waitLine(b, `next-${i}`, 'ready');
      if ((await cgroupDirOf(internals(b, `next-${i}`).sandbox.pid, 'cpu')) === firstCpu) reused = `next-${i}`;
    }
    expect(reused, `${firstCpu} was not handed out again`).toBeDefined();
    const pid = internals(b, reused!).sandbox.pid;
    // The default quota, and no task but the new worker's: exactly those in its (new) memory cgroup.
    expect(quota(firstCpu)).toBe('100000');
    const memory = await cgroupDirOf(pid, 'memory');
    expect(memory).not.toBe(firstMemory);
    expect(tasks(firstCpu).length).toBeGreaterThan(0);
    expect(tasks(firstCpu)).toEqual(tasks(memory));
    expect(tasks(firstCpu)).toContain(pid);
    // The quota of the recycled directory is the worker's own to change.
    await b.updateResources(reused!, 0, 500_000_000);
    expect(quota(firstCpu)).toBe('50000');
    const dirs = instanceDirs(b);
    await b.close();
    expect(dirs.filter(existsSync)).toEqual([]);
  });

  it("'required' rejects spawn and build naming the cgroup problem and the fix, leaking nothing; 'auto' runs unlimited", async (ctx) => {
    if (skip) return ctx.skip(skip);
    const required = other(config(REQUIRED, { resourceLimits: 'required', cgroupParent: BROKEN_PARENT }));
    const fds = openFds().length;
    const err = await required.spawn(appSpec('refused', 'serve', { cmd: ['/bin/true'] })).then(() => null, (e: Error) => e);
    expect(err?.name).toBe('CgroupError');
    expect(err?.message).toMatch(/resourceLimits is "required"/);
    expect(err?.message).toContain('/cgroup.procs');
    expect(err?.message).toMatch(/: set process\.cgroupParent/);
    await expect(required.build({ appId: 'a', bundleId: 'b', cmd: ['/bin/true'] })).rejects.toThrow(/resourceLimits is "required"/);
    expect(required.inUse).toEqual({ ports: 0, uids: 0 });
    expect(await required.listManaged()).toEqual([]);
    expect(instanceDirs(required)).toEqual([]);
    // (The construction's orphan scans read /proc for a moment: wait them out.)
    expect(await waitFor(() => openFds().length <= fds, 5000), `fds ${openFds().length} > ${fds}`).toBe(true);

    // 'auto' on the same host: runs, without limits, and says so through the API.
    const auto = other(config(AUTO, { cgroupParent: BROKEN_PARENT }, { defaultMemoryLimit: '64m' }));
    await auto.spawn(hog('unlimited', ['serve'], { memoryLimit: '64m' }));
    await waitLine(auto, 'unlimited', 'listening');
    expect(internals(auto, 'unlimited').cgroup).toBeNull();
    expect(await ask(await auto.addr('unlimited'), '200\n')).toBe('held 200');
    expect((await auto.workerResourceUsage('unlimited'))!.memoryLimitBytes).toBe(0);
    await expect(auto.updateResources('unlimited', 512 * MiB, 0)).rejects.toBeInstanceOf(NotSupportedError);
    await auto.stop('unlimited');

    // 'off' never makes one, whatever the host offers.
    const off = other(config(OFF, { resourceLimits: 'off' }, { defaultMemoryLimit: '64m' }));
    await off.spawn(appSpec('plain', 'serve', { cmd: ['/bin/sh', '-c', 'exec sleep 60'] }));
    expect(internals(off, 'plain').cgroup).toBeNull();
    await expect(off.updateResources('plain', 512 * MiB, 0)).rejects.toThrow(/resourceLimits is "off"/);
    await off.stop('plain');
    expect(instanceDirs(off)).toEqual([]);
  });
});

describe('preflight resource_limits', () => {
  async function verdict(cfg: Config) {
    const report = await runPreflight({ ...cfg, process: { ...cfg.process, skipMetadataCheck: true } });
    return report.results.find((r) => r.name === 'resource_limits')!;
  }

  it('says where limits are enforced, and warns or errs where they cannot be', async (ctx) => {
    if (skip) return ctx.skip(skip);
    const ok = await verdict(config(MAIN, {}, { defaultMemoryLimit: '2g' }));
    expect(ok.severity).toBe('ok');
    expect(ok.message).toContain(`cgroup v${support.version}`);
    for (const { parent } of support.controllers) expect(ok.message).toContain(parent);
    expect(ok.message).toContain('memory 2 GiB');

    const unenforceable = await verdict(config(MAIN, { cgroupParent: BROKEN_PARENT }, { defaultMemoryLimit: '2g', defaultCpuLimit: 1 }));
    expect(unenforceable.severity).toBe('warning');
    expect(unenforceable.message).toContain('default_memory_limit = "2g"');
    expect(unenforceable.message).toContain('default_cpu_limit = 1');
    expect(unenforceable.message).toContain('RLIMIT_NPROC');

    const required = await verdict(config(MAIN, { cgroupParent: BROKEN_PARENT, resourceLimits: 'required' }));
    expect(required.severity).toBe('error');
    expect(required.message).toMatch(/resource_limits = "required" cannot be met.*cgroup\.procs is not a cgroup/);

    const off = await verdict(config(MAIN, { resourceLimits: 'off' }, { defaultCpuLimit: 1 }));
    expect(off.severity).toBe('warning');
    expect(off.message).toMatch(/default_cpu_limit = 1 is set but cannot be enforced.*"off"/);

    // Preflight changes nothing: no cgroup was made by any of it.
    expect(existsSync(path.join(support.controllers[0]!.parent, BROKEN_PARENT))).toBe(true);
  });
});

describe('bad limits in a spec', () => {
  it('are refused naming the field, before anything is held', async (ctx) => {
    if (skip) return ctx.skip(skip);
    await expect(backend.spawn(appSpec('bad-mem', 'serve', { memoryLimit: '64 megs' }))).rejects.toThrow(/memoryLimit must be a size/);
    await expect(backend.spawn(appSpec('bad-cpu', 'serve', { cpuLimit: -1 }))).rejects.toThrow(/cpuLimit must be a non-negative number/);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  });
});

// Waited for here so that a failing case above cannot leave a worker for the next file.
afterAll(async () => {
  if (!backend) return;
  await waitFor(() => workerCgroups(backend).every((d) => readFileSync(path.join(d, 'cgroup.procs'), 'utf8') === ''), 5000);
});
