// ProcessBackend with real bwrap sandboxes: lifecycle, isolation, stop, logs, build.
import { spawnSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkerNotFoundError } from '../src/backend.js';
import { pidfdSignal, spawnNative } from '../src/native.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import type { WorkerExitEvent } from '../src/backend.js';
import { FIXTURES, NODE, appSpec, httpGet, tempDir, testConfig } from './helpers/backend.js';
import { childrenOf, isDead, isRoot, openFds, procStatus, treeOf, waitFor } from './helpers/proc.js';

// Ports 20100-20199 and UIDs 61100-61199 belong to this file.
const PORTS: [number, number] = [20100, 20109];
const UIDS: [number, number] = [61100, 61109];

let backend: ProcessBackend;
const exits: WorkerExitEvent[] = [];

beforeAll(() => {
  process.env.PROCYARD_SECRET = 'must-not-leak';
  backend = new ProcessBackend(testConfig(PORTS, UIDS, { tmpSizeBytes: 1024 * 1024 }));
  backend.on('exit', (e: WorkerExitEvent) => exits.push(e));
});

afterAll(async () => {
  await backend.close();
  delete process.env.PROCYARD_SECRET;
});

async function waitHealthy(id: string, timeoutMs = 10000): Promise<boolean> {
  return waitFor(() => backend.healthCheck(id, { timeoutMs: 500 }), timeoutMs, 25);
}

async function firstLogLine(id: string, match: (line: string) => boolean): Promise<string> {
  const stream = await backend.logs(id);
  try {
    for await (const line of stream) if (match(line)) return line;
  } finally {
    stream.close();
  }
  throw new Error(`worker ${id} ended without a matching line`);
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

describe('worker lifecycle', () => {
  it('serves, reports usage across the tree, stops, and frees its port and UID', async () => {
    await backend.spawn(appSpec('life-1'));
    expect(await waitHealthy('life-1')).toBe(true);
    const addr = await backend.addr('life-1');
    expect(addr).toMatch(/^127\.0\.0\.1:201\d\d$/);
    const port = Number(addr.split(':')[1]);
    const firstHello = await httpGet(addr);
    expect(firstHello).toMatch(isRoot ? /^hello from uid 6110\d\n$/ : /^hello from uid 0\n$/);

    const usage = await backend.workerResourceUsage('life-1');
    expect(usage).not.toBeNull();
    // bwrap monitor + init + node: the tree's RSS is tens of MB, its cgroup's
    // charge (where it has one; shared library pages not counted) several.
    expect(usage!.memoryUsageBytes).toBeGreaterThan(4 * 1024 * 1024);
    // The first call counts from the spawn: node's start-up is in it.
    expect(usage!.cpuPercent).toBeGreaterThan(0);
    expect(usage!.memoryLimitBytes).toBe(0);
    await httpGet(addr);
    const second = await backend.workerResourceUsage('life-1');
    expect(second!.cpuPercent).toBeGreaterThanOrEqual(0);
    expect(backend.inUse).toEqual({ ports: 1, uids: 1 });

    await backend.stop('life-1');
    expect(await backend.healthCheck('life-1')).toBe(false);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
    expect(await portIsFree(port)).toBe(true);
    await expect(backend.addr('life-1')).rejects.toThrow('worker "life-1" not found');
    expect(exits.some((e) => e.workerId === 'life-1')).toBe(true);

    // The next worker gets another UID: the one just freed goes to the back of the queue.
    await backend.spawn(appSpec('life-2'));
    const addr2 = await backend.addr('life-2');
    expect(await waitHealthy('life-2')).toBe(true);
    const secondHello = await httpGet(addr2);
    expect(secondHello).toMatch(isRoot ? /^hello from uid 6110\d\n$/ : /^hello from uid 0\n$/);
    if (isRoot) expect(secondHello).not.toBe(firstHello);
    await backend.stop('life-2');
  });

  it('keeps an exited worker listed with replayable logs until stop or removal', async () => {
    await backend.spawn(appSpec('exits', 'serve', { cmd: ['/bin/sh', '-c', 'echo one; echo two >&2; exit 4'] }));
    const stream = await backend.logs('exits');
    const lines: string[] = [];
    for await (const line of stream) lines.push(line);
    expect(lines.sort()).toEqual(['one', 'two']);
    expect(await waitFor(() => exits.some((e) => e.workerId === 'exits'), 2000)).toBe(true);
    expect(exits.find((e) => e.workerId === 'exits')).toEqual({ workerId: 'exits', code: 4, signal: null, oomKilled: false, reason: 'exited' });
    expect((await backend.listManaged()).map((r) => r.id)).toContain('exits');
    expect(await backend.healthCheck('exits')).toBe(false);
    expect(await backend.workerResourceUsage('exits')).toBeNull();
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
    const replay: string[] = [];
    for await (const line of await backend.logs('exits')) replay.push(line);
    expect(replay.sort()).toEqual(['one', 'two']);
    // An exited worker is replaced by a new spawn with its id.
    await backend.spawn(appSpec('exits', 'serve', { cmd: ['/bin/sh', '-c', 'echo three'] }));
    const third: string[] = [];
    for await (const line of await backend.logs('exits')) third.push(line);
    expect(third).toEqual(['three']);
    await backend.removeResource({ id: 'exits', kind: 'container', labels: {} });
    expect(await backend.listManaged()).toEqual([]);
  });

  it('rejects a second spawn of a running id, and unknown ids', async () => {
    await backend.spawn(appSpec('dup', 'serve', { labels: { app: 'dup' } }));
    await expect(backend.spawn(appSpec('dup'))).rejects.toThrow('worker "dup" is already running');
    // The Backend interface's fields, and what a host shows (SPEC §13).
    expect(await backend.listManaged()).toEqual([
      { id: 'dup', kind: 'container', labels: { app: 'dup' }, appId: 'test-app', state: 'running', addr: await backend.addr('dup'), startedAt: expect.any(Date) },
    ]);
    await backend.removeResource({ id: 'dup', kind: 'container', labels: {} });
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
    await expect(backend.stop('nope')).rejects.toThrow('worker "nope" not found');
    await expect(backend.logs('nope')).rejects.toThrow('worker "nope" not found');
    expect(await backend.healthCheck('nope')).toBe(false);
    expect(await backend.workerResourceUsage('nope')).toBeNull();
    await backend.removeResource({ id: 'nope', kind: 'container', labels: {} });
    // One not-found error for every call that names a worker.
    for (const call of [
      () => backend.addr('nope'),
      () => backend.logs('nope'),
      () => backend.stop('nope'),
      () => backend.updateResources('nope', 1, 1),
      () => backend.waitReady('nope'),
    ])
      await expect(call()).rejects.toBeInstanceOf(WorkerNotFoundError);
  });

  it('rejects bad specs naming the field, leaking nothing', async () => {
    const fds = openFds().length;
    const bad: [object, RegExp][] = [
      [appSpec(''), /workerId/],
      [appSpec('a/b'), /workerId/],
      [appSpec('x'.repeat(129)), /workerId/],
      [appSpec('ok', 'serve', { bundlePath: '/does/not/exist' }), /bundlePath "\/does\/not\/exist" does not exist/],
      [appSpec('ok', 'serve', { workerMount: 'relative' }), /workerMount must be an absolute path/],
      [appSpec('ok', 'serve', { env: { 'A=B': 'x' } }), /env key "A" followed by "=" and more \(not shown\) is not a valid variable name/],
      [appSpec('ok', 'serve', { cmd: ['a\0b'] }), /cmd\[0\] must not contain a NUL/],
      [appSpec('ok', 'serve', { cmd: [] }), /cmd must be a non-empty array/],
      [appSpec('ok', 'serve', { dataMounts: [{ source: '/nope', target: '/data' }] }), /dataMounts\[0\]\.source/],
      [appSpec('ok', 'serve', { cmd: ['/nonexistent-binary'] }), /execvp \/nonexistent-binary/],
    ];
    for (const [spec, message] of bad) {
      const err = await backend.spawn(spec as never).then(() => null, (e: Error) => e);
      // A program missing inside the sandbox is bwrap's to report: it exits 1.
      if (err === null) {
        const lines: string[] = [];
        for await (const line of await backend.logs('ok')) lines.push(line);
        expect(lines.join('\n')).toMatch(message);
        await backend.stop('ok');
        continue;
      }
      expect(err.message).toMatch(message);
    }
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
    expect(await backend.listManaged()).toEqual([]);
    // Pipe handles close on the loop's next turns.
    expect(await waitFor(() => openFds().length === fds, 1000)).toBe(true);
  });
});

describe('isolation', () => {
  it('gives the app a scrubbed env, its own uid, a read-only root, a capped /tmp and no privileges', async () => {
    const env = { APP_SETTING: 'on' };
    await backend.spawn(appSpec('inspect', 'inspect', { env }));
    const facts = JSON.parse(await firstLogLine('inspect', (l) => l.startsWith('{'))) as Record<string, unknown>;
    const port = (await backend.addr('inspect')).split(':')[1];
    expect(facts.env).toEqual({
      PATH: '/usr/bin:/usr/local/bin:/bin',
      HOME: '/tmp',
      TMPDIR: '/tmp',
      LANG: 'C.UTF-8',
      // No R_LIBS: no library is mounted.
      APP_SETTING: 'on',
      // Set by bwrap's --chdir.
      PWD: '/tmp',
      SHINY_PORT: port,
      SHINY_HOST: '127.0.0.1',
    });
    expect(JSON.stringify(facts)).not.toContain('must-not-leak');
    expect(facts.capEff).toBe('0000000000000000');
    expect(facts.noNewPrivs).toBe('1');
    expect(facts.writeRoot).toBe('EROFS');
    expect(facts.writeEtc).toBe('EROFS');
    expect(facts.writeBundle).toBe('EROFS');
    expect(facts.writeTmp).toBe('ok');
    expect(facts.fillTmp).toBe('ENOSPC');
    expect(facts.unshareUser).not.toBe(0);
    // Only its own processes: bwrap's init (1) and the app (2).
    expect(facts.procPids).toEqual([1, 2]);
    await backend.stop('inspect');
  });

  it.runIf(isRoot)('runs every process of the tree as the worker UID on the host', async () => {
    await backend.spawn(appSpec('uid-view'));
    expect(await waitHealthy('uid-view')).toBe(true);
    const port = Number((await backend.addr('uid-view')).split(':')[1]);
    // The bwrap monitor is our direct child (its init, below it, is bwrap too).
    const monitors = childrenOf(process.pid).filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, 'utf8').startsWith('/usr/bin/bwrap');
      } catch {
        return false;
      }
    });
    expect(monitors.length).toBe(1);
    const tree = treeOf(monitors[0]);
    expect(tree.length).toBe(3);
    const uid = Number(procStatus(tree[0]!).Uid.split(/\s+/)[0]);
    expect(uid >= UIDS[0] && uid <= UIDS[1]).toBe(true);
    for (const pid of tree) {
      const s = procStatus(pid);
      expect(s.Uid.split(/\s+/)[0]).toBe(`${uid}`);
      expect(s.Gid.split(/\s+/)[0]).toBe('65534');
    }
    expect(port).toBeGreaterThan(0);
    await backend.stop('uid-view');
    expect(await waitFor(() => tree.every(isDead), 2000)).toBe(true);
  });
});

describe('graceful stop', () => {
  it('delivers SIGTERM to the app, whose handler runs before the sandbox goes', async () => {
    const transfer = tempDir();
    chmodSync(transfer.dir, 0o777);
    try {
      await backend.spawn(appSpec('term', 'serve', { transferDir: transfer.dir }));
      expect(await waitHealthy('term')).toBe(true);
      await backend.stop('term');
      // The app exited 0 by itself (its handler's exit): no SIGKILL at the grace, however loaded the host.
      expect(exits.filter((e) => e.workerId === 'term')).toEqual([{ workerId: 'term', code: 0, signal: null, oomKilled: false, reason: 'stopped' }]);
      expect(existsSync(`${transfer.dir}/terminated`)).toBe(true);
      expect(readFileSync(`${transfer.dir}/terminated`, 'utf8')).toBe('pid 2\n');
    } finally {
      transfer.cleanup();
    }
  });

  it('kills an app that ignores SIGTERM after stopGraceMs', async () => {
    await backend.spawn(appSpec('stubborn', 'ignore-term'));
    expect(await waitHealthy('stubborn')).toBe(true);
    const started = Date.now();
    await backend.stop('stubborn');
    const took = Date.now() - started;
    // SIGKILLed (bwrap reports 128 + 9 when its child dies first, else the monitor
    // itself died of it), and not before the grace (a timer never fires early); at
    // the first grace, not a later one (the bound is the grace, not this host's speed).
    const exit = exits.filter((e) => e.workerId === 'stubborn');
    expect(exit, `after ${took} ms`).toHaveLength(1);
    const killed = [{ code: null, signal: 'SIGKILL' }, { code: 137, signal: null }];
    expect(killed, `after ${took} ms`).toContainEqual({ code: exit[0]!.code, signal: exit[0]!.signal });
    expect(took).toBeGreaterThanOrEqual(2900);
    expect(took).toBeLessThan(2 * 3000);
    expect(await backend.healthCheck('stubborn')).toBe(false);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  });

  it('shares one stop between concurrent callers and lets removeResource cut it short', async () => {
    await backend.spawn(appSpec('race', 'ignore-term'));
    expect(await waitHealthy('race')).toBe(true);
    const started = Date.now();
    const stops = [backend.stop('race'), backend.stop('race')];
    await new Promise((r) => setTimeout(r, 100));
    await backend.removeResource({ id: 'race', kind: 'container', labels: {} });
    await Promise.all(stops.map((p) => p.catch(() => {})));
    // Before the 3 s grace could have run out: the removal, not the grace, ended it.
    expect(Date.now() - started).toBeLessThan(3000);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  });
});

describe('the end of a worker', () => {
  // A SIGKILLed bwrap monitor exits at once while its init and app are still
  // tearing down; 1 GiB of touched memory makes that teardown take a while.
  it.each(['stop', 'removeResource'] as const)('%s resolves only once every process of the tree is gone', async (how) => {
    const id = `heavy-${how}`;
    await backend.spawn(appSpec(id, 'heavy'));
    expect(await waitHealthy(id, 20000)).toBe(true);
    const port = Number((await backend.addr(id)).split(':')[1]);
    const workers = (backend as unknown as { workers: Map<string, { sandbox: { pid: number } }> }).workers;
    const tree = treeOf(workers.get(id)!.sandbox.pid);
    expect(tree.length).toBeGreaterThanOrEqual(3);
    if (how === 'stop') await backend.stop(id);
    else await backend.removeResource({ id, kind: 'container', labels: {} });
    expect(tree.filter((pid) => !isDead(pid))).toEqual([]);
    expect(await portIsFree(port)).toBe(true);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  }, 30_000);
});

describe('logs', () => {
  it('splits a 200 KiB line into 64 KiB pieces and keeps reading', async () => {
    await backend.spawn(appSpec('long', 'longline'));
    const lines: string[] = [];
    const stream = await backend.logs('long');
    for await (const line of stream) {
      lines.push(line);
      if (line === 'after-long-line') break;
    }
    expect(lines.slice(0, 4).map((l) => l.length)).toEqual([65536, 65536, 65536, 200 * 1024 - 3 * 65536]);
    expect(lines[4]).toBe('after-long-line');
    expect(await waitHealthy('long')).toBe(true);
    await backend.stop('long');
  });

  it('feeds many readers at once, each from the start', async () => {
    const script = 'for i in 1 2 3 4 5; do echo line$i; sleep 0.05; done';
    await backend.spawn(appSpec('readers', 'serve', { cmd: ['/bin/sh', '-c', script] }));
    const read = async () => {
      const out: string[] = [];
      for await (const line of await backend.logs('readers')) out.push(line);
      return out;
    };
    const all = await Promise.all([read(), read(), read()]);
    for (const lines of all) expect(lines).toEqual(['line1', 'line2', 'line3', 'line4', 'line5']);
    await backend.stop('readers');
  });
});

describe('build', () => {
  it('runs a command to completion, streaming lines to logWriter', async () => {
    const seen: string[] = [];
    const result = await backend.build({
      appId: 'a',
      bundleId: 'b1',
      cmd: ['/bin/sh', '-c', 'echo building; echo warn >&2; echo $BUILD_FLAG; id -u'],
      env: ['BUILD_FLAG=yes'],
      logWriter: (line) => seen.push(line),
    });
    expect(result.success).toBe(true);
    expect(result.exitCode).toBe(0);
    const uid = seen.find((l) => /^\d+$/.test(l));
    expect(Number(uid)).toSatisfy((u: number) => (isRoot ? u >= UIDS[0] && u <= UIDS[1] : u === 0));
    expect(seen.sort()).toEqual(['building', 'warn', 'yes', uid].sort());
    expect(result.logs.split('\n').sort()).toEqual(seen.sort());
    expect(backend.inUse.uids).toBe(0);
  });

  it('reports failure with the exit code and logs', async () => {
    const result = await backend.build({ appId: 'a', bundleId: 'b2', cmd: ['/bin/sh', '-c', 'echo boom; exit 7'] });
    expect(result).toEqual({ success: false, exitCode: 7, logs: 'boom' });
  });

  it('kills the whole build tree on abort', async () => {
    const controller = new AbortController();
    const marker = tempDir();
    chmodSync(marker.dir, 0o777);
    try {
      const pending = backend.build(
        {
          appId: 'a',
          bundleId: 'b3',
          cmd: ['/bin/sh', '-c', 'sleep 30 & echo started; wait; touch /out/finished'],
          mounts: [{ source: marker.dir, target: '/tmp/out-host', readOnly: false }],
          logWriter: (line) => line === 'started' && controller.abort(),
        },
        { signal: controller.signal },
      );
      const started = Date.now();
      const result = await pending;
      expect(result.success).toBe(false);
      expect(result.exitCode).not.toBe(0);
      // Well before its `sleep 30` would have ended: the abort, not the command, ended it.
      expect(Date.now() - started).toBeLessThan(20_000);
      expect(existsSync(`${marker.dir}/finished`)).toBe(false);
      expect(backend.inUse.uids).toBe(0);
    } finally {
      marker.cleanup();
    }
  });

  it('is ended by an abort that comes while it is being set up', async () => {
    // Aborted a turn of the loop after the call: build() is still setting up
    // (claiming a UID, starting bwrap). Five times, to meet each of its steps.
    for (let i = 0; i < 5; i++) {
      const controller = new AbortController();
      const started = Date.now();
      const pending = backend.build({ appId: 'a', bundleId: 'b-early', cmd: ['/bin/sleep', '30'] }, { signal: controller.signal });
      await new Promise((r) => setTimeout(r, i));
      controller.abort();
      const result = await pending;
      expect(result.success).toBe(false);
      expect(Date.now() - started).toBeLessThan(10_000);
    }
    expect(backend.inUse.uids).toBe(0);
  });

  it('mounts what it is given: read-only when asked, else read-write', async () => {
    const dir = tempDir();
    chmodSync(dir.dir, 0o777);
    try {
      const result = await backend.build({
        appId: 'a',
        bundleId: 'b4',
        cmd: ['/bin/sh', '-c', 'echo hi > /tmp/rw/out && ! touch /tmp/ro/x 2>/dev/null && cat /tmp/rw/out'],
        mounts: [
          { source: dir.dir, target: '/tmp/rw' },
          { source: dir.dir, target: '/tmp/ro', readOnly: true },
        ],
      });
      expect(result).toMatchObject({ success: true, logs: 'hi' });
      expect(readFileSync(`${dir.dir}/out`, 'utf8')).toBe('hi\n');
    } finally {
      dir.cleanup();
    }
  });

  it('reports a pinned R version that is gone', async () => {
    const result = await backend.build({ appId: 'a', bundleId: 'b5', cmd: ['Rscript', '-e', '1'], rVersion: '3.1.9' });
    expect(result).toEqual({
      success: false,
      exitCode: 1,
      logs: 'R 3.1.9 was available at deploy time but is no longer installed',
    });
  });
});

describe.runIf(isRoot)('sandboxes orphaned during set-up', () => {
  it('are found and killed by cleanupOrphanResources', async () => {
    // bwrap's init arms its parent-death signal only after set-up: kill the
    // monitor right after exec and the init and app live on, reparented.
    const orphans: number[] = [];
    for (let attempt = 0; attempt < 5 && orphans.length === 0; attempt++) {
      const child = await spawnNative({
        file: '/usr/bin/bwrap',
        argv: ['bwrap', '--unshare-pid', '--unshare-user', '--uid', `${UIDS[1]}`, '--gid', '65534', '--die-with-parent',
          '--ro-bind', '/', '/', '--proc', '/proc', '--dev', '/dev', '--', '/bin/sleep', '30'],
        env: [],
        uid: UIDS[1],
        gid: 65534,
      });
      const init = await waitFor(() => childrenOf(child.pid).length > 0, 1000, 1).then(() => childrenOf(child.pid));
      pidfdSignal(child.pidfd, 9);
      await new Promise((r) => setTimeout(r, 50));
      for (const pid of init) if (!isDead(pid)) orphans.push(...treeOf(pid));
      for (const fd of [child.pidfd, child.stdout, child.stderr]) closeSync(fd);
    }
    expect(orphans.length).toBeGreaterThan(0);
    await backend.cleanupOrphanResources();
    expect(await waitFor(() => orphans.every(isDead), 1000)).toBe(true);
  });
});

describe('a worker_thread that owns a backend', () => {
  it('can be terminated: the server lives, and every sandbox the thread started is ended and reaped', () => {
    // Five rounds in a process of its own (an abort would take vitest's
    // worker with it): terminated once its spawns settled, or with them in
    // flight. A native job finishing during the teardown aborted the whole
    // process; its sandboxes' monitors stayed zombies; its fds drew warnings.
    const run = spawnSync(NODE, [path.join(FIXTURES, 'thread-terminate.mjs'), '24482', '24483', '65482', '65483'], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    expect(run.status, run.stderr).toBe(0);
    expect(run.stderr).toBe('');
    const rounds = JSON.parse(run.stdout) as { inFlight: boolean }[];
    expect(rounds.map(({ inFlight }) => inFlight)).toEqual([false, true, false, true, false]);
    for (const round of rounds)
      expect(round).toEqual({ inFlight: round.inFlight, monitors: round.inFlight ? 0 : 2, monitorsLeft: [], processesLeft: [] });
  }, 70_000);
});

describe('construction', () => {
  it('fails clearly when bwrap is missing or the bundle mount point is bad', () => {
    expect(() => new ProcessBackend({ process: { bwrapPath: '/nope/bwrap' } })).toThrow(
      'bwrap not found at "/nope/bwrap": install the bubblewrap package or set process.bwrapPath',
    );
    expect(() => new ProcessBackend({ storage: { bundleWorkerPath: 'relative' } })).toThrow(/absolute path/);
    expect(() => new ProcessBackend({ storage: { bundleWorkerPath: '' } })).toThrow(/absolute path/);
    expect(() => new ProcessBackend({ storage: { bundleWorkerPath: '/etc/passwd' } })).toThrow(/not a directory/);
    expect(() => new ProcessBackend({ storage: { bundleWorkerPath: '/proc/procyard/x' } })).toThrow(/cannot be created/);
  });
});

describe("the 'procyard:spawn' diagnostics channel", () => {
  it('publishes each step of a spawn in order, for that worker only, and nothing once unsubscribed', async () => {
    const { subscribe, unsubscribe } = await import('node:diagnostics_channel');
    const { SPAWN_CHANNEL } = await import('../src/process/trace.js');
    const seen: { workerId: string; step: string; at: number }[] = [];
    const onStep = (m: unknown) => seen.push(m as (typeof seen)[number]);
    subscribe(SPAWN_CHANNEL, onStep);
    const t0 = performance.now();
    try {
      await backend.spawn(appSpec('trace-1', 'serve', { cmd: ['/bin/sleep', '30'] }));
    } finally {
      unsubscribe(SPAWN_CHANNEL, onStep);
    }
    const t1 = performance.now();
    expect(seen.map((m) => m.step)).toEqual(['checked', 'cgroup', 'port', 'uid', 'options', 'cloned', 'sandbox', 'exec', 'registered']);
    expect(seen.every((m) => m.workerId === 'trace-1')).toBe(true);
    // Which way it went (SPEC §12): no warm pool here, so cold.
    expect(seen.at(-1)).toMatchObject({ step: 'registered', warm: false });
    const times = seen.map((m) => m.at);
    expect(times.every((t, i) => t >= (i === 0 ? t0 : times[i - 1]!) && t <= t1)).toBe(true);
    await backend.stop('trace-1');
    await backend.spawn(appSpec('trace-2', 'serve', { cmd: ['/bin/true'] }));
    expect(seen.some((m) => m.workerId === 'trace-2')).toBe(false);
    await backend.removeResource({ id: 'trace-2', kind: 'container', labels: {} });
  });
});
