// Escape attempts from inside a worker: each must fail. The gaps are asserted
// too, so docs/security.md stays true: a worker may listen on a non-loopback
// address (its own port) and reach host loopback services (the network is
// shared; Landlock rules are by port), and it reads the host filesystem
// outside /tmp wherever file permissions let it.
import { chmodSync, chownSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerSpec } from '../src/backend.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { FIXTURES, NODE, appSpec, testConfig } from './helpers/backend.js';
import { isDead, isRoot, procStatus, treeOf, waitFor } from './helpers/proc.js';
import { landlockSupport } from '../src/process/landlock.js';
import { PYTHON, parseProbe, unixPeer } from './helpers/net.js';

// Ports 23300-23329 and UIDs 64300-64329 belong to this file.
const backend = new ProcessBackend(testConfig([23300, 23319], [64300, 64319]));
const filtered = new ProcessBackend(testConfig([23320, 23329], [64320, 64329], { seccompProfile: 'builtin' }));

const SECRET = `procyard-secret-${randomBytes(8).toString('hex')}`;
const DENIED = ['EROFS', 'EACCES', 'EPERM'];

let bundle: string;
const dirs: { dir: string; cleanup(): void }[] = [];
let library: string;
let libDir: string;
let tokenDir: string;
let seq = 0;

/** A directory anyone may write on the host (0777, files 0666): only the sandbox's mounts can refuse a write. */
function openDir(prefix: string, base = os.tmpdir()): string {
  const dir = mkdtempSync(path.join(base, prefix));
  dirs.push({ dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) });
  chmodSync(dir, 0o777);
  writeFileSync(path.join(dir, 'existing.txt'), 'untouched\n', { mode: 0o666 });
  chmodSync(path.join(dir, 'existing.txt'), 0o666);
  return dir;
}

interface WorkerView {
  sandbox: { pid: number; appPid: Promise<number | null> };
}

/** The backend's own record of a worker (host pids). */
function internals(b: ProcessBackend, id: string): WorkerView {
  const worker = (b as unknown as { workers: Map<string, WorkerView> }).workers.get(id);
  if (!worker) throw new Error(`no worker ${id}`);
  return worker;
}

async function waitHealthy(b: ProcessBackend, id: string): Promise<boolean> {
  return waitFor(() => b.healthCheck(id, { timeoutMs: 500 }), 10000, 25);
}

/** Runs cmd in a fresh worker until it exits; returns its output lines. */
async function run(cmd: string[], extra: Partial<WorkerSpec> = {}, b = backend): Promise<string[]> {
  const id = `esc-${++seq}`;
  await b.spawn(appSpec(id, 'serve', { bundlePath: bundle, cmd, ...extra }));
  const lines: string[] = [];
  const stream = await b.logs(id);
  const timer = setTimeout(() => stream.close(), 20000);
  for await (const line of stream) lines.push(line);
  clearTimeout(timer);
  await b.removeResource({ id, kind: 'container', labels: {} });
  return lines;
}

/** Runs test/fixtures/escape.mjs <attempt> in a worker and parses its report. */
async function attempt(name: string, args: string[] = [], extra: Partial<WorkerSpec> = {}, b = backend): Promise<Record<string, any>> {
  const lines = await run([NODE, '/tmp/app/escape.mjs', name, ...args], extra, b);
  const line = lines.find((l) => l.startsWith('{"attempt"'));
  if (!line) throw new Error(`no report from ${name}:\n${lines.join('\n')}`);
  return JSON.parse(line) as Record<string, any>;
}

/** name=RESULT lines of escape-syscalls.py. */
async function syscalls(b: ProcessBackend, hostPids: number[] = []): Promise<Record<string, string>> {
  const lines = await run(['/usr/bin/python3', '/tmp/app/escape-syscalls.py', ...hostPids.map(String)], {}, b);
  expect(lines.at(-1), lines.join('\n')).toBe('done');
  return Object.fromEntries(lines.filter((l) => l.includes('=')).map((l) => l.split('=') as [string, string]));
}

beforeAll(() => {
  process.env.PROCYARD_ESCAPE_SECRET = SECRET;
  // The bundle is world-writable on the host: only the read-only bind stands in the way.
  bundle = openDir('procyard-escape-bundle-');
  for (const f of ['escape.mjs', 'escape-syscalls.py', 'net-probe.py']) {
    copyFileSync(path.join(FIXTURES, f), path.join(bundle, f));
    chmodSync(path.join(bundle, f), 0o666);
  }
  library = openDir('procyard-escape-lib-');
  libDir = openDir('procyard-escape-libdir-');
  tokenDir = openDir('procyard-escape-token-');
});

afterAll(async () => {
  await Promise.all([backend.close(), filtered.close()]);
  for (const d of dirs) d.cleanup();
  delete process.env.PROCYARD_ESCAPE_SECRET;
});

/** Every write attempt on dir (inside) failed with one of `allowed`, and nothing changed on the host. */
function expectUnwritable(report: Record<string, any>, inside: string, host: string | null, allowed = DENIED): void {
  const r = report.dirs[inside];
  expect(r, JSON.stringify(report)).toBeDefined();
  for (const [op, result] of Object.entries(r.results as Record<string, string>))
    expect(allowed, `${op} on ${inside}: ${result}`).toContain(result);
  if (host) {
    expect(readdirSync(host).filter((n) => n.startsWith(r.name))).toEqual([]);
    if (r.existing) expect(existsSync(path.join(host, r.existing))).toBe(true);
  }
}

describe('filesystem', () => {
  it('cannot write to /', async () => {
    const report = await attempt('write', ['/']);
    expectUnwritable(report, '/', '/');
  });

  it('cannot write to /etc, not even to a file that exists there', async () => {
    const report = await attempt('write', ['/etc']);
    expect(report.dirs['/etc'].existing).not.toBeNull();
    expectUnwritable(report, '/etc', '/etc');
  });

  it('cannot write to its bundle mount, although the host dir is world-writable', async () => {
    const report = await attempt('write', ['/tmp/app']);
    expect(report.dirs['/tmp/app'].existing).not.toBeNull();
    expectUnwritable(report, '/tmp/app', bundle, ['EROFS']);
  });

  it('cannot write to the library mounts (libraryPath, libDir) nor the token dir', async () => {
    const report = await attempt('write', ['/blockyard-lib', '/blockyard-lib-store', '/var/run/blockyard'], {
      libraryPath: library,
      libDir,
      tokenDir,
    });
    expectUnwritable(report, '/blockyard-lib', library, ['EROFS']);
    expectUnwritable(report, '/blockyard-lib-store', libDir, ['EROFS']);
    expectUnwritable(report, '/var/run/blockyard', tokenDir, ['EROFS']);
  });
});

describe("another worker's transfer dir", () => {
  it('is out of reach: its host path under /tmp is not mounted, its /proc entry does not exist', async () => {
    const theirs = openDir('procyard-escape-transfer-b-');
    writeFileSync(path.join(theirs, 'secret'), SECRET, { mode: 0o666 });
    const mine = openDir('procyard-escape-transfer-a-');
    await backend.spawn(appSpec('transfer-b', 'serve', { transferDir: theirs }));
    try {
      const bApp = (await internals(backend, 'transfer-b').sandbox.appPid)!;
      expect(bApp).toBeGreaterThan(0);
      const report = await attempt(
        'read',
        [path.join(theirs, 'secret'), `/proc/${bApp}/root/transfer/secret`, `/proc/${bApp}/cwd/secret`, '/transfer/existing.txt'],
        { transferDir: mine },
      );
      expect(report.reads[path.join(theirs, 'secret')]).toBe('ENOENT');
      expect(report.reads[`/proc/${bApp}/root/transfer/secret`]).toBe('ENOENT');
      expect(report.reads[`/proc/${bApp}/cwd/secret`]).toBe('ENOENT');
      // Not vacuous: its own transfer dir reads fine.
      expect(report.reads['/transfer/existing.txt']).toBe('ok:untouched\n');
    } finally {
      await backend.removeResource({ id: 'transfer-b', kind: 'container', labels: {} });
    }
  });

  it.runIf(isRoot)('is refused by DAC outside /tmp when owned by that worker UID with mode 0700', async () => {
    // Outside /tmp the host tree is visible read-only; ownership is what guards it.
    const base = mkdtempSync('/var/tmp/procyard-escape-');
    dirs.push({ dir: base, cleanup: () => rmSync(base, { recursive: true, force: true }) });
    const theirs = path.join(base, 'b');
    mkdirSync(theirs, { mode: 0o700 });
    await backend.spawn(appSpec('transfer-dac', 'serve', { transferDir: theirs }));
    try {
      const tree = treeOf(internals(backend, 'transfer-dac').sandbox.pid);
      const uid = Number(procStatus(tree[0]).Uid.split(/\s+/)[0]);
      chownSync(theirs, uid, 65534);
      writeFileSync(path.join(theirs, 'secret'), SECRET, { mode: 0o600 });
      chownSync(path.join(theirs, 'secret'), uid, 65534);
      const report = await attempt('read', [path.join(theirs, 'secret')]);
      expect(report.reads[path.join(theirs, 'secret')]).toBe('EACCES');
    } finally {
      await backend.removeResource({ id: 'transfer-dac', kind: 'container', labels: {} });
    }
  });

  it('documents: a world-readable host path outside /tmp IS readable (the root is bound read-only, not hidden)', async () => {
    const base = mkdtempSync('/var/tmp/procyard-escape-');
    dirs.push({ dir: base, cleanup: () => rmSync(base, { recursive: true, force: true }) });
    chmodSync(base, 0o755);
    writeFileSync(path.join(base, 'readable'), 'visible\n', { mode: 0o644 });
    const report = await attempt('read', [path.join(base, 'readable')]);
    expect(report.reads[path.join(base, 'readable')]).toBe('ok:visible\n');
  });
});

describe('processes outside the sandbox', () => {
  it('are neither visible nor signallable', async () => {
    await backend.spawn(appSpec('bystander'));
    try {
      expect(await waitHealthy(backend, 'bystander')).toBe(true);
      const bTree = treeOf(internals(backend, 'bystander').sandbox.pid);
      expect(bTree.length).toBe(3);
      const hostPids = [process.pid, process.ppid, ...bTree];
      const report = await attempt('processes', hostPids.map(String));
      // Its own bwrap init (1) and itself (2), nothing else.
      expect(report.procPids).toEqual([1, 2]);
      expect(report.self).toBe(2);
      for (const pid of hostPids) {
        expect(report.hostProcDirs[pid], `/proc/${pid}`).toBe('ENOENT');
        expect(report.kill0[pid], `kill(${pid}, 0)`).toBe('ESRCH');
        expect(report.killTerm[pid], `kill(${pid}, SIGTERM)`).toBe('ESRCH');
      }
      expect(bTree.some(isDead)).toBe(false);
      expect(await backend.healthCheck('bystander')).toBe(true);
    } finally {
      await backend.removeResource({ id: 'bystander', kind: 'container', labels: {} });
    }
  });

  it('kill(-1, SIGKILL) ends only its own sandbox', async () => {
    await backend.spawn(appSpec('survivor'));
    try {
      expect(await waitHealthy(backend, 'survivor')).toBe(true);
      const bTree = treeOf(internals(backend, 'survivor').sandbox.pid);
      const lines = await run([NODE, '/tmp/app/escape.mjs', 'kill-all']);
      expect(lines.some((l) => l.includes('"procPids":[1,2]'))).toBe(true);
      expect(bTree.some(isDead)).toBe(false);
      expect(await backend.healthCheck('survivor')).toBe(true);
      expect(isDead(process.pid)).toBe(false);
    } finally {
      await backend.removeResource({ id: 'survivor', kind: 'container', labels: {} });
    }
  });
});

describe("the server's environment", () => {
  it('is not in the worker env, nor readable through any /proc/<pid>/environ', async () => {
    expect(process.env.PROCYARD_ESCAPE_SECRET).toBe(SECRET);
    const report = await attempt('environ', [SECRET, String(process.pid)]);
    expect(report.found).toEqual([]);
    expect(report.environs[String(process.pid)]).toBe('ENOENT');
    // Its own processes' environ is readable, and clean: the check above is not vacuous.
    expect(report.environs['1']).toBe('ok');
    expect(report.environs.self).toBe('ok');
    // No second procfs (the host's) reachable anywhere else in the tree.
    expect(new Set(report.procMounts)).toEqual(new Set(['/proc']));
  });
});

describe('ptrace', () => {
  it("with seccompProfile 'builtin': PTRACE_TRACEME and attaching to the sandbox's pid 1 fail with EPERM", async () => {
    const r = await syscalls(filtered, [process.pid]);
    expect(r.ptrace_traceme).toBe('EPERM');
    expect(r.ptrace_attach_init).toBe('EPERM');
    expect(r.ptrace_seize_init).toBe('EPERM');
    expect(r[`ptrace_attach_host_${process.pid}`]).toBe('EPERM');
  });

  it('without a filter: no process outside the sandbox can be attached to (not in its pid namespace)', async () => {
    await backend.spawn(appSpec('ptrace-target'));
    try {
      expect(await waitHealthy(backend, 'ptrace-target')).toBe(true);
      const targets = [process.pid, ...treeOf(internals(backend, 'ptrace-target').sandbox.pid)];
      const r = await syscalls(backend, targets);
      for (const pid of targets) expect(r[`ptrace_attach_host_${pid}`], `attach ${pid}`).toBe('ESRCH');
      for (const pid of targets.slice(1)) expect(procStatus(pid).TracerPid).toBe('0');
    } finally {
      await backend.removeResource({ id: 'ptrace-target', kind: 'container', labels: {} });
    }
  });
});

describe('mount', () => {
  it('fails with EPERM (no capabilities), with or without the built-in filter', async () => {
    for (const b of [backend, filtered]) {
      const r = await syscalls(b);
      for (const call of ['mount_tmpfs', 'mount_proc', 'bind_root', 'remount_root_rw', 'umount_proc', 'chroot'])
        expect(r[call], `${call} (${b === filtered ? 'builtin' : 'no'} filter)`).toBe('EPERM');
    }
  });
});

describe('privileges', () => {
  it('set-uid binaries do not raise privileges: no_new_privs is set, su and passwd fail', async () => {
    const report = await attempt('status');
    expect(report.noNewPrivs).toBe('1');
    expect(report.su.status).not.toBe(0);
    expect(report.su.out).not.toMatch(/uid=0/);
    expect(report.passwd.status).not.toBe(0);
  });

  it.runIf(isRoot)('su runs with the worker UID and no capabilities, as seen from the host', async () => {
    // su waits on its password prompt (stdin is a pipe that stays open); we look at it from outside.
    await backend.spawn(appSpec('su', 'serve', { cmd: ['/bin/sh', '-c', 'sleep 30 | /usr/bin/su root -c id'] }));
    try {
      const monitor = internals(backend, 'su').sandbox.pid;
      const comm = (pid: number) => {
        try {
          return procStatus(pid).Name;
        } catch {
          return '';
        }
      };
      expect(await waitFor(() => treeOf(monitor).some((pid) => comm(pid) === 'su'), 5000)).toBe(true);
      const su = treeOf(monitor).find((pid) => comm(pid) === 'su')!;
      const status = procStatus(su);
      const uid = procStatus(monitor).Uid.split(/\s+/)[0];
      expect(Number(uid)).toBeGreaterThanOrEqual(64300);
      // real, effective, saved and filesystem uid: the set-uid bit did nothing.
      expect(status.Uid.split(/\s+/)).toEqual([uid, uid, uid, uid]);
      expect(status.CapEff).toBe('0000000000000000');
      expect(status.CapPrm).toBe('0000000000000000');
      expect(status.NoNewPrivs).toBe('1');
    } finally {
      await backend.removeResource({ id: 'su', kind: 'container', labels: {} });
    }
  });

  it('no capability can be raised: all sets are empty, and unshare -r, capsh, setpriv and capset fail', async () => {
    const report = await attempt('status');
    expect(report.caps).toEqual({
      CapInh: '0000000000000000',
      CapPrm: '0000000000000000',
      CapEff: '0000000000000000',
      CapBnd: '0000000000000000',
      CapAmb: '0000000000000000',
    });
    for (const tool of ['unshareMapRoot', 'unshareNet', 'capsh', 'setprivRoot']) {
      expect(report[tool].error, `${tool} must exist`).toBeNull();
      expect(report[tool].status, `${tool}: ${report[tool].out}`).not.toBe(0);
    }
    const r = await syscalls(backend);
    expect(r.capset_raise).toBe('EPERM');
    expect(r.setuid_0).not.toBe('ok');
    expect(r.setgid_0).not.toBe('ok');
  });
});

describe('network (shared with the host)', () => {
  // The socket hooks need root and a cgroup2 mount (test/tenant-network.test.ts has the rest).
  const hooks = isRoot && readFileSync('/proc/self/mountinfo', 'utf8').includes(' - cgroup2 ');

  it(`a worker ${hooks ? 'cannot' : 'CAN (documented: no socket hooks here)'} listen on 0.0.0.0, and reaches host loopback services that are not denied`, async () => {
    await backend.spawn(appSpec('listen-any', 'serve', { bundlePath: bundle, cmd: [NODE, '/tmp/app/escape.mjs', 'listen-any'] }));
    const hostService = net.createServer((s) => s.end('host service\n'));
    await new Promise<void>((resolve) => hostService.listen(0, '127.0.0.1', resolve));
    try {
      const stream = await backend.logs('listen-any');
      let report: Record<string, any> | null = null;
      for await (const line of stream) {
        if (line.startsWith('{')) {
          report = JSON.parse(line) as Record<string, any>;
          break;
        }
      }
      stream.close();
      const port = Number((await backend.addr('listen-any')).split(':')[1]);
      if (hooks) expect(report).toMatchObject({ error: 'EPERM' });
      else {
        expect(report!.listening).toMatchObject({ address: '0.0.0.0', port });
        // Reached through a non-loopback address of this machine (traffic stays on the host).
        const external = Object.values(os.networkInterfaces())
          .flat()
          .find((a) => a && a.family === 'IPv4' && !a.internal);
        if (external) {
          const res = await fetch(`http://${external.address}:${port}/`, { signal: AbortSignal.timeout(5000) });
          expect(await res.text()).toBe('reached through 0.0.0.0\n');
        }
      }
      const egress = await attempt('connect', [String((hostService.address() as net.AddressInfo).port)]);
      expect(egress).toMatchObject({ connected: true, received: 'host service' });
    } finally {
      hostService.close();
      await backend.removeResource({ id: 'listen-any', kind: 'container', labels: {} });
    }
  });
});

describe('network escapes the network policy closes (Landlock, default networkPolicy)', () => {
  const { abi } = landlockSupport();
  // Ports 24296-24298 (the landlock range): never bound by anything else.
  const probe = async (items: string[]) => parseProbe(await run([PYTHON, '/tmp/app/net-probe.py', ...items]));

  it.runIf(abi >= 4)('bind escape: listening on any port but its own fails with EACCES (a fixed port, a random one)', async () => {
    const r = await probe(['fixed:bind:24298', 'random:bind:0']);
    expect(r).toEqual({ fixed: 'EACCES', random: 'EACCES' });
  });

  it.runIf(abi >= 6)("abstract-socket escape: a host daemon's abstract unix socket refuses it (EPERM) and receives nothing", async () => {
    const name = `procyard-escape-${randomBytes(6).toString('hex')}`;
    const daemon = await unixPeer(['abstract', name]);
    try {
      const r = await probe([`abstract:abstract:${name}`]);
      expect(r.abstract).toBe('EPERM');
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(daemon.lines).toEqual([]);
    } finally {
      await daemon.stop();
    }
  });

  it("/run socket escape: a world-connectable socket under the host's /run does not exist inside", async () => {
    const sock = `/run/procyard-escape-${randomBytes(6).toString('hex')}.sock`;
    let reached = false;
    const daemon = net.createServer((s) => {
      reached = true;
      s.destroy();
    });
    await new Promise<void>((resolve) => daemon.listen(sock, resolve));
    chmodSync(sock, 0o666);
    try {
      expect(await probe([`run:unix:${sock}`])).toEqual({ run: 'ENOENT' });
      expect(reached).toBe(false);
    } finally {
      await new Promise((resolve) => daemon.close(resolve));
    }
  });
});

// Identities that outlive their worker (issue 11, items 5 and 6). Ports
// 24340-24349 and UIDs 65340-65349 (ux's ranges) belong to these tests.
describe('identities after a worker ends, and a neighbour racing a start', () => {
  // Landlock's bind rule (network policy) would stop the thief below at
  // bind(); these tests are about what procyard checks whatever the kernel.
  const policy = { networkPolicy: 'off' as const };
  const ids = new ProcessBackend(testConfig([24340, 24349], [65340, 65342], { stopGraceMs: 1000, ...policy }));
  afterAll(() => ids.close());

  /** The first log line of a worker that starts with `prefix`, within 20 s. */
  async function lineOf(b: ProcessBackend, id: string, prefix: string): Promise<string> {
    const stream = await b.logs(id);
    const timer = setTimeout(() => stream.close(), 20000);
    try {
      for await (const line of stream) if (line.startsWith(prefix)) return line;
    } finally {
      clearTimeout(timer);
      stream.close();
    }
    throw new Error(`worker ${id} printed no line starting with ${prefix}`);
  }

  async function report(b: ProcessBackend, id: string, cmd: string[], extra: Partial<WorkerSpec> = {}): Promise<Record<string, any>> {
    await b.spawn(appSpec(id, 'serve', { bundlePath: bundle, cmd, ...extra }));
    return JSON.parse(await lineOf(b, id, '{"attempt"')) as Record<string, any>;
  }

  // Fails on the lowest-first allocator: B got A's UID and read its file.
  it.runIf(isRoot)('the next worker does not get the UID of the one that just ended, so cannot read what it left', async () => {
    const shared = openDir('procyard-escape-shared-transfer-');
    const a = await report(ids, 'leaver', [NODE, '/tmp/app/escape.mjs', 'leave-private', '/transfer/a-private', SECRET], {
      transferDir: shared,
    });
    expect(a.mkdir).toBe('ok');
    expect(a.write).toBe('ok');
    await ids.removeResource({ id: 'leaver', kind: 'container', labels: {} });

    const b = await report(ids, 'next', [NODE, '/tmp/app/escape.mjs', 'read', '/transfer/a-private/secret', '/transfer/existing.txt'], {
      transferDir: shared,
    });
    await ids.removeResource({ id: 'next', kind: 'container', labels: {} });
    expect(b.uid).not.toBe(a.uid);
    expect(b.reads['/transfer/a-private/secret']).toBe('EACCES');
    // Not vacuous: the shared dir itself reads fine.
    expect(b.reads['/transfer/existing.txt']).toBe('ok:untouched\n');
  });

  it.runIf(isRoot)('hands UIDs out least recently used: with 3 UIDs, the 4th worker in a row gets the 1st one back', async () => {
    const uids: number[] = [];
    for (let i = 0; i < 4; i++) {
      const r = await report(ids, `lru-${i}`, [NODE, '/tmp/app/escape.mjs', 'read']);
      await ids.removeResource({ id: `lru-${i}`, kind: 'container', labels: {} });
      uids.push(r.uid as number);
    }
    expect(new Set(uids.slice(0, 3)).size).toBe(3);
    expect(uids[3]).toBe(uids[0]);
  });

  // Fails on a connect-only health check: the thief answered for the victim.
  it.runIf(isRoot)("a worker that binds a starting neighbour's port does not make the neighbour healthy or ready", async () => {
    const drop = openDir('procyard-escape-steal-');
    await ids.spawn(appSpec('thief', 'serve', { bundlePath: bundle, transferDir: drop, cmd: [NODE, '/tmp/app/escape.mjs', 'steal-port', '/transfer/target'] }));
    // The victim is slow to listen (it never does): the window the thief needs.
    await ids.spawn(appSpec('victim', 'serve', { bundlePath: bundle, cmd: ['/bin/sleep', '30'] }));
    try {
      const victimAddr = await ids.addr('victim');
      const victimPort = Number(victimAddr.split(':')[1]);
      writeFileSync(path.join(drop, 'target'), `${victimPort}\n`);
      const stolen = JSON.parse(await lineOf(ids, 'thief', '{"attempt"')) as { stolen: number | null; uid: number };
      // The attack ran: the victim's port answers, from the thief.
      expect(stolen.stolen).toBe(victimPort);
      expect(await (await fetch(`http://${victimAddr}/`)).text()).toBe(`answered by the thief, uid ${stolen.uid}\n`);

      expect(await ids.healthCheck('victim')).toBe(false);
      const waited = ids.waitReady('victim', { timeoutMs: 1000 });
      await expect(waited).rejects.toThrow(`port ${victimPort} is held by uid ${stolen.uid}, not the worker's uid`);
      await expect(waited).rejects.toMatchObject({ name: 'WorkerNotReadyError', reason: 'timeout' });

      // Not vacuous: a worker listening on its own port is healthy and ready.
      await ids.spawn(appSpec('honest'));
      await ids.waitReady('honest', { timeoutMs: 10000 });
      expect(await ids.healthCheck('honest')).toBe(true);
    } finally {
      await Promise.all(['thief', 'victim', 'honest'].map((id) => ids.removeResource({ id, kind: 'container', labels: {} })));
    }
  });
});
