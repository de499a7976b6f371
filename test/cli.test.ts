// The procyard CLI, built and run as a user would: node dist/cli.js ...
// Every address is loopback; nothing leaves the machine.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'cli.js');
const FIXTURES = path.join(ROOT, 'test', 'fixtures');
const UIDS = [63090, 63099] as const;
const NON_ROOT_UID = 63089;

const dir = mkdtempSync(path.join(os.tmpdir(), 'procyard-cli-'));
chmodSync(dir, 0o755); // the non-root run reads its config from here
const children: ChildProcess[] = [];
let closedPort = 0;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], opts: { uid?: number; gid?: number } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { cwd: ROOT, timeout: 30_000, ...opts }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number | string }).code as number) : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}

function configFile(name: string, text: string): string {
  const p = path.join(dir, name);
  writeFileSync(p, text, { mode: 0o644 });
  return p;
}

function goodConfig(extra = ''): string {
  return `[process]
metadata_addr = "127.0.0.1:${closedPort}"
port_range_start = 22090
port_range_end = 22099
worker_uid_range_start = ${UIDS[0]}
worker_uid_range_end = ${UIDS[1]}
stop_grace_ms = 3000
${extra}
[storage]
bundle_worker_path = "/tmp/app"
`;
}

/** Host pids running as one of our worker UIDs. */
function pidsOwnedByWorkers(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const status = readFileSync(`/proc/${name}/status`, 'utf8');
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1]);
      const state = /^State:\s+(\S)/m.exec(status)?.[1];
      if (uid >= UIDS[0] && uid <= UIDS[1] && state !== 'Z' && state !== 'X') pids.push(Number(name));
    } catch {
      // gone
    }
  }
  return pids;
}

async function until<T>(fn: () => T | undefined | null | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 25));
  }
}

beforeAll(async () => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closedPort = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
}, 120_000);

afterAll(() => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('procyard --help', () => {
  it('lists the commands', async () => {
    const r = await cli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('preflight');
    expect(r.stdout).toContain('run');
    const run = await cli(['run', '--help']);
    expect(run.stdout).toContain('--port-file');
  });
});

describe('procyard preflight', () => {
  it('--json prints a report and exits 0 on a good config', async () => {
    const r = await cli(['preflight', '--json', '--config', configFile('good.toml', goodConfig())]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as {
      ranAt: string;
      results: { name: string; severity: string; message: string; category: string }[];
      summary: { errors: number; warnings: number; info: number; ok: number };
    };
    expect(report.results.slice(0, 11).map((x) => x.name)).toEqual([
      'bwrap_available', 'r_binary', 'rig_versions', 'user_namespaces', 'port_range', 'resource_limits',
      'seccomp_profile', 'bwrap_host_uid_mapping', 'cloud_metadata', 'redis_auth', 'worker_egress',
    ]);
    expect(report.summary.errors).toBe(0);
    expect(Number.isNaN(Date.parse(report.ranAt))).toBe(false);
  });

  it('exits 0 with skip_metadata_check = true', async () => {
    const r = await cli(['preflight', '--json', '--config', configFile('skip.toml', goodConfig('skip_metadata_check = true'))]);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as { results: { name: string; severity: string }[] };
    expect(report.results.find((x) => x.name === 'cloud_metadata')?.severity).toBe('info');
  });

  it('exits 1 and prints a table when bwrap_path is missing', async () => {
    const cfg = configFile('bad.toml', goodConfig(`bwrap_path = "${dir}/no-such-bwrap"`));
    const r = await cli(['preflight', '--config', cfg]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^SEVERITY\s+CHECK\s+MESSAGE/);
    expect(r.stdout).toMatch(/ERROR\s+bwrap_available\s+bwrap at ".*no-such-bwrap" does not exist/);
    expect(r.stdout).toMatch(/\d+ checks: [1-9]\d* errors?/);
    const json = await cli(['preflight', '--json', '--config', cfg]);
    expect(json.code).toBe(1);
    expect((JSON.parse(json.stdout) as { summary: { errors: number } }).summary.errors).toBeGreaterThan(0);
  });

  it('exits 2 naming the key and file of a bad config', async () => {
    const cfg = configFile('typo.toml', '[process]\nport_range_begin = 1\n');
    const r = await cli(['preflight', '--config', cfg]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('port_range_begin');
    expect(r.stderr).toContain(cfg);
  });

  it.runIf(process.getuid?.() === 0 && existsSync('/usr/bin/setpriv'))(
    'reports per-worker host UIDs as info when not run as root',
    async () => {
      const cfg = configFile('nonroot.toml', goodConfig());
      const r = await new Promise<Run>((resolve) => {
        execFile(
          '/usr/bin/setpriv',
          ['--reuid', String(NON_ROOT_UID), '--regid', '65534', '--clear-groups', process.execPath, CLI, 'preflight', '--json', '--config', cfg],
          { cwd: '/', timeout: 30_000 },
          (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code) : 0, stdout, stderr }),
        );
      });
      const report = JSON.parse(r.stdout) as { results: { name: string; severity: string; message: string }[] };
      const mapping = report.results.find((x) => x.name === 'bwrap_host_uid_mapping')!;
      expect(mapping.severity).toBe('info');
      expect(mapping.message).toContain('root');
      // The real probe, as the unprivileged server's own uid.
      expect(report.results.find((x) => x.name === 'user_namespaces')?.severity).toBe('ok');
      // Without root no socket hooks load: the probe reaches a port of the workers' range.
      const egress = report.results.find((x) => x.name === 'worker_egress')!;
      expect(egress.severity).toBe('warning');
      expect(egress.message).toContain("(the server's own uid (not root)) can reach another worker's port");
    },
  );
});

describe('procyard run', () => {
  it('serves HTTP, and SIGINT stops it with the app\'s SIGTERM handler having run', async () => {
    const cfg = configFile('run.toml', goodConfig());
    const portFile = path.join(dir, 'port');
    const transfer = mkdtempSync(path.join(dir, 'transfer-'));
    chmodSync(transfer, 0o777); // written by the worker UID
    const child = spawn(
      process.execPath,
      [CLI, 'run', '--config', cfg, '--port-file', portFile, '--bundle', FIXTURES, '--mount', '/tmp/app',
        '--transfer', transfer, '--', process.execPath, '/tmp/app/app.mjs', 'serve'],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    children.push(child);
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
      child.once('exit', (code, signal) => resolve({ code, signal })),
    );

    const port = await until(() => existsSync(portFile) && Number(readFileSync(portFile, 'utf8').trim()));
    expect(port).toBeGreaterThanOrEqual(22090);
    expect(port).toBeLessThanOrEqual(22099);
    // procyard's own status line is on stderr, never among the app's output.
    await until(() => stderr.includes(`address 127.0.0.1:${port}`));
    expect(stdout).not.toContain('started; address');
    await until(() => stdout.includes('listening'));
    const body = await (await fetch(`http://127.0.0.1:${port}/`)).text();
    expect(body).toMatch(/^hello from uid 630(9\d)/);
    expect(pidsOwnedByWorkers().length).toBeGreaterThan(0);

    child.kill('SIGINT');
    const status = await exited;
    expect(status, stderr).toEqual({ code: 0, signal: null });
    // The fixture's SIGTERM handler writes this marker, then prints a line.
    expect(readFileSync(path.join(transfer, 'terminated'), 'utf8')).toMatch(/^pid \d+/);
    expect(stdout).toContain('got SIGTERM');
    expect(stderr).toContain('SIGINT');
    await expect(fetch(`http://127.0.0.1:${port}/`)).rejects.toThrow();
    expect(pidsOwnedByWorkers()).toEqual([]);
  });

  it('exits with the worker\'s code when it ends on its own, after printing its output', async () => {
    const r = await cli([
      'run', '--config', configFile('run2.toml', goodConfig()), '--bundle', FIXTURES, '--mount', '/tmp/app', '--',
      '/bin/sh', '-c', 'echo "from the sandbox as $(id -u)"; exit 3',
    ]);
    expect(r.code).toBe(3);
    expect(r.stdout).toMatch(/from the sandbox as 630(9\d)/);
    expect(r.stderr).toContain('exited on its own');
  });

  it('exits 1 with the reason when the worker cannot start', async () => {
    const r = await cli(['run', '--config', configFile('run3.toml', goodConfig()), '--bundle', path.join(dir, 'no-bundle'), '--', '/bin/true']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('could not start the worker');
    expect(r.stderr).toContain('bundlePath');
  });
});
