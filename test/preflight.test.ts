// Preflight on real conditions: real bwrap, real redis-server, real sockets.
// Every address is loopback; nothing leaves the machine.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Config, ProcessConfig } from '../src/config.js';
import { judgeUserNamespaces, readUsernsSysctls } from '../src/preflight/checks.js';
import { runPreflight, runPreflightTimed } from '../src/preflight/index.js';
import type { CheckResult, PreflightReport } from '../src/preflight/report.js';
import { startRedis, type RedisServer } from './helpers/redis.js';

const ELEVEN = [
  'bwrap_available',
  'r_binary',
  'rig_versions',
  'user_namespaces',
  'port_range',
  'resource_limits',
  'seccomp_profile',
  'bwrap_host_uid_mapping',
  'cloud_metadata',
  'redis_auth',
  'worker_egress',
];

const REDIS_OPEN_PORT = 16400;
const REDIS_AUTH_PORT = 16401;
const WORKER_GID = 65534;

const dir = mkdtempSync(path.join(os.tmpdir(), 'procyard-preflight-'));
const varTmp = mkdtempSync('/var/tmp/procyard-preflight-');
const servers: net.Server[] = [];
const sockets: net.Socket[] = [];
const redises: RedisServer[] = [];
let closedPort = 0;
let listeningPort = 0;

/** A loopback port nothing listens on. */
async function freeLoopbackPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function loopbackServer(onConnection: (socket: net.Socket) => void = (s) => s.end()): Promise<number> {
  const server = net.createServer((socket) => {
    sockets.push(socket);
    onConnection(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  servers.push(server);
  return (server.address() as net.AddressInfo).port;
}

/** A config that never probes off the machine: metadata at a closed loopback port. */
function config(proc: ProcessConfig = {}, rest: Omit<Config, 'process'> = {}): Config {
  return {
    process: {
      metadataAddr: `127.0.0.1:${closedPort}`,
      portRangeStart: 22000,
      portRangeEnd: 22099,
      workerUidStart: 63050,
      workerUidEnd: 63059,
      workerGid: WORKER_GID,
      ...proc,
    },
    ...rest,
  };
}

function result(report: PreflightReport, name: string): CheckResult {
  const r = report.results.find((x) => x.name === name);
  if (!r) throw new Error(`no ${name} in the report`);
  return r;
}

async function check(name: string, cfg: Config): Promise<CheckResult> {
  return result(await runPreflight(cfg), name);
}

beforeAll(async () => {
  closedPort = await freeLoopbackPort();
  listeningPort = await loopbackServer();
  redises.push(...(await Promise.all([startRedis({ port: REDIS_OPEN_PORT }), startRedis({ port: REDIS_AUTH_PORT, password: 'sekrit' })])));
});

afterAll(async () => {
  await Promise.all(redises.map((r) => r.stop()));
  for (const socket of sockets) socket.destroy();
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  rmSync(dir, { recursive: true, force: true });
  rmSync(varTmp, { recursive: true, force: true });
});

describe('the report', () => {
  it('has the eleven checks first, by name and in order, then the extra ones', async () => {
    const report = await runPreflight(config());
    expect(report.results.slice(0, 11).map((r) => r.name)).toEqual(ELEVEN);
    expect(report.results.slice(11).map((r) => r.name)).toEqual(['pidfd_support', 'bwrap_setuid', 'mount_targets', 'network_policy', 'warm_pool']);
    for (const r of report.results) {
      expect(['ok', 'info', 'warning', 'error']).toContain(r.severity);
      expect(r.message.length).toBeGreaterThan(0);
      expect(r.category.length).toBeGreaterThan(0);
    }
    const json = JSON.parse(JSON.stringify(report)) as { ranAt: string; summary: PreflightReport['summary'] };
    expect(new Date(json.ranAt).toISOString()).toBe(json.ranAt);
    const { errors, warnings, info, ok } = json.summary;
    expect(errors + warnings + info + ok).toBe(report.results.length);
  });

  it('is clean on this machine with a loopback-only config', async () => {
    const report = await runPreflight(config());
    const bad = report.results.filter((r) => r.severity === 'error' || r.severity === 'warning');
    expect(bad).toEqual([]);
    expect(report.hasErrors()).toBe(false);
  });

  it('runs every check even when the early ones fail', async () => {
    const report = await runPreflight(
      config({ bwrapPath: path.join(dir, 'no-bwrap'), rPath: path.join(dir, 'no-R'), portRangeStart: 22000, portRangeEnd: 22001 }),
    );
    expect(report.results.map((r) => r.name).slice(0, 11)).toEqual(ELEVEN);
    expect(result(report, 'bwrap_available').severity).toBe('error');
    expect(result(report, 'r_binary').severity).toBe('error');
    expect(result(report, 'port_range').severity).toBe('warning');
    // The sandbox probes cannot start without bwrap, and say so.
    expect(result(report, 'bwrap_host_uid_mapping').severity).toBe('error');
    expect(result(report, 'worker_egress').severity).toBe('error');
    expect(result(report, 'cloud_metadata').severity).toBe('ok');
    expect(report.summary.errors).toBeGreaterThanOrEqual(4);
  });

  it('turns a check that throws into an error naming the exception', async () => {
    const report = await runPreflight(config({}, { redis: { url: 42 as unknown as string } }));
    const r = result(report, 'redis_auth');
    expect(r.severity).toBe('error');
    expect(r.message).toContain('TypeError');
    expect(report.results).toHaveLength(16);
  });

  it('runs the checks concurrently: slow probes overlap', async () => {
    // A "Redis" that accepts and never answers: redis_auth waits its full 2 s timeout.
    const silent = await loopbackServer((socket) => socket.resume());
    const started = performance.now();
    const { report, timings } = await runPreflightTimed(config({}, { redis: { url: `redis://127.0.0.1:${silent}` } }));
    const wall = performance.now() - started;
    expect(result(report, 'redis_auth').severity).toBe('info');
    const t = Object.fromEntries(timings.map((x) => [x.name, x]));
    const slow = t.redis_auth!;
    expect(slow.endedAt - slow.startedAt).toBeGreaterThan(1900);
    // The sandbox probes ran while redis_auth was waiting, not after it: each
    // overlaps it (how long a probe takes depends on the host's load: not asserted).
    for (const name of ['bwrap_host_uid_mapping', 'worker_egress', 'user_namespaces', 'bwrap_available']) {
      expect(t[name]!.startedAt).toBeLessThan(slow.endedAt);
      expect(t[name]!.endedAt).toBeGreaterThan(slow.startedAt);
    }
    // Run one after another, the wall time would be the sum of the checks' times.
    const sum = timings.reduce((acc, x) => acc + (x.endedAt - x.startedAt), 0);
    expect(wall).toBeLessThan(sum);
  });
});

describe('bwrap_available', () => {
  it('is ok with the version', async () => {
    const r = await check('bwrap_available', config());
    expect(r.severity).toBe('ok');
    expect(r.message).toMatch(/bubblewrap \d+\.\d+/);
  });

  it('is an error when bwrap is missing, naming the path and the fix', async () => {
    const missing = path.join(dir, 'nowhere', 'bwrap');
    const r = await check('bwrap_available', config({ bwrapPath: missing }));
    expect(r.severity).toBe('error');
    expect(r.message).toContain(missing);
    expect(r.message).toContain('bwrap_path');
  });

  it('is an error when --version fails', async () => {
    const fake = path.join(dir, 'fake-bwrap');
    writeFileSync(fake, '#!/bin/sh\necho broken >&2\nexit 3\n', { mode: 0o755 });
    const r = await check('bwrap_available', config({ bwrapPath: fake }));
    expect(r.severity).toBe('error');
    expect(r.message).toContain('--version');
  });
});

describe('r_binary and rig_versions', () => {
  it('r_binary is ok for the real R', async () => {
    expect((await check('r_binary', config())).severity).toBe('ok');
  });

  it('r_binary is an error for a file without the x bit', async () => {
    const r = path.join(dir, 'R-not-executable');
    writeFileSync(r, '#!/bin/sh\n', { mode: 0o644 });
    chmodSync(r, 0o644);
    const res = await check('r_binary', config({ rPath: r }));
    expect(res.severity).toBe('error');
    expect(res.message).toContain(r);
    expect(res.message).toContain('r_path');
  });

  it('rig_versions lists installs in numeric order', async () => {
    const rig = path.join(dir, 'rig');
    for (const v of ['4.4.10', '4.4.1', '4.3.3', '4.4.9']) {
      mkdirSync(path.join(rig, v, 'bin'), { recursive: true });
      writeFileSync(path.join(rig, v, 'bin', 'R'), '#!/bin/sh\n', { mode: 0o755 });
    }
    mkdirSync(path.join(rig, 'not-an-install'), { recursive: true });
    const r = await check('rig_versions', config({ rigBase: rig }));
    expect(r.severity).toBe('ok');
    expect(r.message).toContain('4.3.3, 4.4.1, 4.4.9, 4.4.10');
  });

  it('rig_versions is info for an empty rig dir', async () => {
    const rig = path.join(dir, 'rig-empty');
    mkdirSync(rig, { recursive: true });
    const r = await check('rig_versions', config({ rigBase: rig }));
    expect(r.severity).toBe('info');
    expect(r.message).toContain(rig);
  });
});

describe('user_namespaces', () => {
  it('the real clone probe is ok on this machine', async () => {
    const r = await check('user_namespaces', config());
    expect(r.severity).toBe('ok');
    expect(r.message).toContain('uid 63050');
  });

  function fixture(name: string, values: Record<string, string>): string {
    const root = path.join(dir, `sysctl-${name}`);
    for (const [file, value] of Object.entries(values)) {
      mkdirSync(path.dirname(path.join(root, file)), { recursive: true });
      writeFileSync(path.join(root, file), `${value}\n`);
    }
    mkdirSync(root, { recursive: true });
    return root;
  }

  it('reads the sysctls: 0, 1 and absent', async () => {
    expect(
      await readUsernsSysctls(
        fixture('zero', {
          'user/max_user_namespaces': '0',
          'kernel/unprivileged_userns_clone': '0',
          'kernel/apparmor_restrict_unprivileged_userns': '0',
        }),
      ),
    ).toEqual({ maxUserNamespaces: 0, unprivilegedUsernsClone: 0, apparmorRestrict: 0 });
    expect(
      await readUsernsSysctls(
        fixture('one', { 'user/max_user_namespaces': '1', 'kernel/apparmor_restrict_unprivileged_userns': '1' }),
      ),
    ).toEqual({ maxUserNamespaces: 1, apparmorRestrict: 1 });
    expect(await readUsernsSysctls(fixture('absent', {}))).toEqual({});
  });

  const denied = { ok: false, errno: 1, code: 'EPERM', detail: 'unshare(CLONE_NEWUSER|CLONE_NEWNS): EPERM' };

  it('names the sysctl that denies it, and the fix', () => {
    const max = judgeUserNamespaces(denied, { maxUserNamespaces: 0 }, 'as uid 63050');
    expect(max.severity).toBe('error');
    expect(max.message).toContain('sysctl -w user.max_user_namespaces=');
    expect(max.message).toContain('EPERM');

    const clone = judgeUserNamespaces(denied, { maxUserNamespaces: 100, unprivilegedUsernsClone: 0 }, 'as uid 63050');
    expect(clone.message).toContain('sysctl -w kernel.unprivileged_userns_clone=1');

    const aa = judgeUserNamespaces(
      { ...denied, detail: 'mount(MS_PRIVATE): EPERM' },
      { maxUserNamespaces: 100, apparmorRestrict: 1 },
      'as uid 63050',
    );
    expect(aa.message).toContain('sysctl -w kernel.apparmor_restrict_unprivileged_userns=0');
    expect(aa.message).toContain('mount(MS_PRIVATE)');
  });

  it('blames seccomp or an LSM when the sysctls allow it but the clone is denied', () => {
    const r = judgeUserNamespaces(denied, { maxUserNamespaces: 100, unprivilegedUsernsClone: 1 }, 'as uid 63050');
    expect(r.severity).toBe('error');
    expect(r.message).toContain('seccomp');
    expect(r.message).toContain('EPERM');
  });

  it('trusts the real probe over the sysctls', async () => {
    const root = fixture('deny-all', { 'user/max_user_namespaces': '0' });
    const { report } = await runPreflightTimed(config(), { procSysRoot: root });
    const r = result(report, 'user_namespaces');
    expect(r.severity).toBe('ok');
    expect(r.message).toContain('user.max_user_namespaces=0');
  });
});

describe('port_range and resource_limits', () => {
  it('port_range warns under 10 ports', async () => {
    const r = await check('port_range', config({ portRangeStart: 22000, portRangeEnd: 22004 }));
    expect(r.severity).toBe('warning');
    expect(r.message).toContain('5 ports');
    expect(r.message).toContain('port_range_start');
  });

  it('port_range warns when the kernel could hand out worker ports itself (its ephemeral range, not reserved)', async () => {
    // Found by an attacker: inside ip_local_port_range, listen() without bind() took a neighbour's exact port.
    const root = path.join(dir, 'sysctl-ports');
    mkdirSync(path.join(root, 'net', 'ipv4'), { recursive: true });
    const run = async (start: number, end: number, reserved: string) => {
      writeFileSync(path.join(root, 'net', 'ipv4', 'ip_local_port_range'), '32768\t60999\n');
      writeFileSync(path.join(root, 'net', 'ipv4', 'ip_local_reserved_ports'), `${reserved}\n`);
      const { report } = await runPreflightTimed(config({ portRangeStart: start, portRangeEnd: end }), { procSysRoot: root });
      return result(report, 'port_range');
    };
    const inside = await run(40000, 40999, '');
    expect(inside.severity).toBe('warning');
    expect(inside.message).toMatch(/^1000 ports of the range 40000-40999 \(40000-40999\) lie in the kernel's ephemeral range \(net\.ipv4\.ip_local_port_range 32768-60999\)/);
    expect(inside.message).toContain('sysctl -w net.ipv4.ip_local_reserved_ports=40000-40999');
    // Partly reserved: what is left is named.
    expect((await run(40000, 40999, '8080,40000-40989')).message).toMatch(/^10 ports of the range 40000-40999 \(40990-40999\)/);
    expect((await run(32760, 32770, '32769')).message).toMatch(/^2 ports of the range 32760-32770 \(32768, 32770\)/);
    expect((await run(40000, 40999, '40000-40999')).severity).toBe('ok');
    const below = await run(22000, 22099, '');
    expect(below.severity).toBe('ok');
    expect(below.message).toBe("port range 22000-22099: 100 ports, none in the kernel's ephemeral range (32768-60999)");
  });

  it('port_range is ok at 10 ports and an error when inverted', async () => {
    expect((await check('port_range', config({ portRangeStart: 22000, portRangeEnd: 22009 }))).severity).toBe('ok');
    expect((await check('port_range', config({ portRangeStart: 22010, portRangeEnd: 22000 }))).severity).toBe('error');
  });

  it('resource_limits warns naming the keys that are set when limits are off', async () => {
    const off = { resourceLimits: 'off' as const };
    const mem = await check('resource_limits', config(off, { server: { defaultMemoryLimit: '2g' } }));
    expect(mem.severity).toBe('warning');
    expect(mem.message).toContain('default_memory_limit');
    expect(mem.message).not.toContain('default_cpu_limit');
    const both = await check('resource_limits', config(off, { server: { defaultMemoryLimit: '2g', defaultCpuLimit: 2 } }));
    expect(both.message).toContain('default_memory_limit');
    expect(both.message).toContain('default_cpu_limit');
    expect((await check('resource_limits', config(off))).severity).toBe('info');
    // More (cgroups usable or not, 'required'): test/cgroup.test.ts.
  });
});

describe('seccomp_profile', () => {
  it('is ok when unset', async () => {
    const r = await check('seccomp_profile', config({ seccompProfile: '' }));
    expect(r.severity).toBe('ok');
    expect(r.message).toContain('none');
  });

  it('is an error for a missing file, a directory and an empty file', async () => {
    const empty = path.join(dir, 'empty.bpf');
    writeFileSync(empty, '');
    for (const p of [path.join(dir, 'missing.bpf'), dir, empty]) {
      const r = await check('seccomp_profile', config({ seccompProfile: p }));
      expect(r.severity, p).toBe('error');
      expect(r.message).toContain(p);
      expect(r.message).toContain('seccomp_profile');
    }
  });

  it('is ok for a non-empty regular file', async () => {
    const p = path.join(dir, 'allow.bpf');
    // BPF_RET | BPF_K, SECCOMP_RET_ALLOW: one instruction.
    const insn = Buffer.alloc(8);
    insn.writeUInt16LE(0x06, 0);
    insn.writeUInt32LE(0x7fff0000, 4);
    writeFileSync(p, insn);
    const r = await check('seccomp_profile', config({ seccompProfile: p }));
    expect(r.severity).toBe('ok');
    expect(r.message).toContain('1 BPF instruction');
  });

  it("is ok for 'builtin', describing the filter", async () => {
    const r = await check('seccomp_profile', config({ seccompProfile: 'builtin' }));
    expect(r.severity, r.message).toBe('ok');
    expect(r.message).toMatch(/built-in seccomp filter, \d+ BPF instructions/);
  });
});

describe('bwrap_host_uid_mapping', () => {
  it.runIf(process.getuid?.() === 0)('is ok as root: the host sees the worker uid and gid', async () => {
    const r = await check('bwrap_host_uid_mapping', config({ workerUidStart: 63051 }));
    expect(r.severity, r.message).toBe('ok');
    expect(r.message).toContain('uid 63051 gid 65534');
  });
});

describe('cloud_metadata', () => {
  it('is ok when the metadata address is closed', async () => {
    const r = await check('cloud_metadata', config());
    expect(r.severity).toBe('ok');
    expect(r.message).toContain('not reachable');
  });

  it('is an error when it is reachable', async () => {
    const r = await check('cloud_metadata', config({ metadataAddr: `127.0.0.1:${listeningPort}` }));
    expect(r.severity).toBe('error');
    expect(r.message).toContain(`127.0.0.1:${listeningPort}`);
    expect(r.message).toContain('skip_metadata_check');
  });

  it('is info when skipped, and worker_egress leaves it out', async () => {
    const report = await runPreflight(config({ metadataAddr: `127.0.0.1:${listeningPort}`, skipMetadataCheck: true }));
    expect(result(report, 'cloud_metadata').severity).toBe('info');
    const egress = result(report, 'worker_egress');
    expect(egress.severity).toBe('ok');
    expect(egress.message).not.toContain('metadata');
  });

  it('is an error for an address that is not host:port', async () => {
    expect((await check('cloud_metadata', config({ metadataAddr: 'metadata' }))).severity).toBe('error');
  });
});

describe('redis_auth', () => {
  it('is an error when Redis answers PING without a password', async () => {
    const r = await check('redis_auth', config({}, { redis: { url: `redis://127.0.0.1:${REDIS_OPEN_PORT}` } }));
    expect(r.severity).toBe('error');
    expect(r.message).toContain('requirepass');
  });

  it('is ok when Redis requires a password', async () => {
    const r = await check('redis_auth', config({}, { redis: { url: `redis://:sekrit@127.0.0.1:${REDIS_AUTH_PORT}` } }));
    expect(r.severity, r.message).toBe('ok');
  });

  it('is info when Redis is unreachable', async () => {
    const r = await check('redis_auth', config({}, { redis: { url: `redis://127.0.0.1:${closedPort}` } }));
    expect(r.severity).toBe('info');
    expect(r.message).toContain('ECONNREFUSED');
  });

  it('is info for rediss://', async () => {
    const r = await check('redis_auth', config({}, { redis: { url: `rediss://127.0.0.1:${REDIS_AUTH_PORT}` } }));
    expect(r.severity).toBe('info');
    expect(r.message).toContain('TLS');
  });

  it('is ok with no Redis configured', async () => {
    expect((await check('redis_auth', config())).severity).toBe('ok');
  });
});

describe('worker_egress', () => {
  const OFF: ProcessConfig = { networkPolicy: 'off' };
  const NEIGHBOUR_PORT = 22099; // config()'s portRangeEnd: the probe's stand-in for another worker

  it('is an error with the fixes when the sandbox reaches the metadata address', async () => {
    // A metadata_addr of its own is not among what the hooks always deny: the probe reaches it.
    const r = await check('worker_egress', config({ metadataAddr: `127.0.0.1:${listeningPort}` }));
    expect(r.severity).toBe('error');
    expect(r.message).toContain(`add "127.0.0.1:${listeningPort}" to [process] denied_connect`);
    expect(r.message).toContain(`iptables -A OUTPUT -m owner --gid-owner ${WORKER_GID} -d 127.0.0.1`);
    expect(r.message).toContain(`--dport ${listeningPort}`);
    expect(r.message).toContain('uid 63050');
    // deniedConnect then closes it: the probe runs under the same hooks.
    const denied = await check('worker_egress', config({ metadataAddr: `127.0.0.1:${listeningPort}`, deniedConnect: [`127.0.0.1:${listeningPort}`] }));
    expect(denied.severity, denied.message).toBe('ok');
    expect(denied.message).toContain(`cloud metadata 127.0.0.1:${listeningPort} (EPERM: refused by the socket hooks`);
  });

  it("finds a neighbour's port, Redis, OpenBao and Postgres refused by the socket hooks; open under 'off'", async () => {
    const services = {
      redis: { url: `redis://127.0.0.1:${REDIS_OPEN_PORT}` },
      openbao: { address: `http://127.0.0.1:${listeningPort}` },
      database: { driver: 'postgres', url: `postgres://u:p@127.0.0.1:${closedPort}/db` },
    } as const;
    const held = await check('worker_egress', config({}, services));
    expect(held.severity, held.message).toBe('ok');
    for (const target of [`another worker's port 127.0.0.1:${NEIGHBOUR_PORT}`, `Redis 127.0.0.1:${REDIS_OPEN_PORT}`, `OpenBao 127.0.0.1:${listeningPort}`, `Postgres 127.0.0.1:${closedPort}`])
      expect(held.message).toContain(`${target} (EPERM: refused by the socket hooks`);

    const open = await check('worker_egress', config(OFF, services));
    expect(open.severity, open.message).toBe('warning');
    expect(open.message).toContain(`can reach another worker's port 127.0.0.1:${NEIGHBOUR_PORT}, Redis 127.0.0.1:${REDIS_OPEN_PORT}, OpenBao 127.0.0.1:${listeningPort}`);
    expect(open.message).toContain('tenants can reach each other');
    expect(open.message).toContain(`--gid-owner ${WORKER_GID} -d 127.0.0.0/8 -p tcp --dport 22000:22099 -j REJECT`);
    expect(open.message).toContain(
      `iptables -A OUTPUT -m owner --gid-owner ${WORKER_GID} -d 127.0.0.1 -p tcp --dport ${REDIS_OPEN_PORT} -j REJECT`,
    );
    // Not "blocked": nothing listens there.
    expect(open.message).toContain(`Postgres 127.0.0.1:${closedPort} (ECONNREFUSED: nothing listens there`);
    expect(open.message).toMatch(
      new RegExp(`cloud metadata 127\\.0\\.0\\.1:${closedPort} \\(ECONNREFUSED: nothing listens there, or a firewall rejects it\\)`),
    );
  });

  it('probes whatever holds the neighbour port when it is taken', async () => {
    const holder = net.createServer((s) => s.destroy());
    await new Promise<void>((resolve) => holder.listen(NEIGHBOUR_PORT, '127.0.0.1', resolve));
    try {
      const open = await check('worker_egress', config(OFF));
      expect(open.severity, open.message).toBe('warning');
      expect(open.message).toContain(`can reach another worker's port 127.0.0.1:${NEIGHBOUR_PORT}`);
    } finally {
      await new Promise((resolve) => holder.close(resolve));
    }
  });

  it('is ok when no target is reachable', async () => {
    const r = await check('worker_egress', config());
    expect(r.severity).toBe('ok');
    expect(r.message).toContain('reaches none');
  });
});

describe('warm_pool', () => {
  const hasShiny = spawnSync('/usr/bin/Rscript', ['-e', 'library(shiny)'], { stdio: 'ignore' }).status === 0;

  it('is info without a pool', async () => {
    const r = await check('warm_pool', config());
    expect(r.severity).toBe('info');
    expect(r.message).toContain('no warm pool configured');
  });

  it.runIf(hasShiny && process.getuid?.() === 0)('is ok naming what it holds, and warns naming a missing package or R version', async () => {
    const r = await check('warm_pool', config({ warmPool: [{ size: 2 }] }));
    expect(r.severity, r.message).toBe('ok');
    expect(r.message).toContain('2 sandboxes of R (process.r_path) with shiny loaded');
    const missing = await check('warm_pool', config({ warmPool: [{ size: 1, preload: ['shiny', 'procyardNoSuchPackage'] }] }));
    expect(missing.severity).toBe('warning');
    expect(missing.message).toContain('lacks the preload package procyardNoSuchPackage');
    const version = await check('warm_pool', config({ warmPool: [{ size: 1, rVersion: '3.0.1' }] }));
    expect(version.severity).toBe('warning');
    expect(version.message).toContain('R 3.0.1 is not installed');
  });
});

describe('extra checks', () => {
  it('pidfd_support is ok on this kernel', async () => {
    const r = await check('pidfd_support', config());
    expect(r.severity).toBe('ok');
    expect(r.message).toContain(os.release());
  });

  it('bwrap_setuid warns about a set-uid bwrap', async () => {
    const fake = path.join(dir, 'setuid-bwrap');
    writeFileSync(fake, '#!/bin/sh\necho bubblewrap 0.8.0\n');
    chmodSync(fake, 0o4755);
    const r = await check('bwrap_setuid', config({ bwrapPath: fake }));
    expect(r.severity).toBe('warning');
    expect(r.message).toContain(`chmod u-s,g-s ${fake}`);
    expect((await check('bwrap_setuid', config())).severity).toBe('ok');
  });

  it('mount_targets warns naming a target that is not a directory', async () => {
    // Not under /tmp: targets there are always fine (each sandbox has its own tmpfs).
    const notDir = path.join(varTmp, 'bundle-file');
    writeFileSync(notDir, '');
    const r = await check('mount_targets', config({}, { storage: { bundleWorkerPath: notDir } }));
    expect(r.severity).toBe('warning');
    expect(r.message).toContain(notDir);
    expect(r.message).toContain('not a directory');
  });

  it('mount_targets is an error for a relative bundle path', async () => {
    const r = await check('mount_targets', config({}, { storage: { bundleWorkerPath: 'app' } }));
    expect(r.severity).toBe('error');
    expect(r.message).toContain('bundle_worker_path');
  });
});
