// The network policy's pure parts: the decision for every Landlock ABI and
// mode, the rules each sandbox gets, config validation, the preflight
// verdict, and the /run part of the bwrap argv. No sandbox needed.
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, configFromToml, PROCESS_DEFAULTS } from '../src/config.js';
import { combineLayers, judgeNetworkPolicy, judgeSocketHooks } from '../src/preflight/checks/network-policy.js';
import { ruleForTarget } from '../src/process/address-rules.js';
import { SocketHooksProblem, socketHooksConfig } from '../src/process/socket-hooks.js';
import { bwrapArgs } from '../src/process/bwrap.js';
import { NetworkPolicy } from '../src/process/landlock.js';
import {
  decideNetworkPolicy,
  landlockRules,
  networkConfigProblem,
  NetworkPolicyError,
  type LandlockSupport,
  type NetworkPolicyMode,
} from '../src/process/network-policy.js';
import { hostRunPlan, runTarget } from '../src/process/run-dir.js';

const kernel = (abi: number, code = ''): LandlockSupport => ({ abi, code, kernel: abi >= 6 ? '6.12.0' : '6.1.0' });
const MODES: NetworkPolicyMode[] = ['auto', 'required', 'off'];

describe('decideNetworkPolicy, for every Landlock ABI', () => {
  for (let abi = 0; abi <= 8; abi++) {
    it(`ABI ${abi}`, () => {
      const tcp = abi >= 4;
      const scopes = abi >= 6;
      const missing = [...(tcp ? [] : ['tcp']), ...(scopes ? [] : ['scopes'])];
      const autoD = decideNetworkPolicy('auto', kernel(abi));
      expect(autoD.enforced).toEqual({ tcp, scopes });
      expect(autoD.missing).toEqual(missing);
      expect(autoD.error).toBeNull(); // 'auto' always runs
      const off = decideNetworkPolicy('off', kernel(abi));
      expect(off.enforced).toEqual({ tcp: false, scopes: false });
      expect(off.error).toBeNull();
      const required = decideNetworkPolicy('required', kernel(abi));
      if (scopes) {
        expect(required.error).toBeNull();
        expect(required.enforced).toEqual({ tcp: true, scopes: true });
      } else {
        expect(required.error).toMatch(/Landlock/);
        expect(required.error).toContain('Linux 6.12');
        expect(required.error).toContain(abi === 0 ? 'no Landlock (kernel 6.1.0' : `Landlock ABI ${abi} (kernel 6.1.0)`);
        expect(required.error).toContain("'auto'");
      }
    });
  }

  it("names a Landlock that is built in but not enabled at boot", () => {
    expect(decideNetworkPolicy('required', kernel(0, 'EOPNOTSUPP')).error).toContain('lsm=');
  });
});

describe('landlockRules', () => {
  const full = decideNetworkPolicy('auto', kernel(7));

  it('a worker binds only its port; connects anywhere unless allowedConnectPorts is given', () => {
    expect(landlockRules(full, 10001, undefined)).toEqual({
      restrictBind: true,
      bindPorts: [10001],
      restrictConnect: false,
      connectPorts: [],
      scopeAbstractUnix: true,
      scopeSignals: true,
    });
    expect(landlockRules(full, 10001, [443, 5432])).toMatchObject({ restrictConnect: true, connectPorts: [443, 5432] });
    // [] is "no TCP connect at all", not "unset".
    expect(landlockRules(full, 10001, [])).toMatchObject({ restrictConnect: true, connectPorts: [] });
  });

  it('a build binds nothing', () => {
    expect(landlockRules(full, undefined, [443])).toMatchObject({ restrictBind: true, bindPorts: [], connectPorts: [443] });
  });

  it("ABI 4-5: TCP rules without scopes; older or 'off': no Landlock domain at all", () => {
    expect(landlockRules(decideNetworkPolicy('auto', kernel(5)), 1, undefined)).toMatchObject({
      restrictBind: true,
      scopeAbstractUnix: false,
      scopeSignals: false,
    });
    expect(landlockRules(decideNetworkPolicy('auto', kernel(3)), 1, [80])).toBeUndefined();
    expect(landlockRules(decideNetworkPolicy('off', kernel(7)), 1, [80])).toBeUndefined();
  });
});

describe('NetworkPolicy', () => {
  it("'required' on a kernel without the whole policy throws NetworkPolicyError naming Landlock; 'auto' does not", () => {
    const required = new NetworkPolicy('required', undefined, kernel(4));
    expect(() => required.assertUsable()).toThrow(NetworkPolicyError);
    expect(() => required.assertUsable()).toThrow(/Landlock ABI 4 .*signal scopes.*Linux 6\.12/);
    const auto = new NetworkPolicy('auto', [443], kernel(0, 'ENOSYS'));
    expect(() => auto.assertUsable()).not.toThrow();
    expect(auto.forWorker(10000)).toBeUndefined();
    expect(auto.forBuild()).toBeUndefined();
  });

  it('shares the build rules and the connect list; a worker gets its own port', () => {
    const p = new NetworkPolicy('auto', [443, 443, 80], kernel(7));
    expect(p.forBuild()).toMatchObject({ bindPorts: [], connectPorts: [443, 80] });
    expect(p.forBuild()).toBe(p.forBuild());
    expect(p.forWorker(10007)).toMatchObject({ bindPorts: [10007], connectPorts: [443, 80] });
  });

  it('rejects an invalid config naming the field', () => {
    expect(() => new NetworkPolicy('strict' as NetworkPolicyMode, undefined, kernel(7))).toThrow(/process\.networkPolicy must be 'auto', 'required' or 'off', got "strict"/);
    expect(() => new NetworkPolicy('auto', [80, 0], kernel(7))).toThrow(/process\.allowedConnectPorts\[1\] must be an integer 1-65535, got 0/);
  });
});

describe('networkConfigProblem', () => {
  it.each([
    [[1, 65535], null],
    [[], null],
    [undefined, null],
    [[65536], /\[0\] must be an integer 1-65535, got 65536/],
    [[80.5], /\[0\] must be an integer 1-65535, got 80.5/],
    [['443'], /\[0\] must be an integer 1-65535, got "443"/],
    [[Number.NaN], /\[0\] must be an integer 1-65535/],
    [443, /must be an array of port numbers, got 443/],
  ])('allowedConnectPorts %j', (ports, expected) => {
    const problem = networkConfigProblem('auto', ports);
    if (expected === null) expect(problem).toBeNull();
    else expect(problem).toMatch(expected);
  });
});

describe('TOML: network_policy and allowed_connect_ports', () => {
  it("maps both; the default is 'auto' with any port", () => {
    const config = configFromToml({ process: { network_policy: 'required', allowed_connect_ports: [443, 80] } });
    expect(config.process).toMatchObject({ networkPolicy: 'required', allowedConnectPorts: [443, 80] });
    expect(configFromToml({}).process!.networkPolicy).toBe('auto');
    expect(configFromToml({}).process!.allowedConnectPorts).toBeUndefined();
    expect(PROCESS_DEFAULTS.networkPolicy).toBe('auto');
  });

  it('rejects bad values with a ConfigError naming the key', () => {
    const bad = (process: Record<string, unknown>) => {
      try {
        configFromToml({ process }, 'server.toml');
      } catch (err) {
        expect(err).toBeInstanceOf(ConfigError);
        return err as ConfigError;
      }
      throw new Error('expected a ConfigError');
    };
    const mode = bad({ network_policy: 'strict' });
    expect(mode.key).toBe('process.network_policy');
    expect(mode.message).toMatch(/process\.network_policy in server\.toml must be 'auto', 'required' or 'off', got "strict"/);
    for (const ports of [[0], [70000], ['https'], 443]) {
      const e = bad({ allowed_connect_ports: ports });
      expect(e.key).toBe('process.allowed_connect_ports');
      expect(e.message).toContain('process.allowed_connect_ports in server.toml must be an array of TCP ports 1-65535');
    }
  });
});

describe('judgeNetworkPolicy (preflight network_policy)', () => {
  it('ok with the whole policy, naming the ABI and what is enforced', () => {
    const v = judgeNetworkPolicy(decideNetworkPolicy('auto', kernel(7)), [443]);
    expect(v.severity).toBe('ok');
    expect(v.message).toContain('Landlock ABI 7');
    expect(v.message).toContain('TCP port 443 only');
    expect(v.message).toContain('MPTCP sockets, TCP Fast Open sends, vsock sockets and io_uring rings');
    expect(v.message).toContain('abstract unix socket');
  });

  it("warning under 'auto' naming what the kernel lacks", () => {
    const partial = judgeNetworkPolicy(decideNetworkPolicy('auto', kernel(4)), undefined);
    expect(partial.severity).toBe('warning');
    expect(partial.message).toMatch(/Landlock ABI 4 .* lacks the abstract-unix-socket and signal scopes \(Landlock ABI 6, Linux 6\.12\)/);
    expect(partial.message).toContain('bind TCP only on their own port');
    const none = judgeNetworkPolicy(decideNetworkPolicy('auto', kernel(0, 'ENOSYS')), undefined);
    expect(none.severity).toBe('warning');
    expect(none.message).toMatch(/no Landlock .* lacks the TCP port rules .*Linux 6\.7.* and the abstract-unix-socket and signal scopes/);
    expect(none.message).toContain('Enforced: no Landlock rule');
  });

  it("error under 'required' without the whole policy; info under 'off'", () => {
    for (const abi of [0, 3, 5]) expect(judgeNetworkPolicy(decideNetworkPolicy('required', kernel(abi)), undefined).severity).toBe('error');
    for (const abi of [0, 7]) expect(judgeNetworkPolicy(decideNetworkPolicy('off', kernel(abi)), undefined).severity).toBe('info');
  });

  it('is consistent over every ABI and mode', () => {
    for (let abi = 0; abi <= 8; abi++)
      for (const mode of MODES) {
        const v = judgeNetworkPolicy(decideNetworkPolicy(mode, kernel(abi)), undefined);
        const expected = mode === 'off' ? 'info' : abi >= 6 ? 'ok' : mode === 'auto' ? 'warning' : 'error';
        expect(v.severity, `${mode} on ABI ${abi}`).toBe(expected);
      }
  });
});

describe('judgeSocketHooks (preflight network_policy, the hooks layer)', () => {
  const config = (mode: NetworkPolicyMode, extra: Record<string, unknown> = {}) => {
    const cfg = { process: { networkPolicy: mode, portRangeStart: 3000, portRangeEnd: 3099, deniedConnect: ['10.9.0.0/16:5432'], ...extra } };
    return socketHooksConfig(cfg, { ...PROCESS_DEFAULTS, ...cfg.process } as never);
  };
  const problem = new SocketHooksProblem('loading BPF programs is not allowed to this server (bpf: EPERM)', 'run the server as root');
  const redis = ruleForTarget('127.0.0.1', 6379, 'redis.url')!;

  it('ok where they hold, naming the range, the metadata addresses, the services and denied_connect', () => {
    const v = judgeSocketHooks(config('auto'), { held: true, cgroup2: '/sys/fs/cgroup', services: [redis], unresolved: [] });
    expect(v.severity).toBe('ok');
    expect(v.message).toContain('cgroup2 at /sys/fs/cgroup');
    expect(v.message).toContain('no port of 3000-3099 on a local address but their own');
    expect(v.message).toContain('169.254.169.254, fd00:ec2::254, redis.url (127.0.0.1:6379), on any local address port 6379, 10.9.0.0/16 port 5432');
    expect(v.message).toContain('bind only 127.0.0.1 and ::1 on their own port');
    const allow = judgeSocketHooks(config('auto', { allowedConnect: ['10.1.1.1:443'] }), { held: true, cgroup2: '/x', services: [], unresolved: [] });
    expect(allow.message).toContain('otherwise only 10.1.1.1:443 (allowed_connect)');
  });

  it('warns when a service did not resolve', () => {
    const v = judgeSocketHooks(config('auto'), { held: true, cgroup2: '/x', services: [], unresolved: ['redis.url (redis.internal)'] });
    expect(v.severity).toBe('warning');
    expect(v.message).toContain('redis.url (redis.internal) did not resolve, so workers are not kept from it');
  });

  it("where they cannot hold: a warning that tenants reach each other under 'auto', an error under 'required'", () => {
    const auto = judgeSocketHooks(config('auto'), { held: false, problem });
    expect(auto.severity).toBe('warning');
    expect(auto.message).toMatch(/no cgroup socket hooks: loading BPF .* so tenants can reach each other: .*\(3000-3099\).* Fix: run the server as root/);
    const required = judgeSocketHooks(config('required'), { held: false, problem });
    expect(required.severity).toBe('error');
    expect(required.message).toContain('no worker or build starts');
  });

  it('both layers: the worse severity, both messages', () => {
    const ok = { severity: 'ok', message: 'L' } as const;
    const warn = { severity: 'warning', message: 'H' } as const;
    expect(combineLayers(ok, warn)).toEqual({ severity: 'warning', message: '[Landlock] L. [socket hooks] H' });
    expect(combineLayers({ severity: 'error', message: 'L' }, warn).severity).toBe('error');
  });
});

describe('hiding /run in the bwrap argv', () => {
  const plan = { uid: 60001, gid: 65534, tmpSizeBytes: 0, seccomp: false, cmd: ['true'] };
  const mounts = [{ source: '/srv/tok', target: '/run/blockyard', readOnly: true }];

  it('a tmpfs over /run after /dev, the kept files, the mounts, then read-only', () => {
    const args = bwrapArgs({ ...plan, mounts, run: { keep: ['/run/systemd/resolve/stub-resolv.conf'] } }).join(' ');
    expect(args).toContain(
      '--remount-ro /dev --chdir /tmp --dev-bind /dev/null /proc/locks --tmpfs /run --symlink /dev/shm /run/shm ' +
        '--ro-bind-try /run/systemd/resolve/stub-resolv.conf /run/systemd/resolve/stub-resolv.conf ' +
        '--ro-bind /srv/tok /run/blockyard --remount-ro /run --cap-drop ALL',
    );
  });

  it('a data mount onto /run itself stays as asked (not remounted read-only)', () => {
    const args = bwrapArgs({ ...plan, mounts: [{ source: '/srv/run', target: '/run', readOnly: false }], run: { keep: [] } });
    expect(args.join(' ')).toContain('--tmpfs /run --symlink /dev/shm /run/shm --bind /srv/run /run --cap-drop ALL');
  });

  it('without a run plan, /run is left as it is', () => {
    expect(bwrapArgs({ ...plan, mounts })).not.toContain('/run/shm');
    expect(bwrapArgs({ ...plan, mounts, run: null }).join(' ')).not.toContain('--remount-ro /run');
  });
});

describe('hostRunPlan', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'procyard-runplan-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it.runIf(process.getuid?.() === 0)('keeps what a file resolves to under /run; nothing for files elsewhere or missing', () => {
    const inRun = mkdtempSync('/run/procyard-runplan-');
    const plain = path.join(dir, 'resolv.conf');
    writeFileSync(plain, 'nameserver 127.0.0.1\n');
    const intoRun = path.join(dir, 'into-run');
    symlinkSync('/run', intoRun);
    const dangling = path.join(dir, 'dangling');
    symlinkSync('/run/procyard-does-not-exist', dangling);
    expect(runTarget(plain)).toBeNull();
    expect(runTarget(dangling)).toBeNull();
    const name = path.basename(inRun);
    try {
      expect(runTarget(path.join(intoRun, name))).toBe(inRun);
      expect(hostRunPlan([plain, dangling, path.join(intoRun, name), inRun])).toEqual({ keep: [inRun] });
    } finally {
      rmSync(inRun, { recursive: true, force: true });
    }
  });
});
