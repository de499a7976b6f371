// Tenant network isolation (SPEC §11): a hostile worker tries to reach another
// worker, the server's services and the metadata address, over TCP, UDP,
// MPTCP and TCP Fast Open, on every local address; and to listen where it
// should not. Each case runs under 'auto' (the cgroup socket hooks) and under
// 'off', where the same attacks succeed: the test measures the policy.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import dgram from 'node:dgram';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveProcessConfig, type Config } from '../src/config.js';
import { closeFd, landlockAbi, sockHooksAttach, sockHooksLoad } from '../src/native.js';
import { unifiedFrom } from '../src/process/cgroup-hierarchy.js';
import { runPreflight } from '../src/preflight/index.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { hookRules, socketHooksConfig } from '../src/process/socket-hooks.js';
import { FIXTURES, appSpec, testConfig } from './helpers/backend.js';
import { PYTHON, linesUntilDone, parseProbe } from './helpers/net.js';
import { isRoot, waitFor } from './helpers/proc.js';

// Ports 24500-24589 and UIDs 65500-65589 belong to this file.
const unified = (() => {
  try {
    return unifiedFrom(readFileSync('/proc/self/mountinfo', 'utf8'), readFileSync('/proc/self/cgroup', 'utf8'));
  } catch {
    return null;
  }
})();
/** The hooks need root and a cgroup2 mount; where either is missing, this file says so and skips. */
const hooksHere = isRoot && unified !== null;
if (!hooksHere) console.log(`tenant-network: skipped (${isRoot ? 'no cgroup2 mount' : 'not root'})`);

/** The host's own addresses other than loopback (link-local IPv6 needs a scope: left out). */
const hostAddresses = Object.values(os.networkInterfaces())
  .flat()
  .filter((i) => i && !i.internal && !i.address.startsWith('fe80'))
  .map((i) => i!.address);

/** The host's IPv4 subnets' broadcast addresses (10.0.0.255 for 10.0.0.5/24). */
const directedBroadcasts = Object.values(os.networkInterfaces())
  .flat()
  .filter((i) => i && i.family === 'IPv4' && !i.internal && Number(i.cidr!.split('/')[1]) < 31)
  .map((i) => {
    const bytes = i!.address.split('.').map(Number);
    const mask = i!.netmask.split('.').map(Number);
    return bytes.map((b, k) => (b | (~mask[k]! & 0xff)) & 0xff).join('.');
  });

type Item = [name: string, kind: string, host: string, port: number];

/** Whether this kernel makes UDP-Lite sockets (some builds leave it out; newer kernels drop it). */
const hasUdpLite = (() => {
  try {
    execFileSync(PYTHON, ['-c', 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

/**
 * Opens ping sockets (ICMP echo without CAP_NET_RAW) to every group, as
 * systemd sets net.ipv4.ping_group_range on most distributions, until the
 * returned function puts the old range back. This kernel's default lets no one.
 */
function openPingSockets(): () => void {
  const file = '/proc/sys/net/ipv4/ping_group_range';
  const before = readFileSync(file, 'utf8');
  writeFileSync(file, '0 2147483647');
  return () => writeFileSync(file, before);
}

/**
 * Refused by one layer or the other: the hooks say EPERM, Landlock's TCP port
 * rules (where the kernel has them) EACCES, and Landlock decides first.
 * Refusals only the hooks can make (an address, UDP) are EPERM.
 */
const REFUSED = expect.stringMatching(/^(EPERM|EACCES)$/);

/** A host service on [::]:port (TCP and UDP, both families): replies `hello from host`, keeps what it got. */
async function hostService(port: number): Promise<{ received: string[]; close(): Promise<void> }> {
  const received: string[] = [];
  const sockets = new Set<net.Socket>();
  const tcp = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    s.on('close', () => sockets.delete(s));
    s.once('data', (d) => {
      received.push(d.toString());
      s.end('hello from host\n');
    });
  });
  await new Promise<void>((resolve, reject) => {
    tcp.once('error', reject);
    tcp.listen({ port, host: '::' }, resolve);
  });
  const udp = dgram.createSocket({ type: 'udp6', reuseAddr: true });
  udp.on('message', (m) => received.push(m.toString()));
  await new Promise<void>((resolve) => udp.bind(port, '::', resolve));
  // IPv4 multicast and broadcast reach IPv4 sockets only.
  const udp4 = dgram.createSocket({ type: 'udp4', reuseAddr: true });
  udp4.on('message', (m) => received.push(m.toString()));
  await new Promise<void>((resolve) => udp4.bind(port, '0.0.0.0', resolve));
  return {
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        udp.close();
        udp4.close();
        tcp.close(() => resolve());
      }),
  };
}

/** Runs tenant-net.py with items in a new worker; its results (and it keeps serving when an item says so). */
async function probe(b: ProcessBackend, id: string, items: Item[]): Promise<Record<string, string>> {
  await b.spawn(appSpec(id, 'serve', { cmd: [PYTHON, '/tmp/app/tenant-net.py', JSON.stringify(items)], bundlePath: FIXTURES }));
  return parseProbe(await linesUntilDone(b, id, 30_000));
}

async function logsOf(b: ProcessBackend, id: string): Promise<string[]> {
  const stream = await b.logs(id);
  const lines: string[] = [];
  const timer = setTimeout(() => stream.close(), 200);
  for await (const line of stream) lines.push(line);
  clearTimeout(timer);
  return lines;
}

/** The cgroup2 directory a process is in. */
function unifiedDirOf(pid: number): string {
  const line = readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n').find((l) => l.startsWith('0::'))!;
  return path.join(unified!.mountPoint, line.slice(3));
}

/**
 * One scenario under a mode: a victim worker serving TCP and UDP on its
 * port; the test's "hostile port", a listener on [::] at a port of the
 * workers' range (what a worker listening on every address would be); a
 * denied service and the server's Redis on [::]; an allowed service on
 * loopback. An attacker worker tries them all.
 */
function scenario(mode: 'auto' | 'off', base: number, uidBase: number) {
  const workerPorts: [number, number] = [base, base + 9];
  const HOSTILE = base + 9; // in the range; the test holds it, so no worker gets it
  const DENIED = base + 10;
  const REDIS = base + 11;
  const ALLOWED = base + 12;
  const config: Config = {
    ...testConfig(workerPorts, [uidBase, uidBase + 9], { networkPolicy: mode, deniedConnect: [`127.0.0.1:${DENIED}`] }),
    redis: { url: `redis://:secret@127.0.0.1:${REDIS}` },
  };
  const services: Awaited<ReturnType<typeof hostService>>[] = [];
  let b: ProcessBackend;
  let victimPort = 0;
  let results: Record<string, string> = {};
  const on = mode === 'auto';

  beforeAll(async () => {
    for (const port of [HOSTILE, DENIED, REDIS, ALLOWED]) services.push(await hostService(port));
    b = new ProcessBackend(config);
    await probe(b, 'victim', [['victim', 'serve', '127.0.0.1', -1]]);
    victimPort = Number((await b.addr('victim')).split(':')[1]);
    await b.waitReady('victim', { timeoutMs: 20_000 });
    const everywhere = ['127.0.0.1', '127.0.0.2', '0.0.0.0', '::1', '::', '::ffff:127.0.0.1', ...hostAddresses];
    const items: Item[] = [
      ['victimTcp', 'tcp', '127.0.0.1', victimPort],
      ['victimUdp', 'udp', '127.0.0.1', victimPort],
      ['victimMapped', 'tcp', '::ffff:127.0.0.1', victimPort],
      ['victimLite', 'udplite', '127.0.0.1', victimPort],
      ...everywhere.flatMap((host, i): Item[] => [
        [`hostileTcp${i}`, 'tcp', host, HOSTILE],
        [`hostileUdp${i}`, 'udp', host, HOSTILE],
      ]),
      // Delivered to the host's own sockets too: multicast (sent, out of lo with TTL 0, so it stays
      // here) and broadcast (connected only: a send would leave the machine).
      ['mcastHostile', 'mcast', '224.0.0.1', HOSTILE],
      ['mcastDenied', 'mcast', '224.0.0.1', DENIED],
      ['bcastHostile', 'udpconnect', '255.255.255.255', HOSTILE],
      ['mcast6Hostile', 'udpconnect', 'ff02::1', HOSTILE],
      ...directedBroadcasts.map((host, i): Item => [`bcastDirected${i}`, 'udpconnect', host, HOSTILE]),
      ['mptcp', 'mptcp', '127.0.0.1', HOSTILE],
      ['portRange', 'portrange', '', victimPort],
      ['tfo', 'tfo', '127.0.0.1', HOSTILE],
      ['tfo6', 'tfo', '::1', HOSTILE],
      ['denied', 'tcp', '127.0.0.1', DENIED],
      ['deniedOther', 'tcp', '127.0.0.3', DENIED],
      ['deniedUdp', 'udp', '127.0.0.1', DENIED],
      ...hostAddresses.map((host, i): Item => [`deniedHost${i}`, 'tcp', host, DENIED]),
      ['redis', 'tcp', '127.0.0.1', REDIS],
      ['redis6', 'tcp', '::1', REDIS],
      ['allowed', 'tcp', '127.0.0.1', ALLOWED],
      ['metadata', 'udpconnect', '169.254.169.254', 80],
      ['metadata6', 'udpconnect', 'fd00:ec2::254', 80],
      ['serve', 'serve', '127.0.0.1', -1],
    ];
    results = await probe(b, 'attacker', items);
    await b.waitReady('attacker', { timeoutMs: 20_000 });
  }, 90_000);

  afterAll(async () => {
    await b?.close();
    await Promise.all(services.map((s) => s.close()));
  });

  it(`${on ? 'no' : 'every'} connect or datagram reaches the other worker`, async () => {
    for (const name of ['victimTcp', 'victimUdp', 'victimMapped'])
      expect(results[name], name).toBe(on ? 'EPERM' : name === 'victimUdp' ? 'ok' : 'ok:hello from victim');
    // UDP-Lite: connect(2) and send(2) of a connected socket, which no hook sees; refused when the socket is made.
    expect(results.victimLite).toBe(on ? 'EPERM' : hasUdpLite ? 'ok:hello from victim' : 'EPROTONOSUPPORT');
    const victimGot = (await logsOf(b, 'victim')).filter((l) => l.startsWith('got=from-'));
    if (on) expect(victimGot).toEqual([]);
    else expect(victimGot.sort()).toEqual(['got=from-victimLite', 'got=from-victimMapped', 'got=from-victimTcp', 'got=from-victimUdp'].filter((g) => hasUdpLite || !g.endsWith('Lite')));
  });

  it(`${on ? 'no' : 'every'} local address reaches a port of the workers' range, over TCP and UDP`, async () => {
    const names = Object.keys(results).filter((n) => n.startsWith('hostile'));
    expect(names.length).toBeGreaterThanOrEqual(12);
    for (const name of names) expect(results[name], name).toBe(on ? 'EPERM' : name.includes('Tcp') ? 'ok:hello from host' : 'ok');
    // The datagrams are seen arriving (or not) at the listener.
    await waitFor(() => on || services[0]!.received.filter((r) => r.startsWith('from-hostileUdp')).length === names.length / 2, 2000);
    const got = services[0]!.received.filter((r) => r.startsWith('from-hostile'));
    expect(got.length).toBe(on ? 0 : names.length);
  });

  it(`multicast and broadcast ${on ? 'reach no' : 'reach a'} worker port or denied service of the host's own`, async () => {
    // Found by an attacker: 224.0.0.1 out of lo reached a host daemon on 0.0.0.0 at a denied port, and its reply came back.
    const names = ['mcastHostile', 'mcastDenied', 'bcastHostile', 'mcast6Hostile', ...directedBroadcasts.map((_, i) => `bcastDirected${i}`)];
    if (on) for (const name of names) expect(results[name], name).toBe('EPERM');
    else expect([results.mcastHostile, results.mcastDenied]).toEqual(['ok', 'ok']);
    const seen = () => services.flatMap((s) => s.received).filter((r) => r.startsWith('from-mcast'));
    if (!on) await waitFor(() => seen().length === 2, 2000);
    expect(seen().sort()).toEqual(on ? [] : ['from-mcastDenied', 'from-mcastHostile']);
  });

  it(`MPTCP and TCP Fast Open ${on ? 'do not pass either' : 'pass'}; IP_LOCAL_PORT_RANGE ${on ? 'is refused' : 'narrows the pick'}`, () => {
    // Landlock's TCP rules bring the seccomp socket filter that refuses it (also without the hooks).
    expect(results.portRange).toBe(on && landlockAbi().abi >= 4 ? 'EPERM' : 'ok');
    if (on) {
      expect(results.mptcp).toBe('EPERM');
      expect(results.tfo).toBe('EPERM');
      expect(results.tfo6).toBe('EPERM');
    } else {
      expect(results.tfo).toBe('ok:hello from host');
      // The kernel may lack MPTCP; where it has it, the connect goes through.
      expect(['ok:hello from host', 'EPROTONOSUPPORT', 'ENOPROTOOPT']).toContain(results.mptcp);
    }
  });

  it(`${on ? 'no' : 'a'} denied service, Redis or metadata address is reached; an allowed service is`, () => {
    const denied = ['denied', 'deniedOther', 'deniedUdp', 'redis', 'redis6', ...hostAddresses.map((_, i) => `deniedHost${i}`)];
    for (const name of denied) expect(results[name], name).toBe(on ? 'EPERM' : name === 'deniedUdp' ? 'ok' : 'ok:hello from host');
    expect(results.metadata).toBe(on ? 'EPERM' : 'ok');
    expect(results.allowed).toBe('ok:hello from host');
  });

  it('the server reaches both workers', async () => {
    expect(await b.healthCheck('victim')).toBe(true);
    expect(await b.healthCheck('attacker')).toBe(true);
    const reply = await new Promise<string>((resolve, reject) => {
      const s = net.connect(victimPort, '127.0.0.1', () => s.write('from-server'));
      s.once('data', (d) => {
        resolve(d.toString().trim());
        s.destroy();
      });
      s.once('error', reject);
    });
    expect(reply).toBe('hello from victim');
  });

  it(`a listener the kernel bound to 0.0.0.0 (listen without bind) ${on ? 'takes no' : 'takes a'} connection from another machine`, async () => {
    const r = await probe(b, 'afar', [['listen', 'listen', '', 0], ['hold', 'sleep', '', 0]]);
    const port = Number(r.listen!.split(':')[1]);
    expect(port).toBeGreaterThan(0);
    // Live: a connect from this host gets through.
    await new Promise<void>((resolve, reject) => net.connect(port, '127.0.0.1', resolve).on('error', reject));
    if (existsSync('/dev/net/tun')) {
      const { stdout } = await promisify(execFile)(PYTHON, [path.join(FIXTURES, 'syn-from-afar.py'), String(port)]);
      expect(stdout.trim()).toBe(on ? 'none' : 'synack');
    } else console.log('tenant-network: no /dev/net/tun, so no SYN from another machine could be made');
    await b.removeResource({ id: 'afar', kind: 'container', labels: {} });
  });

  return { backend: () => b, on };
}

describe.runIf(hooksHere)("networkPolicy 'auto': the cgroup socket hooks", () => {
  const { backend } = scenario('auto', 24500, 65500);

  it('a worker binds only its own port on loopback; a listener on 0.0.0.0 is refused', async () => {
    const b = backend();
    const r = await probe(b, 'binder', [
      ['any4', 'bind', '0.0.0.0', -1],
      ['any6', 'bind', '::', -1],
      ['udpAny', 'udpbind', '0.0.0.0', -1],
      ['host', 'bind', hostAddresses[0] ?? '0.0.0.0', -1],
      ['otherPort', 'bind', '127.0.0.1', 24509],
      ['ephemeral', 'bind', '127.0.0.1', 0],
      ['own4', 'bind', '127.0.0.1', -1],
      ['own6', 'bind', '::1', -1],
      // An app may talk to itself: its own port is the one of the range it reaches.
      ['self4', 'connect', '127.0.0.1', -1],
      ['self6', 'connect', '::1', -1],
      ['selfUdp', 'udp', '127.0.0.1', -1],
    ]);
    const port = (await b.addr('binder')).split(':')[1];
    expect(r).toMatchObject({ any4: 'EPERM', any6: 'EPERM', udpAny: 'EPERM', host: 'EPERM', otherPort: REFUSED, ephemeral: REFUSED });
    expect(r.own4).toBe(`ok:${port}`);
    expect(r.own6).toBe(`ok:${port}`);
    expect(r).toMatchObject({ self4: 'ok', self6: 'ok', selfUdp: 'ok' });
    await b.removeResource({ id: 'binder', kind: 'container', labels: {} });
  });

  it('a build binds nothing and reaches no worker', async () => {
    const b = backend();
    const victimPort = Number((await b.addr('victim')).split(':')[1]);
    const items: Item[] = [
      ['bind', 'bind', '127.0.0.1', 0],
      ['bindRange', 'bind', '127.0.0.1', 24508],
      ['victim', 'tcp', '127.0.0.1', victimPort],
      ['allowed', 'tcp', '127.0.0.1', 24512],
    ];
    const result = await b.build({
      appId: 'net',
      bundleId: 'net-build',
      cmd: [PYTHON, '/tmp/app/tenant-net.py', JSON.stringify(items)],
      mounts: [{ source: FIXTURES, target: '/tmp/app', readOnly: true }],
    });
    const r = parseProbe(result.logs.split('\n'));
    expect(r).toEqual({ bind: REFUSED, bindRange: REFUSED, victim: 'EPERM', allowed: 'ok:hello from host' });
  });

  it('the hooks live in one cgroup2 directory per backend, which goes with it', async () => {
    const b = new ProcessBackend(testConfig([24530, 24534], [65530, 65534]));
    await b.spawn(appSpec('w1'));
    await b.spawn(appSpec('w2'));
    const pids = ['w1', 'w2'].map((id) => (b as unknown as { workers: Map<string, { sandbox: { pid: number } }> }).workers.get(id)!.sandbox.pid);
    const dirs = new Set(pids.map(unifiedDirOf));
    expect(dirs.size).toBe(1);
    const [dir] = [...dirs] as [string];
    // Its name says whose it is: a later server can tell a dead one's.
    expect(path.basename(dir)).toMatch(new RegExp(`^procyard-net-\\d+-${process.pid}-\\d+-[0-9a-f]+$`));
    // The server itself stays outside it.
    expect(unifiedDirOf(process.pid)).not.toBe(dir);
    await b.close();
    expect(existsSync(dir)).toBe(false);
  });

  it("preflight: network_policy says the hooks hold; worker_egress's probe runs under them and leaves no directory", async () => {
    const parent = path.join(unified!.mountPoint, readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'))!.slice(3));
    const own = () => readdirSync(parent).filter((n) => n.startsWith(`procyard-net-`) && n.includes(`-${process.pid}-`));
    const before = own();
    const report = await runPreflight({
      ...testConfig([24530, 24534], [65530, 65534], { metadataAddr: '127.0.0.1:9', deniedConnect: ['10.20.0.0/16'] }),
      redis: { url: 'redis://:pw@127.0.0.1:24533' },
    });
    const policy = report.results.find((x) => x.name === 'network_policy')!;
    expect(policy.severity, policy.message).toBe('ok');
    expect(policy.message).toMatch(/\[socket hooks\] cgroup socket hooks \(cgroup2 at .*\): workers connect and send to no port of 24530-24534/);
    expect(policy.message).toContain('redis.url (127.0.0.1:24533), on any local address port 24533, 10.20.0.0/16 any port');
    const egress = report.results.find((x) => x.name === 'worker_egress')!;
    expect(egress.severity, egress.message).toBe('ok');
    expect(egress.message).toContain("another worker's port 127.0.0.1:24534 (EPERM: refused by the socket hooks");
    expect(own()).toEqual(before);
  });
});

describe.runIf(hooksHere)("networkPolicy 'off': the same attacks succeed", () => {
  const { backend } = scenario('off', 24540, 65540);

  it('a worker binds 0.0.0.0', async () => {
    const r = await probe(backend(), 'binder', [['any4', 'bind', '0.0.0.0', -1]]);
    expect(r.any4).toMatch(/^ok:/);
  });
});

/** tenant-net.py serving TCP, UDP and UDP-Lite on 127.0.0.1:port on the host, as `host`; stop() ends it. */
async function hostLiteService(port: number): Promise<{ stop(): void }> {
  const child = spawn(PYTHON, [path.join(FIXTURES, 'tenant-net.py'), JSON.stringify([['host', 'serve', '127.0.0.1', port]])], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.stdout.on('data', (d: Buffer) => d.toString().includes('done') && resolve());
  });
  return { stop: () => child.kill('SIGKILL') };
}

describe.runIf(hooksHere)('allowedConnect and allowedConnectPorts', () => {
  const services: Awaited<ReturnType<typeof hostService>>[] = [];
  let lite: { stop(): void };
  let closePing: () => void;
  beforeAll(async () => {
    for (const port of [24582, 24583, 24584]) services.push(await hostService(port));
    lite = await hostLiteService(24581);
    closePing = openPingSockets();
  });
  afterAll(async () => {
    closePing?.();
    lite?.stop();
    await Promise.all(services.map((s) => s.close()));
  });

  it('what the other protocols reach from the host: UDP-Lite where the kernel has it, ICMP echo', async () => {
    const { stdout } = await promisify(execFile)(PYTHON, [
      path.join(FIXTURES, 'tenant-net.py'),
      JSON.stringify([
        ['lite', 'udplite', '127.0.0.1', 24581],
        ['ping', 'ping', '127.0.0.1', 0],
        ['ping6', 'ping', '::1', 0],
      ]),
    ]);
    expect(parseProbe(stdout.split('\n'))).toEqual({ lite: hasUdpLite ? 'ok:hello from host' : 'EPROTONOSUPPORT', ping: 'ok:echo', ping6: 'ok:echo' });
  });

  it('allowedConnect: only the listed destinations are reached, whatever the protocol', async () => {
    const b = new ProcessBackend(testConfig([24560, 24564], [65560, 65564], { allowedConnect: ['127.0.0.1:24582', '[::1]:24583'] }));
    try {
      const r = await probe(b, 'allow', [
        ['listed', 'tcp', '127.0.0.1', 24582],
        ['listed6', 'tcp', '::1', 24583],
        ['wrongFamily', 'tcp', '127.0.0.1', 24583],
        ['other', 'tcp', '127.0.0.1', 24584],
        ['otherUdp', 'udp', '127.0.0.1', 24584],
        // Protocols whose sends no hook sees: refused when the socket is made.
        ['otherLite', 'udplite', '127.0.0.1', 24581],
        ['ping', 'ping', '127.0.0.1', 0],
        ['ping6', 'ping', '::1', 0],
      ]);
      expect(r).toEqual({
        listed: 'ok:hello from host',
        listed6: 'ok:hello from host',
        wrongFamily: 'EPERM',
        other: 'EPERM',
        otherUdp: 'EPERM',
        otherLite: 'EPERM',
        ping: 'EPERM',
        ping6: 'EPERM',
      });
    } finally {
      await b.close();
    }
  });

  it('allowedConnectPorts: TCP only to those ports (UDP as before), also where Landlock has no TCP rules', async () => {
    const b = new ProcessBackend(testConfig([24565, 24569], [65565, 65569], { allowedConnectPorts: [24582] }));
    try {
      const r = await probe(b, 'ports', [
        ['listed', 'tcp', '127.0.0.1', 24582],
        ['other', 'tcp', '127.0.0.1', 24584],
        ['otherUdp', 'udp', '127.0.0.1', 24584],
      ]);
      expect(r).toEqual({ listed: 'ok:hello from host', other: REFUSED, otherUdp: 'ok' });
    } finally {
      await b.close();
    }
  });
});

describe.runIf(hooksHere)('two servers on one host with different port ranges', () => {
  // Found by an attacker: each backend's hooks refused its own range only, so
  // a worker of one server fetched the page of another server's worker.
  // Backends sharing a runtime directory list their ranges there (port-ranges/).
  const runtimeDir = mkdtempSync(path.join(os.tmpdir(), 'procyard-two-servers-'));
  afterAll(() => rmSync(runtimeDir, { recursive: true, force: true }));

  it("no worker of one reaches the other's, whichever server started first", async () => {
    const shared = mkdtempSync(path.join(os.tmpdir(), 'procyard-two-servers-data-'));
    chmodSync(shared, 0o777);
    const first = new ProcessBackend(testConfig([24513, 24516], [65513, 65516], { runtimeDir }));
    let second: ProcessBackend | undefined;
    let third: ProcessBackend | undefined;
    try {
      // first's attacker runs before second exists: it waits for the port to try, then tries it over TCP and UDP.
      const attack =
        'import os, socket, time\n' +
        "path = '/shared/port'\n" +
        'for _ in range(200):\n' +
        '    if os.path.exists(path): break\n' +
        '    time.sleep(0.1)\n' +
        'port = int(open(path).read())\n' +
        'for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):\n' +
        '    try:\n' +
        '        s = socket.socket(socket.AF_INET, kind); s.settimeout(3); s.connect(("127.0.0.1", port))\n' +
        '        s.send(b"from-early"); print("early=ok", flush=True)\n' +
        '    except OSError as e:\n' +
        '        print("early=" + (errno.errorcode.get(e.errno, str(e.errno))), flush=True)\n' +
        'print("done", flush=True)\n';
      await first.spawn(appSpec('early', 'serve', { cmd: [PYTHON, '-c', `import errno\n${attack}`], dataMounts: [{ source: shared, target: '/shared', readOnly: true }] }));
      second = new ProcessBackend(testConfig([24517, 24520], [65517, 65520], { runtimeDir }));
      await probe(second, 'victim', [['victim', 'serve', '127.0.0.1', -1]]);
      await second.waitReady('victim', { timeoutMs: 20_000 });
      const victimPort = Number((await second.addr('victim')).split(':')[1]);
      writeFileSync(path.join(shared, 'port.tmp'), String(victimPort));
      renameSync(path.join(shared, 'port.tmp'), path.join(shared, 'port'));
      // The early attacker, started before the victim's server listed its range.
      expect((await linesUntilDone(first, 'early')).filter((l) => l.startsWith('early='))).toEqual(['early=EPERM', 'early=EPERM']);
      // One started after: both ways.
      const late = await probe(first, 'late', [
        ['tcp', 'tcp', '127.0.0.1', victimPort],
        ['udp', 'udp', '127.0.0.1', victimPort],
      ]);
      expect(late).toEqual({ tcp: 'EPERM', udp: 'EPERM' });
      await probe(first, 'other-victim', [['other', 'serve', '127.0.0.1', -1]]);
      const otherPort = Number((await first.addr('other-victim')).split(':')[1]);
      expect(await probe(second, 'reverse', [['tcp', 'tcp', '127.0.0.1', otherPort]])).toEqual({ tcp: 'EPERM' });
      // Nothing got through, and the server still reaches both.
      expect((await logsOf(second, 'victim')).filter((l) => l.startsWith('got='))).toEqual([]);
      expect(await second.healthCheck('victim')).toBe(true);
      expect(await first.healthCheck('other-victim')).toBe(true);
      // A server without hooks of its own (networkPolicy 'off') lists its range too, and is kept from.
      third = new ProcessBackend(testConfig([24521, 24524], [65521, 65524], { runtimeDir, networkPolicy: 'off' }));
      await probe(third, 'unhooked-victim', [['unhooked', 'serve', '127.0.0.1', -1]]);
      await third.waitReady('unhooked-victim', { timeoutMs: 20_000 });
      const unhookedPort = Number((await third.addr('unhooked-victim')).split(':')[1]);
      expect(await probe(first, 'late2', [['tcp', 'tcp', '127.0.0.1', unhookedPort]])).toEqual({ tcp: 'EPERM' });
      // Each lists its range; close() takes it out.
      expect(readdirSync(path.join(runtimeDir, 'port-ranges')).length).toBe(3);
    } finally {
      await third?.close();
      await second?.close();
      await first.close();
      rmSync(shared, { recursive: true, force: true });
    }
    expect(readdirSync(path.join(runtimeDir, 'port-ranges'))).toEqual([]);
  }, 90_000);
});

// The hooks alone, without Landlock or the seccomp socket filter that a
// sandbox also gets: a process put in a cgroup2 directory carrying them.
describe.runIf(hooksHere)('the socket hooks alone (no sandbox)', () => {
  const dir = unified ? path.join(unified.mountPoint, unified.ownPath, `procyard-test-hooks-${process.pid}`) : '';
  let fds: number[] = [];
  let service: Awaited<ReturnType<typeof hostService>>;
  let closePing: () => void;

  beforeAll(async () => {
    service = await hostService(24585);
    closePing = openPingSockets();
    const p = resolveProcessConfig(testConfig([24585, 24589], [65585, 65589]));
    const hooks = await sockHooksLoad(hookRules(socketHooksConfig({}, p), []));
    fds = [...hooks.programs.map((x) => x.fd), hooks.uidPorts, hooks.localAddrs, hooks.otherPorts];
    mkdirSync(dir);
    sockHooksAttach(hooks.programs.map((x) => x.fd), dir);
  });
  afterAll(async () => {
    closePing?.();
    if (existsSync(dir)) rmdirSync(dir);
    for (const fd of fds) closeFd(fd);
    await service?.close();
  });

  /** tenant-net.py items run as root in dir (inside: true) or beside it. */
  async function runIn(inside: boolean, items: Item[]): Promise<Record<string, string>> {
    const script = path.join(os.tmpdir(), `procyard-hooks-${process.pid}.py`);
    writeFileSync(script, readFileSync(path.join(FIXTURES, 'tenant-net.py')));
    const enter = inside ? `echo 0 > ${dir}/cgroup.procs && ` : '';
    const { stdout } = await promisify(execFile)('/bin/sh', ['-c', `${enter}exec ${PYTHON} ${script} '${JSON.stringify(items)}'`], { encoding: 'utf8' });
    return parseProbe(stdout.split('\n'));
  }

  const items: Item[] = [
    ['tcp', 'tcp', '127.0.0.1', 24585],
    ['mptcp', 'mptcp', '127.0.0.1', 24585],
    ['tfo', 'tfo', '127.0.0.1', 24585],
    ['tfo6', 'tfo', '::1', 24585],
    ['udp', 'udp', '::ffff:127.0.0.1', 24585],
    ['bind', 'bind', '127.0.0.1', 24586],
    ['lite', 'udplite', '127.0.0.1', 24585],
    ['ping', 'ping', '127.0.0.1', 0],
  ];

  it('refuse MPTCP, TCP Fast Open and UDP as they refuse TCP; and any socket but TCP and UDP', async () => {
    const hasMptcp = (await runIn(false, items)).mptcp === 'ok:hello from host';
    expect(await runIn(true, items)).toEqual({
      tcp: 'EPERM',
      mptcp: hasMptcp ? 'EPERM' : expect.any(String),
      tfo: 'EPERM',
      tfo6: 'EPERM',
      udp: 'EPERM',
      bind: 'EPERM',
      lite: hasUdpLite ? 'EPERM' : 'EPROTONOSUPPORT',
      ping: 'EPERM',
    });
  });

  it('leave every process outside the directory alone', async () => {
    expect(await runIn(false, items)).toMatchObject({
      tcp: 'ok:hello from host',
      tfo: 'ok:hello from host',
      tfo6: 'ok:hello from host',
      udp: 'ok',
      bind: 'ok:24586',
      // no UDP-Lite listener there: the port-unreachable reply ends the wait
      lite: hasUdpLite ? 'ECONNREFUSED' : 'EPROTONOSUPPORT',
      ping: 'ok:echo',
    });
  });
});

describe.runIf(isRoot && existsSync('/usr/bin/setpriv'))('a server without the right to load programs (not root)', () => {
  // The server runs as an unprivileged uid of this file's range; its workers run as that uid too.
  const UID = 65579;

  async function asUser(mode: 'auto' | 'required', ports: [number, number]) {
    const fixture = path.join(FIXTURES, 'nonroot-hooks.mjs');
    const { stdout } = await promisify(execFile)(
      '/usr/bin/setpriv',
      ['--reuid', String(UID), '--regid', '65534', '--clear-groups', process.execPath, fixture, mode, String(ports[0]), String(ports[1])],
      { cwd: '/', encoding: 'utf8', timeout: 30_000 },
    );
    return JSON.parse(stdout.trim().split('\n').pop()!) as {
      uid: number;
      spawned?: boolean;
      http?: string;
      error?: { name: string; message: string };
      managed: number;
      warnings: string[];
    };
  }

  it("'auto': the worker runs and the server reaches it; the backend warns once that workers can reach each other", async () => {
    const r = await asUser('auto', [24570, 24574]);
    expect(r.uid).toBe(UID);
    expect(r.error).toBeUndefined();
    expect(r.spawned).toBe(true);
    expect(r.http).toBeTruthy();
    const hookWarnings = r.warnings.filter((w) => w.includes('no socket hooks'));
    expect(hookWarnings).toHaveLength(1);
    expect(hookWarnings[0]).toMatch(/can reach each other's ports.*not allowed to this server.*needs root/);
  });

  it("'required': spawn rejects with a NetworkPolicyError naming the cause, and nothing is left", async () => {
    const r = await asUser('required', [24575, 24578]);
    expect(r.spawned).toBeUndefined();
    expect(r.error?.name).toBe('NetworkPolicyError');
    expect(r.error?.message).toMatch(/networkPolicy 'required'.*loading BPF programs is not allowed to this server \(bpf\(.*\): EPERM; it needs root/);
    expect(r.managed).toBe(0);
  });

  it("preflight: network_policy warns under 'auto' and errors under 'required'; worker_egress finds the neighbour's port reachable", async () => {
    const config = (mode: string) => {
      const file = path.join(os.tmpdir(), `procyard-nonroot-${process.pid}-${mode}.toml`);
      writeFileSync(
        file,
        `[process]\nnetwork_policy = "${mode}"\nmetadata_addr = "127.0.0.1:9"\nport_range_start = 24570\nport_range_end = 24574\n[storage]\nbundle_worker_path = "/tmp/app"\n`,
      );
      return file;
    };
    const run = async (mode: string) => {
      const cli = path.join(FIXTURES, '..', '..', 'dist', 'cli.js');
      const file = config(mode);
      try {
        const { stdout } = await promisify(execFile)(
          '/usr/bin/setpriv',
          ['--reuid', String(UID), '--regid', '65534', '--clear-groups', process.execPath, cli, 'preflight', '--json', '--config', file],
          { cwd: '/', encoding: 'utf8', timeout: 30_000 },
        ).catch((err: { stdout: string }) => ({ stdout: err.stdout }));
        const report = JSON.parse(stdout) as { results: { name: string; severity: string; message: string }[] };
        return (name: string) => report.results.find((x) => x.name === name)!;
      } finally {
        rmSync(file, { force: true });
      }
    };
    const auto = await run('auto');
    expect(auto('network_policy').severity).toBe('warning');
    expect(auto('network_policy').message).toMatch(/no cgroup socket hooks: loading BPF programs is not allowed .* so tenants can reach each other/);
    expect(auto('worker_egress').severity).toBe('warning');
    expect(auto('worker_egress').message).toContain("can reach another worker's port 127.0.0.1:24574, so tenants can reach each other");
    const required = await run('required');
    expect(required('network_policy').severity).toBe('error');
    expect(required('network_policy').message).toContain('no worker or build starts');
    expect(required('worker_egress').severity).toBe('info');
  });
});
