// The network policy against real workers (SPEC §8): Landlock TCP rules and
// scopes under 'auto', an allowlist of connect ports, and 'off' as the
// control that proves each probe can succeed; the host's /run hidden.
import { spawn as cpSpawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { chmodSync, closeSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runPreflight } from '../src/preflight/index.js';
import { builtinSeccompFilter, PidWatcherNative, spawnNative, type NativeChild, type NativeLandlockRules } from '../src/native.js';
import { landlockSupport, NetworkPolicy } from '../src/process/landlock.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { hostRunPlan } from '../src/process/run-dir.js';
import { startSandbox } from '../src/process/sandbox.js';
import { BASE_ENV } from '../src/process/bwrap.js';
import { FIXTURES, testConfig } from './helpers/backend.js';
import { PYTHON, parseProbe, probeWorker, tcpListener, unixPeer } from './helpers/net.js';
import { isDead, isRoot, waitFor } from './helpers/proc.js';

// Ports 24200-24299 and UIDs 65200-65299 belong to this file and landlock-*.test.ts.
const PORT_A = 24290; // host listeners the workers connect to
const PORT_B = 24291;
const OTHER = 24292; // never bound by anything else: the "other port" a worker tries
const UDP = 24294; // a host UDP socket: Landlock has no UDP rules (a documented gap)

const support = landlockSupport();
const tcp = support.abi >= 4;
const scopes = support.abi >= 6;
const noTcp = `kernel ${support.kernel} has Landlock ABI ${support.abi}: TCP rules need ABI 4 (Linux 6.7)`;
const noScopes = `kernel ${support.kernel} has Landlock ABI ${support.abi}: scopes need ABI 6 (Linux 6.12)`;

const auto = new ProcessBackend(testConfig([24200, 24219], [65200, 65219]));
const allow = new ProcessBackend(testConfig([24220, 24239], [65220, 65239], { allowedConnectPorts: [PORT_A] }));
const off = new ProcessBackend(testConfig([24240, 24259], [65240, 65259], { networkPolicy: 'off' }));

const tag = randomBytes(6).toString('hex');
const ABSTRACT = `procyard-landlock-${tag}`;
let a: Awaited<ReturnType<typeof tcpListener>>;
let b: Awaited<ReturnType<typeof tcpListener>>;
const cleanups: (() => void | Promise<void>)[] = [];

beforeAll(async () => {
  [a, b] = await Promise.all([tcpListener(PORT_A), tcpListener(PORT_B)]);
});

afterAll(async () => {
  await Promise.all([auto.close(), allow.close(), off.close()]);
  await Promise.all([a?.close(), b?.close()]);
  for (const c of cleanups.reverse()) await c();
});

/** The probe serves once it has printed its results: wait (bounded) for its port. */
function healthy(backend: ProcessBackend, id: string): Promise<boolean> {
  return waitFor(() => backend.healthCheck(id, { timeoutMs: 500 }), 10000, 25);
}

function workerUidOrNull(backend: ProcessBackend, id: string): number | null {
  return (backend as unknown as { workers: Map<string, { uid: number }> }).workers.get(id)?.uid ?? null;
}

/** Every probe of the policy, then HTTP on the worker's own port. */
const POLICY_PROBES = [
  `bindOther:bind:${OTHER}`,
  'bindAny:bind:0',
  `connectA:connect:${PORT_A}`,
  `connectB:connect:${PORT_B}`,
  `abstract:abstract:${ABSTRACT}`,
  'http:serve:-',
];

describe('a worker under the network policy', () => {
  it.runIf(tcp)("'auto': binds and serves only its own port; other binds EACCES; a host abstract socket EPERM", async (ctx) => {
    const peer = await unixPeer(['abstract', ABSTRACT]);
    try {
      const r = await probeWorker(auto, 'auto-1', POLICY_PROBES);
      expect(await healthy(auto, 'auto-1')).toBe(true);
      expect(await (await fetch(`http://${await auto.addr('auto-1')}/`)).text()).toBe('hello from the probe\n');
      expect(r.bindOther).toBe('EACCES');
      expect(r.bindAny).toBe('EACCES');
      // allowedConnectPorts unset: any port.
      expect(r.connectA).toBe('ok');
      expect(r.connectB).toBe('ok');
      if (!scopes) return ctx.skip(noScopes);
      expect(r.abstract).toBe('EPERM');
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(peer.lines).toEqual([]);
    } finally {
      await peer.stop();
      await auto.removeResource({ id: 'auto-1', kind: 'container', labels: {} });
    }
  });

  it.runIf(tcp)('allowedConnectPorts [A]: connects to A, not to B (EACCES); still serves its own port; UDP is not covered', async () => {
    const before = b.received.length;
    const udp = dgram.createSocket('udp4');
    const datagrams: string[] = [];
    udp.on('message', (m) => datagrams.push(m.toString()));
    await new Promise<void>((resolve) => udp.bind(UDP, '127.0.0.1', resolve));
    try {
      const r = await probeWorker(allow, 'allow-1', [...POLICY_PROBES, `udp:udp:${UDP}`]);
      // The documented gap: Landlock rules are TCP only.
      expect(r.udp).toBe('ok');
      expect(await waitFor(() => datagrams.includes('from-worker'), 2000)).toBe(true);
      expect(r.connectA).toBe('ok');
      expect(r.connectB).toBe('EACCES');
      expect(b.received.length).toBe(before);
      expect(await waitFor(() => a.received.includes('from-worker'), 2000)).toBe(true);
      expect(await healthy(allow, 'allow-1')).toBe(true);
      expect(r.bindOther).toBe('EACCES');
    } finally {
      udp.close();
      await allow.removeResource({ id: 'allow-1', kind: 'container', labels: {} });
    }
  });

  it("'off': every one of those probes succeeds (so the tests above measure the policy)", async () => {
    const peer = await unixPeer(['abstract', ABSTRACT]);
    try {
      const r = await probeWorker(off, 'off-1', POLICY_PROBES);
      expect(r.bindOther).toBe(`ok:${OTHER}`);
      expect(r.bindAny).toMatch(/^ok:\d+$/);
      expect(r.connectA).toBe('ok');
      expect(r.connectB).toBe('ok');
      expect(r.abstract).toBe('ok');
      expect(await waitFor(() => peer.lines.includes('received:from-worker'), 2000)).toBe(true);
      expect(await healthy(off, 'off-1')).toBe(true);
    } finally {
      await peer.stop();
      await off.removeResource({ id: 'off-1', kind: 'container', labels: {} });
    }
  });

  it.runIf(tcp)('MPTCP sockets, TCP Fast Open sends, vsock sockets and io_uring rings (all outside the TCP rules) are refused, whatever the seccomp profile; under \'off\' they work', async (ctx) => {
    const probes = [
      `mptcpBind:mptcpbind:${OTHER}`,
      `mptcpConnect:mptcpconnect:${PORT_B}`,
      'uring:uring:-',
      `fastOpen:tfo:${PORT_B}`,
      'vsock:vsock:-',
      `tcpConnect:connect:${PORT_A}`,
    ];
    const control = await probeWorker(off, 'off-mptcp', probes);
    await off.removeResource({ id: 'off-mptcp', kind: 'container', labels: {} });
    // No profile (the socket filter alone), the builtin one (carrying its
    // rules) and a compiled one (the clone child attaches the filter itself).
    const dir = mkdtempSync(path.join(os.tmpdir(), 'procyard-mptcp-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const compiled = path.join(dir, 'profile.bpf');
    const fd = builtinSeccompFilter();
    try {
      writeFileSync(compiled, readFileSync(`/proc/self/fd/${fd}`));
    } finally {
      closeSync(fd);
    }
    const profiles: [string, ProcessBackend][] = [
      ['none', allow],
      ['builtin', new ProcessBackend(testConfig([24295, 24296], [65295, 65296], { allowedConnectPorts: [PORT_A], seccompProfile: 'builtin' }))],
      ['compiled', new ProcessBackend(testConfig([24297, 24298], [65297, 65298], { allowedConnectPorts: [PORT_A], seccompProfile: compiled }))],
    ];
    cleanups.push(() => Promise.all(profiles.slice(1).map(([, be]) => be.close())).then(() => {}));
    const before = b.received.length;
    for (const [name, be] of profiles) {
      let r: Record<string, string>;
      try {
        r = await probeWorker(be, `mptcp-${name}`, probes);
      } finally {
        await be.removeResource({ id: `mptcp-${name}`, kind: 'container', labels: {} });
      }
      // Whatever this kernel offers, the policy's worker gets neither; plain TCP to an allowed port still works.
      expect(r, name).toEqual({ mptcpBind: 'EPERM', mptcpConnect: 'EPERM', uring: 'EPERM', fastOpen: 'EPERM', vsock: 'EPERM', tcpConnect: 'ok' });
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(b.received.length).toBe(before);
    // The control: without the policy both work where the kernel has them,
    // so the refusals above are the policy's.
    // TCP Fast Open connects (the data waits for the SYN-ACK) wherever the
    // kernel has it; without the policy it reaches B.
    expect(control.fastOpen).toBe('ok');
    if (control.mptcpBind !== `ok:${OTHER}`) return ctx.skip(`this kernel has no MPTCP (socket: ${control.mptcpBind})`);
    expect(control.mptcpConnect).toBe('ok');
    if (control.uring !== 'ok') return ctx.skip(`io_uring is off on this host (${control.uring})`);
  });

  it.runIf(tcp)('a build binds no TCP port at all and connects as configured', async () => {
    const cmd = [PYTHON, '/tmp/app/net-probe.py', `own:bind:${OTHER}`, 'any:bind:0', `connectA:connect:${PORT_A}`, `connectB:connect:${PORT_B}`];
    const mounts = [{ source: FIXTURES, target: '/tmp/app', readOnly: true }];
    const built = await allow.build({ appId: 'x', bundleId: 'b1', cmd, mounts });
    const r = parseProbe(built.logs.split('\n'));
    expect(built.success, built.logs).toBe(true);
    expect(r).toMatchObject({ own: 'EACCES', any: 'EACCES', connectA: 'ok', connectB: 'EACCES' });
    const control = await off.build({ appId: 'x', bundleId: 'b2', cmd, mounts });
    expect(parseProbe(control.logs.split('\n'))).toMatchObject({ own: `ok:${OTHER}`, connectB: 'ok' });
  });

  it('cannot signal a host process of its own UID, not even through a pidfd handed in over a socket', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'procyard-landlock-sig-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    chmodSync(dir, 0o777);
    const attempt = async (backend: ProcessBackend, id: string): Promise<{ result: string; targetDead: boolean }> => {
      const spawning = probeWorker(backend, id, [`sig:signal:/transfer/${id}.sock`], { transferDir: dir });
      // The target runs as the worker's own UID, so no permission check stands in the way.
      expect(await waitFor(() => workerUidOrNull(backend, id) !== null, 10000, 10)).toBe(true);
      const target = sleeper(isRoot ? workerUidOrNull(backend, id)! : undefined);
      const peer = await unixPeer(['pidfd', path.join(dir, `${id}.sock`), String(target.pid)]);
      try {
        const r = await spawning;
        return { result: r.sig!, targetDead: await waitFor(() => isDead(target.pid!), r.sig === 'ok' ? 3000 : 300) };
      } finally {
        target.kill('SIGKILL');
        await peer.stop();
        await backend.removeResource({ id, kind: 'container', labels: {} });
      }
    };
    // The worker's pid namespace refuses first: a pidfd of a process outside it is EINVAL, whatever the policy.
    expect(await attempt(auto, 'sig-auto')).toEqual({ result: 'EINVAL', targetDead: false });
    expect(await attempt(off, 'sig-off')).toEqual({ result: 'EINVAL', targetDead: false });
  });

  it.runIf(scopes)("the signal scope itself: the worker's Landlock domain, without a pid namespace in the way, cannot signal out", async () => {
    // The domain the clone child enters for a worker, applied to a plain process
    // (no bwrap, so no pid namespace): only the scope can refuse the kill.
    const uid = isRoot ? 65296 : undefined;
    const attempt = async (landlock: NativeLandlockRules | undefined) => {
      const target = sleeper(uid);
      try {
        const child = await spawnNative({
          file: PYTHON,
          argv: [PYTHON, '-c', KILL_PY, String(target.pid)],
          env: ['PATH=/usr/bin:/bin'],
          ...(uid !== undefined ? { uid, gid: 65534 } : {}),
          ...(landlock ? { landlock } : {}),
        });
        const out = await readAll(child);
        return { result: out.trim(), targetDead: await waitFor(() => isDead(target.pid!), out.trim() === 'ok' ? 3000 : 300) };
      } finally {
        target.kill('SIGKILL');
      }
    };
    const rules = new NetworkPolicy('auto', undefined).forWorker(24293);
    expect(rules).toMatchObject({ scopeSignals: true });
    expect(await attempt(rules)).toEqual({ result: 'EPERM', targetDead: false });
    expect(await attempt(undefined)).toEqual({ result: 'ok', targetDead: true });
  });
});

const KILL_PY = `
import errno, os, signal, sys
try:
    os.kill(int(sys.argv[1]), signal.SIGTERM); print('ok')
except OSError as e:
    print(errno.errorcode[e.errno])
`;

/** A host process to signal: /bin/sleep as uid (root) or as us. */
function sleeper(uid: number | undefined) {
  return cpSpawn('/bin/sleep', ['30'], { stdio: 'ignore', ...(uid !== undefined ? { uid, gid: 65534 } : {}) });
}

/** Everything the native child writes to stdout, once it has exited. */
async function readAll(child: NativeChild): Promise<string> {
  const text = await new Promise<string>((resolve) => {
    const socket = new net.Socket({ fd: child.stdout, readable: true, writable: false });
    let out = '';
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => (out += d));
    socket.on('close', () => resolve(out));
  });
  closeSync(child.stderr);
  await new Promise<void>((resolve) => new PidWatcherNative(child.pidfd, () => resolve(), true));
  closeSync(child.pidfd);
  return text;
}

describe("the host's /run", () => {
  it('is hidden whatever the policy: a 0666 socket there is unreachable, while resolv.conf reads and tokenDir mounts', async () => {
    const runSock = `/run/procyard-landlock-${tag}.sock`;
    const visibleDir = mkdtempSync('/var/tmp/procyard-landlock-');
    chmodSync(visibleDir, 0o755);
    const visibleSock = path.join(visibleDir, 'control.sock');
    const tokenDir = mkdtempSync('/var/tmp/procyard-landlock-token-');
    chmodSync(tokenDir, 0o755);
    writeFileSync(path.join(tokenDir, 'token'), 'token-for-the-worker\n', { mode: 0o644 });
    const accepted: string[] = [];
    const servers = [runSock, visibleSock].map((p) =>
      net.createServer((s) => {
        s.setEncoding('utf8');
        s.on('data', (d: string) => accepted.push(`${p}:${d}`));
        s.on('error', () => {});
      }),
    );
    cleanups.push(() => {
      rmSync(visibleDir, { recursive: true, force: true });
      rmSync(tokenDir, { recursive: true, force: true });
      rmSync(runSock, { force: true });
    });
    await Promise.all(servers.map((s, i) => new Promise<void>((resolve) => s.listen([runSock, visibleSock][i], resolve))));
    chmodSync(runSock, 0o666);
    chmodSync(visibleSock, 0o666);
    const resolvConf = readFileSync('/etc/resolv.conf', 'utf8').split('\n')[0];
    // Inside: tokenDir's mount point (/var/run -> /run), the /dev/shm link, and where resolv.conf points, if there.
    const kept = (hostRunPlan()?.keep ?? []).map((p) => p.split('/')[2]!);
    const runNames = [...new Set(['blockyard', 'shm', ...kept])].sort().join(',');
    try {
      for (const [backend, id] of [[auto, 'run-auto'], [off, 'run-off']] as const) {
        const r = await probeWorker(
          backend,
          id,
          [`runSock:unix:${runSock}`, `visible:unix:${visibleSock}`, 'resolv:read:/etc/resolv.conf', 'token:read:/var/run/blockyard/token', 'ls:list:/run', 'write:write:/run'],
          { tokenDir },
        );
        await backend.removeResource({ id, kind: 'container', labels: {} });
        expect(r.runSock, id).toBe('ENOENT');
        // The same kind of socket outside /run is reachable: the probe can connect.
        expect(r.visible, id).toBe('ok');
        expect(r.resolv, id).toBe(`ok:${resolvConf}`);
        expect(r.token, id).toBe('ok:token-for-the-worker');
        expect(r.ls, id).toBe(`ok:${runNames}`);
        expect(r.write, id).toBe('EROFS');
      }
      expect(accepted.filter((x) => x.startsWith(runSock))).toEqual([]);
      expect(accepted.filter((x) => x.startsWith(visibleSock)).length).toBe(2);
    } finally {
      await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
    }
  });

  it('keeps a resolv.conf that points into /run (systemd-resolved) readable, and nothing beside it', async () => {
    const runDir = `/run/procyard-landlock-resolve-${tag}`;
    mkdirSync(runDir, { mode: 0o755 });
    const etc = mkdtempSync('/var/tmp/procyard-landlock-etc-');
    chmodSync(etc, 0o755);
    cleanups.push(() => {
      rmSync(runDir, { recursive: true, force: true });
      rmSync(etc, { recursive: true, force: true });
    });
    writeFileSync(path.join(runDir, 'stub-resolv.conf'), 'nameserver 127.0.0.53\n', { mode: 0o644 });
    writeFileSync(path.join(runDir, 'beside'), 'not for workers\n', { mode: 0o644 });
    // As systemd-resolved does it: an absolute symlink into /run.
    const link = path.join(etc, 'resolv.conf');
    symlinkSync(path.join(runDir, 'stub-resolv.conf'), link);
    const run = hostRunPlan([link]);
    expect(run).toEqual({ keep: [path.join(runDir, 'stub-resolv.conf')] });

    const lines: string[] = [];
    const sandbox = await startSandbox({
      bwrapPath: '/usr/bin/bwrap',
      plan: {
        uid: 65295,
        gid: 65534,
        tmpSizeBytes: 1 << 20,
        mounts: [{ source: FIXTURES, target: '/tmp/app', readOnly: true }],
        cmd: [PYTHON, '/tmp/app/net-probe.py', `resolv:read:${link}`, `beside:read:${runDir}/beside`],
        run,
      },
      seccompProfile: '',
      env: Object.entries(BASE_ENV).map(([k, v]) => `${k}=${v}`),
      hostCredentials: isRoot,
      onLine: (line) => lines.push(line),
    });
    const killer = setTimeout(() => void sandbox.kill(), 15000);
    await sandbox.exited;
    clearTimeout(killer);
    expect(parseProbe(lines), lines.join('\n')).toEqual({ resolv: 'ok:nameserver 127.0.0.53', beside: 'ENOENT' });
  });
});

describe('preflight under the network policy', () => {
  const config = (extra: Parameters<typeof testConfig>[2]) => ({
    ...testConfig([24280, 24289], [65280, 65289], { metadataAddr: `127.0.0.1:${PORT_A}`, ...extra }),
  });

  it('network_policy names the ABI and what is enforced on this kernel', async () => {
    const report = await runPreflight(config({}));
    const r = report.results.find((x) => x.name === 'network_policy')!;
    const names = report.results.map((x) => x.name);
    expect(names.indexOf('network_policy')).toBeGreaterThan(names.indexOf('worker_egress'));
    if (support.abi >= 6) {
      expect(r.severity).toBe('ok');
      expect(r.message).toContain(`Landlock ABI ${support.abi}`);
      expect(r.message).toContain('bind TCP only on their own port');
    } else {
      expect(r.severity).toBe('warning');
      expect(r.message).toContain('lacks');
    }
    const offReport = await runPreflight(config({ networkPolicy: 'off' }));
    expect(offReport.results.find((x) => x.name === 'network_policy')!.severity).toBe('info');
  });

  it.runIf(tcp)('worker_egress probes under the same policy: what allowedConnectPorts refuses is not reported reachable', async () => {
    const confined = await runPreflight(config({ allowedConnectPorts: [] }));
    const egress = confined.results.find((x) => x.name === 'worker_egress')!;
    expect(egress.severity, egress.message).toBe('ok');
    expect(egress.message).toContain('EACCES: refused by the network policy');
    // The host itself reaches the "metadata" listener: only the policy made the difference.
    expect(confined.results.find((x) => x.name === 'cloud_metadata')!.severity).toBe('error');
    const open = await runPreflight(config({ networkPolicy: 'off', allowedConnectPorts: [] }));
    const openEgress = open.results.find((x) => x.name === 'worker_egress')!;
    expect(openEgress.severity, openEgress.message).toBe('error');
    expect(openEgress.message).toContain(`cloud metadata 127.0.0.1:${PORT_A}`);
  });
});

describe("'required' on this kernel", () => {
  it.runIf(scopes)('spawns: the whole policy is there', async () => {
    const required = new ProcessBackend(testConfig([24260, 24264], [65260, 65264], { networkPolicy: 'required' }));
    try {
      const r = await probeWorker(required, 'req-1', [`bindOther:bind:${OTHER}`, 'http:serve:-']);
      expect(r.bindOther).toBe('EACCES');
      expect(await healthy(required, 'req-1')).toBe(true);
    } finally {
      await required.close();
    }
  });
});
