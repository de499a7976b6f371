// mountInject against real bwrap sandboxes: host directories put into a
// running sandbox's mount namespace, seen from inside as a cold bind would be.
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mountInject, type NativeInjectMount } from '../src/native.js';
import type { MountEntry } from '../src/backend.js';
import { BASE_ENV } from '../src/process/bwrap.js';
import { startSandbox, type Sandbox } from '../src/process/sandbox.js';
import { PYTHON } from './helpers/net.js';
import { isRoot } from './helpers/proc.js';

// UIDs 65620-65629 belong to this file.
const GID = 65534;
const UID_RO = 65620;
const UID_RW = 65621;
const UID_HOST_PATH = 65622;
const UID_IDLE = 65623;
const UID_COLD = 65624;
const UID_DEAD = 65625;
const UID_TIMING = 65626;

// The sandboxed command: waits (at most 20 s, every 20 ms) for a path the
// injection makes appear, then prints one JSON object per line and exits.
const SCRIPT = String.raw`
import errno, json, os, sys, time
def out(**kw): print(json.dumps(kw), flush=True)
def wait(p):
    for _ in range(1000):
        if os.path.exists(p): return
        time.sleep(0.02)
    out(timeout=p); sys.exit(1)
def mountinfo(target):
    with open('/proc/self/mountinfo') as f:
        for line in f:
            x = line.split()
            if x[4] == target:
                sep = x.index('-')
                return {'options': x[5], 'optional': x[6:sep], 'fstype': x[sep + 1], 'superOptions': x[sep + 3]}
    return None
def attempt(fn):
    try:
        fn()
        return 'ok'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
def read(p):
    with open(p) as f: return f.read()
def write(p, data):
    with open(p, 'w') as f: f.write(data)
mode, target = sys.argv[1], sys.argv[2]
if mode == 'ro':
    wait(target + '/hello.txt')
    out(read=read(target + '/hello.txt'))
    out(write=attempt(lambda: write(target + '/new.txt', 'no')))
    out(mount=mountinfo(target))
elif mode == 'mountinfo':
    out(mount=mountinfo(target))
elif mode == 'rw':
    wait(target + '/marker')
    out(write=attempt(lambda: write(target + '/written.txt', 'from the sandbox')))
    st = os.stat(os.path.dirname(target))
    out(parent={'uid': st.st_uid, 'gid': st.st_gid, 'mode': st.st_mode & 0o7777})
elif mode == 'read':
    wait(target + '/hello.txt')
    out(read=read(target + '/hello.txt'), mount=mountinfo(target))
elif mode == 'many':
    count = int(sys.argv[3])
    wait('%s%d/hello.txt' % (target, count - 1))
    out(seen=[os.path.exists('%s%d/hello.txt' % (target, i)) for i in range(count)])
else:
    wait(target)
`;

interface Run {
  sandbox: Sandbox;
  lines: string[];
  /** Host pid of the sandboxed python. */
  pid: number;
}

const runs: Sandbox[] = [];
const tempDirs: string[] = [];
const owner = (uid: number) => ({ uid, gid: GID });

/** A host directory the sandbox UIDs can read (mkdtemp makes 0700). */
function hostDir(parent = tmpdir()): string {
  const dir = mkdtempSync(path.join(parent, 'procyard-inject-'));
  chmodSync(dir, 0o755);
  tempDirs.push(dir);
  return dir;
}

async function start(uid: number, args: string[], mounts: MountEntry[] = []): Promise<Run> {
  const lines: string[] = [];
  const sandbox = await startSandbox({
    bwrapPath: '/usr/bin/bwrap',
    plan: { uid, gid: GID, tmpSizeBytes: 1 << 20, mounts, cmd: [PYTHON, '-c', SCRIPT, ...args] },
    seccompProfile: '',
    env: Object.entries(BASE_ENV).map(([k, v]) => `${k}=${v}`),
    hostCredentials: true,
    onLine: (line) => lines.push(line),
  });
  runs.push(sandbox);
  const pid = await sandbox.appPid;
  if (pid === null) throw new Error(`the sandbox never started its command: ${lines.join(' | ')}`);
  return { sandbox, lines, pid };
}

/** What the command printed, merged, once it has exited (killed after 25 s). */
async function report(run: Run): Promise<Record<string, unknown>> {
  const killer = setTimeout(() => void run.sandbox.kill(), 25_000);
  await run.sandbox.exited;
  clearTimeout(killer);
  const out: Record<string, unknown> = {};
  for (const line of run.lines) if (line.startsWith('{')) Object.assign(out, JSON.parse(line));
  if ('timeout' in out) throw new Error(`the sandbox waited in vain for ${String(out.timeout)}: ${run.lines.join(' | ')}`);
  return out;
}

function hostMountPoints(): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined);
}

const fdCount = () => readdirSync('/proc/self/fd').length;

describe.runIf(isRoot)('mountInject', () => {
  let content: string; // a directory holding hello.txt

  beforeAll(async () => {
    content = hostDir();
    writeFileSync(path.join(content, 'hello.txt'), 'from the host');
    chmodSync(path.join(content, 'hello.txt'), 0o644);
  });

  afterAll(async () => {
    await Promise.all(runs.map(async (s) => {
      await s.kill();
      await s.exited;
    }));
    for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  });

  it('a read-only injection reads, refuses writes with EROFS, and has the options of a cold --ro-bind', async () => {
    const run = await start(UID_RO, ['ro', '/tmp/inj']);
    await mountInject(run.pid, [{ source: content, target: '/tmp/inj', readOnly: true }], owner(UID_RO));
    const seen = await report(run);
    expect(seen.read).toBe('from the host');
    expect(seen.write).toBe('EROFS');
    expect(readdirSync(content)).toEqual(['hello.txt']);

    const cold = await report(await start(UID_COLD, ['mountinfo', '/tmp/inj'], [{ source: content, target: '/tmp/inj', readOnly: true }]));
    const mount = seen.mount as { options: string };
    expect(mount.options.split(',')).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
    expect(cold.mount).not.toBeNull();
    expect(mount).toEqual(cold.mount);
  });

  it('a read-write injection makes the missing directories, owned by the sandbox, and writes reach the host', async () => {
    const dir = hostDir();
    chownSync(dir, UID_RW, GID);
    writeFileSync(path.join(dir, 'marker'), '');
    const run = await start(UID_RW, ['rw', '/tmp/rw/deep']);
    await mountInject(run.pid, [{ source: dir, target: '/tmp/rw/deep', readOnly: false }], owner(UID_RW));
    const seen = await report(run);
    expect(seen.write).toBe('ok');
    expect(seen.parent).toEqual({ uid: UID_RW, gid: GID, mode: 0o755 });
    expect(readFileSync(path.join(dir, 'written.txt'), 'utf8')).toBe('from the sandbox');
    expect(statSync(path.join(dir, 'written.txt')).uid).toBe(UID_RW);
  });

  it('over an existing host directory, the mount is the sandbox\'s alone', async () => {
    const target = hostDir('/var/tmp');
    const run = await start(UID_HOST_PATH, ['read', target]);
    await mountInject(run.pid, [{ source: content, target, readOnly: true }], owner(UID_HOST_PATH));
    const seen = await report(run);
    expect(seen.read).toBe('from the host');
    expect((seen.mount as { options: string }).options.split(',')).toEqual(expect.arrayContaining(['ro', 'nosuid', 'nodev']));
    expect(readdirSync(target)).toEqual([]);
    expect(hostMountPoints()).not.toContain(target);
  });

  it('fails naming the step, the path and the mount, and leaks no fd', async () => {
    const idle = await start(UID_IDLE, ['idle', '/tmp/never']);
    const dead = await start(UID_DEAD, ['idle', '/tmp/never']);
    await dead.sandbox.kill();
    await dead.sandbox.exited;
    const missing = path.join(content, 'missing');
    const before = fdCount();

    // The second tree fails after the first is open.
    await expect(
      mountInject(idle.pid, [
        { source: content, target: '/tmp/err0', readOnly: true },
        { source: missing, target: '/tmp/err1', readOnly: true },
      ], owner(UID_IDLE)),
    ).rejects.toMatchObject({ code: 'ENOENT', syscall: 'open_tree', path: missing, mount: 1 });
    await expect(mountInject(idle.pid, [{ source: missing, target: '/tmp/err1', readOnly: true }], owner(UID_IDLE))).rejects.toMatchObject({
      code: 'ENOENT',
      syscall: 'open_tree',
      mount: 0,
    });
    // Inside the sandbox, after the trees and the pidfd are open: the host's / is read-only there.
    await expect(
      mountInject(idle.pid, [
        { source: content, target: '/tmp/err2', readOnly: true },
        { source: content, target: '/usr/procyard-inject-nope/x', readOnly: true },
      ], owner(UID_IDLE)),
    ).rejects.toMatchObject({ code: 'EROFS', syscall: 'mkdir', path: '/usr/procyard-inject-nope', mount: 1 });
    expect(existsSync('/usr/procyard-inject-nope')).toBe(false);
    // A source is reached as the worker, as bwrap reaches a cold worker's: not through a 0700 directory of root's.
    const locked = mkdtempSync(path.join(tmpdir(), 'procyard-inject-locked-'));
    chmodSync(locked, 0o700);
    mkdirSync(path.join(locked, 'inner'), { mode: 0o755 });
    try {
      await expect(mountInject(idle.pid, [{ source: path.join(locked, 'inner'), target: '/tmp/err3', readOnly: true }], owner(UID_IDLE))).rejects.toMatchObject({
        code: 'EACCES',
        syscall: 'open_tree',
        mount: 0,
      });
    } finally {
      rmSync(locked, { recursive: true, force: true });
    }
    const gone = await mountInject(dead.pid, [{ source: content, target: '/tmp/x', readOnly: true }], owner(UID_DEAD)).then(
      () => null,
      (err: NodeJS.ErrnoException) => err,
    );
    expect(gone).toBeInstanceOf(Error);
    expect(['ESRCH', 'ENOENT']).toContain(gone?.code);
    expect(['pidfd_open', 'setns']).toContain(gone?.syscall);

    const bad = (target: string) => () => mountInject(idle.pid, [{ source: content, target, readOnly: true }], owner(UID_IDLE));
    for (const target of ['tmp/x', '/tmp/../etc', '/tmp/./x', '/tmp/x/', '/', '/tmp//x'])
      expect(bad(target), target).toThrow(TypeError);
    expect(() => mountInject(idle.pid, [{ source: 'relative', target: '/tmp/x', readOnly: true }], owner(UID_IDLE))).toThrow(TypeError);
    expect(() => mountInject(idle.pid, [{ source: content, target: '/tmp/x', readOnly: 1 } as unknown as NativeInjectMount], owner(UID_IDLE))).toThrow(
      /mounts\[0\]\.readOnly/,
    );
    expect(() => mountInject(0, [], owner(UID_IDLE))).toThrow(RangeError);
    expect(() => mountInject(idle.pid, [], { uid: 2 ** 32 - 1, gid: GID })).toThrow(/owner\.uid/);
    expect(() => mountInject(idle.pid, Array(65).fill({ source: content, target: '/tmp/x', readOnly: true }), owner(UID_IDLE))).toThrow(RangeError);
    expect(fdCount()).toBe(before);
    await idle.sandbox.kill();
  });

  it('twenty injections into one sandbox (the p50 is logged)', async () => {
    const run = await start(UID_TIMING, ['many', '/tmp/t', '20']);
    const times: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      await mountInject(run.pid, [{ source: content, target: `/tmp/t${i}`, readOnly: true }], owner(UID_TIMING));
      times.push(performance.now() - t0);
    }
    expect((await report(run)).seen).toEqual(Array(20).fill(true));
    times.sort((a, b) => a - b);
    console.log(`mountInject p50 over 20 injections: ${((times[9]! + times[10]!) / 2).toFixed(3)} ms (min ${times[0]!.toFixed(3)}, max ${times[19]!.toFixed(3)})`);
  });
});

// The bad targets are refused before anything touches the system: no root needed.
describe('mountInject arguments', () => {
  it('throws a TypeError for a relative or unnormalized target', () => {
    expect(() => mountInject(1, [{ source: '/tmp', target: 'x', readOnly: true }], { uid: 1, gid: 1 })).toThrow(/mounts\[0\]\.target/);
    expect(() => mountInject(1, [{ source: '/tmp', target: '/a/..', readOnly: true }], { uid: 1, gid: 1 })).toThrow(TypeError);
    expect(() => mountInject(1, 'nope' as unknown as NativeInjectMount[], { uid: 1, gid: 1 })).toThrow(/mounts must be an array/);
  });
});
