// Specs and configs that hurt the server rather than the sandbox (attacker
// findings, round 4): each attack runs as a server in a child process, as
// some of them killed the server outright before their fix.
import { execFile, execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import type { WorkerSpec } from '../src/backend.js';
import { ConfigError, type Config } from '../src/config.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { FIXTURES, NODE } from './helpers/backend.js';
import { isRoot } from './helpers/proc.js';

// Ports 24680-24699 and UIDs 65680-65699 belong to this file.

/** limit-server.mjs's report, and how its process ended. */
async function limitServer(ports: [number, number], uids: [number, number], how: 'spawn' | 'build', limit: string, argvMiB = 0) {
  const args = [path.join(FIXTURES, 'limit-server.mjs'), ...[...ports, ...uids].map(String), FIXTURES, how, limit, String(argvMiB)];
  // A stack limit without bound lets a process exec 6 MiB of arguments (a quarter of it, at most 6 MiB).
  const script = `ulimit -s unlimited && exec "$@"`;
  const r = await promisify(execFile)('/bin/sh', ['-c', script, 'sh', NODE, ...args], { encoding: 'utf8', timeout: 60_000 }).then(
    (out) => ({ code: 0, signal: null, stdout: out.stdout }),
    (err: { code?: number; signal?: string; stdout?: string }) => ({ code: err.code ?? null, signal: err.signal ?? null, stdout: err.stdout ?? '' }),
  );
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return { ...r, report: last.startsWith('{') ? (JSON.parse(last) as Record<string, string>) : null };
}

describe.runIf(isRoot)('a memory limit too small for the sandbox to start', () => {
  // Found by an attacker: memoryLimit "4k" (a "4m" typo, or "512" meant as
  // MiB) was accepted. The clone child, which shares the server's memory
  // until it execs bwrap, was OOM-killed in its new cgroup, and the kernel
  // kills every process sharing that memory: the server, SIGKILLed, with
  // every tenant's workers.
  it.each(['4k', '512', '16k'])('spawn with memoryLimit %s is refused with a SpecError; the server and its other workers live on', async (limit) => {
    const r = await limitServer([24680, 24684], [65680, 65684], 'spawn', limit);
    expect(r.signal, r.stdout).toBeNull();
    expect(r.report).toEqual({
      call: expect.stringMatching(/^SpecError: memoryLimit must be 0 \(no limit\) or at least 4m \(4194304 bytes\), got ".*": a sandbox cannot start under less/),
      bystander: 'running',
    });
  }, 70_000);

  it('server.defaultMemoryLimit "4k" is a ConfigError at construction, before any build or spawn', async () => {
    const r = await limitServer([24685, 24689], [65685, 65689], 'build', '4k');
    expect(r.signal, r.stdout).toBeNull();
    expect(r.report?.construct).toMatch(/^ConfigError: .*server\.defaultMemoryLimit.* must be 0 \(no limit\) or at least 4m/);
  }, 70_000);

  // Found next: with the server's stack limit raised (R's advice), a 5.8 MiB
  // cmd under a 4 MiB limit: bwrap's argv, copied as the clone child execs,
  // is charged to the new cgroup while the child still shares the server's memory.
  it('a command line that could not fit under the floor is a SpecError; the server lives on', async () => {
    const r = await limitServer([24680, 24684], [65680, 65684], 'spawn', '4m', 5.8);
    expect(r.signal, r.stdout).toBeNull();
    expect(r.report).toEqual({
      call: expect.stringMatching(/^SpecError: cmd and the mounts' paths must total at most 1 MiB \(1048576 bytes\), got 60\d{5} \(with 0 mounts/),
      bystander: 'running',
    });
  }, 70_000);

  it('a limit of 4m still starts, and one of 0 means none', async () => {
    for (const limit of ['4m', '0']) {
      const r = await limitServer([24680, 24684], [65680, 65684], 'spawn', limit);
      expect(r.report, limit).toEqual({ call: 'ok', bystander: 'running' });
    }
  }, 70_000);
});

describe('inputs an integrator passes on (attacker findings, round 4)', () => {
  const cfg = (extra: Record<string, unknown> = {}): Config => ({
    process: { portRangeStart: 24690, portRangeEnd: 24694, workerUidStart: 65690, workerUidEnd: 65694, metadataAddr: '127.0.0.1:1', ...extra },
    storage: { bundleWorkerPath: '/tmp/app' },
  });
  const spec = (id: string, extra: Partial<WorkerSpec> = {}): WorkerSpec => ({ appId: id, workerId: id, bundlePath: FIXTURES, workerMount: '/tmp/app', cmd: ['/bin/true'], ...extra });

  it('a relative host path is a SpecError naming its field (it was a bare TypeError from deep inside)', async () => {
    const b = new ProcessBackend(cfg());
    try {
      for (const [extra, field] of [
        [{ bundlePath: 'bundle' }, 'bundlePath'],
        [{ libraryPath: 'lib' }, 'libraryPath'],
        [{ transferDir: './transfer' }, 'transferDir'],
        [{ dataMounts: [{ source: 'data', target: '/data' }] }, 'dataMounts\\[0\\]\\.source'],
      ] as [Partial<WorkerSpec>, string][])
        await expect(b.spawn(spec('rel', extra))).rejects.toThrow(new RegExp(`^${field} must be an absolute host path, got "`));
      await expect(b.build({ appId: 'rel', bundleId: 'rel-1', cmd: ['/bin/true'], mounts: [{ source: 'x', target: '/x' }] })).rejects.toThrow(/^mounts\[0\]\.source must be an absolute host path/);
      expect(b.inUse).toEqual({ ports: 0, uids: 0 });
    } finally {
      await b.close();
    }
  });

  it('NaN port or UID ranges and the root group are ConfigErrors at construction', () => {
    expect(() => new ProcessBackend(cfg({ portRangeStart: NaN }))).toThrow(ConfigError);
    expect(() => new ProcessBackend(cfg({ portRangeStart: NaN }))).toThrow(/portRangeStart .* got NaN-24694/);
    expect(() => new ProcessBackend(cfg({ workerUidEnd: NaN }))).toThrow(/workerUidStart .* got 65690-NaN/);
    // Workers ran with gid 0: root's group, which many root-owned files let read or write.
    expect(() => new ProcessBackend(cfg({ workerGid: 0 }))).toThrow(/process\.workerGid must be a group other than root's \(1 to 4294967294\), got 0/);
  });

  it('a CPU limit past what the kernel takes is a SpecError, not a cgroup error naming host paths', async () => {
    const b = new ProcessBackend(cfg());
    try {
      const err = await b.spawn(spec('cpus', { cpuLimit: 1e9 })).then(() => null, (e: Error) => e);
      expect(err?.name).toBe('SpecError');
      expect(err?.message).toBe('cpuLimit must be at most 4096 CPUs, got 1000000000');
    } finally {
      await b.close();
    }
  });

  it.runIf(isRoot)('a seccompProfile that is missing, or a FIFO, is a ConfigError naming it; a FIFO no longer stops the event loop for good', async () => {
    const fifo = path.join(os.tmpdir(), `procyard-fifo-${process.pid}`);
    execFileSync('mkfifo', [fifo]);
    try {
      // In a child: before the fix the FIFO's open blocked the server's only thread until a writer came.
      const script =
        `import { ProcessBackend } from ${JSON.stringify(path.join(FIXTURES, '..', '..', 'dist', 'index.js'))};\n` +
        `const results = [];\n` +
        `for (const profile of ['/nonexistent/procyard.bpf', ${JSON.stringify(fifo)}]) {\n` +
        `  const b = new ProcessBackend({ process: { portRangeStart: 24695, portRangeEnd: 24699, workerUidStart: 65695, workerUidEnd: 65699, metadataAddr: '127.0.0.1:1', seccompProfile: profile }, storage: { bundleWorkerPath: '/tmp/app' } });\n` +
        `  const ticks = setInterval(() => {}, 10);\n` +
        `  const err = await b.spawn({ appId: 'p', workerId: 'p', bundlePath: ${JSON.stringify(FIXTURES)}, workerMount: '/tmp/app', cmd: ['/bin/true'] }).then(() => null, (e) => e);\n` +
        `  clearInterval(ticks);\n` +
        `  results.push(err && err.name + ': ' + err.message, JSON.stringify(b.inUse));\n` +
        `  await b.close();\n` +
        `}\n` +
        `console.log(JSON.stringify(results));\n`;
      const { stdout } = await promisify(execFile)(NODE, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 20_000 });
      expect(JSON.parse(stdout.trim().split('\n').pop()!)).toEqual([
        'ConfigError: process.seccompProfile "/nonexistent/procyard.bpf" cannot be opened (ENOENT): give a compiled BPF program file, "builtin" or "" (none)',
        '{"ports":0,"uids":0}',
        `ConfigError: process.seccompProfile "${fifo}" is not a regular file: give a compiled BPF program file, "builtin" or "" (none)`,
        '{"ports":0,"uids":0}',
      ]);
    } finally {
      rmSync(fifo, { force: true });
    }
  }, 30_000);
});
