// The tenant network (SPEC §11): cgroup socket hooks that keep workers from
// each other, from the server's services and from the metadata endpoint,
// without a network namespace. A backend loads its programs once
// (native/sockhooks.cc builds them from the rule table below) and attaches
// them once to a cgroup2 directory that every sandbox it starts is born in:
//
//   v2, the sandbox in its own limits cgroup: that cgroup's parent, the
//       backend's instance directory (cgroup.ts), so a spawn pays nothing;
//   otherwise (a hybrid host, or no limits): a directory of the hooks' own in
//       the cgroup2 mount, beside the server's cgroup, that the clone child is
//       born in (clone3) before it enters its v1 cgroups:
//
//   <cgroup2 mount><server's cgroup>/procyard-net-<pid ns>-<pid>-<starttime>-<token>
//
// The programs see the processes of that directory only: the server, the
// proxy's path to each worker, is never affected. Bind is decided per UID
// (each worker has its own, as root): a map holds the one port each worker's
// UID may bind; a build's UID is not in it, so a build binds nothing.
import { lookup } from 'node:dns/promises';
import { networkInterfaces } from 'node:os';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../backend.js';
import {
  bpfMapDelete,
  bpfMapKeys,
  bpfMapSet,
  closeFd,
  sockHooksAttach,
  sockHooksLoad,
  type NativeAddrRule,
  type NativeSockHookRules,
  type NativeSockHooks,
  type NativeSpawnOptions,
} from '../native.js';
import type { Config, ResolvedProcessConfig } from '../config.js';
import { METADATA_RULES, localized, parseAddressRules, ruleForTarget, serviceTargets, type AddressRule } from './address-rules.js';
import { dirOf, mkdirCgroup, parentPath, unifiedFrom, type Hierarchy } from './cgroup-hierarchy.js';
import { deadInstances, instanceName, killAll, removeDir, type WorkerCgroup } from './cgroup.js';
import { NetworkPolicyError, type NetworkPolicyMode } from './network-policy.js';
import { PortRangeRegistry, portsOutside } from './port-registry.js';

/** Their instance directories are `procyard-net-…` (cgroup.ts instanceName). */
const KIND = 'net-';
/** How often, at most, a spawn has the host's addresses read again. */
const ADDRESS_REFRESH_MS = 1000;
/** How long a service's host name may take to resolve. */
const LOOKUP_TIMEOUT_MS = 2000;

export interface SocketHooksConfig {
  mode: NetworkPolicyMode;
  /** The workers' ports: refused on every local address. */
  workerPorts: readonly [number, number];
  /** The workers' UIDs (the bind map's capacity). */
  uids: readonly [number, number];
  /** deniedConnect, parsed. */
  denied: readonly AddressRule[];
  /** allowedConnect, parsed; undefined = any destination but the denied. */
  allowed?: readonly AddressRule[];
  allowedConnectPorts?: readonly number[];
  /** The server's own services (redis.url, ...): denied, host names resolved when the hooks load. */
  services: readonly { what: string; host: string; port: number }[];
  /** Where the backends sharing the host's allocator list their ranges (port-registry.ts); each refuses the others'. */
  registry?: string;
}

/** The hooks' config from the backend's (checkConfig has passed it). */
export function socketHooksConfig(config: Config, p: ResolvedProcessConfig): SocketHooksConfig {
  return {
    mode: p.networkPolicy,
    workerPorts: [p.portRangeStart, p.portRangeEnd],
    uids: [p.workerUidStart, p.workerUidEnd],
    denied: parseAddressRules(p.deniedConnect, 'process.deniedConnect'),
    ...(p.allowedConnect ? { allowed: parseAddressRules(p.allowedConnect, 'process.allowedConnect') } : {}),
    ...(p.allowedConnectPorts ? { allowedConnectPorts: p.allowedConnectPorts } : {}),
    services: serviceTargets(config),
    ...(p.allocator === 'host' ? { registry: path.join(p.runtimeDir, 'port-ranges') } : {}),
  };
}

/** Why the hooks cannot hold on this host, and the fix. */
export class SocketHooksProblem extends Error {
  override readonly name = 'SocketHooksProblem';
  constructor(
    readonly problem: string,
    readonly fix: string,
  ) {
    super(`${problem}: ${fix}`);
  }
}

/** Port numbers as inclusive spans, merged: [22, 80, 81] → [[22, 22], [80, 81]]. */
export function portSpans(ports: readonly number[]): [number, number][] {
  const sorted = [...new Set(ports)].sort((a, b) => a - b);
  const spans: [number, number][] = [];
  for (const port of sorted) {
    const last = spans[spans.length - 1];
    if (last && port === last[1] + 1) last[1] = port;
    else spans.push([port, port]);
  }
  return spans;
}

function nativeRule(rule: AddressRule): NativeAddrRule {
  const ports = rule.ports ? { ports: [rule.ports[0], rule.ports[1]] as const } : {};
  if (rule.kind === 'local') return { local: true, ...ports };
  return { local: false, family: rule.family, address: rule.address, prefix: rule.prefixLength, ...ports };
}

/**
 * The rule table the programs are built from: pure. `services` are the
 * server's services as rules (their host names resolved).
 */
export function hookRules(config: SocketHooksConfig, services: readonly AddressRule[]): NativeSockHookRules {
  const deny = [...METADATA_RULES, ...config.denied.map(localized), ...services];
  return {
    workerPorts: [config.workerPorts[0], config.workerPorts[1]],
    deny: deny.map(nativeRule),
    ...(config.allowed ? { allow: config.allowed.map(nativeRule) } : {}),
    ...(config.allowedConnectPorts ? { tcpPorts: portSpans(config.allowedConnectPorts) } : {}),
    uidEntries: Math.min(config.uids[1] - config.uids[0] + 1, 1 << 20),
  };
}

/**
 * The host's interface addresses as the local-address map keys them (IPv4 as
 * ::ffff:a.b.c.d), with each IPv4 subnet's broadcast address: a datagram
 * sent there comes back to this host's own sockets too.
 */
export function hostAddressKeys(interfaces = networkInterfaces()): Map<string, Uint8Array> {
  const keys = new Map<string, Uint8Array>();
  const add = (family: 4 | 6, address: Uint8Array) => {
    const key = new Uint8Array(16);
    if (family === 4) {
      key[10] = key[11] = 0xff;
      key.set(address, 12);
    } else key.set(address);
    keys.set(Buffer.from(key).toString('hex'), key);
  };
  for (const list of Object.values(interfaces))
    for (const info of list ?? []) {
      const rule = ruleForTarget(info.address.replace(/%.*$/, ''), 1, 'host address');
      if (!rule || rule.kind !== 'prefix') continue;
      add(rule.family, rule.address);
      const prefix = Number(info.cidr?.split('/')[1] ?? NaN);
      if (rule.family === 4 && prefix < 31) add(4, rule.address.map((b, i) => b | (0xff >> Math.min(8, Math.max(0, prefix - i * 8)))));
    }
  return keys;
}

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.message ?? String(err);
}

/** A host name's addresses, or [] when it does not resolve in time. */
async function resolve(host: string): Promise<string[]> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<string[]>((done) => (timer = setTimeout(() => done([]), LOOKUP_TIMEOUT_MS)));
  try {
    return await Promise.race([lookup(host, { all: true }).then((all) => all.map((a) => a.address)), timeout]);
  } catch {
    return [];
  } finally {
    clearTimeout(timer);
  }
}

type LimitOptions = Pick<NativeSpawnOptions, 'cgroupEnter' | 'cgroupDir' | 'cgroupWrites' | 'rlimitNproc'>;

interface Loaded {
  hooks: NativeSockHooks;
  unified: Hierarchy;
  /** The server's services as the programs deny them. */
  services: AddressRule[];
  /** Services whose host name did not resolve: not denied. */
  unresolved: string[];
}

/** Whether the hooks hold on this host (preflight): what they deny, or why not. */
export type SocketHooksStatus =
  | { held: true; cgroup2: string; services: readonly AddressRule[]; unresolved: readonly string[] }
  | { held: false; problem: SocketHooksProblem };

/** A backend's socket hooks: loaded on first use, attached once per directory. */
export class SocketHooks {
  private loading?: Promise<Loaded | SocketHooksProblem>;
  /** The load's result once it has settled (release() is synchronous). */
  private settled?: Loaded | SocketHooksProblem;
  private ownDir?: Promise<string>;
  /** Directories the programs are attached to (v2 instance directories, the own one). */
  private readonly attached = new Map<string, Promise<void>>();
  private addressesReadAt = 0;
  private warned = false;
  private closed = false;
  private readonly registry: PortRangeRegistry | undefined;
  /** The otherPorts bitmap as last written (hex), so an unchanged one is not written again. */
  private otherPorts = '';
  private rangesReadAt = 0;
  private listing?: Promise<void>;
  /** The registry's updates of the map, one after another. */
  private rangeUpdates: Promise<void> = Promise.resolve();

  constructor(
    private readonly config: SocketHooksConfig,
    private readonly log: Logger,
  ) {
    this.registry = config.registry ? new PortRangeRegistry(config.registry, config.workerPorts) : undefined;
  }

  /**
   * The limits' spawn options, placed under the hooks, for a sandbox that
   * will run as uid: a worker binding `port`, or a build (port undefined,
   * binds nothing). Under 'required' where the hooks cannot hold, throws a
   * NetworkPolicyError naming why; under 'auto', the options as they were.
   * Call release(uid) once the sandbox is over (or did not start).
   */
  async place(uid: number, port: number | undefined, limits: LimitOptions, cgroup: WorkerCgroup | null): Promise<LimitOptions> {
    // Listed whatever this server's own policy: the others' hooks keep their workers from its workers.
    await this.list();
    if (this.config.mode === 'off') return limits;
    const loaded = await this.load();
    if (loaded instanceof SocketHooksProblem) return this.unavailable(loaded, limits);
    this.refreshAddresses(loaded.hooks);
    void this.refreshRanges(loaded.hooks);
    const key = uidKey(uid);
    if (port === undefined) bpfMapDelete(loaded.hooks.uidPorts, key);
    else bpfMapSet(loaded.hooks.uidPorts, key, uidKey(port));
    const unifiedDir = cgroup?.unifiedDir;
    if (unifiedDir !== undefined) {
      await this.attach(loaded, path.dirname(unifiedDir));
      return limits;
    }
    const dir = await this.own(loaded);
    return { ...limits, cgroupDir: dir, cgroupEnter: [path.join(dir, 'cgroup.procs'), ...(limits.cgroupEnter ?? [])] };
  }

  /** Loads the programs if need be; says whether they hold here, and what they deny. */
  async status(): Promise<SocketHooksStatus> {
    const loaded = await this.load();
    if (loaded instanceof SocketHooksProblem) return { held: false, problem: loaded };
    return { held: true, cgroup2: loaded.unified.mountPoint, services: loaded.services, unresolved: loaded.unresolved };
  }

  /** Under 'required' where the hooks cannot hold: throws a NetworkPolicyError naming why, before anything is allocated. */
  async assertUsable(): Promise<void> {
    if (this.config.mode !== 'required') return;
    const loaded = this.settled ?? (await this.load());
    if (loaded instanceof SocketHooksProblem) this.unavailable(loaded, {});
  }

  /** The sandbox that ran as uid is over: its UID binds nothing any more (before the UID is handed out again). */
  release(uid: number): void {
    const loaded = this.settled;
    if (loaded && !(loaded instanceof SocketHooksProblem)) bpfMapDelete(loaded.hooks.uidPorts, uidKey(uid));
  }

  /** Removes the hooks' directories left by servers that are gone (their programs go with them). */
  async cleanupOrphans(): Promise<string[]> {
    await this.registry?.sweep().catch(() => {});
    if (this.config.mode === 'off') return [];
    const unified = await unifiedHierarchy();
    const parent = unified && dirOf(unified, parentPath(unified, ''));
    if (!parent) return [];
    const orphans = await deadInstances(parent, KIND);
    await Promise.all(
      orphans.map(async (dir) => {
        try {
          await killAll(dir);
          await removeDir(dir);
          this.log.warn({ dir }, 'procyard: removed socket hooks left by a dead server');
        } catch (err) {
          this.log.warn({ err, dir }, 'procyard: removing socket hooks left by a dead server failed');
        }
      }),
    );
    return orphans;
  }

  /** Removes the own directory (its programs with it) once the sandboxes are gone; closes the programs and maps. */
  async close(): Promise<void> {
    this.closed = true;
    const loaded = this.loading ? await this.loading : undefined;
    await Promise.allSettled(this.attached.values());
    const dir = this.ownDir ? await this.ownDir.catch(() => undefined) : undefined;
    if (dir) await removeDir(dir).catch((err: unknown) => this.log.warn({ err, dir }, 'procyard: removing the socket hooks\' cgroup failed'));
    await this.listing;
    await this.registry?.close().catch((err: unknown) => this.log.warn({ err }, 'procyard: removing this server\'s port range from the registry failed'));
    await this.rangeUpdates;
    if (loaded && !(loaded instanceof SocketHooksProblem)) {
      for (const { fd } of loaded.hooks.programs) closeFd(fd);
      closeFd(loaded.hooks.uidPorts);
      closeFd(loaded.hooks.localAddrs);
      closeFd(loaded.hooks.otherPorts);
    }
  }

  private load(): Promise<Loaded | SocketHooksProblem> {
    if (this.config.mode === 'off')
      return Promise.resolve(new SocketHooksProblem("process.networkPolicy is 'off'", "set it to 'auto' or 'required'"));
    this.loading ??= this.loadOnce().then((result) => (this.settled = result));
    return this.loading;
  }

  private async loadOnce(): Promise<Loaded | SocketHooksProblem> {
    const unified = await unifiedHierarchy();
    if (!unified)
      return new SocketHooksProblem(
        'no cgroup2 filesystem is mounted, and the socket hooks attach to cgroup2 directories',
        'mount it (a hybrid host: `mount -t cgroup2 none /sys/fs/cgroup/unified`), or boot with the unified hierarchy',
      );
    const started = performance.now();
    const services: AddressRule[] = [];
    const unresolved: string[] = [];
    for (const target of this.config.services) {
      const rule = ruleForTarget(target.host, target.port, target.what);
      if (rule) {
        services.push(rule);
        continue;
      }
      const addresses = await resolve(target.host);
      if (addresses.length === 0) unresolved.push(`${target.what} (${target.host})`);
      for (const address of addresses) {
        const resolved = ruleForTarget(address, target.port, target.what);
        if (resolved) services.push(resolved);
      }
    }
    if (unresolved.length > 0)
      this.log.warn({ unresolved }, 'procyard: these services of the server did not resolve, so workers are not kept from them');
    const rules = hookRules(this.config, services);
    let hooks: NativeSockHooks;
    try {
      hooks = await sockHooksLoad(rules);
    } catch (err) {
      return loadProblem(err);
    }
    this.refreshAddresses(hooks, true);
    await this.list();
    await this.refreshRanges(hooks, true);
    this.log.info({ loadMs: Math.round((performance.now() - started) * 100) / 100 }, 'procyard: socket hooks loaded');
    return { hooks, unified, services, unresolved };
  }

  private unavailable(problem: SocketHooksProblem, limits: LimitOptions): LimitOptions {
    if (this.config.mode === 'required')
      throw new NetworkPolicyError(`networkPolicy 'required': workers cannot be kept from each other's ports and the server's services here: ${problem.message}`);
    if (!this.warned) {
      this.warned = true;
      this.log.warn({ problem: problem.problem, fix: problem.fix }, 'procyard: no socket hooks: workers can reach each other\'s ports and the server\'s services');
    }
    return limits;
  }

  private attach(loaded: Loaded, dir: string): Promise<void> {
    let done = this.attached.get(dir);
    if (!done) {
      done = Promise.resolve().then(() => {
        try {
          sockHooksAttach(loaded.hooks.programs.map((p) => p.fd), dir);
        } catch (err) {
          this.attached.delete(dir);
          throw new NetworkPolicyError(`cannot attach the socket hooks to ${dir}: ${errText(err)}`);
        }
      });
      this.attached.set(dir, done);
    }
    return done;
  }

  private own(loaded: Loaded): Promise<string> {
    this.ownDir ??= (async () => {
      const parent = dirOf(loaded.unified, parentPath(loaded.unified, ''));
      if (parent === null) throw new NetworkPolicyError(`the server's cgroup lies outside the cgroup2 mount at ${loaded.unified.mountPoint}`);
      const dir = path.join(parent, await instanceName(KIND));
      try {
        await mkdirCgroup(dir, false, true);
      } catch (err) {
        throw new NetworkPolicyError(`cannot make the socket hooks' cgroup: ${errText(err)}`);
      }
      await this.attach(loaded, dir);
      return dir;
    })();
    // A failure is tried again by the next spawn.
    this.ownDir.catch(() => {
      if (!this.closed) this.ownDir = undefined;
    });
    return this.ownDir;
  }

  /** Lists this server's range in the registry (once), and has the map follow the others' from then on. */
  private list(): Promise<void> {
    const registry = this.registry;
    this.listing ??= !registry
      ? Promise.resolve()
      : registry
          .register(() => {
            const loaded = this.settled;
            if (loaded && !(loaded instanceof SocketHooksProblem)) void this.refreshRanges(loaded.hooks, true);
          })
          .catch((err: unknown) =>
            this.log.warn({ err, dir: registry.dir }, "procyard: cannot list this server's port range for the others on the host, so their workers are not kept from its own"),
          );
    return this.listing;
  }

  /**
   * Brings the other-ports map in line with the registry: the ranges of the
   * other backends on the host (now, or at most once a second from a spawn).
   */
  private refreshRanges(hooks: NativeSockHooks, now = false): Promise<void> {
    const registry = this.registry;
    if (!registry || this.closed || (!now && performance.now() - this.rangesReadAt < ADDRESS_REFRESH_MS)) return this.rangeUpdates;
    this.rangesReadAt = performance.now();
    this.rangeUpdates = this.rangeUpdates
      .then(async () => {
        const bitmap = new Uint8Array(65536 / 8);
        for (const port of portsOutside(await registry.others(), this.config.workerPorts)) bitmap[port >> 3]! |= 1 << (port & 7);
        const hex = Buffer.from(bitmap).toString('hex');
        if (this.closed || hex === this.otherPorts) return;
        bpfMapSet(hooks.otherPorts, uidKey(0), bitmap);
        this.otherPorts = hex;
      })
      .catch((err: unknown) => this.log.warn({ err }, 'procyard: updating the other servers\' port ranges in the socket hooks failed'));
    return this.rangeUpdates;
  }

  /** Brings the local-address map in line with the host's interfaces (at most once a second, off the spawn's path). */
  private refreshAddresses(hooks: NativeSockHooks, now = false): void {
    if (!now && performance.now() - this.addressesReadAt < ADDRESS_REFRESH_MS) return;
    this.addressesReadAt = performance.now();
    const run = () => {
      if (this.closed) return;
      try {
        const wanted = hostAddressKeys();
        for (const key of bpfMapKeys(hooks.localAddrs, 16)) {
          const hex = Buffer.from(key).toString('hex');
          if (!wanted.delete(hex)) bpfMapDelete(hooks.localAddrs, key);
        }
        for (const key of wanted.values()) bpfMapSet(hooks.localAddrs, key, ONE);
      } catch (err) {
        this.log.warn({ err }, 'procyard: updating the host addresses of the socket hooks failed');
      }
    };
    if (now) run();
    else setImmediate(run);
  }
}

const ONE = new Uint8Array([1]);

/** A u32 key or value in the CPU's byte order, as the programs read it. */
function uidKey(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value, true);
  return bytes;
}

async function unifiedHierarchy(): Promise<Hierarchy | null> {
  try {
    const [mountinfo, procCgroup] = await Promise.all([readFile('/proc/self/mountinfo', 'utf8'), readFile('/proc/self/cgroup', 'utf8')]);
    return unifiedFrom(mountinfo, procCgroup);
  } catch {
    return null;
  }
}

/** A failed load as a problem: not allowed (not root), or refused by the kernel (with the verifier's log). */
export function loadProblem(err: unknown): SocketHooksProblem {
  const e = err as NodeJS.ErrnoException & { verifierLog?: string };
  if (e.code === 'EPERM' || (e.code === 'EACCES' && !e.verifierLog))
    return new SocketHooksProblem(
      `loading BPF programs is not allowed to this server (${e.syscall ?? 'bpf'}: ${e.code}; it needs root, or CAP_BPF and CAP_NET_ADMIN)`,
      "run the server as root, or set process.networkPolicy to 'auto' to run without the hooks",
    );
  if (e.code === 'ENOSYS' || (e.code === 'EINVAL' && !e.verifierLog))
    return new SocketHooksProblem(
      `this kernel cannot load the socket hooks (${e.message})`,
      'use Linux 5.8 or later built with CONFIG_CGROUP_BPF and CONFIG_BPF_SYSCALL',
    );
  const log = e.verifierLog ? `; the verifier said: ${e.verifierLog.trim().split('\n').slice(-12).join(' | ')}` : '';
  return new SocketHooksProblem(`the kernel refused the socket hooks (${e.message})${log}`, 'report this with the kernel version');
}
