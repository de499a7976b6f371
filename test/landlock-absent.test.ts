// A kernel without Landlock, as the backend sees it: only the kernel's answer
// to the ABI query is replaced (ENOSYS); bwrap, the spawn and the worker are
// real. 'auto' runs without the rules, 'required' rejects naming Landlock and
// leaks nothing. (A real 6.1 kernel without Landlock: the User-Mode-Linux suite.)
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it, vi } from 'vitest';

vi.mock('../src/native.js', async (importOriginal) => ({
  ...(await importOriginal<typeof import('../src/native.js')>()),
  landlockAbi: () => ({ abi: 0, code: 'ENOSYS' }),
}));

const { ProcessBackend } = await import('../src/process/process-backend.js');
const { NetworkPolicyError } = await import('../src/process/network-policy.js');
const { runPreflight } = await import('../src/preflight/index.js');
const { FIXTURES, testConfig } = await import('./helpers/backend.js');
const { PYTHON, probeWorker, unixPeer } = await import('./helpers/net.js');
const { openFds } = await import('./helpers/proc.js');

// Ports 24265-24279 and UIDs 65265-65279 (this file's share of the landlock range).
const auto = new ProcessBackend(testConfig([24265, 24269], [65265, 65269]));
const required = new ProcessBackend(testConfig([24270, 24274], [65270, 65274], { networkPolicy: 'required' }));
afterAll(() => Promise.all([auto.close(), required.close()]));

describe('on a kernel without Landlock', () => {
  // Without Landlock, the cgroup socket hooks (root, cgroup2) still keep a worker's binds to its own port.
  const hooks = process.getuid?.() === 0 && readFileSync('/proc/self/mountinfo', 'utf8').includes(' - cgroup2 ');

  it(`'auto' spawns and runs without the rules: another port ${hooks ? 'is refused by the socket hooks alone' : 'binds'}, a host abstract socket answers`, async () => {
    const name = `procyard-landlock-absent-${randomBytes(6).toString('hex')}`;
    const peer = await unixPeer(['abstract', name]);
    try {
      const r = await probeWorker(auto, 'absent-auto', ['other:bind:24279', `abstract:abstract:${name}`]);
      expect(r).toEqual({ other: hooks ? 'EPERM' : 'ok:24279', abstract: 'ok' });
    } finally {
      await peer.stop();
      await auto.removeResource({ id: 'absent-auto', kind: 'container', labels: {} });
    }
  });

  it("'required' rejects spawn and build naming Landlock and the kernel needed, leaking no port, UID or fd", async () => {
    const spec = { appId: 'a', workerId: 'absent-req', bundlePath: FIXTURES, workerMount: '/tmp/app', cmd: [PYTHON, '-c', 'pass'] };
    // The first refusal loads the socket hooks (their fds stay with the backend); the baseline is taken after it.
    await required.spawn(spec).catch(() => {});
    const fdsBefore = openFds();
    const err = await required.spawn(spec).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(NetworkPolicyError);
    expect((err as Error).message).toMatch(/networkPolicy 'required': this kernel has no Landlock \(kernel .*ENOSYS\)/);
    expect((err as Error).message).toContain('Landlock ABI 6 (Linux 6.12 or later');
    await expect(required.build({ appId: 'a', bundleId: 'b', cmd: [PYTHON, '-c', 'pass'] })).rejects.toThrow(NetworkPolicyError);
    expect(required.inUse).toEqual({ ports: 0, uids: 0 });
    expect(await required.listManaged()).toEqual([]);
    expect(openFds()).toEqual(fdsBefore);
  });

  it("preflight: network_policy warns under 'auto' naming what is missing, errors under 'required'", async () => {
    const [a, r] = await Promise.all([
      runPreflight(testConfig([24275, 24278], [65275, 65278], { skipMetadataCheck: true })),
      runPreflight(testConfig([24275, 24278], [65275, 65278], { skipMetadataCheck: true, networkPolicy: 'required' })),
    ]);
    const check = (report: typeof a, name: string) => report.results.find((x) => x.name === name)!;
    expect(check(a, 'network_policy')).toMatchObject({ severity: 'warning' });
    expect(check(a, 'network_policy').message).toMatch(/no Landlock .* lacks the TCP port rules .* and the abstract-unix-socket and signal scopes/);
    expect(check(r, 'network_policy')).toMatchObject({ severity: 'error' });
    expect(check(r, 'network_policy').message).toContain('Landlock');
  });
});
