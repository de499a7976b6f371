// The CLI as a new user meets it (issue 14): config typos, UIDs shared
// between concurrent `procyard run`s, commands that cannot start, the port
// file, [storage] bundle_worker_path, --version, TOML names in errors.
// Ports 24300-24319 and UIDs 65300-65319 belong to this file; loopback only.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { isDead, isRoot, procStatus } from './helpers/proc.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'cli.js');
const FIXTURES = path.join(ROOT, 'test', 'fixtures');
const dir = mkdtempSync(path.join(os.tmpdir(), 'procyard-cli-run-'));
chmodSync(dir, 0o755);
const children: ChildProcess[] = [];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number | string }).code as number) : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}

let n = 0;
function configFile(text: string): string {
  const p = path.join(dir, `config-${n++}.toml`);
  writeFileSync(p, text, { mode: 0o644 });
  return p;
}

function config(ports: [number, number], uids: [number, number], extra = ''): string {
  return configFile(`[process]
metadata_addr = "127.0.0.1:1"
port_range_start = ${ports[0]}
port_range_end = ${ports[1]}
worker_uid_range_start = ${uids[0]}
worker_uid_range_end = ${uids[1]}
stop_grace_ms = 2000
${extra}
[storage]
bundle_worker_path = "/tmp/app"
`);
}

/** A `procyard run` in the background, its output collected. */
function background(args: string[]): { child: ChildProcess; out: () => string; err: () => string; exited: Promise<number | null> } {
  const child = spawn(process.execPath, [CLI, 'run', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  let err = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, out: () => out, err: () => err, exited };
}

async function until<T>(what: string, fn: () => T | undefined | null | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Live host processes running as a UID in [lo, hi]. */
function liveAs(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const uid = Number(procStatus(Number(name)).Uid!.split(/\s+/)[0]);
      if (uid >= lo && uid <= hi && !isDead(Number(name))) out.push(Number(name));
    } catch {
      // gone
    }
  }
  return out;
}

afterAll(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('procyard --version', () => {
  it('prints the package version', async () => {
    const { version } = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    for (const flag of ['--version', '-V']) {
      const r = await cli([flag]);
      expect(r.code).toBe(0);
      expect(r.stdout.trim()).toBe(version);
    }
  });
});

describe('a config typo', () => {
  it('in a section name is exit 2 naming the file and [process], and starts nothing', async () => {
    // The typo that used to run workers without their seccomp filter.
    const cfg = configFile('[procss]\nseccomp_profile = "builtin"\n');
    for (const args of [['preflight', '--config', cfg], ['run', '--config', cfg, '--bundle', FIXTURES, '--', '/bin/echo', 'ran']]) {
      const r = await cli(args);
      expect(r.code).toBe(2);
      expect(r.stderr).toContain('unknown section [procss]');
      expect(r.stderr).toContain(cfg);
      expect(r.stderr).toContain('did you mean [process]?');
      expect(r.stdout).not.toContain('ran');
    }
  });

  it('in a key of another section is exit 2 with the nearest key', async () => {
    const cfg = configFile('[server]\ndefault_memory_lmit = "2g"\n');
    const r = await cli(['preflight', '--config', cfg]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('unknown key "default_memory_lmit" in [server]');
    expect(r.stderr).toContain('did you mean "default_memory_limit"?');
  });

  it('names TOML keys in errors, never the JS fields', async () => {
    const cases: [string, string][] = [
      ['[process]\nport_range_start = 3000\nport_range_end = 2000\n', 'process.port_range_start and process.port_range_end'],
      ['[server]\ndefault_cpu_limit = -1\n', 'server.default_cpu_limit'],
      ['[server]\ndefault_memory_limit = "lots"\n', 'server.default_memory_limit'],
      [`[process]\nbwrap_path = "${dir}/no-bwrap"\n`, 'set process.bwrap_path'],
    ];
    for (const [text, name] of cases) {
      const r = await cli(['run', '--config', configFile(text), '--bundle', FIXTURES, '--', '/bin/true']);
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toContain(name);
      expect(r.stderr).not.toMatch(/portRange|bwrapPath|defaultCpuLimit|defaultMemoryLimit/);
    }
  });
});

describe('procyard run', () => {
  it('exits 127 for a command the sandbox cannot find: no "started", no port file', async () => {
    const cfg = config([24300, 24304], [65300, 65304]);
    const cases: [string, string][] = [
      ['no-such-cmd', 'not found in the sandbox\'s PATH'],
      ['/tmp/app/no-such-file', 'is not an executable file'],
      ['./relative', 'give an absolute path'],
    ];
    for (const [program, why] of cases) {
      const portFile = path.join(dir, `port-${program.replace(/\W/g, '')}`);
      const r = await cli(['run', '--config', cfg, '--bundle', FIXTURES, '--port-file', portFile, '--', program, 'arg']);
      expect(r.code, r.stderr).toBe(127);
      expect(r.stderr).toContain('cannot start the worker');
      expect(r.stderr).toContain(why);
      expect(r.stderr).not.toContain('started');
      expect(existsSync(portFile)).toBe(false);
    }
  });

  it('exits 127 when bwrap itself cannot exec the command (found on the host, not runnable inside)', async () => {
    const bundle = mkdtempSync(path.join(dir, 'bad-interp-'));
    chmodSync(bundle, 0o755);
    writeFileSync(path.join(bundle, 'run.sh'), '#!/nonexistent/interpreter\n', { mode: 0o755 });
    const portFile = path.join(dir, 'port-bad-interp');
    const r = await cli(['run', '--config', config([24300, 24304], [65300, 65304]), '--bundle', bundle, '--port-file', portFile, '--', '/tmp/app/run.sh']);
    expect(r.code, r.stderr).toBe(127);
    expect(r.stdout).toContain('bwrap: execvp /tmp/app/run.sh');
    expect(r.stderr).toContain('cannot start the worker');
    expect(r.stderr).not.toContain('started');
    expect(existsSync(portFile)).toBe(false);
  });

  it('writes the port file once the worker listens, and removes it at exit', async () => {
    const cfg = config([24305, 24309], [65305, 65309]);
    // Stopped by SIGINT.
    const portFile = path.join(dir, 'port-sigint');
    const run = background(['--config', cfg, '--bundle', FIXTURES, '--port-file', portFile, '--', process.execPath, '/tmp/app/app.mjs', 'serve']);
    const port = await until('the port file', () => existsSync(portFile) && Number(readFileSync(portFile, 'utf8').trim()));
    // Written only once it listens: the first request already answers.
    expect(await (await fetch(`http://127.0.0.1:${port}/`)).text()).toMatch(/^hello from uid/);
    expect(run.err()).toContain(`started; address 127.0.0.1:${port}`);
    run.child.kill('SIGINT');
    expect(await run.exited).toBe(0);
    expect(existsSync(portFile)).toBe(false);

    // Exits on its own after listening.
    const portFile2 = path.join(dir, 'port-own-exit');
    const r = await cli([
      'run', '--config', cfg, '--bundle', FIXTURES, '--port-file', portFile2, '--', process.execPath, '-e',
      "const s = require('http').createServer().listen(+process.env.SHINY_PORT, process.env.SHINY_HOST, () => setTimeout(() => process.exit(5), 300))",
    ]);
    expect(r.code, r.stderr).toBe(5);
    expect(r.stderr).toContain('started; address');
    expect(existsSync(portFile2)).toBe(false);
  });

  it("prints its own status where the app cannot: the app's forged status line stays on stdout, with its output", async () => {
    const cfg = config([24305, 24309], [65305, 65309]);
    const forged = 'procyard: worker procyard-run-1 started; address 127.0.0.1:1 (bundle /x at /y)';
    const r = await cli([
      'run', '--config', cfg, '--bundle', FIXTURES, '--', process.execPath, '-e',
      `console.log(${JSON.stringify(forged)}); console.error(${JSON.stringify(forged)});` +
        "require('http').createServer().listen(+process.env.SHINY_PORT, process.env.SHINY_HOST, () => setTimeout(() => process.exit(3), 300))",
    ]);
    expect(r.code, r.stderr).toBe(3);
    const status = r.stderr.split('\n').filter((l) => l.includes('started; address'));
    expect(status).toHaveLength(1);
    expect(status[0]).toMatch(/^procyard: worker procyard-run-\d+ started; address 127\.0\.0\.1:2430[5-9] /);
    expect(r.stdout.split('\n').filter((l) => l === forged)).toHaveLength(2);
  });

  it('stops the worker gracefully when the reader of its output goes away (`| head`)', async () => {
    const cfg = config([24305, 24309], [65305, 65309]);
    const transfer = mkdtempSync(path.join(dir, 'head-'));
    chmodSync(transfer, 0o777);
    const app = 'trap "echo ran > /transfer/term; exit 0" TERM; while :; do echo line; sleep 0.01; done';
    const run = background(['--config', cfg, '--bundle', FIXTURES, '--transfer', transfer, '--', '/bin/sh', '-c', app]);
    // As `head -2` does: two lines read, then the pipe's read end closed.
    await until('two lines', () => run.out().split('\n').filter((l) => l === 'line').length >= 2);
    run.child.stdout!.destroy();
    // The CLI died on the write error (EPIPE), leaving the app no SIGTERM.
    expect(await Promise.race([run.exited, new Promise((r) => setTimeout(() => r('still running'), 15_000))])).toBe(0);
    expect(run.err()).toContain('stdout closed: stopping worker');
    expect(run.err()).not.toMatch(/EPIPE|Unhandled/);
    expect(readFileSync(path.join(transfer, 'term'), 'utf8')).toBe('ran\n');
  });

  it.runIf(isRoot)("writes the port file into the worker's own directory without following a link the worker planted", async () => {
    const cfg = config([24305, 24309], [65305, 65309]);
    const transfer = mkdtempSync(path.join(dir, 'transfer-'));
    chmodSync(transfer, 0o777); // written by the worker UID
    const victim = path.join(dir, 'root-owned');
    writeFileSync(victim, 'root data\n', { mode: 0o644 });
    // The worker learns the CLI's pid, plants port.<pid>.tmp -> victim, then listens.
    const app = `const fs = require('fs');
      const until = Date.now() + 10000;
      (function plant() {
        if (!fs.existsSync('/transfer/cli-pid')) return Date.now() < until && setTimeout(plant, 10);
        const pid = fs.readFileSync('/transfer/cli-pid', 'utf8').trim();
        fs.symlinkSync(process.env.VICTIM, '/transfer/port.' + pid + '.tmp');
        fs.symlinkSync(process.env.VICTIM, '/transfer/port.tmp');
        require('http').createServer((q, s) => s.end('x')).listen(+process.env.SHINY_PORT, process.env.SHINY_HOST);
      })();`;
    const portFile = path.join(transfer, 'port');
    const run = background([
      '--config', cfg, '--bundle', FIXTURES, '--transfer', transfer, '--env', `VICTIM=${victim}`, '--port-file', portFile, '--', process.execPath, '-e', app,
    ]);
    writeFileSync(path.join(transfer, 'cli-pid'), String(run.child.pid));
    const port = await until('the port file', () => existsSync(portFile) && Number(readFileSync(portFile, 'utf8').trim()));
    expect(port).toBeGreaterThanOrEqual(24305);
    expect(readFileSync(victim, 'utf8')).toBe('root data\n');
    run.child.kill('SIGINT');
    expect(await run.exited).toBe(0);
    expect(readFileSync(victim, 'utf8')).toBe('root data\n');
  });

  it.runIf(isRoot)('writes and removes the port file in the directory given, even when the worker swaps it for a link', async () => {
    const cfg = config([24305, 24309], [65305, 65309]);
    const transfer = mkdtempSync(path.join(dir, 'transfer-'));
    chmodSync(transfer, 0o777);
    mkdirSync(path.join(transfer, 'sub'));
    // A root-only directory with a root file of the port file's name.
    const vault = mkdtempSync(path.join(dir, 'vault-'));
    chmodSync(vault, 0o700);
    writeFileSync(path.join(vault, 'port'), 'root data\n', { mode: 0o600 });
    // Before it listens, the worker moves sub away and puts a link to the vault in its place.
    const app = `const fs = require('fs');
      fs.renameSync('/transfer/sub', '/transfer/sub-away');
      fs.symlinkSync(process.env.VAULT, '/transfer/sub');
      require('http').createServer((q, s) => s.end('x')).listen(+process.env.SHINY_PORT, process.env.SHINY_HOST);`;
    const portFile = path.join(transfer, 'sub', 'port');
    const run = background([
      '--config', cfg, '--bundle', FIXTURES, '--transfer', transfer, '--env', `VAULT=${vault}`, '--port-file', portFile, '--', process.execPath, '-e', app,
    ]);
    const written = path.join(transfer, 'sub-away', 'port');
    const port = await until('the port file', () => existsSync(written) && Number(readFileSync(written, 'utf8').trim()));
    expect(port).toBeGreaterThanOrEqual(24305);
    expect(readFileSync(path.join(vault, 'port'), 'utf8')).toBe('root data\n');
    // SIGHUP (the terminal closed) stops it as SIGINT does, and the port file goes.
    run.child.kill('SIGHUP');
    expect(await run.exited).toBe(0);
    expect(existsSync(written)).toBe(false);
    expect(readFileSync(path.join(vault, 'port'), 'utf8')).toBe('root data\n');
  });

  it('mounts the bundle at [storage] bundle_worker_path when --mount is not given', async () => {
    const cfg = configFile(`[process]
port_range_start = 24310
port_range_end = 24314
worker_uid_range_start = 65310
worker_uid_range_end = 65314
[storage]
bundle_worker_path = "/tmp/bundle-from-config"
`);
    const r = await cli(['run', '--config', cfg, '--bundle', FIXTURES, '--', '/bin/sh', '-c', 'test -f /tmp/bundle-from-config/app.mjs && echo found-at-config-path']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('found-at-config-path');
    // --mount still wins.
    const r2 = await cli(['run', '--config', cfg, '--bundle', FIXTURES, '--mount', '/tmp/elsewhere', '--', '/bin/sh', '-c', 'test -f /tmp/elsewhere/app.mjs && echo found-at-mount']);
    expect(r2.stdout).toContain('found-at-mount');
  });

  // Fails with one in-memory allocator per process: both ran as the first UID.
  it.runIf(isRoot)('two at once get different UIDs; when one is SIGKILLed its UID is free at once for a third', async () => {
    // Two UIDs only: the third run can start only if the killed run's claim is gone.
    const uids: [number, number] = [65315, 65316];
    const cfg = config([24315, 24319], uids);
    const script = 'echo "uid=$(id -u)"; exec sleep 60';
    const uidOf = async (r: ReturnType<typeof background>) =>
      Number((await until('the worker to print its uid', () => /uid=(\d+)/.exec(r.out())))[1]);

    const a = background(['--config', cfg, '--bundle', FIXTURES, '--', '/bin/sh', '-c', script]);
    const b = background(['--config', cfg, '--bundle', FIXTURES, '--', '/bin/sh', '-c', script]);
    const [uidA, uidB] = await Promise.all([uidOf(a), uidOf(b)]);
    expect(uidA).not.toBe(uidB);
    expect([uidA, uidB].sort()).toEqual([...uids]);

    // SIGKILL: no cleanup runs; the kernel drops its locks, and parent-death ends its worker.
    a.child.kill('SIGKILL');
    await a.exited;
    const c = background(['--config', cfg, '--bundle', FIXTURES, '--', '/bin/sh', '-c', script]);
    const uidC = await uidOf(c);
    expect(uidC).not.toBe(uidB);
    expect(uidC).toBe(uidA);
    // b's worker still runs as its own UID, untouched.
    expect(liveAs(uidB, uidB).length).toBeGreaterThan(0);

    for (const r of [b, c]) r.child.kill('SIGINT');
    expect(await Promise.all([b.exited, c.exited])).toEqual([0, 0]);
    expect(await until('no process left as the worker UIDs', () => liveAs(...uids).length === 0, 5000)).toBe(true);
  });
});

describe('procyard preflight', () => {
  it('aligns the table header with its rows', async () => {
    const r = await cli(['preflight', '--config', config([24300, 24304], [65300, 65304])]);
    const lines = r.stdout.split('\n');
    const header = lines[0]!;
    expect(header).toMatch(/^SEVERITY\s+CHECK\s+MESSAGE$/);
    const rows = lines.slice(1).filter((l) => /^(OK|INFO|WARNING|ERROR)\s/.test(l));
    expect(rows.length).toBeGreaterThan(10);
    for (const row of rows) {
      // The check name starts where CHECK does; the message where MESSAGE does.
      expect(row.slice(header.indexOf('CHECK')).startsWith(row.split(/\s+/)[1]!), row).toBe(true);
      expect(row[header.indexOf('MESSAGE') - 1], row).toBe(' ');
      expect(row[header.indexOf('MESSAGE')], row).not.toBe(' ');
    }
  });
});
