// Bad input, property-based (fast-check): WorkerSpec and BuildSpec fields and
// every native function's arguments get NUL bytes, huge argv/env, '=' in env
// keys, non-string values, negative/huge/NaN/fractional numbers, and paths
// with '..' and symlinks. Each call either works or rejects/throws an Error
// with a message; none crashes the process (the native fuzzing runs in this
// very process: a crash kills the vitest worker and fails the file), and none
// leaks a port, UID, fd or process. CI runs modest counts; PROCYARD_STRESS more.
import { chmodSync, closeSync, existsSync, fstatSync, mkdirSync, openSync, readlinkSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildSpec, WorkerSpec } from '../src/backend.js';
import { ConfigError, type Config } from '../src/config.js';
import * as native from '../src/native.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { FIXTURES, appSpec, tempDir, testConfig } from './helpers/backend.js';
import { childrenOf, isDead, openFds, waitFor } from './helpers/proc.js';

const STRESS = Boolean(process.env.PROCYARD_STRESS);
const SPEC_RUNS = STRESS ? 600 : 60;
const NATIVE_RUNS = STRESS ? 3000 : 200;
// Ports 23200-23209 (backend) and 23250-23259 (reservePort fuzzing), UIDs
// 64200-64209 belong to this file.
const PORTS: [number, number] = [23200, 23209];
const UIDS: [number, number] = [64200, 64209];
const FUZZ_PORTS: [number, number] = [23250, 23259];

let backend: ProcessBackend;
const scratch = tempDir('procyard-bad-input-');
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
let fdsAtStart = 0;

// Paths: real dirs, symlinks to them, to a file, dangling, looping, and '..' forms.
const P = {
  dir: '',
  dir2: '',
  file: '',
  linkToDir: '',
  linkToFile: '',
  dangling: '',
  loop: '',
  dotdotDir: '',
};

beforeAll(async () => {
  process.on('unhandledRejection', onUnhandled);
  chmodSync(scratch.dir, 0o755);
  P.dir = path.join(scratch.dir, 'dir');
  P.dir2 = path.join(scratch.dir, 'dir2');
  mkdirSync(P.dir, { mode: 0o777 });
  mkdirSync(P.dir2, { mode: 0o777 });
  P.file = path.join(scratch.dir, 'file');
  writeFileSync(P.file, 'x');
  P.linkToDir = path.join(scratch.dir, 'link-to-dir');
  symlinkSync(P.dir, P.linkToDir);
  P.linkToFile = path.join(scratch.dir, 'link-to-file');
  symlinkSync(P.file, P.linkToFile);
  P.dangling = path.join(scratch.dir, 'dangling');
  symlinkSync(path.join(scratch.dir, 'nowhere'), P.dangling);
  P.loop = path.join(scratch.dir, 'loop');
  symlinkSync(P.loop, P.loop);
  P.dotdotDir = path.join(scratch.dir, 'dir', '..', 'dir2', '..', 'dir');
  backend = new ProcessBackend(testConfig(PORTS, UIDS, { stopGraceMs: 1000, logLines: 50 }));
  // The first spawn loads what a backend keeps for its life (the socket hooks' programs and maps).
  await backend.spawn(appSpec('warm-up', 'serve', { cmd: ['/bin/true'] }));
  await backend.stop('warm-up');
  fdsAtStart = openFds().length;
});

afterAll(async () => {
  await backend.close();
  process.off('unhandledRejection', onUnhandled);
  scratch.cleanup();
});

// ---- generators ----

const MB = 'x'.repeat(1024 * 1024);
const HUGE_ARGV = Array.from({ length: 100_000 }, (_, i) => `a${i}`);
const BIG_ARGV = Array.from({ length: 20_000 }, () => 'abcdefghijklmnopqrstuvwxyz0123456789');

const weirdString = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 40 }),
  fc.constantFrom('', '\0', 'a\0b', '\0/bin/true', '..', '../..', '/..', '=', 'A=B', '=x', ' ', '\n', '-', '--help', '$(id)', '%s%n%n'),
  fc.constant(MB),
);
const weirdNumber = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.constantFrom(NaN, Infinity, -Infinity, -1, 0, -0, 0.5, 1.5, 2 ** 31, 2 ** 32 + 3, 2 ** 53, Number.MAX_VALUE, Number.MIN_VALUE),
);
const weirdValue = fc.oneof(
  weirdString,
  weirdNumber,
  fc.constantFrom<unknown>(null, undefined, true, false, Symbol('s'), 10n, () => 'fn', [], {}, ['a'], new Date(0)),
  fc.array(fc.string({ maxLength: 5 }), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.string({ maxLength: 5 }), { maxKeys: 3 }),
);
const hostPath = fc.oneof(
  fc.constantFrom(() => P.dir, () => P.linkToDir, () => P.linkToFile, () => P.file, () => P.dangling, () => P.loop, () => P.dotdotDir).map((f) => f()),
  fc.constantFrom('/nonexistent/procyard', 'relative/dir', '/tmp/../tmp', '/', '/proc/self'),
  weirdValue,
);
// Mount targets only under /tmp or invalid: a valid target elsewhere would be
// created on the host root (by design), which a fuzzer should not litter.
const mountTarget = fc.oneof(
  fc.string({ maxLength: 20 }).map((s) => `/tmp/${s}`),
  fc.constantFrom('/tmp/a/../../etc', '/tmp/..', 'relative', '/', '//', '/tmp/\0x', '/tmp/sub/dir', '/tmp'),
  weirdValue.filter((v) => typeof v !== 'string' || !v.startsWith('/') || v.startsWith('/tmp/')),
);
const mountEntries = fc.oneof(
  fc.array(fc.record({ source: hostPath, target: mountTarget, readOnly: fc.oneof(fc.boolean(), weirdValue) }, { requiredKeys: [] }), { maxLength: 3 }),
  weirdValue,
);
const envRecord = fc.oneof(
  fc.dictionary(fc.oneof(fc.string({ maxLength: 10 }), fc.constantFrom('A=B', '=', 'A\0B', 'PATH', 'SHINY_PORT', 'LD_PRELOAD', '1X')), fc.oneof(fc.string({ maxLength: 20 }), weirdValue), { maxKeys: 4 }),
  fc.constant({ BIG: MB }),
  fc.constant(Object.fromEntries(Array.from({ length: 70_000 }, (_, i) => [`K${i}`, 'v']))),
  weirdValue,
);
const cmdArb = fc.oneof(
  fc.array(weirdString, { maxLength: 4 }).map((rest) => ['/bin/true', ...rest]),
  fc.array(weirdValue, { maxLength: 3 }),
  fc.constantFrom(['/bin/true', ...HUGE_ARGV], ['/bin/true', ...BIG_ARGV], ['/bin/true', MB], [], ['R', '--version'], ['Rscript', '-e', '1']),
  weirdValue,
);
const workerId = fc.oneof(fc.constantFrom('bad-1', 'a.b_c-D'), fc.stringMatching(/^[A-Za-z0-9._-]{1,12}$/), weirdValue, fc.constant('x'.repeat(129)));

/**
 * Up to three fields of `fields` (none at times, so good specs run too)
 * laid over `base`.
 */
function corrupt<T extends Record<string, unknown>>(base: T, fields: { [K in string]: fc.Arbitrary<unknown> }): fc.Arbitrary<T> {
  const keys = Object.keys(fields);
  return fc
    .tuple(fc.subarray(keys, { minLength: 0, maxLength: 3 }), fc.record(fields))
    .map(([chosen, values]) => ({ ...base, ...Object.fromEntries(chosen.map((k) => [k, values[k]])) }));
}

/** A valid spec with a few of its fields replaced by bad values. */
const workerSpecArb = corrupt(
  { appId: 'app', workerId: 'bad-1', bundlePath: FIXTURES, workerMount: '/tmp/app', cmd: ['/bin/true'] } as Record<string, unknown>,
  
    {
      appId: fc.oneof(fc.constant('app'), weirdValue),
      workerId,
      cmd: cmdArb,
      bundlePath: fc.oneof(fc.constant(FIXTURES), hostPath),
      workerMount: fc.oneof(fc.constant('/tmp/app'), mountTarget),
      libraryPath: hostPath,
      libDir: hostPath,
      transferDir: hostPath,
      tokenDir: hostPath,
      rVersion: fc.oneof(weirdString, fc.constantFrom('../..', '../../usr', '4.2', '4.2.2', '/etc', '.', 'x/../..')),
      rProfilePath: hostPath,
      env: envRecord,
      labels: fc.oneof(fc.dictionary(fc.string({ maxLength: 5 }), weirdValue, { maxKeys: 3 }), weirdValue),
      dataMounts: mountEntries,
      shinyPort: weirdValue,
      cpuLimit: weirdValue,
      memoryLimit: weirdValue,
      image: weirdValue,
      runtime: weirdValue,
    },
);

// The good command outlives the call by a little if a build ever returned early.
const buildSpecArb = corrupt({ appId: 'app', bundleId: 'b1', cmd: ['/bin/sh', '-c', 'echo built; sleep 0.05'] } as Record<string, unknown>, {
      appId: fc.oneof(fc.constant('app'), weirdValue),
      bundleId: fc.oneof(fc.constant('b1'), weirdValue),
      cmd: cmdArb,
      env: fc.oneof(
        fc.array(fc.oneof(fc.constantFrom('A=B', 'A==', '=B', 'AB', 'A\0=B', 'A=\0', `BIG=${MB}`, '1A=x', 'A B=c'), weirdValue), { maxLength: 4 }),
        weirdValue,
      ),
      mounts: mountEntries,
      labels: fc.oneof(fc.dictionary(fc.string({ maxLength: 5 }), weirdValue, { maxKeys: 3 }), weirdValue),
      logWriter: fc.oneof(
        fc.constant(() => {}),
        fc.constant(() => {
          throw new Error('logWriter fails');
        }),
        weirdValue,
      ),
      rVersion: fc.oneof(weirdString, fc.constantFrom('../..', '4.2', '9.9.9')),
      image: weirdValue,
});

// ---- checks ----

/** A thrown value that is an Error with something to say. */
function expectClearError(err: unknown, call: string): void {
  expect(err, `${call} threw a non-Error: ${String(err)}`).toBeInstanceOf(Error);
  expect((err as Error).message.trim().length, `${call} threw an Error without a message`).toBeGreaterThan(0);
}

/** Live bwrap (or other) children of this process. */
function liveChildren(): number[] {
  return childrenOf(process.pid).filter((pid) => !isDead(pid));
}

async function expectNothingLeaked(): Promise<void> {
  expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  expect(await backend.listManaged()).toEqual([]);
  expect(await waitFor(() => liveChildren().length === 0, 5000)).toBe(true);
  expect(await waitFor(() => openFds().length <= fdsAtStart, 5000), `fds ${openFds().length} > ${fdsAtStart}`).toBe(true);
}

describe('WorkerSpec', () => {
  it('every spawn either works or rejects with a clear Error, leaking nothing', async () => {
    let worked = 0;
    await fc.assert(
      fc.asyncProperty(workerSpecArb, async (spec) => {
        try {
          await backend.spawn(spec as unknown as WorkerSpec);
          worked++;
          await backend.removeResource({ id: spec.workerId as string, kind: 'container', labels: {} });
        } catch (err) {
          expectClearError(err, 'spawn');
        }
        expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
      }),
      { numRuns: SPEC_RUNS },
    );
    // Not vacuous: some specs were good enough to run.
    expect(worked).toBeGreaterThan(0);
    await expectNothingLeaked();
  }, 300_000);

  it('resolves rVersion only to installs under rigBase: "../.." is not a version', async () => {
    // '/opt/R/../../bin/R' is /bin/R: a bundle must not pick a binary by path.
    for (const rVersion of ['../..', '../../usr', 'x/../..', '.', '/etc']) {
      const err = await backend
        .spawn({ appId: 'app', workerId: 'rv', bundlePath: FIXTURES, workerMount: '/tmp/app', cmd: ['R', '--version'], rVersion })
        .then(() => null, (e: Error) => e);
      if (err === null) await backend.removeResource({ id: 'rv', kind: 'container', labels: {} });
      expect(err?.message, `rVersion ${rVersion}`).toMatch(/rVersion/);
    }
    await expectNothingLeaked();
  });
});

describe('env in errors', () => {
  it('names a bad variable, never its value: a value put in the wrong place may be a secret', async () => {
    const secret = 'S3CR3T-postgres://u:hunter2@db';
    const spawned = await backend
      .spawn({ appId: 'app', workerId: 'env-key', bundlePath: FIXTURES, workerMount: '/tmp/app', cmd: ['/bin/true'], env: { [`DB=${secret}`]: 'x' } })
      .then(() => null, (e: Error) => e);
    expect(spawned?.message).toMatch(/env key "DB" followed by "=" and more \(not shown\) is not a valid variable name/);
    for (const env of [[`A=1`, secret], [`BAD KEY=${secret}`]]) {
      const built = await backend.build({ appId: 'app', bundleId: 'b', cmd: ['/bin/true'], env }).then(() => null, (e: Error) => e);
      expect(built?.message).toMatch(/env\[\d\] must be "KEY=VALUE"/);
      expect(built?.message).not.toContain('S3CR3T');
    }
    expect(spawned?.message).not.toContain('S3CR3T');
    await expectNothingLeaked();
  });
});

describe('BuildSpec', () => {
  it('every build either returns a BuildResult or rejects with a clear Error, leaking nothing', async () => {
    let built = 0;
    await fc.assert(
      fc.asyncProperty(buildSpecArb, fc.oneof(fc.constant(undefined), fc.constant({}), fc.record({ signal: weirdValue })), async (spec, opts) => {
        try {
          const result = await backend.build(spec as unknown as BuildSpec, opts as { signal?: AbortSignal });
          built++;
          expect(typeof result.success).toBe('boolean');
          expect(Number.isInteger(result.exitCode)).toBe(true);
          expect(typeof result.logs).toBe('string');
        } catch (err) {
          expectClearError(err, 'build');
        }
        // Settled means finished: no process of it may still run (its UID is back in the pool).
        expect(liveChildren(), 'a build left a process running').toEqual([]);
        expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
      }),
      { numRuns: SPEC_RUNS },
    );
    expect(built).toBeGreaterThan(0);
    await expectNothingLeaked();
  }, 300_000);
});

// ---- the native addon, fuzzed in this process ----

/** Calls fn; a throw must be a clear Error. Returns the value or undefined. */
function tryCall<T>(name: string, fn: () => T): T | undefined {
  try {
    return fn();
  } catch (err) {
    expectClearError(err, name);
    return undefined;
  }
}

async function tryAsync<T>(name: string, fn: () => Promise<T>): Promise<T | undefined> {
  let promise: Promise<T>;
  try {
    promise = fn();
  } catch (err) {
    expectClearError(err, name);
    return undefined;
  }
  try {
    return await promise;
  } catch (err) {
    expectClearError(err, name);
    return undefined;
  }
}

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

function reap(child: native.NativeChild): Promise<void> {
  return new Promise((resolve) => {
    new native.PidWatcherNative(
      child.pidfd,
      () => {
        for (const fd of [child.pidfd, child.stdout, child.stderr]) closeSync(fd);
        resolve();
      },
      true,
    );
  });
}

const fdLike = fc.oneof(weirdNumber, weirdValue, fc.constantFrom(-1, 0, 1, 2, 1 << 20, (1 << 20) + 1, 2 ** 32));
// Arguments that close, watch or signal an fd get only fds of ours or numbers
// that are no valid fd: a random valid number would hit the test runner's own
// pipes (a real caller's bug, not the addon's). Truncation of bad numbers onto
// a valid fd has its own test below.
const notAnFd = fc.oneof(
  weirdValue.filter((v) => typeof v !== 'number'),
  fc.constantFrom(-1, -3.5, 0.5, 2.5, (1 << 20) + 1, 1 << 30, NaN, Infinity, -Infinity),
);
const uidLike = fc.oneof(weirdValue, fc.constantFrom(0, 64205, 0xfffffffe, 0xffffffff, -1));
const stringArray = fc.oneof(
  fc.array(weirdString, { maxLength: 5 }),
  fc.array(weirdValue, { maxLength: 3 }),
  fc.constantFrom(HUGE_ARGV, BIG_ARGV, [MB], [], ['A=B', 'NOEQ'], ['=x'], ['A=\0']),
  weirdValue,
);

// Absolute paths under a directory that does not exist: open and mkdir fail there.
const NO_SUCH_PATHS = ['/nonexistent/procyard/tasks', '/nonexistent/procyard', 'relative/tasks', '', '/nonexistent/a\0b'];

describe('native addon', () => {
  it('spawn: bad options throw or reject with a clear Error; good ones run and are reaped', async () => {
    let ran = 0;
    await fc.assert(
      fc.asyncProperty(
        corrupt({ file: '/bin/true', argv: ['true'], env: [] } as Record<string, unknown>, {
            file: fc.oneof(fc.constantFrom('/bin/true', '/nonexistent/x', 'not-here', '/etc/passwd', '/tmp', ''), weirdValue),
            argv: stringArray,
            env: stringArray,
            uid: uidLike,
            gid: uidLike,
            fds: fc.oneof(
              fc.array(fc.record({ source: fdLike, target: fdLike }, { requiredKeys: [] }), { maxLength: 3 }),
              fc.array(fc.constant({ source: 0, target: 10 }), { minLength: 33, maxLength: 33 }),
              fc.constant([{ source: 0, target: 5 }, { source: 1, target: 5 }]),
              weirdValue,
            ),
            closeBeforeClone: fc.oneof(notAnFd, fc.constant('listener')),
            // Limits: only paths that cannot exist (a fuzzer must not write "0" into host files).
            cgroupEnter: fc.oneof(fc.array(fc.oneof(fc.constantFrom(...NO_SUCH_PATHS), weirdValue), { maxLength: 3 }), fc.constant(Array(9).fill('/nonexistent/t')), weirdValue),
            cgroupDir: fc.oneof(fc.constantFrom(...NO_SUCH_PATHS), weirdValue),
            cgroupWrites: fc.oneof(fc.array(fc.record({ path: fc.oneof(fc.constantFrom(...NO_SUCH_PATHS), weirdValue), value: weirdValue }, { requiredKeys: [] }), { maxLength: 2 }), weirdValue),
            rlimitNproc: fc.oneof(weirdNumber, weirdValue, fc.constantFrom(1, 64, 2 ** 32, 2 ** 33)),
        }),
        fc.integer({ min: FUZZ_PORTS[0], max: FUZZ_PORTS[1] }),
        async (opts, port) => {
          // A real listener to hand over: it must be closed by every call.
          let listener = -1;
          if (opts.closeBeforeClone === 'listener') {
            listener = native.reservePort(port);
            (opts as Record<string, unknown>).closeBeforeClone = listener;
          }
          const child = await tryAsync('spawn', () => native.spawnNative(opts as unknown as native.NativeSpawnOptions));
          if (child) {
            ran++;
            await reap(child);
          }
          if (listener >= 0) {
            // Closed (the number may be reused already, so ask the port).
            const again = tryCall('reservePort', () => native.reservePort(port));
            expect(again, `the listener on ${port} was not closed`).toBeDefined();
            closeSync(again!);
          }
        },
      ),
      { numRuns: NATIVE_RUNS },
    );
    expect(ran).toBeGreaterThan(0);
    expect(await waitFor(() => liveChildren().length === 0, 5000)).toBe(true);
    expect(await waitFor(() => openFds().length <= fdsAtStart, 5000)).toBe(true);
  }, 300_000);

  it('cgroupCreate and cgroupWrite: bad arguments throw or reject with a clear Error', async () => {
    const paths = fc.oneof(fc.array(fc.oneof(fc.constantFrom(...NO_SUCH_PATHS), weirdValue), { maxLength: 3 }), weirdValue);
    const writes = fc.oneof(fc.array(fc.oneof(fc.record({ path: fc.oneof(fc.constantFrom(...NO_SUCH_PATHS), weirdValue), value: weirdValue }, { requiredKeys: [] }), weirdValue), { maxLength: 2 }), weirdValue);
    await fc.assert(
      fc.asyncProperty(fc.oneof(fc.record({ dirs: paths, writes }, { requiredKeys: [] }), weirdValue), writes, async (create, write) => {
        await tryAsync('cgroupCreate', () => native.cgroupCreate(create as never));
        await tryAsync('cgroupWrite', () => native.cgroupWrite(write as never));
      }),
      { numRuns: NATIVE_RUNS },
    );
    expect(existsSync('/nonexistent')).toBe(false);
  });

  it('spawn: a closeBeforeClone that is not a valid fd number closes nothing', async () => {
    // A fractional or > 32-bit value must not be truncated onto an fd we hold.
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(0.5, 0.25, 2 ** 32, -(2 ** 32), 2 ** 33), fc.boolean(), async (offset, badArgv) => {
        const [r, w] = native.pipe();
        try {
          await tryAsync('spawn', () =>
            native.spawnNative({
              file: '/bin/true',
              argv: badArgv ? (5 as unknown as string[]) : ['true'],
              env: [],
              closeBeforeClone: r + offset,
            }),
          );
          expect(isOpen(r), `closeBeforeClone ${r} + ${offset} closed fd ${r}`).toBe(true);
        } finally {
          for (const fd of [r, w]) if (isOpen(fd)) closeSync(fd);
        }
      }),
      { numRuns: 20 },
    );
  });

  it('PidWatcher, pidfdOpen, pidfdSignal and pipe: bad arguments throw a clear Error', async () => {
    const sleeper = await native.spawnNative({ file: '/bin/sleep', argv: ['sleep', '60'], env: [] });
    const [pr, pw] = native.pipe();
    const fileFd = openSync(P.file, 'r');
    const nullFd = openSync('/dev/null', 'r');
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(notAnFd, fc.constantFrom('pipe', 'pidfd', 'file', 'devnull')),
          fc.oneof(weirdValue, fc.constant('callback')),
          weirdValue,
          fc.oneof(weirdNumber, weirdValue, fc.integer({ min: -5, max: 70 })),
          fc.oneof(weirdNumber, weirdValue, fc.constantFrom(1, process.pid, 0x7fffffff)),
          async (fd, cb, reap, sig, pid) => {
            const ours = new Map<unknown, number>([['pipe', pr], ['pidfd', sleeper.pidfd], ['file', fileFd], ['devnull', nullFd]]);
            const fdValue = ours.get(fd) ?? fd;
            const callback = cb === 'callback' ? () => {} : cb;
            const watcher = tryCall('PidWatcher', () => new native.PidWatcherNative(fdValue as number, callback as never, reap as boolean));
            if (watcher) {
              // Watching the pipe (never readable) or our sleeper (alive): stop again.
              tryCall('ref', () => watcher.ref());
              tryCall('unref', () => watcher.unref());
              watcher.close();
              watcher.close();
            }
            // Signals go to our sleeper's pidfd or to fds that are no pidfd.
            expect(typeof fdValue !== 'number' || fdValue === sleeper.pidfd || !isPidfd(fdValue)).toBe(true);
            tryCall('pidfdSignal', () => native.pidfdSignal(fdValue as number, sig as number));
            const opened = tryCall('pidfdOpen', () => native.pidfdOpen(pid as number));
            if (typeof opened === 'number') closeSync(opened);
            const fds = tryCall('pipe', () => (native.pipe as (...a: unknown[]) => [number, number])(fd, cb));
            if (fds) for (const f of fds) closeSync(f);
          },
        ),
        { numRuns: NATIVE_RUNS },
      );
      // Some signals end the sleeper early: it is ours to reap either way.
    } finally {
      native.pidfdSignal(sleeper.pidfd, 9);
      await reap(sleeper);
      for (const fd of [pr, pw, fileFd, nullFd]) closeSync(fd);
    }
    expect(await waitFor(() => openFds().length <= fdsAtStart, 5000)).toBe(true);
  }, 120_000);

  it('probes, bitset, parseStat, lock bytes, sampleTrees, reservePort and the seccomp filter: bad arguments throw a clear Error', async () => {
    await fc.assert(
      fc.asyncProperty(
        weirdValue,
        weirdNumber,
        fc.oneof(weirdString, fc.string({ maxLength: 200 }).map((s) => `1 (${s}) ${s}`), fc.constantFrom(')', '1 ()', '1 (x) R', '1 (a) b) S 0 0 0 0 0 0 0 0 0 0 5 6 0 0 0 0 0 0 7 8 9')),
        fc.oneof(
          fc.array(fc.oneof(weirdNumber, weirdValue), { maxLength: 5 }),
          fc.array(fc.constantFrom(process.pid, 1, 0x7fffffff, 999_999), { maxLength: 20 }),
          fc.constant(Array.from({ length: 10_000 }, () => 0x7ffffffe)),
          weirdValue,
        ),
        fc.oneof(weirdNumber, weirdValue, fc.integer({ min: FUZZ_PORTS[0], max: FUZZ_PORTS[1] })),
        fc.oneof(fc.record({ uid: uidLike, gid: uidLike }, { requiredKeys: [] }), weirdValue),
        async (anything, number, statLine, pids, port, creds) => {
          tryCall('probePidfd', () => (native.probePidfd as (...a: unknown[]) => unknown)(anything));
          tryCall('kernelRelease', () => (native.kernelRelease as (...a: unknown[]) => unknown)(anything));
          tryCall('builtinSeccompRules', () => (native.builtinSeccompRules as (...a: unknown[]) => unknown)(anything));
          const memfd = tryCall('builtinSeccompFilter', () => (native.builtinSeccompFilter as (...a: unknown[]) => number)(anything));
          if (typeof memfd === 'number') closeSync(memfd);
          tryCall('parseStat', () => native.parseStat(statLine as string));
          tryCall('parseStat', () => native.parseStat(anything as string));
          // Bitset: a size within reason (1 << 24 bits is 2 MiB) or a bad one.
          const size = typeof number === 'number' && number > 1 << 24 ? number % (1 << 24) : number;
          const bits = tryCall('Bitset', () => new native.Bitset(size as number));
          if (bits) {
            for (const arg of [anything, number, -1, 0, bits.size, bits.size - 1, 1.5]) {
              tryCall('alloc', () => bits.alloc(arg as number));
              tryCall('claim', () => bits.claim(arg as number));
              tryCall('release', () => bits.release(arg as number));
              tryCall('isSet', () => bits.isSet(arg as number));
            }
            expect(bits.inUse).toBeGreaterThanOrEqual(0);
            expect(bits.inUse).toBeLessThanOrEqual(bits.size);
          }
          // Lock-file claims: on a scratch file, and on fds that are not files (or not open).
          const lockFd = openSync(path.join(scratch.dir, 'fuzz.lock'), 'a+');
          try {
            for (const fdArg of [lockFd, anything, number, -1, 0x7fffffff])
              for (const offset of [number, anything, 0, 2 ** 40, 2 ** 40 + 1, -1, 1.5]) {
                const locked = tryCall('lockBytes', () => native.lockBytes(fdArg as number, offset as number, number as number));
                if (locked !== undefined) expect(typeof locked).toBe('boolean');
                tryCall('unlockBytes', () => native.unlockBytes(fdArg as number, offset as number));
              }
          } finally {
            closeSync(lockFd);
          }
          await tryAsync('sampleTrees', () => native.sampleTrees(pids as number[]));
          const held = tryCall('reservePort', () => native.reservePort(port as number));
          if (typeof held === 'number') closeSync(held);
          const probe = await tryAsync('probeUserNamespace', () => (native.probeUserNamespace as (c: unknown) => Promise<native.ProbeResult>)(creds));
          if (probe) expect(typeof probe.ok).toBe('boolean');
        },
      ),
      { numRuns: NATIVE_RUNS },
    );
    expect(await waitFor(() => liveChildren().length === 0, 5000)).toBe(true);
    expect(await waitFor(() => openFds().length <= fdsAtStart, 5000)).toBe(true);
  }, 300_000);

  it('left no unhandled rejection behind', () => {
    expect(unhandled.map(String)).toEqual([]);
  });
});

// A Config given in code is checked like a file's, in Config field names.
describe('Config', () => {
  it.each([
    [{ process: { portRangeStart: 3000, portRangeEnd: 2000 } }, 'process.portRangeStart', 'process.portRangeEnd'],
    [{ process: { portRangeEnd: 70000 } }, 'process.portRangeStart', 'within 1-65535'],
    [{ process: { workerUidStart: 0 } }, 'process.workerUidStart', 'non-root UIDs'],
    [{ process: { allocator: 'disk' as 'host' } }, 'process.allocator', '"host" or "memory"'],
    [{ process: { runtimeDir: 'relative' } }, 'process.runtimeDir', 'absolute path'],
    [{ server: { defaultMemoryLimit: '2 gigs' } }, 'server.defaultMemoryLimit', 'must be a size like'],
    [{ server: { defaultCpuLimit: -1 } }, 'server.defaultCpuLimit', 'from 0 to 4096'],
    [{ server: { defaultCpuLimit: Number.NaN } }, 'server.defaultCpuLimit', 'from 0 to 4096'],
    [{ server: { defaultMemoryLimit: '16k' } }, 'server.defaultMemoryLimit', 'or at least 4m'],
    [{ server: { defaultCpuLimit: 1e9 } }, 'server.defaultCpuLimit', 'from 0 to 4096'],
    [{ storage: { bundleWorkerPath: 'app' } }, 'storage.bundleWorkerPath', 'absolute path'],
  ] as [Config, string, string][])('rejects %j with a ConfigError naming the field', (config, key, message) => {
    const fds = openFds().length;
    let err: unknown;
    try {
      new ProcessBackend({ ...config, process: { portRangeStart: PORTS[0], portRangeEnd: PORTS[1], ...config.process } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).key).toBe(key);
    expect((err as ConfigError).message).toContain(key);
    expect((err as ConfigError).message).toContain(message);
    expect((err as ConfigError).file).toBeUndefined();
    // Checked before anything is opened.
    expect(openFds().length).toBe(fds);
  });
});

/** Whether fd is a pidfd (signalling it could hit a process that is not ours). */
function isPidfd(fd: number): boolean {
  if (!Number.isInteger(fd) || fd < 0) return false;
  try {
    return readlink(fd).includes('pidfd');
  } catch {
    return false;
  }
}

function readlink(fd: number): string {
  return readlinkSync(`/proc/self/fd/${fd}`);
}
