// What an integrator needs from the API (SPEC §13, issue 23), on real
// sandboxes and real R: why a worker never got ready, why it ended, classed
// errors, updateResources in spawn's units, what listManaged() shows, and a
// snapshot of the last log lines.
// Ports 24660-24679 and UIDs 65660-65679 belong to this file.
import { afterAll, describe, expect, it } from 'vitest';
import { BackendClosedError, WorkerExistsError, type WorkerExitEvent } from '../src/backend.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { WorkerNotReadyError } from '../src/process/readiness.js';
import { bundles, HAS_SHINY, NODE, appSpec, testConfig } from './helpers/backend.js';
import { isRoot, waitFor } from './helpers/proc.js';

const made = bundles('procyard-api-');
const root = made.root; // a bundle with no app, for commands given in full
const bundle = made.make;

const backend = new ProcessBackend({ ...testConfig([24660, 24674], [65660, 65674], { stopGraceMs: 1000 }), server: { defaultCpuLimit: 1 } });
const exits: WorkerExitEvent[] = [];
backend.on('exit', (e: WorkerExitEvent) => exits.push(e));
const exitOf = async (id: string) => {
  await waitFor(() => exits.some((e) => e.workerId === id), 20_000, 20);
  return exits.find((e) => e.workerId === id);
};
afterAll(async () => {
  await backend.close();
  made.cleanup();
});

async function notReady(id: string, timeoutMs = 30_000): Promise<WorkerNotReadyError> {
  const err = await backend.waitReady(id, { timeoutMs }).then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WorkerNotReadyError);
  return err as WorkerNotReadyError;
}

describe('WorkerNotReadyError says why', () => {
  it.runIf(HAS_SHINY)("a crashing R app: its error line, its exit code, in the error and its message", async () => {
    const crash = bundle('crash', { 'app.R': 'library(shiny)\ncat("starting up\\n")\nstop("the database is not there")\n' });
    await backend.spawn({ appId: 'api', workerId: 'crash', bundlePath: crash, workerMount: '/tmp/app' });
    const err = await notReady('crash');
    expect(err.reason).toBe('exited');
    expect(err.exitCode).toBe(1);
    expect(err.signal).toBeNull();
    expect(err.oomKilled).toBe(false);
    expect(err.logTail).toContain('starting up');
    expect(err.logTail.join('\n')).toContain('the database is not there');
    expect(err.message).toMatch(/exited \(code 1\) before listening .*; its last output: .*the database is not there/);
  });

  it.runIf(HAS_SHINY && isRoot)('an app the OOM killer ends while it starts: oomKilled, in the error and the exit', async () => {
    await backend.spawn({ appId: 'api', workerId: 'oom', bundlePath: root, workerMount: '/tmp/app', cmd: [NODE, '-e', 'const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1))'], memoryLimit: '48m' });
    const err = await notReady('oom');
    expect(err.oomKilled).toBe(true);
    expect(err.message).toContain('oomKilled');
    expect(await exitOf('oom')).toMatchObject({ oomKilled: true, reason: 'oom' });
  });

  it('a timeout says the worker is still running, with what it printed', async () => {
    await backend.spawn(appSpec('quiet', 'serve', { cmd: [NODE, '-e', 'console.log("not listening yet"); setTimeout(() => {}, 60000)'] }));
    const printed = async () => {
      const lines: string[] = [];
      for await (const line of await backend.logs('quiet', { follow: false })) lines.push(line);
      return lines.length > 0;
    };
    expect(await waitFor(printed, 10_000, 20)).toBe(true);
    const err = await notReady('quiet', 100);
    expect(err.reason).toBe('timeout');
    expect(err.exitCode).toBeNull();
    expect(err.logTail).toEqual(['not listening yet']);
    expect(err.message).toContain('It is still running: stop() it, or wait longer');
    expect((await backend.listManaged()).find((w) => w.id === 'quiet')?.state).toBe('running');
    await backend.stop('quiet');
  });
});

describe("the 'exit' event's reason", () => {
  it('tells a stop from a crash, a kill and an exit of its own', async () => {
    await backend.spawn(appSpec('stopped'));
    await backend.waitReady('stopped');
    await backend.spawn(appSpec('exited', 'serve', { cmd: [NODE, '-e', 'process.exit(3)'] }));
    await backend.spawn(appSpec('killed', 'serve', { cmd: [NODE, '-e', 'process.kill(process.pid, "SIGKILL")'] }));
    await backend.spawn(appSpec('removed'));
    await backend.waitReady('removed');
    await backend.stop('stopped');
    await backend.removeResource({ id: 'removed', kind: 'container', labels: {} });
    // Its SIGTERM handler exits 0: a stop, all the same.
    expect(await exitOf('stopped')).toMatchObject({ code: 0, reason: 'stopped' });
    expect(await exitOf('removed')).toMatchObject({ reason: 'stopped' });
    expect(await exitOf('exited')).toMatchObject({ code: 3, signal: null, oomKilled: false, reason: 'exited' });
    expect(await exitOf('killed')).toMatchObject({ code: 137, reason: 'killed' });
  });
});

describe('workerResourceUsage', () => {
  it('measures CPU from the start on its first call, not 0%', async () => {
    await backend.spawn(appSpec('busy', 'serve', { cmd: [NODE, '-e', 'for (;;) {}'] }));
    await new Promise((r) => setTimeout(r, 600));
    const first = await backend.workerResourceUsage('busy');
    expect(first!.cpuPercent).toBeGreaterThan(20);
    await backend.stop('busy');
  });
});

describe('classed errors', () => {
  it('WorkerExistsError for a running id, BackendClosedError after close()', async () => {
    await backend.spawn(appSpec('twice'));
    const again = await backend.spawn(appSpec('twice')).then(() => null, (e: unknown) => e);
    expect(again).toBeInstanceOf(WorkerExistsError);
    expect((again as WorkerExistsError).workerId).toBe('twice');
    await backend.stop('twice');
    const closed = new ProcessBackend(testConfig([24675, 24679], [65675, 65679]));
    await closed.close();
    await expect(closed.spawn(appSpec('late'))).rejects.toBeInstanceOf(BackendClosedError);
    await expect(closed.build({ appId: 'a', bundleId: 'b', cmd: ['/bin/true'] })).rejects.toBeInstanceOf(BackendClosedError);
  });
});

describe.runIf(isRoot)('updateResources in spawn units', () => {
  it("takes { memoryLimit, cpuLimit } as spawn does, leaves out what it is not given, and refuses 0 and unknown fields", async () => {
    await backend.spawn(appSpec('limits', 'serve', { memoryLimit: '256m' }));
    await backend.waitReady('limits');
    await backend.updateResources('limits', { memoryLimit: '512m' });
    expect((await backend.workerResourceUsage('limits'))!.memoryLimitBytes).toBe(512 * 2 ** 20);
    await backend.updateResources('limits', { cpuLimit: 0.5 });
    expect((await backend.workerResourceUsage('limits'))!.memoryLimitBytes).toBe(512 * 2 ** 20);
    await expect(backend.updateResources('limits', { memoryLimit: '0' })).rejects.toThrow(/can change, not go/);
    await expect(backend.updateResources('limits', { memoryLimit: 'lots' })).rejects.toThrow(RangeError);
    await expect(backend.updateResources('limits', { memory: '1g' } as never)).rejects.toThrow(/unknown field "memory"/);
    // The Backend interface's form stays.
    await backend.updateResources('limits', 300 * 2 ** 20, 0);
    expect((await backend.workerResourceUsage('limits'))!.memoryLimitBytes).toBe(300 * 2 ** 20);
    await backend.stop('limits');
  });
});

describe('listManaged() and logs()', () => {
  it('lists app, state, address, start time and exit; logs give the last n lines and end when asked', async () => {
    const before = Date.now();
    await backend.spawn(appSpec('lister', 'serve', { appId: 'sales', labels: { team: 'a' }, cmd: [NODE, '-e', 'for (let i = 1; i <= 50; i++) console.log(`line ${i}`)'] }));
    await exitOf('lister');
    const entry = (await backend.listManaged()).find((w) => w.id === 'lister')!;
    expect(entry).toMatchObject({ id: 'lister', kind: 'container', labels: { team: 'a' }, appId: 'sales', state: 'exited', addr: await backend.addr('lister') });
    expect(entry.startedAt.getTime()).toBeGreaterThanOrEqual(before - 5);
    expect(entry.startedAt.getTime()).toBeLessThanOrEqual(Date.now());
    expect(entry.exit).toMatchObject({ workerId: 'lister', code: 0, reason: 'exited' });
    const read = async (opts: { tail?: number; follow?: boolean }) => {
      const lines: string[] = [];
      for await (const line of await backend.logs('lister', opts)) lines.push(line);
      return lines;
    };
    expect(await read({ tail: 3, follow: false })).toEqual(['line 48', 'line 49', 'line 50']);
    expect((await read({ follow: false })).length).toBe(50);
    expect(await read({ tail: 0, follow: false })).toEqual([]);
    await expect(backend.logs('lister', { tail: -1 })).rejects.toThrow(RangeError);
    await backend.stop('lister');
  });

  it('a snapshot of a live worker ends; a followed one goes on', async () => {
    await backend.spawn(appSpec('live', 'serve', { cmd: [NODE, '-e', 'console.log("one"); setInterval(() => console.log("tick"), 50)'] }));
    await waitFor(async () => (await backend.logs('live', { follow: false }).then(async (s) => { const l: string[] = []; for await (const x of s) l.push(x); return l; })).length >= 3, 5000, 50);
    const snapshot: string[] = [];
    for await (const line of await backend.logs('live', { tail: 2, follow: false })) snapshot.push(line);
    expect(snapshot).toHaveLength(2);
    expect(snapshot.every((l) => l === 'tick')).toBe(true);
    await backend.stop('live');
  });
});
