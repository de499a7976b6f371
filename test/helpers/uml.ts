// A second kernel for the tests: Debian's User-Mode Linux (package
// user-mode-linux) booted over the host's own root (hostfs), running one
// node script as its init's child. The script reports by writing JSON to the
// file named in $PROCYARD_UML_RESULT; UML's console is kept for diagnosis.
// Inside: proc, sysfs and (unless asked not to) cgroup2 at /sys/fs/cgroup,
// loopback up, the host's /tmp as it is. Each boot takes ~3 s; a spawn
// inside ~130 ms (UML traps every syscall), so keep what runs there small.
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';

export const UML_KERNEL = '/usr/bin/linux.uml';

/** Why UML cannot run here, or null when it can. */
export function umlUnavailable(): string | null {
  if (process.platform !== 'linux' || process.arch !== 'x64')
    return `Debian's User-Mode Linux runs on x86_64 Linux only (this is ${process.platform}/${process.arch})`;
  if (!existsSync(UML_KERNEL)) return `${UML_KERNEL} is absent: apt-get install user-mode-linux`;
  if (process.getuid?.() !== 0) return 'the UML suites run as root (hostfs over /, root inside)';
  return null;
}

export interface UmlOptions {
  /** Absolute path of the node script to run inside. */
  script: string;
  args?: string[];
  /** Extra environment for the script (the rest is a minimal PATH/HOME). */
  env?: Record<string, string>;
  /** Mount cgroup2 at /sys/fs/cgroup before the script starts. Default true. */
  cgroup2?: boolean;
  /** UML's memory. Default '3G'. */
  memory?: string;
  /** The whole boot, script and halt. Default 120 s; the kernel is killed after it. */
  timeoutMs?: number;
}

export interface UmlRun<T> {
  /** What the script wrote to $PROCYARD_UML_RESULT, parsed; null when it wrote nothing. */
  result: T | null;
  /** The script's exit code inside; null when it never finished. */
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** The tail of UML's console (boot messages, kernel warnings). */
  console: string;
  timedOut: boolean;
  ms: number;
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const readOr = (file: string, fallback = '') => {
  try {
    return readFileSync(file, 'utf8');
  } catch {
    return fallback;
  }
};

/** Boots UML, runs the script inside, halts; never rejects for what happens inside. */
export async function runInUml<T = unknown>(opts: UmlOptions): Promise<UmlRun<T>> {
  const unavailable = umlUnavailable();
  if (unavailable) throw new Error(unavailable);
  const dir = mkdtempSync(path.join(tmpdir(), 'procyard-uml-'));
  chmodSync(dir, 0o755);
  const out = (name: string) => path.join(dir, name);
  const env = {
    PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
    HOME: '/root',
    PROCYARD_UML_RESULT: out('result.json'),
    ...opts.env,
  };
  const init = [
    '#!/bin/sh',
    'mount -t proc proc /proc',
    'mount -t sysfs sysfs /sys',
    ...(opts.cgroup2 === false ? [] : ['mount -t cgroup2 none /sys/fs/cgroup']),
    'ip link set lo up',
    `cd ${quote(process.cwd())}`,
    `env -i ${Object.entries(env).map(([k, v]) => quote(`${k}=${v}`)).join(' ')} ` +
      `${quote(process.execPath)} ${[opts.script, ...(opts.args ?? [])].map(quote).join(' ')} ` +
      `>${quote(out('stdout'))} 2>${quote(out('stderr'))}`,
    `echo $? >${quote(out('rc'))}`,
    'halt -f',
    '',
  ].join('\n');
  writeFileSync(out('init.sh'), init, { mode: 0o755 });

  const started = performance.now();
  // Its own process group: UML runs its guest's processes as host processes,
  // and a timeout must take them all.
  const kernel = spawn(
    UML_KERNEL,
    [`mem=${opts.memory ?? '3G'}`, 'rootfstype=hostfs', 'rootflags=/', 'rw', `init=${out('init.sh')}`, 'con=null', 'con0=fd:0,fd:1'],
    { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
  );
  let consoleText = '';
  const keep = (chunk: Buffer) => {
    consoleText = (consoleText + chunk.toString('utf8')).slice(-20_000);
  };
  kernel.stdout.on('data', keep);
  kernel.stderr.on('data', keep);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-kernel.pid!, 'SIGKILL');
    } catch {
      // already gone
    }
  }, opts.timeoutMs ?? 120_000);
  await new Promise<void>((resolve) => kernel.once('close', () => resolve()));
  clearTimeout(timer);
  // Whatever of the guest may still linger (it should not after halt -f).
  try {
    process.kill(-kernel.pid!, 'SIGKILL');
  } catch {
    // gone
  }

  const rc = readOr(out('rc')).trim();
  const resultText = readOr(out('result.json'));
  const run: UmlRun<T> = {
    result: resultText ? (JSON.parse(resultText) as T) : null,
    exitCode: rc === '' ? null : Number(rc),
    stdout: readOr(out('stdout')),
    stderr: readOr(out('stderr')),
    console: consoleText.slice(-4000),
    timedOut,
    ms: performance.now() - started,
  };
  rmSync(dir, { recursive: true, force: true });
  return run;
}

/** What a UML case script reports: facts, and a verdict per named case. */
export interface UmlCases {
  facts: Record<string, unknown>;
  cases: Record<string, { ok: boolean; detail: unknown; ms?: number }>;
}

/**
 * A suite over one UML boot: runs `script` once (before all), then one test
 * that it ran to its end and reported exactly `cases`, and one test per case
 * reading its verdict. Skipped, with the reason, where UML cannot run.
 */
export function describeUmlCases(title: string, cases: readonly string[], opts: UmlOptions): void {
  const unavailable = umlUnavailable();
  let run: UmlRun<UmlCases> | undefined;
  beforeAll(async () => {
    if (unavailable) return;
    run = await runInUml<UmlCases>(opts);
    console.log(`UML: ${Math.round(run.ms)} ms, ${JSON.stringify(run.result?.facts)}`);
  }, (opts.timeoutMs ?? 120_000) + 10_000);

  describe.skipIf(unavailable)(`${title}${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
    it('boots, runs the script to its end and reports', () => {
      const diagnosis = `exit ${run?.exitCode}, timed out ${run?.timedOut}\nstderr: ${run?.stderr.slice(-3000)}\nconsole: ${run?.console.slice(-1500)}`;
      expect(run?.result, diagnosis).not.toBeNull();
      expect(run?.exitCode, diagnosis).toBe(0);
      expect(Object.keys(run!.result!.cases).sort()).toEqual([...cases].sort());
    });

    it.each(cases)('%s', (name) => {
      const verdict = run?.result?.cases[name];
      expect(verdict, `no verdict; stderr: ${run?.stderr.slice(-2000)}`).toBeDefined();
      expect(verdict!.ok, String(verdict!.detail)).toBe(true);
    });
  });
}
