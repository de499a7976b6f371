// The native core against real processes: spawn, exit watching, credentials,
// parent death, fd and signal hygiene, probes, bitset, sampler, ports.
import { execFileSync, spawn as cpSpawn } from 'node:child_process';
import { closeSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import {
  Bitset,
  clockTicksPerSecond,
  kernelRelease,
  parseStat,
  pidfdSignal,
  PidWatcherNative,
  pipe,
  probePidfd,
  probeUserNamespace,
  reservePort,
  sampleTrees,
  spawnNative,
  spawnStart,
  pidfdOpen,
  type ExitStatus,
  type NativeChild,
} from '../src/native.js';
import { fdTarget, isDead, isRoot, openFds, procEnviron, procState, procStatus, waitFor } from './helpers/proc.js';

// Ports 20000-20099 and UIDs 61000-61099 belong to this file.
const UID = 61000;
const GID = 65534;

function waitExit(child: NativeChild): Promise<ExitStatus> {
  return new Promise((resolve) => new PidWatcherNative(child.pidfd, resolve, true));
}

function closeAll(child: NativeChild): void {
  for (const fd of [child.pidfd, child.stdout, child.stderr]) closeSync(fd);
}

function readAll(fd: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = new net.Socket({ fd, readable: true, writable: false });
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (text += d));
    socket.on('close', () => resolve(text));
  });
}

async function run(file: string, argv: string[], extra: Partial<Parameters<typeof spawnNative>[0]> = {}) {
  const child = await spawnNative({ file, argv, env: ['PATH=/usr/bin:/bin'], ...extra });
  const [status, stdout, stderr] = await Promise.all([waitExit(child), readAll(child.stdout), readAll(child.stderr)]);
  closeSync(child.pidfd);
  return { status, stdout, stderr, pid: child.pid };
}

describe('spawn and exit', () => {
  it('reports exit codes and signals', async () => {
    expect((await run('/bin/true', ['true'])).status).toEqual({ code: 0, signal: null });
    expect((await run('/bin/sh', ['sh', '-c', 'exit 3'])).status).toEqual({ code: 3, signal: null });
    expect((await run('/bin/sh', ['sh', '-c', 'kill -TERM $$'])).status).toEqual({ code: null, signal: 'SIGTERM' });
  });

  it('delivers stdout and stderr on separate pipes', async () => {
    const r = await run('/bin/sh', ['sh', '-c', 'echo out; echo err >&2']);
    expect(r.stdout).toBe('out\n');
    expect(r.stderr).toBe('err\n');
  });

  it('rejects a missing program with ENOENT and its path, and leaks no fd', async () => {
    const before = openFds().length;
    const err = await spawnNative({ file: '/nope/missing', argv: ['x'], env: [] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/^execve\(\/nope\/missing\): ENOENT/);
    expect(err).toMatchObject({ code: 'ENOENT', syscall: 'execve', path: '/nope/missing' });
    expect(openFds().length).toBe(before);
  });

  it('names the failing step for a program that is not executable', async () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'procyard-'));
    const file = path.join(dir, 'not-exec');
    writeFileSync(file, '#!/bin/sh\n', { mode: 0o644 });
    // Root may exec any file with an x bit; none here, so EACCES even for root.
    const err = await spawnNative({ file, argv: ['x'], env: [] }).catch((e: Error) => e);
    expect((err as Error).message).toBe(`execve(${file}): EACCES (Permission denied)`);
    rmSync(dir, { recursive: true });
  });

  it('rejects bad arguments with a TypeError naming them', () => {
    expect(() => spawnNative({ file: '/bin/true', argv: ['a\0b'], env: [] })).toThrow(/argv\[0\] must not contain a NUL/);
    expect(() => spawnNative({ file: '/bin/true', argv: ['x'], env: ['NOEQUALS'] })).toThrow(/env\[0\] must be KEY=VALUE/);
    expect(() => spawnNative({ file: '/bin/true', argv: [], env: [] })).toThrow(/argv must hold/);
    expect(() => spawnNative({ file: '/bin/true', argv: ['x'], env: [], uid: 1 } as never)).toThrow(/together/);
  });

  it('signals by pidfd and reports when the process is gone', async () => {
    const child = await spawnNative({ file: '/bin/sleep', argv: ['sleep', '30'], env: [] });
    const exit = waitExit(child);
    expect(pidfdSignal(child.pidfd, 9)).toBe(true);
    expect(await exit).toEqual({ code: null, signal: 'SIGKILL' });
    expect(pidfdSignal(child.pidfd, 9)).toBe(false);
    closeAll(child);
  });

  it('gives the child default signal handling, only the fds asked for, and exactly the env given', async () => {
    const [r, w] = pipe();
    const child = await spawnNative({
      file: '/bin/sleep',
      argv: ['sleep', '30'],
      env: ['ONLY=this', 'PATH=/bin'],
      fds: [{ source: w, target: 7 }],
    });
    try {
      // Node ignores SIGPIPE; an ignored disposition would survive exec.
      expect(process.listenerCount('SIGPIPE')).toBeGreaterThanOrEqual(0);
      expect(procStatus(child.pid).SigIgn).toBe('0000000000000000');
      expect(procStatus(child.pid).SigBlk).toBe('0000000000000000');
      // spawn() resolves inside execve: the new program's loader then opens
      // ld.so.cache and libc as fd 3 for a moment. A leaked fd would stay, so
      // wait for the program to settle (sleeping), then judge.
      await waitFor(() => procState(child.pid) === 'S' && openFds(child.pid).join() === '0,1,2,7', 2000, 1);
      expect(openFds(child.pid)).toEqual([0, 1, 2, 7]);
      expect(fdTarget(child.pid, 0)).toBe('/dev/null');
      expect(fdTarget(child.pid, 7)).toBe(fdTarget(process.pid, w));
      // The vfork parent wakes inside execve, before the kernel records where
      // the new environment lives: give exec a moment to finish.
      await waitFor(() => procEnviron(child.pid).length > 0, 1000, 1);
      expect(procEnviron(child.pid)).toEqual(['ONLY=this', 'PATH=/bin']);
      // A new session: its own session id.
      const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      expect(Number(fields[3])).toBe(child.pid);
    } finally {
      pidfdSignal(child.pidfd, 9);
      await waitExit(child);
      closeAll(child);
      closeSync(r);
      closeSync(w);
    }
  });
});

describe('exit watcher and the event loop', () => {
  const fixture = fileURLToPath(new URL('./fixtures/watch-ref.mjs', import.meta.url));
  const runFixture = (mode: string) => {
    const started = Date.now();
    const out = execFileSync(process.execPath, [fixture, mode], { encoding: 'utf8' });
    return { out: out.trim(), ms: Date.now() - started };
  };

  it('keeps Node alive until the child exits when ref\'d (the default)', () => {
    const r = runFixture('ref');
    expect(r.out).toBe('{"code":0,"signal":null}');
    expect(r.ms).toBeGreaterThanOrEqual(1000);
  });

  it('lets Node exit while the child runs when unref\'d', () => {
    const r = runFixture('unref');
    // Nothing printed: Node never saw the exit. Well under the child's 30 s: it did not wait for it.
    expect(r.out).toBe('');
    expect(r.ms).toBeLessThan(20_000);
  });
});

describe.runIf(isRoot)('credentials (root)', () => {
  it('runs the child as the given uid/gid from the host view, with no supplementary groups', async () => {
    const child = await spawnNative({ file: '/bin/sleep', argv: ['sleep', '30'], env: [], uid: UID, gid: GID });
    try {
      const status = procStatus(child.pid);
      expect(status.Uid.split(/\s+/)).toEqual([`${UID}`, `${UID}`, `${UID}`, `${UID}`]);
      expect(status.Gid.split(/\s+/)).toEqual([`${GID}`, `${GID}`, `${GID}`, `${GID}`]);
      expect(status.Groups).toBe('');
    } finally {
      pidfdSignal(child.pidfd, 9);
      await waitExit(child);
      closeAll(child);
    }
  });

  it('lets bwrap write its uid map after the credential drop (the dumpable step)', async () => {
    const r = await run(
      '/usr/bin/bwrap',
      ['bwrap', '--unshare-user', '--uid', `${UID}`, '--gid', `${GID}`, '--ro-bind', '/', '/', '--', '/usr/bin/id', '-u'],
      { uid: UID, gid: GID },
    );
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(`${UID}`);
    expect(r.status.code).toBe(0);
  });

});

describe('parent death', () => {
  const fixture = fileURLToPath(new URL('./fixtures/parent-death.mjs', import.meta.url));

  for (const mode of isRoot ? ['creds', 'plain'] : ['plain']) {
    it(`kills the whole sandbox within 1 s of a SIGKILL to the parent (${mode})`, async () => {
      const parent = cpSpawn(process.execPath, [fixture, mode], { stdio: ['ignore', 'pipe', 'inherit'] });
      const pids = await new Promise<number[]>((resolve, reject) => {
        let text = '';
        parent.stdout.on('data', (d: Buffer) => {
          text += d;
          if (text.includes('\n')) resolve(JSON.parse(text) as number[]);
        });
        parent.once('exit', () => reject(new Error('fixture exited early')));
      });
      expect(pids.length).toBeGreaterThanOrEqual(3);
      expect(pids.every((p) => !isDead(p))).toBe(true);
      if (mode === 'creds') expect(procStatus(pids[0]).Uid.split(/\s+/)[0]).toBe(`${UID + 10}`);
      parent.kill('SIGKILL');
      expect(await waitFor(() => pids.every(isDead), 1000, 10)).toBe(true);
    });
  }
});

describe('bwrap status fd', () => {
  it('reports a child-pid that is a live process of the tree, the parent of the command', async () => {
    const [r, w] = pipe();
    const child = await spawnNative({
      file: '/usr/bin/bwrap',
      argv: ['bwrap', '--unshare-pid', '--unshare-user', '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev',
        '--json-status-fd', '5', '--', '/bin/sleep', '30'],
      env: ['PATH=/usr/bin:/bin'],
      fds: [{ source: w, target: 5 }],
    });
    closeSync(w);
    const socket = new net.Socket({ fd: r, readable: true, writable: false });
    const text = await new Promise<string>((resolve) => {
      let t = '';
      socket.on('data', (d: Buffer) => {
        t += d;
        if (t.includes('child-pid')) resolve(t);
      });
    });
    // With --unshare-pid, child-pid is bwrap's init (pid 1 inside); the
    // command is its child (measured on bwrap 0.8).
    const initPid = Number(/"child-pid"\s*:\s*(\d+)/.exec(text)?.[1]);
    expect(await waitFor(async () => (await sampleTrees([child.pid]))[0].pids.length === 3, 2000)).toBe(true);
    const [tree] = await sampleTrees([child.pid]);
    expect(tree.pids).toEqual([child.pid, initPid, tree.pids[2]]);
    expect(procStatus(tree.pids[2]).PPid).toBe(`${initPid}`);
    const cmdline = () => readFileSync(`/proc/${tree.pids[2]}/cmdline`, 'utf8').split('\0')[0];
    expect(await waitFor(() => cmdline() === '/bin/sleep', 2000)).toBe(true);
    pidfdSignal(child.pidfd, 9);
    await waitExit(child);
    socket.destroy();
    closeAll(child);
  });
});

describe('probes', () => {
  it('creates a user namespace for real (and as a worker uid when root)', async () => {
    const plain = await probeUserNamespace();
    expect(plain).toMatchObject({ ok: true, errno: 0 });
    if (isRoot) expect(await probeUserNamespace({ uid: UID, gid: GID })).toMatchObject({ ok: true });
  });

  it('fails, naming the step, where user namespaces are denied', async () => {
    // Inside a sandbox made with --disable-userns, no further namespace may be
    // created: the probe must see that, as it would see AppArmor or seccomp.
    const nativeJs = path.resolve('dist/native.js');
    const code = `import(${JSON.stringify(nativeJs)}).then(m => m.probeUserNamespace()).then(r => console.log(JSON.stringify(r)))`;
    const r = await run('/usr/bin/bwrap', ['bwrap', '--unshare-user', '--disable-userns', '--unshare-pid',
      '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', '--', process.execPath, '-e', code]);
    expect(r.stderr).toBe('');
    const probe = JSON.parse(r.stdout) as { ok: boolean; code: string; detail: string };
    expect(probe.ok).toBe(false);
    expect(probe.detail).toMatch(/^unshare\(CLONE_NEWUSER\|CLONE_NEWNS\): E[A-Z]+/);
  });

  it('reports pidfd support and the kernel release', () => {
    expect(probePidfd()).toMatchObject({ ok: true });
    expect(kernelRelease()).toBe(readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim());
    expect(clockTicksPerSecond).toBeGreaterThan(0);
  });
});

describe('bitset', () => {
  it('hands out the lowest free index, reuses released ones and reports exhaustion', () => {
    const bits = new Bitset(130);
    const got = Array.from({ length: 130 }, () => bits.alloc());
    expect(got).toEqual(Array.from({ length: 130 }, (_, i) => i));
    expect(bits.alloc()).toBe(-1);
    expect(bits.inUse).toBe(130);
    expect(bits.release(64)).toBe(true);
    expect(bits.release(64)).toBe(false);
    expect(bits.release(3)).toBe(true);
    expect(bits.inUse).toBe(128);
    expect(bits.alloc()).toBe(3);
    expect(bits.alloc()).toBe(64);
    expect(bits.alloc()).toBe(-1);
  });

  it('allocates from an offset and claims explicitly', () => {
    const bits = new Bitset(10);
    expect(bits.alloc(5)).toBe(5);
    expect(bits.claim(6)).toBe(true);
    expect(bits.claim(6)).toBe(false);
    expect(bits.alloc(5)).toBe(7);
    expect(bits.alloc(10)).toBe(-1);
    expect(bits.isSet(6)).toBe(true);
    expect(() => bits.release(10)).toThrow(RangeError);
    expect(() => new Bitset(0)).toThrow(RangeError);
  });
});

describe('sampler', () => {
  it('sums RSS over a shell and its two sleep children and lists their pids', async () => {
    const child = await spawnNative({
      file: '/bin/sh',
      argv: ['sh', '-c', 'sleep 30 & sleep 30 & wait'],
      env: ['PATH=/usr/bin:/bin'],
    });
    try {
      // Wait until both forks have exec'd sleep: a fork's RSS changes at exec.
      const settled = async () => {
        const [t] = await sampleTrees([child.pid]);
        return t.pids.length === 3 && t.pids.slice(1).every((p) => readFileSync(`/proc/${p}/comm`, 'utf8') === 'sleep\n');
      };
      expect(await waitFor(settled, 2000)).toBe(true);
      await new Promise((r) => setTimeout(r, 20));
      const [tree] = await sampleTrees([child.pid]);
      let expected = 0;
      for (const pid of tree.pids) expected += Number(procStatus(pid).VmRSS.split(' ')[0]) * 1024;
      expect(tree.alive).toBe(true);
      // Same counters as VmRSS; allow for pages touched between the two reads.
      expect(Math.abs(tree.rssBytes - expected)).toBeLessThan(expected * 0.2);
      expect(tree.rssBytes).toBeGreaterThan(0);
      const [gone] = await sampleTrees([2 ** 22 + 7]);
      expect(gone).toEqual({ alive: false, rssBytes: 0, ticks: 0, pids: [] });
    } finally {
      pidfdSignal(child.pidfd, 9);
      await waitExit(child);
      closeAll(child);
    }
  });

  it('parses a stat line whose command name holds spaces and parentheses', () => {
    const line = '4242 (my (odd) name) x) R 17 4242 4242 0 -1 4194560 1 0 0 0 150 25 0 0 20 0 1 0 9876 1000 321 18446744073709551615';
    expect(parseStat(line)).toEqual({ state: 'R', ppid: 17, utime: 150, stime: 25, starttime: 9876, rssPages: 321 });
    expect(parseStat('garbage')).toBeNull();
  });
});

describe('port reservation', () => {
  it('fails with EADDRINUSE on a port held by someone else', async () => {
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(20010, '127.0.0.1', r));
    try {
      expect(() => reservePort(20010)).toThrow(expect.objectContaining({ code: 'EADDRINUSE' }));
    } finally {
      server.close();
    }
  });

  it('keeps a reserved port from others until its fd is closed', async () => {
    const fd = reservePort(20011);
    const tryListen = () =>
      new Promise<boolean>((resolve) => {
        const s = net.createServer();
        s.once('error', () => resolve(false));
        s.listen(20011, '127.0.0.1', () => s.close(() => resolve(true)));
      });
    expect(await tryListen()).toBe(false);
    closeSync(fd);
    expect(await tryListen()).toBe(true);
  });

  it('closes the listener inside the spawn call (closeBeforeClone)', async () => {
    const fd = reservePort(20012);
    const r = await run('/bin/true', ['true'], { closeBeforeClone: fd });
    expect(r.status.code).toBe(0);
    expect(() => closeSync(fd)).toThrow(/EBADF/);
    closeSync(reservePort(20012));
  });
});

describe('spawn in one call, watched on the loop (spawnStart)', () => {
  it('hands the child and its fds over at once, and settles ready once it has exec\'d', async () => {
    const child = spawnStart({ file: '/bin/sh', argv: ['sh', '-c', 'echo started'], env: [] });
    // The pidfd names the child already, before the loop has run.
    expect(child.pid).toBeGreaterThan(0);
    expect(procState(child.pid)).not.toBeNull();
    const exited = waitExit(child);
    await child.ready;
    const [status, out] = await Promise.all([exited, readAll(child.stdout), readAll(child.stderr)]);
    closeSync(child.pidfd);
    expect(status).toEqual({ code: 0, signal: null });
    expect(out).toBe('started\n');
  });

  it('rejects ready naming the failed step; the caller\'s watcher collects the 127 and no fd is left', async () => {
    const before = openFds().length;
    const child = spawnStart({ file: '/nope/missing', argv: ['missing'], env: [] });
    const exited = waitExit(child);
    await expect(child.ready).rejects.toMatchObject({ code: 'ENOENT', syscall: 'execve', path: '/nope/missing' });
    expect(await exited).toEqual({ code: 127, signal: null });
    await Promise.all([readAll(child.stdout), readAll(child.stderr)]);
    closeSync(child.pidfd);
    expect(openFds().length).toBe(before);
  });

  it('checks paths before anything else, naming the one that failed and leaking nothing', async () => {
    const before = openFds().length;
    const [listener] = [reservePort(20050)];
    const checkPaths = [
      { path: '/', directory: true },
      { path: '/etc/hostname', directory: true },
    ];
    const options = { file: '/bin/true', argv: ['true'], env: [], checkPaths, closeBeforeClone: listener };
    expect(() => spawnStart(options)).toThrow(expect.objectContaining({ syscall: 'S_ISDIR', pathIndex: 1, code: 'ENOTDIR' }));
    // closeBeforeClone was closed all the same: the port is free again.
    closeSync(reservePort(20050));
    await expect(spawnNative({ ...options, checkPaths: [{ path: '/no/such/dir', directory: false }] })).rejects.toMatchObject({
      syscall: 'stat',
      code: 'ENOENT',
      pathIndex: 0,
      path: '/no/such/dir',
    });
    expect(openFds().length).toBe(before);
  });

  it('gives the child data fds holding exactly the bytes given, small (a pipe) and past a pipe\'s buffer (a memfd)', async () => {
    const small = Buffer.from('a\0b\0c\0');
    const large = Buffer.alloc(200 * 1024, 'x');
    large.write('END', large.length - 3);
    const { status, stdout } = await run('/bin/sh', ['sh', '-c', 'wc -c <&5; wc -c <&6; tail -c 3 <&7'], {
      data: [
        { data: small, target: 5 },
        { data: large, target: 6 },
        { data: large, target: 7 },
      ],
    });
    expect(status.code).toBe(0);
    expect(stdout.split('\n').slice(0, 3)).toEqual([`${small.length}`, `${large.length}`, 'END']);
  });

  it('runs 40 spawns in flight at once, each child on its own stack', async () => {
    const children = await Promise.all(
      Array.from({ length: 40 }, (_, i) => run('/bin/sh', ['sh', '-c', `echo ${i}`])),
    );
    expect(children.map((c) => c.stdout)).toEqual(Array.from({ length: 40 }, (_, i) => `${i}\n`));
    expect(children.every((c) => c.status.code === 0)).toBe(true);
  });

  it('ties the parent-death signal to the JS thread that spawned: a worker_thread\'s children die with it', async () => {
    const addon = fileURLToPath(new URL('../build/Release/procyard.node', import.meta.url));
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const native = require(workerData);
      native.spawn({ file: '/bin/sleep', argv: ['sleep', '30'], env: [] }).then((c) => parentPort.postMessage(c.pid));
      // The thread lives until terminate(): with nothing left to do it would end (and its child with it) at once.
      setInterval(() => {}, 60000);
    `;
    const worker = new Worker(code, { eval: true, workerData: addon });
    const pid = await new Promise<number>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    expect(isDead(pid)).toBe(false);
    await worker.terminate();
    expect(await waitFor(() => isDead(pid), 2000, 10)).toBe(true);
    // It was reparented to this process: collect it (unless something else has).
    let pidfd = -1;
    try {
      pidfd = pidfdOpen(pid);
    } catch {
      return;
    }
    await new Promise((resolve) => new PidWatcherNative(pidfd, resolve, true));
    closeSync(pidfd);
  });

  it('survives a worker_thread terminated with spawns in flight and children watched (no open handle left to abort on)', async () => {
    const addon = fileURLToPath(new URL('../build/Release/procyard.node', import.meta.url));
    const code = `
      const { workerData, parentPort } = require('node:worker_threads');
      const native = require(workerData);
      native.spawn({ file: '/bin/sleep', argv: ['sleep', '30'], env: [] }).then((c) => {
        new native.PidWatcher(c.pidfd, () => {}, true);
        for (let i = 0; i < 10; i++) native.spawn({ file: '/bin/sleep', argv: ['sleep', '30'], env: [] }).catch(() => {});
        parentPort.postMessage(c.pid);
      });
      setInterval(() => {}, 60000);
    `;
    for (let round = 0; round < 3; round++) {
      const worker = new Worker(code, { eval: true, workerData: addon });
      const pid = await new Promise<number>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      // Before this test, Node aborted the whole process here ("uv_loop_close() while having open handles").
      await worker.terminate();
      expect(await waitFor(() => isDead(pid), 2000, 10)).toBe(true);
    }
  });
});
