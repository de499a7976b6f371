// ProcessBackend: the Backend interface over bwrap sandboxes and the native core.
import { accessSync, constants as fsConstants } from 'node:fs';
import { EventEmitter } from 'node:events';
import { constants as osConstants } from 'node:os';
import path from 'node:path';
import type { Redis, Cluster } from 'ioredis';
import {
  BackendClosedError,
  NotSupportedError,
  quietLogger,
  WorkerExistsError,
  WorkerNotFoundError,
  type Backend,
  type BuildResult,
  type BuildSpec,
  type LogStream,
  type Logger,
  type ManagedResource,
  type ManagedWorker,
  type MountEntry,
  type WorkerExitEvent,
  type WorkerResourceUsage,
  type WorkerSpec,
} from '../backend.js';
import {
  checkConfig,
  ConfigError,
  DEFAULT_BUNDLE_WORKER_PATH,
  resolveProcessConfig,
  type Config,
  type ResolvedProcessConfig,
} from '../config.js';
import { closeFd, clockTicksPerSecond, kernelRelease, mountInject, pipe, sampleTrees, type ExitStatus } from '../native.js';
import type { PreflightReport } from '../preflight/report.js';
import { hostAllocators } from './allocators/host.js';
import { memoryAllocators } from './allocators/memory.js';
import { redisAllocators } from './allocators/redis.js';
import type { Allocators, PortLease } from './allocators/types.js';
import { buildEnv, MOUNT_TARGETS, workerEnv, workerMounts } from './bwrap.js';
import { LogRing } from './logs.js';
import type { ListenerOwner } from './listeners.js';
import { probeOwnListener, waitForListener, WorkerNotReadyError } from './readiness.js';
import { MountTargets, prepareMountTarget, type WorkerIdentities } from './mounts.js';
import { NetworkPolicy } from './landlock.js';
import { NetworkPolicyError } from './network-policy.js';
import { CgroupManager, type WorkerCgroup } from './cgroup.js';
import { handoffMessage, isRCommand, R_FILES, R_RUN_DIRS, R_LAUNCHER_TARGET, R_WARM_TARGET, rAppDir, WARM_READY } from './r-app.js';
import { WarmPool, type WarmSandbox } from './warm-pool.js';
import { WARM_OWN_ENV, warmEnv, warmFits, warmPoolProblem, writeAll } from './warm-handoff.js';
import { SocketHooks, socketHooksConfig } from './socket-hooks.js';
import { cpuField, defaultLimits, memoryField, resolveLimitsConfig, workerLimits, type LimitsConfig } from './limits.js';
import { killOrphanSandboxes, killUidProcesses } from './orphans.js';
import { checkRVersion, resolveRBinary, rVersionGoneMessage } from './rversion.js';
import { startSandbox, type Sandbox } from './sandbox.js';
import { spawnStep } from './trace.js';
import { checkWorkerSpec, pathCheckError, validateBuildSpec, workerPathChecks, type PathCheck } from './validate.js';

export interface ProcessBackendOptions {
  /**
   * Coordinates ports and UIDs with other servers through Redis; absent =
   * process.allocator ('host': lock files in process.runtimeDir, the default).
   */
  redis?: Redis | Cluster;
  /** Default 'procyard:'. */
  redisKeyPrefix?: string;
  /** Owner lease TTL with Redis. Default 15000. */
  leaseTtlMs?: number;
  /** Period of the automatic orphan sweep (Redis claims of dead peers, orphaned sandboxes). Default 60000. */
  orphanSweepMs?: number;
  logger?: Logger;
}

interface Worker {
  readonly spec: WorkerSpec;
  readonly port: number;
  readonly uid: number;
  readonly sandbox: Sandbox;
  readonly ring: LogRing;
  /** Its own cgroup (null: runs without one); removed once it has exited. */
  readonly cgroup: WorkerCgroup | null;
  /** Settles once the port and UID are back in their pools (and its cgroup and mount targets gone) after exit. */
  released: Promise<void>;
  stopping?: Promise<void>;
  /** performance.now() when its spawn started it (for a warm worker: its handoff), and the wall clock then. */
  readonly startedAt: number;
  readonly startedAtMs: number;
  /** stop(), removeResource() or close() ended it: its exit's reason is 'stopped'. */
  endedByServer?: boolean;
  lastSample?: { cpuSeconds: number; at: number };
  /** Its listeners' socket inodes once seen held in its sandbox (listeners.ts). */
  readonly heldListeners: Set<number>;
  /** A spawn that failed after the clone: no 'exit' event for it. */
  quiet: boolean;
  /** How it ended, once it has (and what was given back). */
  exit?: WorkerExitEvent;
}


/** The events a ProcessBackend emits, with their arguments. */
export interface ProcessBackendEvents {
  /** A worker exited (it stays listed until stop or removeResource). */
  exit: [event: WorkerExitEvent];
}

type EventName = keyof ProcessBackendEvents;
type EventListener<K extends EventName> = (...args: ProcessBackendEvents[K]) => void;

// Typed overloads of the EventEmitter methods: `on('exited', ...)` or a
// listener reading a field the event lacks does not compile.
export interface ProcessBackend {
  on<K extends EventName>(event: K, listener: EventListener<K>): this;
  once<K extends EventName>(event: K, listener: EventListener<K>): this;
  off<K extends EventName>(event: K, listener: EventListener<K>): this;
  addListener<K extends EventName>(event: K, listener: EventListener<K>): this;
  removeListener<K extends EventName>(event: K, listener: EventListener<K>): this;
  prependListener<K extends EventName>(event: K, listener: EventListener<K>): this;
  prependOnceListener<K extends EventName>(event: K, listener: EventListener<K>): this;
  removeAllListeners(event?: EventName): this;
  listeners<K extends EventName>(event: K): EventListener<K>[];
  rawListeners<K extends EventName>(event: K): EventListener<K>[];
  listenerCount(event: EventName): number;
  emit<K extends EventName>(event: K, ...args: ProcessBackendEvents[K]): boolean;
}

/** waitReady's default deadline: the original server's worker start timeout. */
const DEFAULT_READY_TIMEOUT_MS = 60_000;

function exitCodeOf(status: ExitStatus): number {
  if (status.code !== null) return status.code;
  const signo = status.signal ? osConstants.signals[status.signal as NodeJS.Signals] : undefined;
  return signo ? 128 + signo : -1;
}

/** How long a sandbox's processes may outlive its monitor before they are killed (sandboxEnd). */
const LEFTOVER_GRACE_MS = 1000;
/** How much of a worker's output a WorkerNotReadyError carries. */
const NOT_READY_TAIL_LINES = 20;
/** How long a warm sandbox may take to load its packages before it counts as failed. */
const WARM_START_MS = 60_000;
/** Kill rounds (100 ms apart) before sandboxEnd gives up and says so. */
const LEFTOVER_ROUNDS = 30;
/** How long the output pipes of a sandbox with nothing left running are read before they are let go of. */
const PIPE_DRAIN_MS = 50;

function delay(ms: number): { promise: Promise<void>; cancel(): void } {
  let timer: NodeJS.Timeout | undefined;
  const promise = new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)));
  return { promise, cancel: () => clearTimeout(timer) };
}

export class ProcessBackend extends EventEmitter implements Backend {
  readonly config: Config;
  private readonly proc: ResolvedProcessConfig;
  private readonly log: Logger;
  private readonly allocators: Allocators;
  private readonly limits: LimitsConfig;
  private readonly cgroups: CgroupManager;
  private readonly workers = new Map<string, Worker>();
  private readonly starting = new Set<string>();
  private readonly builds = new Set<Sandbox>();
  private readonly targets: MountTargets;
  private readonly asRoot = process.getuid?.() === 0;
  /** Identities mount-target creation must not trust; null when not root. */
  private readonly targetGuard: WorkerIdentities | null;
  /** Landlock rules for every worker and build (networkPolicy, allowedConnectPorts). */
  private readonly network: NetworkPolicy;
  /** The tenant network's cgroup socket hooks (SPEC §11). */
  private readonly hooks: SocketHooks;
  /** Sandboxes started ahead for R apps (SPEC §12); undefined without warmPool, or where it cannot work. */
  private readonly pool?: WarmPool;
  private readonly sweepTimer?: NodeJS.Timeout;
  private closed = false;
  /** Spawns and builds in flight, and what to call when none is left (close() waits on it). */
  private inFlight = 0;
  private onIdle: () => void = () => {};

  constructor(config: Config, options: ProcessBackendOptions = {}) {
    super();
    this.config = config;
    this.proc = resolveProcessConfig(config);
    this.log = options.logger ?? quietLogger;
    const p = this.proc;
    try {
      accessSync(p.bwrapPath, fsConstants.X_OK);
    } catch {
      throw new ConfigError(
        `bwrap not found at "${p.bwrapPath}": install the bubblewrap package or set process.bwrapPath`,
        undefined,
        'process.bwrapPath',
      );
    }
    checkConfig(config);
    this.network = new NetworkPolicy(p.networkPolicy, p.allowedConnectPorts);
    this.limits = resolveLimitsConfig(config);
    this.cgroups = new CgroupManager(this.limits, this.log);
    this.hooks = new SocketHooks(socketHooksConfig(config, p), this.log);

    // checkConfig has made sure it is absolute.
    const bundleWorkerPath = config.storage?.bundleWorkerPath ?? DEFAULT_BUNDLE_WORKER_PATH;
    if (!bundleWorkerPath || !path.isAbsolute(bundleWorkerPath))
      throw new Error(`storage.bundleWorkerPath must be an absolute path, got ${JSON.stringify(bundleWorkerPath)}`);
    this.targetGuard = this.asRoot ? { uids: [p.workerUidStart, p.workerUidEnd], gid: p.workerGid } : null;
    const bundle = prepareMountTarget(bundleWorkerPath, 'storage.bundleWorkerPath', true, this.targetGuard);
    if (bundle.problem !== undefined) throw new Error(bundle.problem);
    this.targets = new MountTargets(this.targetGuard);
    for (const target of Object.values(MOUNT_TARGETS)) this.targets.prepareFixed(target, 'mount target', true);

    const ports: [number, number] = [p.portRangeStart, p.portRangeEnd];
    const uids: [number, number] = [p.workerUidStart, p.workerUidEnd];
    if (options.redis) {
      this.allocators = redisAllocators(options.redis, {
        prefix: options.redisKeyPrefix ?? 'procyard:',
        ports,
        uids,
        leaseTtlMs: options.leaseTtlMs ?? 15000,
        logger: this.log,
      });
    } else if (p.allocator === 'memory') {
      this.allocators = memoryAllocators(ports, uids);
    } else {
      // Never a silent fall back to memory: two servers would share UIDs.
      try {
        this.allocators = hostAllocators(p.runtimeDir, ports, uids);
      } catch (err) {
        throw new ConfigError(
          `host-wide allocator: ${(err as Error).message} (or set process.allocator to "memory" if this is the only server on the host)`,
          undefined,
          'process.runtimeDir',
        );
      }
    }
    // Whatever the allocators: a sandbox whose init an app took over (so it
    // outlived a SIGKILLed server) is found by the next sweep of any peer.
    this.sweepTimer = setInterval(() => {
      this.cleanupOrphanResources().catch((err: unknown) => this.log.warn({ err }, 'procyard: orphan sweep failed'));
    }, options.orphanSweepMs ?? 60000);
    this.sweepTimer.unref();
    // A previous server on this host may have died mid-spawn.
    this.killOrphanSandboxes().catch((err: unknown) => this.log.warn({ err }, 'procyard: orphan sandbox scan failed'));
    this.cgroups.cleanupOrphans().catch((err: unknown) => this.log.warn({ err }, 'procyard: orphan cgroup scan failed'));
    this.hooks.cleanupOrphans().catch((err: unknown) => this.log.warn({ err }, 'procyard: orphan socket hooks scan failed'));
    if (p.warmPool.some((entry) => entry.size > 0)) {
      const problem = warmPoolProblem(this.asRoot, kernelRelease());
      if (problem) this.log.warn({ problem }, 'procyard: the warm pool cannot work here: every spawn starts cold');
      else {
        this.pool = new WarmPool(p.warmPool, (entry, signal) => this.startWarm(entry, signal), this.log);
        this.pool.fill();
      }
    }
  }

  /** What the warm pool holds (preflight, metrics); [] without one. */
  warmPoolStatus(): ReturnType<WarmPool['status']> {
    return this.pool?.status() ?? [];
  }

  /** Ports and UIDs this instance holds (for tests and metrics). */
  get inUse(): { ports: number; uids: number } {
    return { ports: this.allocators.ports.inUse(), uids: this.allocators.uids.inUse() };
  }

  /** Under networkPolicy 'required': one NetworkPolicyError naming every layer that cannot hold here. */
  private async assertNetworkUsable(): Promise<void> {
    const problems: Error[] = [];
    try {
      this.network.assertUsable();
    } catch (err) {
      problems.push(err as Error);
    }
    try {
      await this.hooks.assertUsable();
    } catch (err) {
      problems.push(err as Error);
    }
    if (problems.length === 2)
      throw new NetworkPolicyError(`${problems[0]!.message}. And ${problems[1]!.message.replace(/^networkPolicy 'required': /, '')}`);
    if (problems[0]) throw problems[0];
  }

  spawn(spec: WorkerSpec): Promise<void> {
    return this.tracked(() => this.spawnWorker(spec));
  }

  private async spawnWorker(spec: WorkerSpec): Promise<void> {
    checkWorkerSpec(spec);
    this.assertOpen();
    await this.assertNetworkUsable();
    const id = spec.workerId;
    if (this.starting.has(id) || this.workers.get(id)?.sandbox.running)
      throw new WorkerExistsError(id);
    this.starting.add(id);
    try {
      const mounts = workerMounts(spec);
      // An R app (the default command, or R/Rscript on an app.R or app directory) runs through procyard's launcher.
      const appDir = rAppDir(spec.cmd, spec.workerMount, { bundlePath: spec.bundlePath, workerMount: spec.workerMount, mounts });
      const requested = appDir !== null ? ['Rscript', R_LAUNCHER_TARGET, appDir] : spec.cmd!;
      const cmd = this.resolveCommand(requested, spec.rVersion ?? '');
      // The host paths are checked by the spawn call itself (a stat each,
      // before anything else); a missing one rejects naming the field.
      const checks = workerPathChecks(spec);
      let worker: Worker;
      const targets = this.targets.acquire(mounts, 'spec');
      spawnStep(id, 'checked');
      let warm: Worker | undefined;
      try {
        warm = appDir !== null ? await this.fromPool(spec, appDir, targets.mounts, checks) : undefined;
        worker = warm ?? (await this.startWorker(spec, cmd, targets.mounts, checks, isRCommand(requested)));
      } catch (err) {
        await targets.release();
        throw pathCheckError(err, checks);
      }
      // Mount targets made for this worker go with it.
      worker.released = worker.released.then(targets.release);
      // close() may have run while this spawn was in flight and could not see it.
      if (this.closed) {
        worker.quiet = true;
        await worker.sandbox.kill();
        await worker.released;
        throw new BackendClosedError();
      }
      this.workers.set(id, worker);
      spawnStep(id, 'registered', warm !== undefined);
    } finally {
      this.starting.delete(id);
    }
  }

  private async startWorker(
    spec: WorkerSpec,
    cmd: string[],
    mounts: ReturnType<typeof workerMounts>,
    checks: PathCheck[],
    rWorker: boolean,
  ): Promise<Worker> {
    const { ports, uids } = this.allocators;
    // First: a 'required' refusal then holds no port or UID.
    const cgroup = await this.cgroups.acquire();
    spawnStep(spec.workerId, 'cgroup');
    let lease: PortLease;
    try {
      lease = await ports.reserve();
      spawnStep(spec.workerId, 'port');
    } catch (err) {
      await cgroup?.remove();
      throw err;
    }
    let uid: number;
    try {
      uid = await uids.alloc();
      spawnStep(spec.workerId, 'uid');
    } catch (err) {
      await Promise.all([ports.release(lease), cgroup?.remove()]);
      throw err;
    }
    const ring = new LogRing(this.proc.logLines, this.proc.logBytes);
    let sandbox: Sandbox;
    const startedAt = performance.now();
    try {
      const limits = this.cgroups.spawnOptions(cgroup, workerLimits(spec, this.limits), this.asRoot);
      sandbox = await startSandbox({
        bwrapPath: this.proc.bwrapPath,
        plan: { uid, gid: this.proc.workerGid, tmpSizeBytes: this.proc.tmpSizeBytes, mounts, cmd },
        seccompProfile: this.proc.seccompProfile,
        env: workerEnv(spec, lease.port, rWorker),
        ...(rWorker ? { files: R_FILES, runDirs: R_RUN_DIRS } : {}),
        hostCredentials: this.asRoot,
        closeBeforeClone: takeListener(lease),
        landlock: this.network.forWorker(lease.port),
        checkPaths: checks,
        traceId: spec.workerId,
        onLine: (line, bytes) => ring.push(line, bytes),
        limits: await this.hooks.place(uid, lease.port, limits, cgroup),
      });
    } catch (err) {
      this.hooks.release(uid);
      await Promise.all([ports.release(lease), uids.release(uid), cgroup?.remove()]);
      throw this.cgroups.explain(err, cgroup);
    } finally {
      this.cgroups.refill();
    }
    return this.track(spec, { sandbox, lease, uid, cgroup, ring, startedAt, ended: this.sandboxEnd(sandbox, cgroup, uid) });
  }

  /** The worker record of a started sandbox (cold or warm): its exit gives back what it held and emits 'exit'. */
  private track(
    spec: WorkerSpec,
    s: { sandbox: Sandbox; lease: PortLease; uid: number; cgroup: WorkerCgroup | null; ring: LogRing; startedAt: number; ended: Promise<ExitStatus> },
  ): Worker {
    const { sandbox, lease, uid, cgroup, ring } = s;
    const worker: Worker = {
      spec,
      port: lease.port,
      uid,
      sandbox,
      ring,
      cgroup,
      heldListeners: new Set(),
      startedAt: s.startedAt,
      startedAtMs: Date.now() - (performance.now() - s.startedAt),
      quiet: false,
      released: s.ended.then(async (status) => {
        ring.close();
        const oomKilled = await this.giveBack(s, status, spec.workerId);
        // bwrap reports its app's death by a signal as 128 + the signal's number.
        const bySignal = status.signal !== null || (status.code !== null && status.code > 128);
        const reason = worker.endedByServer ? 'stopped' : oomKilled ? 'oom' : bySignal ? 'killed' : 'exited';
        const event: WorkerExitEvent = { workerId: spec.workerId, code: status.code, signal: status.signal, oomKilled, reason };
        worker.exit = event;
        if (worker.quiet) return;
        this.log.info(event, 'procyard: worker exited');
        this.emit('exit', event);
      }),
    };
    this.log.info({ workerId: spec.workerId, pid: sandbox.pid, port: lease.port, uid }, 'procyard: worker started');
    return worker;
  }

  /** After a sandbox's end: its cgroup first (the port and UID go back only once nothing of it is left), then the rest. Whether the OOM killer ended it. */
  private async giveBack(s: { lease: PortLease; uid: number; cgroup: WorkerCgroup | null }, status: ExitStatus, id: string): Promise<boolean> {
    const oomKilled = await this.endCgroup(s.cgroup, status, id);
    this.hooks.release(s.uid);
    await Promise.all([this.allocators.ports.release(s.lease), this.allocators.uids.release(s.uid)]).catch((err: unknown) =>
      this.log.error({ err, workerId: id }, 'procyard: releasing port/UID failed'),
    );
    return oomKilled;
  }

  /**
   * One warm sandbox of pool entry `index`: a cold worker's sandbox without
   * an app (no mounts but its own /tmp), running R_WARM with the entry's
   * packages; resolved once R says it waits for its app.
   */
  private async startWarm(index: number, signal: AbortSignal): Promise<WarmSandbox> {
    const entry = this.proc.warmPool[index]!;
    if (this.closed) throw new BackendClosedError();
    const cmd = this.resolveCommand(['Rscript', R_WARM_TARGET, ...(entry.preload ?? ['shiny'])], entry.rVersion ?? '');
    const { ports, uids } = this.allocators;
    // Until it is ready, its output says when (and, if it fails, why).
    const said: string[] = [];
    let ready: (loaded: string[]) => void = () => {};
    const warmedUp = new Promise<string[]>((resolve) => (ready = resolve));
    let output = (line: string, _bytes: number): void => {
      if (line.startsWith(WARM_READY)) ready(line.slice(WARM_READY.length).trim().split(/\s+/));
      else if (said.length < 20) said.push(line);
    };
    const cgroup = await this.cgroups.acquire();
    let lease: PortLease | undefined;
    let uid: number | undefined;
    let stdin: [number, number] | undefined;
    let sandbox: Sandbox;
    try {
      lease = await ports.reserve();
      uid = await uids.alloc();
      stdin = pipe();
      const limits = this.cgroups.spawnOptions(cgroup, defaultLimits(this.limits), this.asRoot);
      sandbox = await startSandbox({
        bwrapPath: this.proc.bwrapPath,
        plan: { uid, gid: this.proc.workerGid, tmpSizeBytes: this.proc.tmpSizeBytes, mounts: [], cmd },
        seccompProfile: this.proc.seccompProfile,
        env: warmEnv(lease.port),
        files: R_FILES,
        runDirs: R_RUN_DIRS,
        stdin: stdin[0],
        hostCredentials: this.asRoot,
        closeBeforeClone: takeListener(lease),
        landlock: this.network.forWorker(lease.port),
        onLine: (line, bytes) => output(line, bytes),
        limits: await this.hooks.place(uid, lease.port, limits, cgroup),
      });
    } catch (err) {
      if (stdin) stdin.forEach(closeFd);
      if (uid !== undefined) this.hooks.release(uid);
      await Promise.all([lease && ports.release(lease), uid !== undefined && uids.release(uid), cgroup?.remove()]);
      throw this.cgroups.explain(err, cgroup);
    } finally {
      this.cgroups.refill();
    }
    closeFd(stdin[0]);
    const handoff = stdin[1];
    const held = { lease, uid, cgroup };
    let takenOver = false;
    const ended = this.sandboxEnd(sandbox, cgroup, uid);
    const warm: WarmSandbox = {
      entry: index,
      sandbox,
      appPid: 0,
      uid,
      lease,
      cgroup,
      handoff,
      loaded: [],
      redirect: (to) => (output = to),
      ended,
      // Once a worker has taken it over, the worker gives it all back; until then its end does.
      released: ended.then(async (status) => {
        if (takenOver) return;
        closeFd(handoff);
        await this.giveBack(held, status, `warm sandbox ${sandbox.pid}`);
      }),
      takeOver: () => (takenOver = true),
    };
    const timeout = delay(WARM_START_MS);
    let onAbort = () => {};
    const aborted = new Promise<'closed'>((resolve) => (onAbort = () => resolve('closed')));
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    const started = await Promise.race([
      Promise.all([sandbox.appPid, warmedUp]),
      timeout.promise.then(() => 'timeout' as const),
      sandbox.exited.then(() => 'exited' as const),
      aborted,
    ]);
    timeout.cancel();
    signal.removeEventListener('abort', onAbort);
    if (typeof started === 'string' || started[0] === null) {
      await sandbox.kill();
      await warm.released;
      const why =
        started === 'timeout' ? `did not get ready within ${WARM_START_MS / 1000} s` : started === 'closed' ? 'was stopped by close()' : 'ended before it was ready';
      throw new Error(`the warm sandbox (${cmd.join(' ')}) ${why}${said.length ? `; it said: ${said.slice(-5).join(' | ')}` : ''}`);
    }
    [warm.appPid, warm.loaded] = started;
    // Until the handoff, nothing it prints is anybody's log.
    warm.redirect(() => {});
    return warm;
  }

  /**
   * The worker, served by a warm sandbox when one fits the spec (SPEC §12):
   * its mounts put into the running sandbox, the spec's limits set, then the
   * app, its environment and R profile handed over. Undefined when none
   * fits (the caller starts it cold); a handoff that fails also falls back.
   */
  private async fromPool(spec: WorkerSpec, appDir: string, mounts: ReturnType<typeof workerMounts>, checks: PathCheck[]): Promise<Worker | undefined> {
    if (!this.pool) return undefined;
    const limits = workerLimits(spec, this.limits);
    const warm = this.pool.take((entry, candidate) => warmFits(spec, entry, candidate, { limits, defaults: defaultLimits(this.limits), checks }));
    if (!warm) return undefined;
    const startedAt = performance.now();
    warm.takeOver();
    try {
      await mountInject(warm.appPid, mounts.map((m) => ({ source: m.source, target: m.target, readOnly: m.readOnly === true })), {
        uid: warm.uid,
        gid: this.proc.workerGid,
      });
      if (warm.cgroup) await warm.cgroup.update({ memoryBytes: limits.memoryBytes, cpus: limits.cpus });
      const env = workerEnv(spec, warm.lease.port, true)
        .map((entry): [string, string] => [entry.slice(0, entry.indexOf('=')), entry.slice(entry.indexOf('=') + 1)])
        // The warm R has its own already; the rest is the cold worker's environment.
        .filter(([name]) => !WARM_OWN_ENV.has(name));
      const message = handoffMessage(appDir, spec.rProfilePath ?? '', env.find(([n]) => n === 'R_LIBS')?.[1] ?? '', env);
      const ring = new LogRing(this.proc.logLines, this.proc.logBytes);
      // Its usage counts from the handoff: the warm-up's CPU is not the app's.
      const cpuSeconds = warm.cgroup?.cpuSeconds() ?? (await sampleTrees([warm.sandbox.pid]))[0]!.ticks / clockTicksPerSecond;
      warm.redirect((line, bytes) => ring.push(line, bytes));
      await writeAll(warm.handoff, message);
      closeFd(warm.handoff);
      const worker = this.track(spec, { sandbox: warm.sandbox, lease: warm.lease, uid: warm.uid, cgroup: warm.cgroup, ring, startedAt, ended: warm.ended });
      worker.lastSample = { cpuSeconds, at: startedAt };
      return worker;
    } catch (err) {
      this.log.warn({ err, workerId: spec.workerId }, 'procyard: handing an app to a warm sandbox failed: starting it cold');
      closeFd(warm.handoff);
      await warm.sandbox.kill();
      const status = await warm.ended;
      await this.giveBack(warm, status, spec.workerId);
      return undefined;
    }
  }

  async stop(id: string): Promise<void> {
    const worker = this.mustGet(id);
    worker.endedByServer = true;
    worker.stopping ??= this.gracefulStop(worker);
    await worker.stopping;
    this.drop(id, worker);
  }

  /**
   * SIGTERM to the app itself (bwrap's child-pid), so its cleanup handlers
   * run; SIGKILL to the bwrap monitor after stopGraceMs.
   */
  private async gracefulStop(worker: Worker): Promise<void> {
    const { sandbox } = worker;
    if (sandbox.running) {
      const grace = delay(this.proc.stopGraceMs);
      const signalled = await Promise.race([sandbox.signalApp('SIGTERM'), grace.promise.then(() => false)]);
      if (signalled) await Promise.race([sandbox.exited, grace.promise]);
      grace.cancel();
      await sandbox.kill();
    }
    await worker.released;
  }

  /**
   * True when the worker runs, every listener on its port belongs to its UID
   * and a connect succeeds (see readiness.ts; without root every worker has
   * the server's UID, so another worker's listener cannot be told apart).
   */
  async healthCheck(id: string, opts: { timeoutMs?: number } = {}): Promise<boolean> {
    const worker = this.workers.get(id);
    if (!worker || !worker.sandbox.running) return false;
    const probe = await probeOwnListener(worker.port, this.listenerOwner(worker), opts.timeoutMs ?? 2000);
    return probe.ready && worker.sandbox.running;
  }

  /**
   * Resolves once the worker's own listener accepts (as healthCheck sees it).
   * Rejects with WorkerNotFoundError for an unknown id, WorkerNotReadyError
   * when the worker exits first or after timeoutMs (default 60000; Infinity
   * for none), and with the signal's reason when it aborts.
   */
  async waitReady(id: string, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<void> {
    const worker = this.mustGet(id);
    const timeoutMs = opts.timeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
    if (typeof timeoutMs !== 'number' || !(timeoutMs >= 0))
      throw new RangeError(`waitReady: opts.timeoutMs must be a number of milliseconds >= 0, got ${String(timeoutMs)}`);
    try {
      await waitForListener(
        {
          workerId: id,
          port: worker.port,
          owner: this.listenerOwner(worker),
          running: () => worker.sandbox.running,
          // The monitor's exit: it carries the status the moment running() turns false.
          exited: worker.sandbox.monitorExit,
        },
        timeoutMs,
        opts.signal,
      );
    } catch (err) {
      throw err instanceof WorkerNotReadyError ? await this.notReady(worker, err) : err;
    }
  }

  /**
   * The error with what tells why: the worker's last lines (the last one in
   * the message), and for one that exited, whether the OOM killer ended it
   * (its cgroup counts the kill before the app is gone; read at once, not
   * after what the app left behind has ended).
   */
  private async notReady(worker: Worker, err: WorkerNotReadyError): Promise<WorkerNotReadyError> {
    // The output the monitor's exit left in the pipes is read by now, or within a turn.
    await new Promise((resolve) => setImmediate(resolve));
    const logTail = worker.ring.tail(NOT_READY_TAIL_LINES);
    // R ends a failure with "Execution halted": the error line above it says more.
    const printed = logTail.filter((line) => line.trim() !== '' && line !== 'Execution halted');
    const last = printed.filter((line) => /^Error\b/.test(line)).at(-1) ?? printed.at(-1);
    const killed = err.exit?.signal === 'SIGKILL' || err.exit?.code === 137;
    const oomKilled = worker.exit?.oomKilled ?? (err.reason === 'exited' && killed && (worker.cgroup?.oomKills() ?? 0) > 0);
    const message =
      err.message.replace(/; see its logs$/, '') +
      (oomKilled ? '; the kernel killed it for its memory limit (oomKilled)' : '') +
      (last !== undefined ? `; its last output: ${last.length > 300 ? `${last.slice(0, 300)}...` : last}` : '; it printed nothing') +
      (err.reason === 'timeout' ? '. It is still running: stop() it, or wait longer' : '');
    return new WorkerNotReadyError(message, err.workerId, err.reason, err.exit, { logTail, oomKilled });
  }

  /**
   * Whose the worker's listener must be: its UID (its own as root, else the
   * server's, which all workers share) and a process of its sandbox.
   */
  private listenerOwner(worker: Worker): ListenerOwner {
    return { uid: this.asRoot ? worker.uid : (process.geteuid?.() ?? 0), root: worker.sandbox.pid, held: worker.heldListeners };
  }

  async logs(id: string, opts: { tail?: number; follow?: boolean } = {}): Promise<LogStream> {
    const worker = this.mustGet(id);
    if (opts === null || typeof opts !== 'object') throw new TypeError('logs: opts must be an object ({ tail?, follow? })');
    if (opts.tail !== undefined && !(Number.isSafeInteger(opts.tail) && opts.tail >= 0))
      throw new RangeError(`logs: opts.tail must be a number of lines >= 0, got ${String(opts.tail)}`);
    if (opts.follow !== undefined && typeof opts.follow !== 'boolean') throw new TypeError(`logs: opts.follow must be true or false, got ${String(opts.follow)}`);
    return worker.ring.reader(opts);
  }

  async addr(id: string): Promise<string> {
    return `127.0.0.1:${this.mustGet(id).port}`;
  }

  build(spec: BuildSpec, opts: { signal?: AbortSignal } = {}): Promise<BuildResult> {
    return this.tracked(() => this.runBuild(spec, opts));
  }

  private async runBuild(spec: BuildSpec, opts: { signal?: AbortSignal } = {}): Promise<BuildResult> {
    await validateBuildSpec(spec);
    this.assertOpen();
    await this.assertNetworkUsable();
    const { signal } = opts;
    // Checked before anything starts: failing on it later left the build running.
    if (signal != null && (typeof signal.addEventListener !== 'function' || typeof signal.removeEventListener !== 'function'))
      throw new TypeError('build: opts.signal must be an AbortSignal');
    let cmd: string[];
    try {
      cmd = this.resolveCommand(spec.cmd, spec.rVersion ?? '');
    } catch (err) {
      return { success: false, exitCode: 1, logs: (err as Error).message };
    }
    const targets = this.targets.acquire(spec.mounts ?? [], 'mounts');
    const { mounts } = targets;
    if (signal?.aborted) {
      await targets.release();
      return { success: false, exitCode: -1, logs: 'build aborted before it started' };
    }

    let cgroup: WorkerCgroup | null;
    try {
      cgroup = await this.cgroups.acquire();
    } catch (err) {
      await targets.release();
      throw err;
    }
    let uid: number;
    try {
      uid = await this.allocators.uids.alloc();
    } catch (err) {
      await Promise.all([targets.release(), cgroup?.remove()]);
      throw err;
    }
    const ring = new LogRing(this.proc.logLines, this.proc.logBytes);
    try {
      const limits = await this.hooks.place(uid, undefined, this.cgroups.spawnOptions(cgroup, defaultLimits(this.limits), this.asRoot), cgroup);
      const sandbox = await startSandbox({
        bwrapPath: this.proc.bwrapPath,
        plan: { uid, gid: this.proc.workerGid, tmpSizeBytes: this.proc.tmpSizeBytes, mounts, cmd },
        seccompProfile: this.proc.seccompProfile,
        env: buildEnv(spec.env),
        hostCredentials: this.asRoot,
        // No TCP bind at all; connects as configured (package installs need HTTPS).
        landlock: this.network.forBuild(),
        onLine: (line, bytes) => {
          ring.push(line, bytes);
          try {
            spec.logWriter?.(line);
          } catch (err) {
            this.log.warn({ err, bundleId: spec.bundleId }, 'procyard: build logWriter threw');
          }
        },
        limits,
      })
        .catch((err: unknown) => {
          throw this.cgroups.explain(err, cgroup);
        })
        .finally(() => this.cgroups.refill());
      this.builds.add(sandbox);
      const abort = () => void sandbox.kill();
      signal?.addEventListener('abort', abort, { once: true });
      // Closed, or aborted while the sandbox was being set up (no listener yet then).
      if (this.closed || signal?.aborted) abort();
      try {
        const status = await this.sandboxEnd(sandbox, cgroup, uid);
        const exitCode = exitCodeOf(status);
        if (await this.endCgroup(cgroup, status, spec.bundleId)) {
          const note = `procyard: the build was killed by the kernel's OOM killer at its memory limit (${this.limits.memoryBytes} bytes, server.defaultMemoryLimit)`;
          ring.push(note);
          try {
            spec.logWriter?.(note);
          } catch {
            // as for every other line: a throwing logWriter does not end the build's report
          }
        }
        return { success: exitCode === 0 && !signal?.aborted, exitCode, logs: ring.snapshot().join('\n') };
      } finally {
        signal?.removeEventListener('abort', abort);
        this.builds.delete(sandbox);
      }
    } finally {
      this.hooks.release(uid);
      await Promise.all([targets.release(), this.allocators.uids.release(uid), cgroup?.remove()]);
    }
  }

  async listManaged(): Promise<ManagedWorker[]> {
    return [...this.workers.entries()].map(([id, w]) => ({
      id,
      kind: 'container',
      labels: { ...(w.spec.labels ?? {}) },
      appId: w.spec.appId,
      state: w.sandbox.running ? 'running' : 'exited',
      addr: `127.0.0.1:${w.port}`,
      startedAt: new Date(w.startedAtMs),
      ...(w.exit ? { exit: { ...w.exit } } : {}),
    }));
  }

  async removeResource(r: ManagedResource): Promise<void> {
    const worker = this.workers.get(r.id);
    if (!worker) return;
    worker.endedByServer = true;
    await worker.sandbox.kill();
    await worker.released;
    this.drop(r.id, worker);
  }

  async workerResourceUsage(id: string): Promise<WorkerResourceUsage | null> {
    const worker = this.workers.get(id);
    if (!worker || !worker.sandbox.running) return null;
    const [tree] = await sampleTrees([worker.sandbox.pid]);
    if (!tree.alive || !worker.sandbox.running) return null;
    // The cgroup where it has one: it counts what the tree's live processes
    // do not show (tmpfs, page cache, children never waited for).
    let cgroup: { memoryLimit: number; memory: number | null; cpu: number | null } = { memoryLimit: 0, memory: null, cpu: null };
    try {
      if (worker.cgroup)
        cgroup = { memoryLimit: worker.cgroup.memoryLimit(), memory: worker.cgroup.memoryCharged(), cpu: worker.cgroup.cpuSeconds() };
    } catch {
      // the cgroup went with the worker meanwhile
    }
    const now = performance.now();
    const cpuSeconds = cgroup.cpu ?? tree.ticks / clockTicksPerSecond;
    // The first call counts from the spawn (the cgroup and the tree both start from nothing there).
    const last = worker.lastSample ?? { cpuSeconds: 0, at: worker.startedAt };
    const seconds = (now - last.at) / 1000;
    const cpuPercent = seconds > 0 ? Math.max(0, ((cpuSeconds - last.cpuSeconds) / seconds) * 100) : 0;
    worker.lastSample = { cpuSeconds, at: now };
    return { cpuPercent, memoryUsageBytes: cgroup.memory ?? tree.rssBytes, memoryLimitBytes: cgroup.memoryLimit };
  }

  /**
   * Changes a live worker's limits in its cgroup: in spawn's units
   * (`{ memoryLimit: '2g', cpuLimit: 1.5 }`, a field left out stays as it
   * is), or as the Backend interface has it, memory in bytes and CPU in
   * nanoCPUs (1e9 = one CPU), 0 leaving that one as it is.
   */
  async updateResources(id: string, limits: { memoryLimit?: string; cpuLimit?: number }): Promise<void>;
  async updateResources(id: string, memoryBytes: number, nanoCpus: number): Promise<void>;
  async updateResources(id: string, memory: number | { memoryLimit?: string; cpuLimit?: number }, nanoCpus?: number): Promise<void> {
    const worker = this.mustGet(id);
    const [bytes, nanos] = typeof memory === 'object' && memory !== null ? inBackendUnits(memory) : [memory, nanoCpus as number];
    if (!worker.sandbox.running) throw new Error(`worker "${id}" has exited: its limits can no longer change`);
    await this.cgroups.update(id, worker.cgroup, bytes, nanos);
  }

  /**
   * Frees Redis claims of peers whose lease is gone, and (as root) kills
   * sandboxes orphaned by a server that died in the middle of a spawn.
   */
  async cleanupOrphanResources(): Promise<void> {
    await Promise.all([this.allocators.cleanupOrphans(), this.killOrphanSandboxes(), this.cgroups.cleanupOrphans(), this.hooks.cleanupOrphans()]);
  }

  private async killOrphanSandboxes(): Promise<void> {
    // Without root every sandbox runs as the server's own user: nothing marks one as ours.
    if (!this.asRoot) return;
    const killed = await killOrphanSandboxes(this.proc.workerUidStart, this.proc.workerUidEnd);
    if (killed.length > 0) this.log.warn({ pids: killed }, 'procyard: killed sandboxes orphaned during set-up by a dead server');
  }

  async preflight(): Promise<PreflightReport> {
    // Loaded on first use: a server that never runs preflight never pays for it.
    const { runPreflight } = await import('../preflight/index.js');
    return runPreflight(this.config);
  }

  checkRVersion(version: string): void {
    checkRVersion(version, this.proc.rigBase);
  }

  /** Stops every worker (gracefully, concurrently), kills running builds, frees every port and UID. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweepTimer);
    for (const build of this.builds) void build.kill();
    // Spawns and builds in flight stop what they started once they see `closed`.
    if (this.inFlight > 0) await new Promise<void>((resolve) => (this.onIdle = resolve));
    await Promise.all([...this.workers.keys()].map((id) => this.stop(id).catch(() => {})));
    await this.pool?.close();
    await Promise.all([this.allocators.close(), this.cgroups.close(), this.hooks.close()]);
  }

  /**
   * The sandbox's exit once nothing of it is left. Its monitor's exit ends
   * the sandbox, and its init and pipes normally follow within milliseconds.
   * When the init has ended, so has every process of its pid namespace: what
   * may be left is only the output pipes, held by another worker they were
   * passed to, and those are let go of at once. But an app can keep its init:
   * it runs as the init's UID, so it can rewrite it through /proc/1/mem and
   * exec another program in it, which no parent-death signal and no check for
   * a bwrap init then catch. So whatever still runs LEFTOVER_GRACE_MS after
   * the monitor's exit is killed: the processes in the sandbox's cgroup, or
   * without one (as root, where each sandbox has a UID of its own) those of
   * its UID.
   */
  private async sandboxEnd(sandbox: Sandbox, cgroup: WorkerCgroup | null, uid: number): Promise<ExitStatus> {
    const status = await sandbox.monitorExit;
    if (await sandbox.initEnded) return this.pipesEnd(sandbox, status);
    let byUid = false;
    for (let round = 0; round < LEFTOVER_ROUNDS; round++) {
      const wait = delay(round === 0 ? LEFTOVER_GRACE_MS : 100);
      const gone = await Promise.race([sandbox.exited.then(() => true), wait.promise.then(() => false)]);
      wait.cancel();
      // Killed by UID: the UID goes back to the pool only once none of them runs.
      if (gone && (!byUid || (await killUidProcesses(uid)) === 0)) return status;
      if (gone) continue;
      if (cgroup) {
        await cgroup.killAll();
        if (await cgroup.isEmpty()) return this.pipesEnd(sandbox, status);
      } else if (this.asRoot) {
        if ((await killUidProcesses(uid)) === 0) return this.pipesEnd(sandbox, status);
        byUid = true;
      }
      // Else every worker has the server's UID: nothing tells this one's
      // processes apart, so only wait (bounded) for them to go.
    }
    this.log.error({ pid: sandbox.pid, uid }, 'procyard: processes of a finished sandbox could not be ended; its output pipes stay open');
    return status;
  }

  /**
   * Nothing of the sandbox runs: its output pipes close now, or when what is
   * in them has been read (PIPE_DRAIN_MS at most), whoever else holds them.
   */
  private async pipesEnd(sandbox: Sandbox, status: ExitStatus): Promise<ExitStatus> {
    const wait = delay(PIPE_DRAIN_MS);
    const closed = await Promise.race([sandbox.exited.then(() => true), wait.promise.then(() => false)]);
    wait.cancel();
    if (!closed) sandbox.letGoOfPipes();
    return sandbox.exited;
  }

  /** Whether the OOM killer ended the sandbox (read first), then its cgroup removed. */
  private async endCgroup(cgroup: WorkerCgroup | null, status: ExitStatus, who: string): Promise<boolean> {
    if (!cgroup) return false;
    try {
      return await cgroup.finish(status);
    } catch (err) {
      this.log.error({ err, id: who }, 'procyard: removing a cgroup failed');
      return false;
    }
  }

  /** Runs a spawn or build, counted so that close() can wait for it. */
  private async tracked<T>(work: () => Promise<T>): Promise<T> {
    this.assertOpen();
    this.inFlight++;
    try {
      return await work();
    } finally {
      if (--this.inFlight === 0) this.onIdle();
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new BackendClosedError();
  }

  private mustGet(id: string): Worker {
    const worker = this.workers.get(id);
    if (!worker) throw new WorkerNotFoundError(id);
    return worker;
  }

  /** Removes the entry unless a newer worker with the same id replaced it. */
  private drop(id: string, worker: Worker): void {
    if (this.workers.get(id) === worker) this.workers.delete(id);
  }

  /** R and Rscript resolve through rig; a pinned version that is gone is an error. */
  private resolveCommand(cmd: string[], rVersion: string): string[] {
    const [program, ...rest] = cmd;
    if (program !== 'R' && program !== 'Rscript') return cmd;
    const r = resolveRBinary(rVersion, this.proc.rPath, this.proc.rigBase);
    if (r.fellBack) throw new Error(rVersionGoneMessage(rVersion));
    return [program === 'R' ? r.path : path.join(path.dirname(r.path), 'Rscript'), ...rest];
  }
}

/** updateResources' spawn-unit form as (bytes, nanoCPUs); a limit can change, not go (0 is refused). */
function inBackendUnits(limits: { memoryLimit?: string; cpuLimit?: number }): [number, number] {
  for (const key of Object.keys(limits))
    if (key !== 'memoryLimit' && key !== 'cpuLimit') throw new TypeError(`updateResources: unknown field "${key}" (memoryLimit, cpuLimit)`);
  let bytes = 0;
  let nanos = 0;
  if (limits.memoryLimit !== undefined) {
    const memory = memoryField(limits.memoryLimit, 'updateResources: memoryLimit');
    if (typeof memory === 'string') throw new RangeError(memory);
    if (memory === 0) throw new RangeError('updateResources: memoryLimit must be more than 0: a live worker\'s limit can change, not go');
    bytes = memory;
  }
  if (limits.cpuLimit !== undefined) {
    const cpus = cpuField(limits.cpuLimit, 'updateResources: cpuLimit');
    if (typeof cpus === 'string') throw new RangeError(cpus);
    if (cpus === 0) throw new RangeError('updateResources: cpuLimit must be more than 0: a live worker\'s limit can change, not go');
    nanos = Math.round(cpus * 1e9);
  }
  return [bytes, nanos];
}

/** The listener fd for the spawn call to close; the lease no longer owns it. */
function takeListener(lease: PortLease): number {
  const fd = lease.listenerFd;
  lease.listenerFd = -1;
  return fd;
}
