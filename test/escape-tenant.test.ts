// A hostile tenant's attacks through what it controls: its environment, its
// output, the files it writes and the /dev it is given. Each attack succeeded
// on the code before the fix that closed it (see the commit that added it).
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerSpec } from '../src/backend.js';
import { killUidProcesses } from '../src/process/orphans.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { FIXTURES, NODE, appSpec, tempDir, testConfig } from './helpers/backend.js';
import { linesUntil } from './helpers/net.js';
import { isRoot, procEnviron, procState, procStatus as procStatusOf, settlesBefore, waitFor } from './helpers/proc.js';

// Ports 24400-24489 and UIDs 65400-65489 belong to this file.
const MiB = 1024 * 1024;
const backend = new ProcessBackend(testConfig([24400, 24429], [65400, 65429], { tmpSizeBytes: 64 * MiB }));

const work = tempDir('procyard-tenant-');
let seq = 0;

beforeAll(() => chmodSync(work.dir, 0o777));
afterAll(async () => {
  await backend.close();
  work.cleanup();
});

/** Runs cmd in a fresh worker until it exits; its output lines. */
async function run(cmd: string[], extra: Partial<WorkerSpec> = {}, b = backend): Promise<string[]> {
  const id = `tenant-${++seq}`;
  await b.spawn(appSpec(id, 'serve', { cmd, ...extra }));
  const lines: string[] = [];
  const stream = await b.logs(id);
  const timer = setTimeout(() => stream.close(), 20_000);
  for await (const line of stream) lines.push(line);
  clearTimeout(timer);
  await b.removeResource({ id, kind: 'container', labels: {} });
  return lines;
}

const sh = (script: string): string[] => ['/bin/sh', '-c', script];

describe('environment (LD_PRELOAD and friends)', () => {
  // A shared object shipped in the bundle whose constructor writes a marker
  // into the host's /tmp: inside the sandbox /tmp is a private tmpfs, so the
  // marker can appear on the host only if the code ran outside the sandbox.
  const bundle = path.join(work.dir, 'bundle');
  const marker = path.join(work.dir, 'markers');
  const so = path.join(bundle, 'evil.so');

  beforeAll(() => {
    mkdirSync(bundle, { recursive: true });
    mkdirSync(marker, { recursive: true });
    chmodSync(marker, 0o777);
    const src = path.join(work.dir, 'evil.c');
    writeFileSync(
      src,
      `#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void pwn(void) {
  char p[512];
  snprintf(p, sizeof p, "${marker}/ran-as-%d-pid-%d", (int)getuid(), (int)getpid());
  FILE* f = fopen(p, "w");
  if (f) fclose(f);
}
`,
    );
    execFileSync('cc', ['-shared', '-fPIC', '-o', so, src]);
  });

  const escaped = () => readdirSync(marker);

  it('spec.env LD_PRELOAD never runs in bwrap (on the host), and still reaches the app', async () => {
    const lines = await run(sh('echo "preload=$LD_PRELOAD"; echo "mine=$TENANT_VAR"'), {
      bundlePath: bundle,
      env: { LD_PRELOAD: so, LD_LIBRARY_PATH: bundle, GCONV_PATH: bundle, TENANT_VAR: 'kept' },
    });
    expect(lines).toContain(`preload=${so}`);
    expect(lines).toContain('mine=kept');
    expect(escaped()).toEqual([]);
  });

  it('BuildSpec.env LD_PRELOAD never runs in bwrap either, and still reaches the build', async () => {
    const result = await backend.build({
      appId: 'tenant',
      bundleId: 'b1',
      cmd: sh('echo "preload=$LD_PRELOAD"'),
      env: [`LD_PRELOAD=${so}`],
    });
    expect(result.logs).toContain(`preload=${so}`);
    expect(escaped()).toEqual([]);
  });

  it("bwrap's own environment is procyard's fixed set, whatever the spec says", async () => {
    const id = `tenant-env-${++seq}`;
    await backend.spawn(appSpec(id, 'serve', { env: { LD_PRELOAD: '/nonexistent.so', TENANT_VAR: 'x' } }));
    try {
      const pid = (backend as unknown as { workers: Map<string, { sandbox: { pid: number } }> }).workers.get(id)!.sandbox.pid;
      const env = procEnviron(pid);
      expect(env.some((e) => e.startsWith('LD_PRELOAD='))).toBe(false);
      expect(env.some((e) => e.startsWith('TENANT_VAR='))).toBe(false);
      expect(env.some((e) => e.startsWith('SHINY_PORT='))).toBe(false);
    } finally {
      await backend.removeResource({ id, kind: 'container', labels: {} });
    }
  });
});

describe('core dumps', () => {
  it('are off for good: the hard limit is 0, so the app cannot raise it', async () => {
    const lines = await run(sh('echo hard=$(ulimit -H -c); ulimit -c unlimited 2>/dev/null && echo raised || echo refused'));
    expect(lines).toEqual(['hard=0', 'refused']);
  });
});

describe('/sys/fs/cgroup', () => {
  it("is empty: no other worker's usage, pids or start to watch, and nothing of the server's", async (ctx) => {
    if (!existsSync('/sys/fs/cgroup') || readdirSync('/sys/fs/cgroup').length === 0) return ctx.skip('this host mounts no cgroup file system');
    const lines = await run(
      sh(
        'echo entries=$(ls -A /sys/fs/cgroup | wc -l); ' +
          'echo found=$(find /sys/fs/cgroup -name "memory.usage_in_bytes" -o -name "memory.current" -o -name "pids.current" 2>/dev/null | wc -l); ' +
          'touch /sys/fs/cgroup/planted 2>/dev/null && echo write=ok || echo write=refused',
      ),
    );
    expect(lines).toEqual(['entries=0', 'found=0', 'write=refused']);
  });
});

describe('/proc/locks', () => {
  it("is empty: the host's port and UID claims, live, are no clock to race a neighbour by", async () => {
    await backend.spawn(appSpec('claims', 'serve', { cmd: ['/bin/sleep', '30'] }));
    try {
      // The server's claims are file locks, which the host's /proc/locks lists.
      expect(readFileSync('/proc/locks', 'utf8').trim().split('\n').length).toBeGreaterThan(0);
      const lines = await run(sh('echo lines=$(wc -l < /proc/locks); cat /proc/locks'));
      expect(lines).toEqual(['lines=0']);
    } finally {
      await backend.removeResource({ id: 'claims', kind: 'container', labels: {} });
    }
  });
});

describe('/dev', () => {
  it('is read-only, and /dev/shm is capped like /tmp', async () => {
    const lines = await run(
      sh(
        'touch /dev/planted 2>/dev/null && echo dev=writable || echo dev=refused; ' +
          'mkdir /dev/dir 2>/dev/null && echo devdir=writable || echo devdir=refused; ' +
          'dd if=/dev/zero of=/dev/shm/fill bs=1M count=200 2>/dev/null; ' +
          'echo shm=$(( $(stat -c %s /dev/shm/fill) / 1048576 )); ' +
          'echo null=$(echo x > /dev/null && echo ok)',
      ),
    );
    expect(lines).toContain('dev=refused');
    expect(lines).toContain('devdir=refused');
    expect(lines).toContain('null=ok');
    const shm = Number(lines.find((l) => l.startsWith('shm='))?.slice(4));
    expect(shm).toBeGreaterThan(0);
    expect(shm).toBeLessThanOrEqual(64);
  });

  it('has no pseudo-terminals: /dev/ptmx and /dev/pts/ptmx cannot be opened', async () => {
    const lines = await run([
      '/usr/bin/python3',
      '-c',
      [
        'import os',
        'for p in ("/dev/ptmx", "/dev/pts/ptmx"):',
        '    try:',
        '        os.close(os.open(p, os.O_RDWR | os.O_NOCTTY)); print(p, "opened")',
        '    except OSError as e:',
        '        print(p, "refused")',
        'try:',
        '    os.openpty(); print("openpty opened")',
        'except OSError:',
        '    print("openpty refused")',
      ].join('\n'),
    ]);
    expect(lines).toEqual(['/dev/ptmx refused', '/dev/pts/ptmx refused', 'openpty refused']);
  });
});

describe('output floods', () => {
  // Four workers at once write 48 MB each of four-byte UTF-8 characters in
  // lines of just under 64 KiB. Kept whole, the rings would pin ~190 MB of the
  // server's heap (before the byte bound they kept 10,000 such lines: 650 MB a
  // worker, and four killed the server). Bounded, each holds at most logBytes.
  const WORKERS = 4;
  const PER_WORKER = 48 * MiB;
  const LOG_BYTES = 8 * MiB;
  const flooder = new ProcessBackend(testConfig([24430, 24439], [65430, 65439], { logBytes: LOG_BYTES }));
  afterAll(() => flooder.close());

  /** Heap in use after a full collection. */
  async function heapUsed(): Promise<number> {
    const v8 = await import('node:v8');
    const vm = await import('node:vm');
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    gc();
    gc();
    return v8.getHeapStatistics().used_heap_size;
  }

  it(`holds the server's heap to logBytes a worker while ${WORKERS} workers flood wide UTF-8`, async () => {
    const script = `
      const line = '\\u{1F600}'.repeat(16000);
      const total = ${PER_WORKER};
      let written = 0, n = 0;
      const next = () => {
        while (written < total) {
          const text = (n++) + ' ' + line + '\\n';
          written += Buffer.byteLength(text);
          if (!process.stdout.write(text)) return process.stdout.once('drain', next);
        }
        process.stdout.write('last ' + n + '\\n');
      };
      next();`;
    const before = await heapUsed();
    const ids = Array.from({ length: WORKERS }, (_, i) => `wide-${i}`);
    const exited = new Set<string>();
    const allExited = new Promise<void>((resolve) =>
      flooder.on('exit', (e: { workerId: string }) => {
        exited.add(e.workerId);
        if (exited.size === WORKERS) resolve();
      }),
    );
    await Promise.all(ids.map((id) => flooder.spawn(appSpec(id, 'serve', { cmd: [NODE, '-e', script] }))));
    await Promise.race([allExited, new Promise((r) => setTimeout(r, 60_000))]);
    expect(exited.size, 'every flooding worker finished: nothing held its writes back').toBe(WORKERS);
    const growth = (await heapUsed()) - before;

    for (const id of ids) {
      const lines: string[] = [];
      for await (const line of await flooder.logs(id)) lines.push(line);
      // The newest lines are there, in order, the last one whole.
      expect(lines.at(-1)).toMatch(/^last \d+$/);
      const held = lines.reduce((sum, l) => sum + 2 * l.length + 32, 0);
      expect(held).toBeLessThanOrEqual(LOG_BYTES);
      expect(held).toBeGreaterThan(LOG_BYTES / 2);
    }
    console.log(`wide flood: ${WORKERS} x ${PER_WORKER / MiB} MiB, server heap grew ${(growth / MiB).toFixed(1)} MiB (bound ${(WORKERS * LOG_BYTES) / MiB} MiB)`);
    // The rings plus slack for what else the test holds.
    expect(growth).toBeLessThan(WORKERS * LOG_BYTES + 24 * MiB);
    await Promise.all(ids.map((id) => flooder.stop(id)));
  }, 90_000);
});

describe('mount targets (created by the server as root)', () => {
  // A rw data mount bound at its own host path: the worker writes into a host
  // directory that later spawns use as part of a mount target.
  // Made in beforeAll: a run that filters these cases out leaves nothing behind.
  let base = '';
  let shared = '';
  let protectedDir = '';
  let source = '';
  afterAll(() => base && rmSync(base, { recursive: true, force: true }));
  beforeAll(() => {
    base = mkdtempSync(path.join('/var/tmp', 'procyard-tenant-'));
    [shared, protectedDir, source] = ['shared', 'protected', 'source'].map((name) => path.join(base, name)) as [string, string, string];
    chmodSync(base, 0o755);
    for (const d of [shared, protectedDir, source]) mkdirSync(d, { mode: 0o755 });
    chmodSync(shared, 0o777);
  });

  it.skipIf(!isRoot)('are never created through a symlink a worker planted, nor under a directory a worker can write', async () => {
    const lines = await run(sh(`ln -s ${protectedDir} ${shared}/link && echo planted`), {
      dataMounts: [{ source: shared, target: shared }],
    });
    expect(lines, lines.join('\n')).toContain('planted');
    const next = (target: string, id: string) =>
      backend.spawn(appSpec(id, 'serve', { dataMounts: [{ source, target, readOnly: true }] }));
    await expect(next(`${shared}/link/created`, 'tenant-through-link')).rejects.toThrow(/symlink|workers can write/);
    expect(existsSync(path.join(protectedDir, 'created'))).toBe(false);
    // Without the symlink too: the worker could swap the directory for one later.
    await expect(next(`${shared}/plain/created`, 'tenant-under-shared')).rejects.toThrow(new RegExp(`${shared}.*workers can write`));
    expect(existsSync(path.join(shared, 'plain'))).toBe(false);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  });

  it.skipIf(!isRoot).each([
    ['the worker group', 65534],
    ['a group of its own', 65471],
  ])("are never created under a directory another backend's worker made (its UID, %s)", async (_group, gid) => {
    // A sticky world-writable directory (/var/tmp-like) holds a directory made
    // by a worker of another backend on the host: a UID outside our range.
    const sticky = path.join(base, `sticky-${gid}`);
    mkdirSync(sticky);
    chmodSync(sticky, 0o1777);
    const foreign = path.join(sticky, 'theirs');
    mkdirSync(foreign);
    chownSync(foreign, 65470, gid);
    const target = path.join(foreign, 'reference');
    await expect(backend.spawn(appSpec('tenant-foreign', 'serve', { dataMounts: [{ source, target, readOnly: true }] }))).rejects.toThrow(
      /owned by uid 65470 \(not root or the server\)/,
    );
    expect(existsSync(target)).toBe(false);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  });

  it.skipIf(!isRoot)('made for a worker, are gone from the host once the last worker using them has ended', async () => {
    const target = path.join(base, 'made-for-workers', 'deeper');
    const spec = (id: string) => appSpec(id, 'serve', { dataMounts: [{ source, target, readOnly: true }] });
    await backend.spawn(spec('target-user-1'));
    await backend.spawn(spec('target-user-2'));
    expect(existsSync(target)).toBe(true);
    await backend.stop('target-user-1');
    // Still in use by the second worker.
    expect(existsSync(target)).toBe(true);
    await backend.removeResource({ id: 'target-user-2', kind: 'container', labels: {} });
    expect(existsSync(path.join(base, 'made-for-workers'))).toBe(false);
    // A build's too.
    const result = await backend.build({ appId: 'tenant', bundleId: 'b2', cmd: sh(`test -d ${target} && echo there`), mounts: [{ source, target, readOnly: true }] });
    expect(result.logs).toContain('there');
    expect(existsSync(path.join(base, 'made-for-workers'))).toBe(false);
    // One that existed before is left alone.
    expect(existsSync(source)).toBe(true);
  });

  it.skipIf(!isRoot)("made for one worker, stay while a neighbour's mount is on one of them, and go with the neighbour", async () => {
    const outer = path.join(base, 'nested');
    writeFileSync(path.join(source, 'data'), 'reference\n');
    // outer is made for the first worker's target (outer/inner), then is the neighbour's target.
    await backend.spawn(appSpec('nest-inner', 'serve', { cmd: ['/bin/sleep', '30'], dataMounts: [{ source, target: path.join(outer, 'inner'), readOnly: true }] }));
    const watch = `while :; do if [ -f ${outer}/data ]; then echo present; else echo missing; fi; sleep 0.05; done`;
    await backend.spawn(appSpec('nest-outer', 'serve', { cmd: sh(watch), dataMounts: [{ source, target: outer, readOnly: true }] }));
    const ring = (b: ProcessBackend) => (b as unknown as { workers: Map<string, { ring: { snapshot(): string[] } }> }).workers.get('nest-outer')!.ring;
    try {
      expect(await waitFor(() => ring(backend).snapshot().includes('present'), 5000)).toBe(true);
      await backend.removeResource({ id: 'nest-inner', kind: 'container', labels: {} });
      const seen = ring(backend).snapshot().length;
      await new Promise((r) => setTimeout(r, 500));
      // Removing outer on the host would have detached the neighbour's mount in its namespace.
      expect(ring(backend).snapshot().slice(seen)).not.toContain('missing');
      expect(existsSync(outer)).toBe(true);
    } finally {
      await backend.removeResource({ id: 'nest-outer', kind: 'container', labels: {} });
    }
    expect(existsSync(outer)).toBe(false);
  });

  it.skipIf(!isRoot)("made by one backend, stay while another backend's worker is mounted on one", async () => {
    const target = path.join(base, 'across');
    writeFileSync(path.join(source, 'data'), 'reference\n');
    const other = new ProcessBackend(testConfig([24456, 24457], [65456, 65457]));
    const watch = `while :; do if [ -f ${target}/data ]; then echo present; else echo missing; fi; sleep 0.05; done`;
    try {
      await backend.spawn(appSpec('across-maker', 'serve', { cmd: ['/bin/sleep', '30'], dataMounts: [{ source, target, readOnly: true }] }));
      await other.spawn(appSpec('across-user', 'serve', { cmd: sh(watch), dataMounts: [{ source, target, readOnly: true }] }));
      const ring = (other as unknown as { workers: Map<string, { ring: { snapshot(): string[] } }> }).workers.get('across-user')!.ring;
      expect(await waitFor(() => ring.snapshot().includes('present'), 5000)).toBe(true);
      await backend.removeResource({ id: 'across-maker', kind: 'container', labels: {} });
      const seen = ring.snapshot().length;
      await new Promise((r) => setTimeout(r, 500));
      expect(ring.snapshot().slice(seen)).not.toContain('missing');
    } finally {
      await other.close();
      rmSync(target, { recursive: true, force: true });
    }
  });

  it.skipIf(!isRoot)('still follow root-owned symlinks in root-owned directories (/var/run -> /run)', async () => {
    const link = path.join(base, 'root-link');
    symlinkSync(protectedDir, link);
    const lines = await run(sh(`test -d ${protectedDir}/made && echo mounted`), {
      dataMounts: [{ source, target: `${link}/made` }],
    });
    expect(lines).toContain('mounted');
    // Made for that worker only: gone with it.
    expect(existsSync(path.join(protectedDir, 'made'))).toBe(false);
  });
});

describe('a server that is PID 1', () => {
  const hasUnshare = spawnSync('unshare', ['--version']).status === 0;

  it.skipIf(!isRoot || !hasUnshare)('reaps the sandbox inits reparented to it: no zombies after stops and exits', () => {
    const fixture = path.join(FIXTURES, 'pid1-server.mjs');
    const out = execFileSync('unshare', ['--pid', '--fork', '--mount-proc', NODE, fixture, '24440-24449', '65440-65449'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    const report = JSON.parse(out.trim().split('\n').at(-1)!) as { pid: number; exits: number; zombies: unknown[] };
    expect(report.pid).toBe(1);
    expect(report.exits).toBe(8);
    expect(report.zombies).toEqual([]);
  });
});

describe("a worker that takes over bwrap's init (same UID, /proc/1/mem)", () => {
  // Processes of a host UID: alive, or ended (zombies).
  const pidsOf = (uid: number, ended: boolean) =>
    readdirSync('/proc')
      .filter((n) => /^\d+$/.test(n))
      .map(Number)
      .filter((pid) => {
        try {
          return Number(procStatusOf(pid).Uid?.split(/\s+/)[0]) === uid && ['Z', 'X', null].includes(procState(pid)) === ended;
        } catch {
          return false;
        }
      });
  const liveOf = (uid: number) => pidsOf(uid, false);
  const x64 = process.arch === 'x64';

  it.runIf(isRoot && x64)('cannot outlive stop(): faking its end through init leaves nothing running', async () => {
    const b = new ProcessBackend(testConfig([24441, 24443], [65441, 65443], { stopGraceMs: 1000 }));
    try {
      const exited = new Promise<void>((resolve) => b.once('exit', () => resolve()));
      await b.spawn(appSpec('hijack', 'serve', { cmd: ['/usr/bin/python3', '/tmp/app/init-hijack.py', 'eventfd'] }));
      const uid = (b as unknown as { workers: Map<string, { uid: number }> }).workers.get('hijack')!.uid;
      // The monitor exits when the app fires init's eventfd; the server must then end the rest.
      await exited;
      expect(await waitFor(() => liveOf(uid).length === 0, 5000, 50)).toBe(true);
      const started = Date.now();
      await b.stop('hijack');
      expect(Date.now() - started).toBeLessThan(3000);
    } finally {
      await b.close();
    }
  }, 30_000);

  it.runIf(isRoot && x64).each([
    ['in its cgroup', 'auto', [24450, 24451], [65450, 65451]],
    ['by its UID, without cgroups', 'off', [24452, 24453], [65452, 65453]],
  ] as const)(
    'cannot outlive stop() by turning init into another program that keeps the log pipes: killed %s',
    async (_how, resourceLimits, ports, uids) => {
      const errors: unknown[][] = [];
      const logger = { debug() {}, info() {}, warn() {}, error: (...args: unknown[]) => errors.push(args) };
      const b = new ProcessBackend(testConfig([...ports], [...uids], { stopGraceMs: 1000, resourceLimits }), { logger });
      try {
        const exited = new Promise<void>((resolve) => b.once('exit', () => resolve()));
        await b.spawn(appSpec('exec', 'serve', { cmd: ['/usr/bin/python3', '/tmp/app/init-hijack.py', 'exec', '/tmp/app/hold.sh'] }));
        const worker = (b as unknown as { workers: Map<string, { uid: number; ring: { snapshot(): string[] } }> }).workers.get('exec')!;
        const uid = worker.uid;
        const cmdline = (pid: number) => {
          try {
            return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
          } catch {
            return ''; // gone meanwhile
          }
        };
        // The app itself never ends, so an exit event says the attack worked:
        // only the rewritten init fires the eventfd that ends the monitor. The
        // program init became (sleep) may be seen, or already killed: under
        // load a poll can miss the second it is given.
        let seen = false;
        const watch = setInterval(() => (seen ||= liveOf(uid).some((pid) => cmdline(pid).includes('sleep'))), 50);
        const came = await Promise.race([exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 20_000))]);
        clearInterval(watch);
        expect(came, `no exit event: the hijack did not end the monitor; the app said:\n${worker.ring.snapshot().join('\n')}`).toBe(true);
        console.log(`init became another program: ${seen ? 'seen running, then' : 'not seen (killed between polls)'}; ended before the exit event`);
        expect(liveOf(uid)).toEqual([]);
        expect(errors).toEqual([]);
        const started = Date.now();
        await b.stop('exec');
        expect(Date.now() - started).toBeLessThan(3000);
      } finally {
        await b.close();
      }
    },
    30_000,
  );

  it.runIf(isRoot)("never takes a live worker for an orphan: not once bwrap is upgraded under it, nor for a peer's bwrap at another path", async () => {
    const dir = mkdtempSync(path.join('/var/tmp', 'procyard-bwrap-'));
    chmodSync(dir, 0o755); // bwrap is exec'd as the worker's UID
    const copy = path.join(dir, 'bwrap');
    copyFileSync('/usr/bin/bwrap', copy);
    chmodSync(copy, 0o755);
    const uids: [number, number] = [65472, 65473];
    const server = new ProcessBackend(testConfig([24470, 24471], uids, { bwrapPath: copy }));
    const peer = new ProcessBackend(testConfig([24472, 24473], uids)); // /usr/bin/bwrap, the same UID range
    const exits: unknown[] = [];
    server.on('exit', (e) => exits.push(e));
    try {
      await server.spawn(appSpec('live', 'serve', { cmd: ['/bin/sleep', '30'] }));
      // As a package upgrade does it: a new file renamed over the old, so the
      // running monitor's binary now reads "<path> (deleted)".
      copyFileSync('/usr/bin/bwrap', `${copy}.new`);
      chmodSync(`${copy}.new`, 0o755);
      renameSync(`${copy}.new`, copy);
      await Promise.all([server.cleanupOrphanResources(), peer.cleanupOrphanResources()]);
      await new Promise((r) => setTimeout(r, 300));
      expect(exits).toEqual([]);
      expect(await server.workerResourceUsage('live')).not.toBeNull();
    } finally {
      await Promise.all([server.close(), peer.close()]);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it.runIf(isRoot)("the sweep by UID resolves once what it killed has ended, counts no zombie, and leaves a child's reaping to its owner", async () => {
    const [uid, other] = [65460, 65461];
    // A process that takes a while to end once killed: it has 1 GiB to free.
    const big = spawn('/usr/bin/python3', [path.join(FIXTURES, 'slow-exit.py')], { uid, gid: uid, stdio: ['ignore', 'pipe', 'inherit'] });
    // A zombie of another UID: its root parent never reaps it.
    const parent = spawn('/usr/bin/python3', ['-c', `import os, time\nif os.fork() == 0:\n    os.setuid(${other}); os._exit(0)\ntime.sleep(30)`]);
    // More of the UID, children of this process too: libuv reaps them, not the sweep.
    const sleepers = Array.from({ length: 6 }, () => spawn('/bin/sleep', ['30'], { uid, gid: uid, stdio: 'ignore' }));
    const signals = Promise.all([big, ...sleepers].map((k) => new Promise((resolve) => k.once('exit', (_code, signal) => resolve(signal)))));
    try {
      await new Promise((resolve) => big.stdout!.once('data', resolve));
      expect(await waitFor(() => liveOf(other).length === 0 && pidsOf(other, true).length === 1, 5000, 20)).toBe(true);
      expect(await killUidProcesses(uid)).toBe(7);
      expect(['Z', 'X', null]).toContain(procState(big.pid!));
      expect(await killUidProcesses(other)).toBe(0);
      // A reap stolen by the sweep was an 'exit' that never came.
      const timeout = new Promise((resolve) => setTimeout(() => resolve('an exit never came'), 5000).unref());
      expect(await Promise.race([signals, timeout])).toEqual(Array.from({ length: 7 }, () => 'SIGKILL'));
    } finally {
      for (const k of [big, ...sleepers]) k.kill('SIGKILL');
      parent.kill('SIGKILL');
    }
  }, 30_000);

  it.runIf(x64 && existsSync('/proc/key-users'))("a worker holds a session keyring of its own: not the server's keys, not another tenant's", () => {
    // A systemd service has a session keyring: workers inherited it, read its
    // keys and passed keys on to the next tenant through it.
    const server = spawnSync(
      '/usr/bin/python3',
      [path.join(FIXTURES, 'keyring.py'), 'host', NODE, path.join(FIXTURES, 'keyring-server.mjs'), '24480', '65480'],
      { encoding: 'utf8', timeout: 30_000 },
    );
    const lines = server.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as unknown);
    expect(lines, server.stderr).toEqual([
      { tag: 'a', added: true, server: null, a: 'secret-of-a' },
      { tag: 'b', added: true, server: null, a: null },
    ]);
  });

  it.runIf(isRoot && x64).each([
    ['a patched bwrap init', 'keep', [24444, 24449], [65444, 65446], {}],
    ['an init that became another program, without cgroups', 'exec', [24462, 24467], [65462, 65464], { resourceLimits: 'off' }],
  ] as const)('cannot outlive a SIGKILLed server: a live peer backend sweeps up %s on its timer', async (_what, mode, ports, uids, extra) => {
    const peer = new ProcessBackend(testConfig([ports[0], ports[0] + 2], [...uids], extra), { orphanSweepMs: 300 });
    const args = [ports[0] + 3, ports[1], ...uids].map(String);
    const server = spawn(NODE, [path.join(FIXTURES, 'hijack-server.mjs'), ...args, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
    const allUids = [uids[0], uids[0] + 1, uids[1]];
    try {
      const patched = await new Promise<boolean>((resolve) => {
        const timer = setTimeout(() => resolve(false), 20_000);
        server.stdout!.on('data', (d: Buffer) => {
          if (d.toString().includes('patched')) {
            clearTimeout(timer);
            resolve(true);
          }
        });
      });
      expect(patched).toBe(true);
      server.kill('SIGKILL');
      const before = allUids.flatMap(liveOf);
      expect(before.length).toBeGreaterThan(0);
      // init's parent-death signal is gone, so its sandbox survives the server ...
      await new Promise((r) => setTimeout(r, 200));
      // ... until the peer's periodic orphan sweep kills it.
      expect(await waitFor(() => allUids.flatMap(liveOf).length === 0, 10_000, 50)).toBe(true);
    } finally {
      server.kill('SIGKILL');
      await peer.close();
    }
  }, 30_000);
});

describe('a worker handed sockets and pipes by another (a unix socket in a shared directory)', () => {
  /** The first line of id's log that matches, within 20 s. */
  async function lineOf(b: ProcessBackend, id: string, match: RegExp): Promise<string | null> {
    const stream = await b.logs(id);
    const timer = setTimeout(() => stream.close(), 20_000);
    try {
      for await (const line of stream) if (match.test(line)) return line;
      return null;
    } finally {
      clearTimeout(timer);
      stream.close();
    }
  }

  const reply = (port: number) =>
    new Promise<string>((resolve) => {
      const socket = net.connect({ host: '127.0.0.1', port });
      let text = '';
      socket.on('data', (d) => (text += d.toString()));
      socket.on('close', () => resolve(text.trim()));
      socket.on('error', () => resolve(''));
      socket.setTimeout(5000, () => socket.destroy());
    });

  it("cannot answer for a neighbour with a socket made under the neighbour's UID; the giver's end waits on no pipe", async () => {
    const shared = path.join(work.dir, 'handoff');
    mkdirSync(shared);
    chmodSync(shared, 0o777);
    const errors: unknown[][] = [];
    const logger = { debug() {}, info() {}, warn() {}, error: (...args: unknown[]) => errors.push(args) };
    // Two UIDs: once the giver is gone, its UID is the only one free, so the
    // victim gets it. No network policy: nothing refuses the taker's bind of
    // the victim's port, so readiness alone must see through it.
    const b = new ProcessBackend(testConfig([24470, 24472], [65470, 65471], { networkPolicy: 'off', stopGraceMs: 1000 }), { logger });
    const uidOf = (id: string) => (b as unknown as { workers: Map<string, { uid: number }> }).workers.get(id)!.uid;
    const handoff = (id: string, mode: string) =>
      appSpec(id, 'serve', {
        cmd: ['/usr/bin/python3', '/tmp/app/socket-handoff.py', mode, '/shared'],
        dataMounts: [{ source: shared, target: '/shared' }],
      });
    try {
      await b.spawn(handoff('taker', 'take'));
      expect(await lineOf(b, 'taker', /^waiting$/)).not.toBeNull();
      const exited = new Promise<number>((resolve) => b.on('exit', (e) => e.workerId === 'giver' && resolve(Date.now())));
      const spawned = Date.now();
      await b.spawn(handoff('giver', 'give'));
      const giverUid = uidOf('giver');
      expect(await lineOf(b, 'taker', /^got \d+ fds$/)).toBe('got 3 fds');
      // It exited 0 with its pipes held by the taker: the exit event comes
      // anyway, without waiting out the leftover grace (a second) for them.
      expect(await settlesBefore(exited, 2000)).toBe(true);
      console.log(`giver: spawn to exit event ${(await exited) - spawned} ms`);
      const stopping = Date.now();
      await b.stop('giver');
      expect(Date.now() - stopping).toBeLessThan(1000);

      await b.spawn(appSpec('victim', 'serve', { cmd: ['/bin/sleep', '60'] }));
      if (isRoot) expect(uidOf('victim')).toBe(giverUid);
      const port = Number((await b.addr('victim')).split(':')[1]);
      writeFileSync(path.join(shared, 'port.tmp'), String(port));
      renameSync(path.join(shared, 'port.tmp'), path.join(shared, 'port'));
      expect(await lineOf(b, 'taker', /^(listening|bind)/)).toBe(`listening ${port}`);
      // The attack is in place: the victim's clients reach the taker ...
      expect(await reply(port)).toBe('thief');
      // ... through a socket stamped with the victim's UID, held outside its sandbox.
      expect(await b.healthCheck('victim')).toBe(false);
      await expect(b.waitReady('victim', { timeoutMs: 1000 })).rejects.toThrow(/held by no process of the worker's sandbox/);
      expect(errors).toEqual([]);
    } finally {
      await b.close();
    }
  }, 60_000);
});

describe('a listener beside a neighbour\'s, which no connect to 127.0.0.1 reaches', () => {
  // Found by an attacker: a worker holding [::]:<neighbour's port> with
  // IPV6_V6ONLY (through listen() without bind() where the workers' range
  // lies inside the kernel's ephemeral range) made the neighbour's health
  // check false while it kept serving: the check counted every listener on
  // the port, where a connect to 127.0.0.1 reaches only its own.
  it('leaves the neighbour healthy, and its clients reach it', async () => {
    const b = new ProcessBackend(testConfig([24475, 24477], [65475, 65477], { networkPolicy: 'off' }));
    try {
      await b.spawn(appSpec('victim', 'serve', { cmd: ['/usr/bin/python3', '/tmp/app/tenant-net.py', JSON.stringify([['victim', 'serve', '127.0.0.1', -1]])], bundlePath: FIXTURES }));
      await b.waitReady('victim', { timeoutMs: 10_000 });
      const port = Number((await b.addr('victim')).split(':')[1]);
      const hold =
        'import socket, time\n' +
        's = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n' +
        's.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n' +
        `s.bind(('::', ${port}))\n` +
        's.listen()\n' +
        "print('holding', flush=True)\n" +
        'time.sleep(30)\n';
      await b.spawn(appSpec('squatter', 'serve', { cmd: ['/usr/bin/python3', '-c', hold] }));
      expect((await linesUntil(b, 'squatter', (l) => l === 'holding', 10_000)).pop()).toBe('holding');
      const reply = await new Promise<string>((resolve) => {
        const socket = net.connect({ host: '127.0.0.1', port }, () => socket.write('from-client'));
        socket.once('data', (d) => (resolve(d.toString().trim()), socket.destroy()));
        socket.on('error', (e) => resolve(String(e)));
      });
      expect(reply).toBe('hello from victim');
      expect(await b.healthCheck('victim')).toBe(true);
      await b.waitReady('victim', { timeoutMs: 2000 });
    } finally {
      await b.close();
    }
  }, 30_000);
});

describe.runIf(isRoot)('a symlink a worker leaves in its data', () => {
  // Found by an attacker: a worker writes `escape -> /` into its read-write
  // data; the next spec whose data mount names that link bound the host's
  // whole root, read-write (its /run, /tmp and /dev/shm, which outlive it).
  it('is never followed as a mount source: the spawn is refused naming it, and nothing is bound', async () => {
    const data = tempDir('procyard-plant-');
    chmodSync(data.dir, 0o1777); // sticky: the directory itself is no reason to refuse (see below)
    try {
      await backend.spawn(
        appSpec('planter', 'serve', {
          cmd: [NODE, '-e', "require('fs').symlinkSync('/', '/data/escape'); require('fs').symlinkSync('/etc', '/data/etc')"],
          dataMounts: [{ source: data.dir, target: '/data', readOnly: false }],
        }),
      );
      expect(await waitFor(() => existsSync(path.join(data.dir, 'escape')) && existsSync(path.join(data.dir, 'etc')), 10_000)).toBe(true);
      await backend.stop('planter');
      for (const link of ['escape', 'etc']) {
        const err = await backend
          .spawn(appSpec(`victim-${link}`, 'serve', { dataMounts: [{ source: path.join(data.dir, link), target: '/hostroot', readOnly: false }] }))
          .then(() => null, (e: unknown) => e as Error);
        expect(err?.name, link).toBe('SpecError');
        expect(err?.message).toMatch(new RegExp(`mount source ".*/${link}" \\(for /hostroot\\) is refused: .*/${link} is a symlink owned by uid 654\\d\\d`));
      }
      expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
    } finally {
      data.cleanup();
    }
  });

  // Found next: with the symlink check alone, a worker swapped a plain
  // directory of its data for a symlink to / and back. The check saw the
  // directory; bwrap, a few milliseconds later, followed the link, and the
  // next tenant's mount was the host's root.
  it('the overlap rule: both ways, the same directory shared is fine, and it ends with the sandbox', async () => {
    const data = tempDir('procyard-overlap-');
    const inner = path.join(data.dir, 'inner');
    mkdirSync(inner);
    const sleeper = (id: string, mounts: { source: string; readOnly: boolean }[]) =>
      backend.spawn(appSpec(id, 'serve', { cmd: ['/bin/sleep', '30'], dataMounts: mounts.map((m, i) => ({ ...m, target: `/d${i}` })) }));
    try {
      await sleeper('inner-ro', [{ source: inner, readOnly: true }]);
      // A read-write mount around a running sandbox's source: refused.
      await expect(sleeper('outer-rw', [{ source: data.dir, readOnly: false }])).rejects.toThrow(/read-write mount source ".*procyard-overlap-\w+" \(for \/d0\) is refused: it holds ".*\/inner"/);
      // Read-only around it, and the same directory read-write in two sandboxes: fine.
      await sleeper('outer-ro', [{ source: data.dir, readOnly: true }]);
      await sleeper('same-rw-1', [{ source: inner, readOnly: false }]);
      await sleeper('same-rw-2', [{ source: inner, readOnly: false }]);
      await backend.stop('inner-ro');
      await backend.stop('same-rw-1');
      await backend.stop('same-rw-2');
      // With those gone, the read-write mount goes through.
      await sleeper('outer-rw', [{ source: data.dir, readOnly: false }]);
      // And now a source inside it is refused.
      await expect(sleeper('inner-again', [{ source: inner, readOnly: true }])).rejects.toThrow(/it is inside ".*procyard-overlap-\w+", which a sandbox of this server has had read-write/);
      for (const id of ['outer-ro', 'outer-rw']) await backend.stop(id);
      // And after it is gone: one of its workers may have passed an fd of the directory on, which still writes there.
      await expect(sleeper('inner-later', [{ source: inner, readOnly: true }])).rejects.toThrow(/which a sandbox of this server has had read-write: a worker may still hold a handle to it/);
      expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
    } finally {
      for (const id of ['inner-ro', 'outer-ro', 'outer-rw', 'same-rw-1', 'same-rw-2', 'inner-later']) await backend.stop(id).catch(() => {});
      data.cleanup();
    }
  });

  // Found by an attacker (round 4): a mount target inside another mount of the
  // spec is made by bwrap through that mount's content, which is the tenant's:
  // a symlink there to /oldroot/<path> had bwrap create <path> on the host
  // (its set-up root is the host's, writable), as the worker.
  describe('a mount target inside another mount, through a symlink in its content', () => {
    const host = tempDir('procyard-nest-host-');
    chmodSync(host.dir, 0o777); // the worker may create files there: only the sandbox can refuse
    const conf = path.join(host.dir, 'config.yml');
    writeFileSync(conf, 'setting: 1\n');
    afterAll(() => host.cleanup());

    it('in the bundle (its own files): refused, and nothing is made on the host', async () => {
      const bundle = tempDir('procyard-nest-bundle-');
      chmodSync(bundle.dir, 0o755);
      const planted = path.join(host.dir, 'from-bundle');
      symlinkSync(`/oldroot${planted}`, path.join(bundle.dir, 'config.yml'));
      try {
        const err = await backend
          .spawn(appSpec('nest-bundle', 'serve', { bundlePath: bundle.dir, cmd: ['/bin/echo', 'ran'], dataMounts: [{ source: conf, target: '/tmp/app/config.yml', readOnly: true }] }))
          .then(() => null, (e: unknown) => e as Error);
        // bwrap sets the sandbox up after spawn() resolves: wait for the app's line.
        if (!err) await linesUntil(backend, 'nest-bundle', (l) => l === 'ran', 10_000);
        expect(existsSync(planted)).toBe(false);
        expect(err?.name).toBe('SpecError');
        expect(err?.message).toMatch(/^the mount target "\/tmp\/app\/config\.yml" is refused: it lies inside "\/tmp\/app", whose content is not safe to make it through: \/tmp\/app\/config\.yml is a symlink; bwrap would follow it/);
        expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
      } finally {
        await backend.stop('nest-bundle').catch(() => {});
        bundle.cleanup();
      }
    });

    it('in a data directory a worker wrote: refused, and nothing is made on the host', async () => {
      const data = tempDir('procyard-nest-data-');
      chmodSync(data.dir, 0o777);
      const planted = path.join(host.dir, 'from-data');
      try {
        await backend.spawn(
          appSpec('nest-planter', 'serve', {
            cmd: [NODE, '-e', `require('fs').symlinkSync(${JSON.stringify(`/oldroot${planted}`)}, '/data/ref'); require('fs').mkdirSync('/data/sub')`],
            dataMounts: [{ source: data.dir, target: '/data', readOnly: false }],
          }),
        );
        expect(await waitFor(() => existsSync(path.join(data.dir, 'sub')), 10_000)).toBe(true);
        await backend.stop('nest-planter');
        const spawnWith = async (id: string, source: string, target: string, outer = '/tmp/data') => {
          const err = await backend
            .spawn(appSpec(id, 'serve', { cmd: ['/bin/sh', '-c', 'echo ran; sleep 30'], dataMounts: [{ source, target: outer, readOnly: false }, { source: conf, target, readOnly: true }] }))
            .then(() => null, (e: unknown) => e as Error);
          if (!err) await linesUntil(backend, id, (l) => l === 'ran', 10_000);
          return err;
        };
        // A directory workers can write: refused whatever is in it now. Any process
        // holding an fd of it (one passed on by a stopped worker, an attacker found)
        // could swap an entry for a symlink between this check and bwrap.
        for (const target of ['/tmp/data/ref', '/tmp/data/sub/config.yml']) {
          const err = await spawnWith('nest-data', data.dir, target);
          expect(err?.name, target).toBe('SpecError');
          expect(err?.message).toMatch(/is refused: it lies inside "\/tmp\/data", whose content is not safe to make it through: \/tmp\/data is writable by anyone \(mode 0777\)/);
        }
        // The same spelled /var/run and /run (one place in the sandbox), as an attacker tried.
        const spelled = await spawnWith('nest-spelled', data.dir, '/var/run/data/ref', '/run/data');
        expect(spelled?.message).toMatch(/^the mount target "\/var\/run\/data\/ref" is refused: it lies inside "\/run\/data"/);
        expect(existsSync(planted)).toBe(false);
        // A directory no worker can change: a symlink in it is still refused (whoever owns it), a plain path is fine.
        const fixed = tempDir('procyard-nest-fixed-');
        try {
          chmodSync(fixed.dir, 0o755);
          mkdirSync(path.join(fixed.dir, 'sub'));
          symlinkSync(`/oldroot${planted}`, path.join(fixed.dir, 'ref'));
          for (const [target, outer] of [['/tmp/data/ref', '/tmp/data'], ['/tmp/data/./ref', '/tmp/data/'], ['/run/data/ref', '/var/run/data']])
            expect((await spawnWith('nest-fixed', fixed.dir, target!, outer))?.message, target).toMatch(/whose content is not safe to make it through: .*\/ref is a symlink/);
          expect(await spawnWith('nest-plain', fixed.dir, '/tmp/data/sub/config.yml')).toBeNull();
          await backend.stop('nest-plain');
        } finally {
          fixed.cleanup();
        }
        expect(existsSync(planted)).toBe(false);
        expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
      } finally {
        for (const id of ['nest-planter', 'nest-data', 'nest-spelled', 'nest-fixed', 'nest-plain']) await backend.stop(id).catch(() => {});
        data.cleanup();
      }
    });
  });

  const SYMLINK = /\/x is a symlink owned by uid 654\d\d/;
  const INSIDE = /it is inside ".*procyard-swap-\w+", which a sandbox of this server has had read-write/;
  it.each([
    // The symlink when the walk meets it; otherwise the directory, inside the swapper's read-write mount.
    [0o777, [SYMLINK, INSIDE]],
    // Sticky: each owner renames only their own entries, so a worker's own entry is refused as such.
    [0o1777, [SYMLINK, /\/x is owned by uid 654\d\d in a sticky directory others can write \(mode 1777\)/]],
  ])('nor raced in after the check: a source a running worker can swap is refused (data mode %o)', async (mode, why) => {
    const data = tempDir('procyard-swap-');
    chmodSync(data.dir, mode);
    const lineOf = async (id: string, match: RegExp) => (await linesUntil(backend, id, (l) => match.test(l), 10_000)).find((l) => match.test(l)) ?? null;
    try {
      await backend.spawn(
        appSpec('swapper', 'serve', {
          cmd: ['/usr/bin/python3', '/tmp/app/swap-dir.py', '/data', 'x'],
          bundlePath: FIXTURES,
          dataMounts: [{ source: data.dir, target: '/data', readOnly: false }],
        }),
      );
      expect(await lineOf('swapper', /^swapping$/)).toBe('swapping');
      const outcomes: string[] = [];
      for (let i = 0; i < 40 && !outcomes.includes('escaped'); i++) {
        const id = `swap-victim-${i}`;
        const spawned = await backend
          .spawn(
            appSpec(id, 'serve', {
              cmd: ['/bin/sh', '-c', 'if [ -e /hostroot/etc/passwd ]; then echo escaped; else echo contained; fi; sleep 30'],
              dataMounts: [{ source: path.join(data.dir, 'x'), target: '/hostroot', readOnly: true }],
            }),
          )
          .then(() => null, (e: unknown) => e as Error);
        if (spawned) {
          expect(spawned.name).toBe('SpecError');
          outcomes.push(spawned.message);
          continue;
        }
        outcomes.push((await lineOf(id, /^(escaped|contained)$/)) ?? 'no line');
        await backend.stop(id);
      }
      console.log(`swap: ${outcomes.length} spawns, ${outcomes.filter((o) => o === 'escaped').length} escaped, ${outcomes.filter((o) => o === 'contained').length} contained`);
      expect(outcomes).not.toContain('escaped');
      // Refused every time, whichever the worker had in place, naming the directory it can write.
      expect(outcomes.length).toBe(40);
      for (const o of outcomes) {
        expect(o).toMatch(/^the mount source ".*\/x" \(for \/hostroot\) is refused: /);
        expect(why.some((w) => w.test(o)), o).toBe(true);
      }
      // The directory's refusal was seen (the worker spends half its time with it in place).
      expect(outcomes.some((o) => why[1]!.test(o))).toBe(true);
      await backend.stop('swapper');
      expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
    } finally {
      await backend.stop('swapper').catch(() => {});
      data.cleanup();
    }
  }, 60_000);
});
