// The Backend interface an app-hosting server drives, and its types.
import type { PreflightReport } from './preflight/report.js';

export interface MountEntry {
  source: string;
  target: string;
  readOnly?: boolean;
}

export interface WorkerSpec {
  appId: string;
  workerId: string;
  /** Ignored by the process backend (kept for interface parity). */
  image?: string;
  /** Default: `['Rscript', `${workerMount}/app.R`]`. */
  cmd?: string[];
  /** Host path of the bundle, mounted read-only at `workerMount`. */
  bundlePath: string;
  /** Legacy R library, read-only at /blockyard-lib. */
  libraryPath?: string;
  /** Store-assembled R library, read-only at /blockyard-lib-store. */
  libDir?: string;
  /** Read-write at /transfer. */
  transferDir?: string;
  /** Read-only at /var/run/blockyard. */
  tokenDir?: string;
  /** In-sandbox mount point of the bundle (absolute). */
  workerMount: string;
  /** Ignored: the backend picks the port (see addr()). */
  shinyPort?: number;
  rVersion?: string;
  /**
   * Memory limit of the worker's cgroup: '512k', '64m', '2g' or plain bytes
   * (binary units; '0' = none). Default: server.defaultMemoryLimit.
   */
  memoryLimit?: string;
  /** CPUs (0.5 = half a CPU, 0 = none), as a CFS quota. Default: server.defaultCpuLimit. */
  cpuLimit?: number;
  labels?: Record<string, string>;
  env?: Record<string, string>;
  rProfilePath?: string;
  dataMounts?: MountEntry[];
  runtime?: string;
}

export interface BuildSpec {
  appId: string;
  bundleId: string;
  image?: string;
  labels?: Record<string, string>;
  /** Called with each line as it arrives (stdout and stderr). */
  logWriter?: (line: string) => void;
  cmd: string[];
  mounts?: MountEntry[];
  /** 'KEY=VALUE' */
  env?: string[];
  rVersion?: string;
}

export interface BuildResult {
  success: boolean;
  exitCode: number;
  logs: string;
}

export type ResourceKind = 'container' | 'network';

export interface ManagedResource {
  id: string;
  kind: ResourceKind;
  labels: Record<string, string>;
}

/** A worker as ProcessBackend.listManaged() lists it: the resource, and what a host shows of it. */
export interface ManagedWorker extends ManagedResource {
  appId: string;
  /** 'exited' until stop() or removeResource(): its logs stay replayable meanwhile. */
  state: 'running' | 'exited';
  /** '127.0.0.1:<port>', as addr() gives it. */
  addr: string;
  /** When its spawn started it (for a warm worker: its handoff). */
  startedAt: Date;
  /** How it ended, once it has. */
  exit?: WorkerExitEvent;
}

/** A live worker's usage: from its cgroup where it has one, else its process tree (docs/resource-limits.md). */
export interface WorkerResourceUsage {
  /** Share of one CPU (200 = two busy) since the previous call, or on the first since the spawn; dead children included. */
  cpuPercent: number;
  /** The memory cgroup's charge (tmpfs and page cache included), or without one the tree's RSS. */
  memoryUsageBytes: number;
  /** The memory limit in force (0 = none). */
  memoryLimitBytes: number;
}

/** Replays the worker's log ring, then follows it. */
export interface LogStream extends AsyncIterable<string> {
  close(): void;
}

export interface WorkerExitEvent {
  workerId: string;
  /** Exit code of the sandbox; null when it was killed by a signal. */
  code: number | null;
  /** Signal name (`SIGKILL`) when killed by one, else null. */
  signal: string | null;
  /** The kernel's OOM killer ended it (needs a memory cgroup; false without one). */
  oomKilled: boolean;
  /**
   * Why it ended: 'stopped' by stop(), removeResource() or close() (whatever
   * its code); else 'oom' (oomKilled), 'killed' (its app died of a signal,
   * which bwrap reports as code 128 + its number), or 'exited' on its own.
   */
  reason: 'stopped' | 'exited' | 'oom' | 'killed';
}

export interface Backend {
  spawn(spec: WorkerSpec): Promise<void>;
  stop(id: string): Promise<void>;
  healthCheck(id: string, opts?: { timeoutMs?: number }): Promise<boolean>;
  /**
   * The worker's output, replayed then followed; `tail` replays only the
   * last n lines, `follow: false` ends the stream once they are out (a
   * snapshot). An exited worker's lines stay until stop() or
   * removeResource() (at most logLines lines and logBytes bytes).
   */
  logs(id: string, opts?: { tail?: number; follow?: boolean }): Promise<LogStream>;
  addr(id: string): Promise<string>;
  build(spec: BuildSpec, opts?: { signal?: AbortSignal }): Promise<BuildResult>;
  listManaged(): Promise<ManagedResource[]>;
  removeResource(r: ManagedResource): Promise<void>;
  workerResourceUsage(id: string): Promise<WorkerResourceUsage | null>;
  /** Memory in bytes, CPU in nanoCPUs (1e9 = one CPU); 0 leaves one as it is. ProcessBackend also takes spawn's units. */
  updateResources(id: string, memoryBytes: number, nanoCpus: number): Promise<void>;
  cleanupOrphanResources(): Promise<void>;
  preflight(): Promise<PreflightReport>;
  checkRVersion(version: string): void;
}

/** pino-compatible logger. */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** A Logger that drops everything (the default). */
export const quietLogger: Logger = Object.freeze({ debug() {}, info() {}, warn() {}, error() {} });

export class NotSupportedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NotSupportedError';
  }
}

/** No worker with this id: addr, logs, stop, updateResources and waitReady reject with it. */
export class WorkerNotFoundError extends Error {
  constructor(readonly workerId: string) {
    super(`worker "${workerId}" not found`);
    this.name = 'WorkerNotFoundError';
  }
}

/** spawn() of a workerId that is already running (or starting). */
export class WorkerExistsError extends Error {
  constructor(readonly workerId: string) {
    super(`worker "${workerId}" is already running`);
    this.name = 'WorkerExistsError';
  }
}

/** A call on a backend after close(). */
export class BackendClosedError extends Error {
  constructor() {
    super('ProcessBackend is closed');
    this.name = 'BackendClosedError';
  }
}
