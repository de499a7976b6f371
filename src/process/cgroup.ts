// Per-worker cgroups (SPEC §8). Each worker and each build gets a cgroup of
// its own, made before the clone; the clone child enters it before its UID
// switch and exec (native/spawn.cc), so no process of a sandbox ever runs
// outside it. Under the parent (cgroupParent, or the server's own cgroup), in
// each v1 hierarchy or in the one v2 tree:
//
//   <parent>/procyard-<pid ns>-<pid>-<starttime>-<token>/c<seq>
//
// The instance directory names the server that owns it, so a later server
// can tell it was left by a dead one (cleanupOrphans); the random token
// keeps apart the backends of one process, even those of two copies of
// procyard loaded side by side (a counter would be per copy). A couple of cgroups
// are made ahead, with the default limits already set: a cgroup mkdir costs
// ~0.1 ms of kernel time per hierarchy, which would otherwise sit on every
// spawn's path.
//
// On v1 the cpu directory of a worker that is gone is recycled (CgroupManager
// cpuPool): entering a cpu cgroup that has held a task before costs the clone
// child ~40 µs less than entering a new one. Memory and pids are always new.
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { readdir, readFile, readlink, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { NotSupportedError, type Logger } from '../backend.js';
import { memoryFloorProblem } from '../config.js';
import {
  cgroupCreate,
  cgroupRemove,
  cgroupWrite,
  closeFd,
  parseStat,
  pidfdOpen,
  type CgroupWrite,
  type NativeSpawnOptions,
} from '../native.js';
import { killAndAwait, parentOf, reapableWhenAdopted } from './ending.js';
import {
  CONTROLLERS,
  CgroupProblem,
  detectLayout,
  dirOf,
  enable,
  mkdirCgroup,
  parentPath,
  readyParent,
  type Controller,
  type Hierarchy,
} from './cgroup-hierarchy.js';
import { CPU_PERIOD_US, MAX_CPUS, cpuQuotaUs, type Limits, type LimitsConfig } from './limits.js';

export { CgroupProblem } from './cgroup-hierarchy.js';
export type { Controller } from './cgroup-hierarchy.js';

/** Limits cannot be enforced and resourceLimits is 'required': spawn and build reject with it. */
export class CgroupError extends Error {
  override readonly name = 'CgroupError';
}

// The token: hex now, a decimal counter before. `kind` tells the socket
// hooks' directories (socket-hooks.ts) from the limits' ones.
const instanceDir = (kind: string) => new RegExp(`^procyard-${kind}(\\d+)-(\\d+)-(\\d+)-([0-9a-f]+)$`);
const INSTANCE_DIR = instanceDir('');
/** Cgroups kept made ahead, per backend. */
const SPARES = 2;
const NO_LIMITS: Limits = { memoryBytes: 0, cpus: 0, pids: 0 };
/** v1 reports "no memory limit" as a number near 2^63. */
const UNLIMITED_V1 = 2 ** 60;

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code ?? e?.message ?? String(err);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

interface Identity {
  pid: number;
  starttime: number;
  /** Inode of the pid namespace: pids are compared only within one. */
  pidns: number;
}

let identity: Promise<Identity> | undefined;

/** This process as an instance directory names it. */
function self(): Promise<Identity> {
  identity ??= (async () => {
    const [stat, ns] = await Promise.all([readFile('/proc/self/stat', 'utf8'), readlink('/proc/self/ns/pid')]);
    return { pid: process.pid, starttime: parseStat(stat)?.starttime ?? 0, pidns: Number(/\d+/.exec(ns)?.[0] ?? 0) };
  })();
  return identity;
}

/** Whether pid is the process that started at starttime. */
async function isAlive(pid: number, starttime: number): Promise<boolean> {
  try {
    const fields = parseStat(await readFile(`/proc/${pid}/stat`, 'utf8'));
    return fields !== null && fields.starttime === starttime && fields.state !== 'Z' && fields.state !== 'X';
  } catch {
    return false;
  }
}

/**
 * A new instance directory's name, `procyard-<kind><pid ns>-<pid>-<starttime>-<token>`:
 * it names the server that owns it, so a later one can tell a dead server's.
 */
export async function instanceName(kind = ''): Promise<string> {
  const me = await self();
  return `procyard-${kind}${me.pidns}-${me.pid}-${me.starttime}-${randomBytes(6).toString('hex')}`;
}

/**
 * The entries of `kind` in parent (instance directories, or any file named
 * like one) whose server may still run: alive, or in another pid namespace,
 * where it cannot be told. `except` (a path) is left out.
 */
export async function liveInstances(parent: string, kind: string, except?: string): Promise<string[]> {
  const pattern = instanceDir(kind);
  const me = await self();
  const live: string[] = [];
  for (const name of await readdir(parent).catch(() => [] as string[])) {
    const m = pattern.exec(name);
    if (!m || path.join(parent, name) === except) continue;
    const [pidns, pid, starttime] = [Number(m[1]), Number(m[2]), Number(m[3])];
    if (pidns !== me.pidns || (await isAlive(pid, starttime))) live.push(path.join(parent, name));
  }
  return live;
}

/** The instance directories of `kind` in parent whose server is gone (in this pid namespace). */
export async function deadInstances(parent: string, kind = ''): Promise<string[]> {
  const pattern = kind === '' ? INSTANCE_DIR : instanceDir(kind);
  const me = await self();
  const dead: string[] = [];
  for (const name of await readdir(parent).catch(() => [] as string[])) {
    const m = pattern.exec(name);
    if (m && Number(m[1]) === me.pidns && !(await isAlive(Number(m[2]), Number(m[3])))) dead.push(path.join(parent, name));
  }
  return dead;
}

/**
 * The control files and values that set one controller's limit (0 = none).
 * v1 charges socket buffers (TCP and UDP) to a memory cgroup only once its
 * `memory.kmem.tcp.limit_in_bytes` is written, and then to a counter of its
 * own, outside memory.limit_in_bytes: unwritten, a worker could queue
 * gigabytes in sockets while its cgroup showed a few MiB. So `tcp` (v1, where
 * the kernel has the file) caps them too, at the same size: at most the
 * limit in memory plus the limit in socket buffers. v2 counts socket memory
 * in memory.max itself.
 */
function limitWrite(version: 1 | 2, controller: Controller, dir: string, value: number, tcp = false): CgroupWrite[] {
  switch (controller) {
    case 'memory': {
      if (version === 2) return [{ path: `${dir}/memory.max`, value: value === 0 ? 'max' : String(value) }];
      const bytes = value === 0 ? '-1' : String(value);
      const memory = { path: `${dir}/memory.limit_in_bytes`, value: bytes };
      return tcp ? [memory, { path: `${dir}/memory.kmem.tcp.limit_in_bytes`, value: bytes }] : [memory];
    }
    case 'cpu': {
      const quota = value === 0 ? null : cpuQuotaUs(value);
      return [
        version === 1
          ? { path: `${dir}/cpu.cfs_quota_us`, value: quota === null ? '-1' : String(quota) }
          : { path: `${dir}/cpu.max`, value: `${quota ?? 'max'} ${CPU_PERIOD_US}` },
      ];
    }
    case 'pids':
      return [{ path: `${dir}/pids.max`, value: value === 0 ? 'max' : String(value) }];
  }
}

const LIMIT_OF: Record<Controller, keyof Limits> = { memory: 'memoryBytes', cpu: 'cpus', pids: 'pids' };

/** The writes that turn a cgroup's limits `from` into `limits`: only what differs. */
function limitWrites(version: 1 | 2, dirs: ReadonlyMap<Controller, string>, limits: Limits, from: Limits, tcp: boolean): CgroupWrite[] {
  const out: CgroupWrite[] = [];
  for (const [controller, dir] of dirs) {
    const key = LIMIT_OF[controller];
    if (limits[key] !== from[key]) out.push(...limitWrite(version, controller, dir, limits[key], tcp));
  }
  return out;
}

// cgroupfs is in memory: a sync read costs less than the four pool round trips of an async one.
function readNumber(file: string, unlimited: (text: string) => boolean): number {
  const text = readFileSync(file, 'utf8').trim();
  return unlimited(text) ? 0 : Number(text);
}

/** The processes in a cgroup directory ([] when it is gone). */
async function procsOf(dir: string): Promise<number[]> {
  try {
    return (await readFile(path.join(dir, 'cgroup.procs'), 'utf8')).split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** How long killAll waits for the processes it killed to end. */
const KILL_WAIT_MS = 2000;

/**
 * SIGKILLs every process in dir and resolves once they have ended (or after
 * KILL_WAIT_MS). Each is pinned by a pidfd and seen in the cgroup after, so
 * a recycled pid is never hit.
 */
export async function killAll(dir: string): Promise<void> {
  const pinned: { pid: number; pidfd: number }[] = [];
  for (const pid of await procsOf(dir)) {
    try {
      pinned.push({ pid, pidfd: pidfdOpen(pid) });
    } catch {
      // gone meanwhile
    }
  }
  const still = new Set(await procsOf(dir));
  const ours: { pidfd: number; reap: boolean }[] = [];
  for (const { pid, pidfd } of pinned) {
    if (still.has(pid)) ours.push({ pidfd, reap: reapableWhenAdopted(parentOf(pid)) });
    else closeFd(pidfd); // ended meanwhile: its pid may be another process's by now
  }
  // v2 (Linux 5.14+) kills the whole cgroup in one write, forks in flight too.
  await writeFile(path.join(dir, 'cgroup.kill'), '1').catch(() => {});
  await Promise.all(ours.map(({ pidfd, reap }) => killAndAwait(pidfd, reap, KILL_WAIT_MS)));
}

/**
 * Removes (otherwise empty) cgroup directories, in one pool job per try.
 * Processes may still be leaving them for a moment after the sandbox's exit
 * was seen: bwrap's monitor exits on its init's word, while the init (or,
 * after a SIGKILL, the whole pid namespace) is still tearing down. So the
 * first retry comes a loop turn later, then after 1, 2, 4 ... ms; what stays
 * is killed.
 */
async function removeDirs(dirs: string[]): Promise<void> {
  const deadline = Date.now() + 5000;
  let busy = dirs;
  for (let attempt = 0, wait = 0; ; attempt++, wait = Math.min(Math.max(1, wait * 2), 100)) {
    busy = await cgroupRemove(busy);
    if (busy.length === 0) return;
    if (Date.now() > deadline) throw new Error(`cgroups ${busy.join(', ')} still hold processes (EBUSY)`);
    if (attempt >= 12) await Promise.all(busy.map(killAll));
    await (wait === 0 ? new Promise((resolve) => setImmediate(resolve)) : sleep(wait));
  }
}

export const removeDir = (dir: string) => removeDirs([dir]);

/** One worker's (or build's) cgroup: one directory per v1 hierarchy, or one v2 directory. */
export class WorkerCgroup {
  /** The OOM kill count finish() read before removing the directory. */
  private oomKillsAtEnd?: number;
  private removal?: Promise<void>;

  /** @internal made by CgroupManager */
  constructor(
    readonly version: 1 | 2,
    /** Each controller's directory (v1: a directory per hierarchy). */
    readonly dirs: ReadonlyMap<Controller, string>,
    private readonly allDirs: string[],
    /** The limits it was made with (for a recycled cpu directory: the default quota, restored). */
    private readonly made: Limits,
    /** v1: takes the cpu directory back once the rest is removed (CgroupManager.recycleCpu). */
    private readonly recycleCpu?: (dir: string) => Promise<void>,
    /** v1: socket buffers capped with the memory limit (limitWrite). */
    private readonly tcp = false,
  ) {
    // A recycled v1 cpu directory's counter carries its earlier tenants' time.
    this.cpuBaseline = this.cpuMicros() ?? 0;
  }

  /** cpuMicros() when it was made: cpuSeconds counts from here. */
  private readonly cpuBaseline: number;

  /**
   * CPU time the cgroup's processes have used since it was made, in seconds,
   * dead ones included, where the kernel counts it per cgroup (v2: cpu.stat,
   * in every cgroup; v1: cpuacct mounted with cpu); else null.
   */
  cpuSeconds(): number | null {
    const micros = this.cpuMicros();
    return micros === null ? null : Math.max(0, micros - this.cpuBaseline) / 1e6;
  }

  private cpuMicros(): number | null {
    try {
      if (this.version === 2) {
        const stat = readFileSync(`${this.allDirs[0]}/cpu.stat`, 'utf8');
        const usage = /^usage_usec (\d+)$/m.exec(stat);
        return usage ? Number(usage[1]) : null;
      }
      const cpu = this.dirs.get('cpu');
      return cpu ? readNumber(`${cpu}/cpuacct.usage`, () => false) / 1000 : null;
    } catch {
      return null; // no cpuacct beside cpu here (or the cgroup is gone)
    }
  }

  has(controller: Controller): boolean {
    return this.dirs.has(controller);
  }

  /** v2: the cgroup's directory (a child of its backend's instance directory). */
  get unifiedDir(): string | undefined {
    return this.version === 2 ? this.allDirs[0] : undefined;
  }

  /**
   * What the native spawn needs: the limits to write first, and what the
   * child enters through. v1: `tasks`, whose "0" moves the writing thread
   * alone, without the global lock cgroup.procs takes (it waits out an RCU
   * grace period: ms per spawn); v2: born inside (clone3), cgroup.procs the
   * fallback.
   */
  spawnOptions(limits: Limits): Pick<NativeSpawnOptions, 'cgroupEnter' | 'cgroupDir' | 'cgroupWrites'> {
    const v2 = this.version === 2;
    return {
      cgroupWrites: limitWrites(this.version, this.dirs, limits, this.made, this.tcp),
      cgroupEnter: this.allDirs.map((d) => `${d}/${v2 ? 'cgroup.procs' : 'tasks'}`),
      ...(v2 ? { cgroupDir: this.allDirs[0]! } : {}),
    };
  }

  /** The memory limit in force, as the kernel has it (0 = none). */
  memoryLimit(): number {
    const dir = this.dirs.get('memory');
    if (!dir) return 0;
    return this.version === 1
      ? readNumber(`${dir}/memory.limit_in_bytes`, (t) => Number(t) >= UNLIMITED_V1)
      : readNumber(`${dir}/memory.max`, (t) => t === 'max');
  }

  /** Memory charged to the cgroup: what its limit counts (anonymous memory, page cache and tmpfs it touched first, kernel memory); null without a memory controller. */
  memoryCharged(): number | null {
    const dir = this.dirs.get('memory');
    if (!dir) return null;
    return readNumber(`${dir}/${this.version === 1 ? 'memory.usage_in_bytes' : 'memory.current'}`, () => false);
  }

  /** Changes the limits of the live cgroup; 0 leaves one as it is. */
  async update(change: { memoryBytes: number; cpus: number }): Promise<void> {
    for (const [controller, wanted] of [['memory', change.memoryBytes], ['cpu', change.cpus]] as const)
      if (wanted > 0 && !this.dirs.has(controller))
        throw new NotSupportedError(`the ${controller} controller is not available to this worker's cgroup, so its ${controller} limit cannot be set`);
    const writes: CgroupWrite[] = [];
    if (change.memoryBytes > 0) writes.push(...limitWrite(this.version, 'memory', this.dirs.get('memory')!, change.memoryBytes, this.tcp));
    if (change.cpus > 0) writes.push(...limitWrite(this.version, 'cpu', this.dirs.get('cpu')!, change.cpus));
    await cgroupWrite(writes);
  }

  /** How many processes the kernel's OOM killer ended in this cgroup for its limit. */
  oomKills(): number {
    // Once finish() has read it, the directory may be gone: the count it read stands.
    if (this.oomKillsAtEnd !== undefined) return this.oomKillsAtEnd;
    const dir = this.dirs.get('memory');
    if (!dir) return 0;
    try {
      const text = readFileSync(`${dir}/${this.version === 1 ? 'memory.oom_control' : 'memory.events'}`, 'utf8');
      return Number(/^oom_kill (\d+)$/m.exec(text)?.[1] ?? 0);
    } catch {
      return 0;
    }
  }

  /**
   * After the sandbox exited: whether the OOM killer ended it (read before
   * the cgroup goes), then the cgroup removed. A sandbox ended by SIGKILL
   * (bwrap reports its app's as 137) in a cgroup where the OOM killer struck.
   */
  async finish(exit: { code: number | null; signal: string | null }): Promise<boolean> {
    const kills = this.oomKills();
    this.oomKillsAtEnd = kills;
    await this.remove();
    return kills > 0 && (exit.signal === 'SIGKILL' || exit.code === 137);
  }

  /** SIGKILLs every process still in the cgroup (v2: cgroup.kill); resolves once they have ended. */
  async killAll(): Promise<void> {
    await Promise.all(this.allDirs.map(killAll));
  }

  /** Whether no process is left in the cgroup (a directory already removed holds none). */
  async isEmpty(): Promise<boolean> {
    return (await Promise.all(this.allDirs.map(procsOf))).every((procs) => procs.length === 0);
  }

  /** Removes the cgroup (once its processes are gone), or hands its cpu directory back; safe to call more than once. */
  remove(): Promise<void> {
    this.removal ??= this.removeAll();
    return this.removal;
  }

  private async removeAll(): Promise<void> {
    const cpu = this.recycleCpu && this.dirs.get('cpu');
    if (!cpu) return removeDirs(this.allDirs);
    // Memory and pids first: every process of the sandbox was in all three,
    // so once those are gone the cpu directory holds none of them either.
    try {
      await removeDirs(this.allDirs.filter((d) => d !== cpu));
    } catch (err) {
      await removeDir(cpu).catch(() => {});
      throw err;
    }
    await this.recycleCpu!(cpu);
  }
}

/** Where workers' cgroups are made, once the parent is ready. */
interface Setup {
  version: 1 | 2;
  /** One instance directory per hierarchy, with the controllers it gives. */
  bases: { dir: string; controllers: Controller[] }[];
  missing: { controller: Controller; why: string }[];
  /** v1: the base whose cpu directories are recycled (cpu in a hierarchy without memory or pids). */
  cpuBase?: number;
  /** v1: the kernel can cap socket buffers per memory cgroup (limitWrite). */
  tcpLimit: boolean;
}

/** What preflight and the docs report: how limits are enforced on this host. */
export interface CgroupSupport {
  version: 0 | 1 | 2;
  /** Each usable controller and the parent cgroup directory its workers' cgroups go in. */
  controllers: { controller: Controller; parent: string }[];
  missing: { controller: Controller; why: string }[];
  /** Set when no cgroup can be had at all. */
  problem?: CgroupProblem;
  /** What the backend will do to the hierarchy on its first spawn (v2 delegation). */
  actions: string[];
}

/** The parent cgroups of each hierarchy, as the backend would use them; changes nothing. */
export async function inspectCgroups(cgroupParent: string): Promise<CgroupSupport> {
  const layout = await detectLayout();
  if (layout.version === 0)
    return { version: 0, controllers: [], missing: [], actions: [], problem: new CgroupProblem(layout.reason, NO_HIERARCHY_FIX) };
  const support: CgroupSupport = { version: layout.version, controllers: [], missing: [], actions: [] };
  try {
    for (const h of layout.hierarchies) {
      const ready = await readyParent(layout.version, h, cgroupParent, true);
      support.controllers.push(...ready.controllers.map((controller) => ({ controller, parent: ready.dir })));
      support.missing.push(...ready.missing);
      support.actions.push(...ready.actions);
    }
  } catch (err) {
    support.problem = asProblem(err);
  }
  if (layout.version === 1) support.missing.push(...missingV1(layout.hierarchies));
  return support;
}

const NO_HIERARCHY_FIX = 'mount cgroup2 at /sys/fs/cgroup (or the v1 memory, cpu and pids hierarchies), or set process.resourceLimits to "off"';

function asProblem(err: unknown): CgroupProblem {
  return err instanceof CgroupProblem ? err : new CgroupProblem(`cgroup set-up failed (${errText(err)})`, 'see the README\'s "Resources"');
}

function missingV1(hierarchies: Hierarchy[]): { controller: Controller; why: string }[] {
  return CONTROLLERS.filter((c) => !hierarchies.some((h) => h.controllers.includes(c))).map((controller) => ({
    controller,
    why: `no v1 hierarchy carries ${controller} (see /proc/self/mountinfo)`,
  }));
}

/**
 * A backend's cgroups: makes the parent ready on first use, hands out a
 * cgroup per worker or build, and removes what dead servers left.
 */
export class CgroupManager {
  private setup?: Promise<Setup | CgroupProblem>;
  private readonly spares: WorkerCgroup[] = [];
  private readonly pending = new Set<Promise<void>>();
  /**
   * v1: cpu directories of workers and builds that are gone, empty, with the
   * default quota, for the next cgroups made (at most SPARES: the spares'
   * need). Why: a task entering a cpu cgroup that never held one costs the
   * clone child ~40 µs more than entering one that did (measured on 6.x, in
   * C: 84-93 µs against 50-62 µs, 45-50 µs without any cgroup), even with the
   * directory made long ahead. A cpu cgroup holds nothing of its tenant but
   * cumulative counters (cpu.stat, and cpuacct's where "cpu,cpuacct" share a
   * hierarchy), which procyard does not read; the quota, the one limit it
   * writes there, is put back first. Memory and pids are never recycled:
   * memory carries charges and the OOM counter across tenants.
   */
  private readonly cpuPool: string[] = [];
  /** Recycling jobs under way (close() waits for them). */
  private readonly returning = new Set<Promise<void>>();
  private instanceDirs: string[] = [];
  private seq = 0;
  private closed = false;
  private warned = false;

  constructor(
    private readonly config: LimitsConfig,
    private readonly log: Logger,
  ) {}

  /**
   * A fresh cgroup for one worker or build, or null when it runs without
   * one ('off', or 'auto' where cgroups cannot be had). Rejects with a
   * CgroupError under 'required' when they cannot. Call refill() once the
   * spawn is done.
   */
  async acquire(): Promise<WorkerCgroup | null> {
    if (this.config.mode === 'off') return null;
    const setup = await this.ready();
    if (setup instanceof CgroupProblem) return this.unavailable(setup);
    if (this.config.mode === 'required' && setup.missing.length > 0)
      return this.unavailable(new CgroupProblem(setup.missing.map((m) => m.why).join('; '), 'delegate memory, cpu and pids to the server (systemd: Delegate=yes), or set process.resourceLimits to "auto"'));
    let cgroup = this.spares.shift();
    if (!cgroup) {
      try {
        cgroup = await this.make(setup);
      } catch (err) {
        return this.unavailable(new CgroupProblem(`cannot create a cgroup for the worker (${(err as Error).message})`, 'see the README\'s "Resources"'));
      }
    }
    return cgroup;
  }

  /**
   * Makes cgroups ahead, up to SPARES, on the pool. Called once a spawn is
   * done, and deferred a turn of the loop further: making them during one
   * would compete with its last steps for the pool and the CPU.
   */
  refill(): void {
    setImmediate(() => void this.setup?.then((setup) => {
      if (setup instanceof CgroupProblem) return;
      while (!this.closed && this.spares.length + this.pending.size < SPARES) {
        const job: Promise<void> = this.make(setup).then(
          (cgroup) => {
            if (this.closed) return cgroup.remove();
            this.spares.push(cgroup);
          },
          (err: unknown) => this.log.warn({ err }, 'procyard: making a cgroup ahead failed'),
        );
        this.pending.add(job);
        void job.finally(() => this.pending.delete(job));
      }
    }));
  }

  /**
   * RLIMIT_NPROC for a worker as root when no pids cgroup caps it: counted
   * per UID, and each worker has its own, so it caps that worker alone.
   */
  nprocLimit(cgroup: WorkerCgroup | null, asRoot: boolean): number | undefined {
    if (this.config.mode === 'off' || this.config.pidsLimit === 0 || !asRoot || cgroup?.has('pids')) return undefined;
    return this.config.pidsLimit;
  }

  /**
   * updateResources on a live worker: new limits in its cgroup (memory in
   * bytes, CPU in nanoCPUs; 0 leaves one as it is). NotSupportedError when it
   * has no cgroup.
   */
  async update(id: string, cgroup: WorkerCgroup | null, memoryBytes: number, nanoCpus: number): Promise<void> {
    for (const [name, value] of [['memoryBytes', memoryBytes], ['nanoCpus', nanoCpus]] as const)
      if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0)
        throw new RangeError(`updateResources: ${name} must be a non-negative integer (0 leaves it as it is), got ${String(value)}`);
    const floor = memoryFloorProblem(memoryBytes, 'updateResources: memoryBytes', String(memoryBytes));
    if (floor) throw new RangeError(floor);
    if (nanoCpus > MAX_CPUS * 1e9) throw new RangeError(`updateResources: nanoCpus must be at most ${MAX_CPUS * 1e9} (${MAX_CPUS} CPUs), got ${nanoCpus}`);
    const mode = this.config.mode;
    if (!cgroup)
      throw new NotSupportedError(
        `updateResources(${JSON.stringify(id)}): the worker runs without a cgroup (process.resourceLimits is "${mode}"` +
          `${mode === 'off' ? '' : ' and cgroups are not usable here: see preflight\'s resource_limits'})`,
      );
    try {
      await cgroup.update({ memoryBytes, cpus: nanoCpus / 1e9 });
    } catch (err) {
      if (err instanceof NotSupportedError) throw err;
      const busy = (err as NodeJS.ErrnoException).code === 'EBUSY' ? ' (it uses more memory than that, and the kernel could not reclaim enough)' : '';
      throw new Error(`updateResources(${JSON.stringify(id)}): cannot set memory ${memoryBytes} bytes / ${nanoCpus} nanoCPUs: ${(err as Error).message}${busy}`);
    }
  }

  /** Native spawn options that put a sandbox in its cgroup with these limits, or cap its UID's processes. */
  spawnOptions(cgroup: WorkerCgroup | null, limits: Limits, asRoot: boolean): Pick<NativeSpawnOptions, 'cgroupEnter' | 'cgroupDir' | 'cgroupWrites' | 'rlimitNproc'> {
    const nproc = this.nprocLimit(cgroup, asRoot);
    return { ...cgroup?.spawnOptions(limits), ...(nproc === undefined ? {} : { rlimitNproc: nproc }) };
  }

  /** A spawn error from the cgroup steps, reworded to name the cgroup; others as they are. */
  explain(err: unknown, cgroup: WorkerCgroup | null): unknown {
    const e = err as NodeJS.ErrnoException;
    if (!cgroup || typeof e?.syscall !== 'string') return err;
    // Only the cgroup's own files: another open the spawn makes (a seccomp profile) keeps its error.
    const inCgroup = [...cgroup.dirs.values(), cgroup.unifiedDir].some((dir) => dir !== undefined && e.path?.startsWith(`${dir}/`));
    if (e.syscall === 'write(cgroup tasks)' || ((e.syscall === 'open' || e.syscall === 'write') && inCgroup))
      return new CgroupError(
        `cannot put the worker in its cgroup with its limits (${e.message}): check the memoryLimit and cpuLimit values ` +
          'and that the cgroup hierarchy is intact, or set process.resourceLimits to "off"',
      );
    return err;
  }

  /** Removes the cgroups left by servers that are gone (each instance directory names its owner). */
  async cleanupOrphans(): Promise<string[]> {
    if (this.config.mode === 'off') return [];
    const layout = await detectLayout();
    if (layout.version === 0) return [];
    const orphans: string[] = [];
    for (const h of layout.hierarchies) {
      const parent = dirOf(h, parentPath(h, this.config.cgroupParent));
      if (parent !== null) orphans.push(...(await deadInstances(parent)));
    }
    await Promise.all(orphans.map((dir) => this.removeInstance(dir)));
    return orphans;
  }

  /** Removes the cgroups made ahead and this backend's instance directories. */
  async close(): Promise<void> {
    this.closed = true;
    while (this.pending.size > 0) await Promise.all(this.pending);
    await Promise.all(this.spares.splice(0).map((c) => c.remove()));
    while (this.returning.size > 0) await Promise.all(this.returning);
    await Promise.all(this.cpuPool.splice(0).map((dir) => removeDir(dir).catch((err: unknown) => this.log.warn({ err, dir }, 'procyard: removing a cgroup failed'))));
    await Promise.all(this.instanceDirs.map((dir) => removeDir(dir).catch((err: unknown) => this.log.warn({ err, dir }, 'procyard: removing a cgroup failed'))));
    this.instanceDirs = [];
  }

  private unavailable(problem: CgroupProblem): null {
    if (this.config.mode === 'required')
      throw new CgroupError(`process.resourceLimits is "required", but limits cannot be enforced: ${problem.message}`);
    if (!this.warned) {
      this.warned = true;
      this.log.warn({ problem: problem.problem }, 'procyard: workers run without cgroup limits');
    }
    return null;
  }

  private ready(): Promise<Setup | CgroupProblem> {
    this.setup ??= this.prepare().catch(asProblem);
    return this.setup;
  }

  private async prepare(): Promise<Setup> {
    const layout = await detectLayout();
    if (layout.version === 0) throw new CgroupProblem(layout.reason, NO_HIERARCHY_FIX);
    const name = await instanceName();
    const setup: Setup = { version: layout.version, bases: [], missing: [], tcpLimit: false };
    try {
      for (const h of layout.hierarchies) {
        const parent = await readyParent(layout.version, h, this.config.cgroupParent, false);
        const dir = path.join(parent.dir, name);
        // Never another backend's directory (EEXIST fails).
        await mkdirCgroup(dir, false, true);
        this.instanceDirs.push(dir);
        if (layout.version === 2) await enable(dir, parent.controllers);
        setup.bases.push({ dir, controllers: parent.controllers });
        setup.missing.push(...parent.missing);
      }
    } catch (err) {
      await Promise.all(this.instanceDirs.map((dir) => rmdir(dir).catch(() => {})));
      this.instanceDirs = [];
      throw err;
    }
    if (layout.version === 1) {
      setup.missing.push(...missingV1(layout.hierarchies));
      const cpuBase = setup.bases.findIndex((b) => b.controllers.length === 1 && b.controllers[0] === 'cpu');
      if (cpuBase >= 0) setup.cpuBase = cpuBase;
      const memoryBase = setup.bases.find((b) => b.controllers.includes('memory'));
      setup.tcpLimit = memoryBase !== undefined && existsSync(path.join(memoryBase.dir, 'memory.kmem.tcp.limit_in_bytes'));
    }
    if (setup.bases.every((b) => b.controllers.length === 0))
      throw new CgroupProblem(setup.missing.map((m) => m.why).join('; '), 'delegate memory, cpu and pids to the server (systemd: Delegate=yes)');
    this.log.info({ version: setup.version, cgroups: setup.bases }, 'procyard: per-worker cgroups ready');
    return setup;
  }

  /** A new cgroup with the default limits set: new directories, but (v1) a recycled cpu one where there is one. */
  private async make(setup: Setup): Promise<WorkerCgroup> {
    const name = `c${++this.seq}`;
    const recycled = setup.cpuBase === undefined ? undefined : this.cpuPool.pop();
    const dirs = setup.bases.map((b, i) => (i === setup.cpuBase && recycled) || path.join(b.dir, name));
    const byController = new Map<Controller, string>();
    setup.bases.forEach((b, i) => b.controllers.forEach((c) => byController.set(c, dirs[i]!)));
    const defaults: Limits = { memoryBytes: this.config.memoryBytes, cpus: this.config.cpus, pids: this.config.pidsLimit };
    const fresh = new Map([...byController].filter(([, dir]) => dir !== recycled));
    try {
      await cgroupCreate({ dirs: dirs.filter((d) => d !== recycled), writes: limitWrites(setup.version, fresh, defaults, NO_LIMITS, setup.tcpLimit) });
    } catch (err) {
      if (recycled) await this.recycleCpu(recycled);
      throw err;
    }
    return new WorkerCgroup(
      setup.version,
      byController,
      dirs,
      defaults,
      setup.cpuBase === undefined ? undefined : (dir) => this.recycleCpu(dir),
      setup.tcpLimit,
    );
  }

  /** A cpu directory whose cgroup is gone: into cpuPool if it is empty and there is room, else removed. */
  private recycleCpu(dir: string): Promise<void> {
    const job = (async () => {
      if (!this.closed && this.cpuPool.length < SPARES && (await this.resetCpu(dir)) && !this.closed && this.cpuPool.length < SPARES) {
        this.cpuPool.push(dir);
        return;
      }
      await removeDir(dir);
    })();
    this.returning.add(job);
    const done = () => void this.returning.delete(job);
    job.then(done, done);
    return job;
  }

  /**
   * Whether a v1 cpu directory holds no task and has the default quota (put
   * back if a spec or updateResources changed it). A straggler, or a failed
   * read or write, means no: it is removed (and killed) as any cgroup is.
   */
  private async resetCpu(dir: string): Promise<boolean> {
    try {
      // cgroupfs is in memory: sync reads (see readNumber).
      if (readFileSync(path.join(dir, 'tasks'), 'utf8') !== '') return false;
      const [quota] = limitWrite(1, 'cpu', dir, this.config.cpus) as [CgroupWrite];
      if (readFileSync(quota.path, 'utf8').trim() !== quota.value) await cgroupWrite([quota]);
      return true;
    } catch {
      return false;
    }
  }

  /** A dead server's instance directory: its cgroups, whatever still runs in them, then itself. */
  private async removeInstance(dir: string): Promise<void> {
    try {
      const children = (await readdir(dir, { withFileTypes: true })).filter((e) => e.isDirectory());
      await Promise.all(
        children.map(async (child) => {
          const cg = path.join(dir, child.name);
          await killAll(cg);
          await removeDir(cg);
        }),
      );
      await removeDir(dir);
      this.log.warn({ dir }, 'procyard: removed cgroups left by a dead server');
    } catch (err) {
      this.log.warn({ err, dir }, 'procyard: removing cgroups left by a dead server failed');
    }
  }
}
