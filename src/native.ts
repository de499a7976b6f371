// The one place that loads the C++ addon and gives it TypeScript types.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

export interface NativeSpawnOptions {
  /** Executed as given (no PATH search). */
  file: string;
  argv: string[];
  /** The child's whole environment, `KEY=VALUE`; nothing is inherited. */
  env: string[];
  /** Credentials for the child (both or neither); needs root. */
  uid?: number;
  gid?: number;
  /** Parent fds placed at `target` (>= 3) in the child. */
  fds?: { source: number; target: number }[];
  /**
   * Closed in the parent right before the clone (the held port listener), shut
   * down first so it stops accepting even if another reference to it lives on;
   * closed by every call, even one that fails.
   */
  closeBeforeClone?: number;
  /**
   * Limits (src/process/cgroup.ts): the files the child writes "0" to before
   * its UID switch, entering its cgroup (v1 `tasks`, one per hierarchy; v2
   * cgroup.procs).
   */
  cgroupEnter?: string[];
  /** cgroup v2: the cgroup directory to be born in (clone3 CLONE_INTO_CGROUP); cgroupEnter where the kernel refuses. */
  cgroupDir?: string;
  /** Written before the clone: limits that differ from those the cgroup was made with. */
  cgroupWrites?: CgroupWrite[];
  /** RLIMIT_NPROC (soft and hard) for the child: the process cap when there is no pids cgroup. */
  rlimitNproc?: number;
}

/** A value for a cgroup control file. */
export interface CgroupWrite {
  path: string;
  value: string;
}

export interface NativeChild {
  pid: number;
  pidfd: number;
  /** Read ends of the child's stdout and stderr pipes (O_CLOEXEC). */
  stdout: number;
  stderr: number;
}

export interface ExitStatus {
  code: number | null;
  signal: string | null;
}

/** Watches a pidfd on the event loop; reaps (when `reap`) and calls back once. */
export interface PidWatcher {
  ref(): this;
  unref(): this;
  close(): void;
}

export interface ProbeResult {
  ok: boolean;
  errno: number;
  /** errno name (`EPERM`), '' when ok */
  code: string;
  detail?: string;
}

export interface StatFields {
  state: string;
  ppid: number;
  utime: number;
  stime: number;
  starttime: number;
  rssPages: number;
}

export interface TreeSample {
  /** The root exists and is not a zombie. */
  alive: boolean;
  rssBytes: number;
  /** utime + stime over the tree, in clock ticks */
  ticks: number;
  pids: number[];
}

export interface NativeBitset {
  /** Lowest free index >= from, now used; -1 when none. */
  alloc(from?: number): number;
  /** Marks index used; false when it already was. */
  claim(index: number): boolean;
  /** Frees index; false when it was not used. */
  release(index: number): boolean;
  isSet(index: number): boolean;
  readonly inUse: number;
  readonly size: number;
}

interface Addon {
  spawn(options: NativeSpawnOptions): Promise<NativeChild>;
  PidWatcher: new (pidfd: number, onExit: (status: ExitStatus) => void, reap: boolean) => PidWatcher;
  pidfdOpen(pid: number): number;
  pidfdSignal(pidfd: number, signal: number): boolean;
  pipe(options?: { nonBlockingRead?: boolean }): [number, number];
  probeUserNamespace(credentials?: { uid: number; gid: number }): Promise<ProbeResult>;
  probePidfd(): ProbeResult;
  kernelRelease(): string;
  Bitset: new (size: number) => NativeBitset;
  parseStat(line: string): StatFields | null;
  sampleTrees(pids: number[]): Promise<TreeSample[]>;
  clockTicksPerSecond: number;
  reservePort(port: number): number;
  builtinSeccompFilter(): number;
  builtinSeccompRules(): string[];
  cgroupCreate(options: { dirs: string[]; writes: CgroupWrite[] }): Promise<void>;
  cgroupWrite(writes: CgroupWrite[]): Promise<void>;
  cgroupRemove(dirs: string[]): Promise<string[]>;
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const addon = createRequire(import.meta.url)(path.join(root, 'build', 'Release', 'procyard.node')) as Addon;

/**
 * Clones a child off the JS thread (libuv pool) and execs `file`. The child
 * gets a new session, default signal handling, only the fds asked for, the
 * credentials asked for, and SIGKILL when this process dies. Rejects with an
 * Error naming the failed step (`execve(/nope): ENOENT`), with `code`.
 */
export const spawnNative = addon.spawn;
/** Watches a pidfd; `reap` only for our own children. */
export const PidWatcherNative = addon.PidWatcher;
/** A pidfd for any pid (for signalling a process we did not clone). */
export const pidfdOpen = addon.pidfdOpen;
/** Signals by pidfd; false when the process is already gone. */
export const pidfdSignal = addon.pidfdSignal;
/** pipe2(O_CLOEXEC): [readFd, writeFd]; the read end O_NONBLOCK when asked. */
export const pipe = addon.pipe;
/** Creates a user namespace in a real child (as uid/gid when given). */
export const probeUserNamespace = addon.probeUserNamespace;
export const probePidfd = addon.probePidfd;
export const kernelRelease = addon.kernelRelease;
export const Bitset = addon.Bitset;
export const parseStat = addon.parseStat;
/** Per root pid: summed RSS and CPU ticks over its process tree. */
export const sampleTrees = addon.sampleTrees;
export const clockTicksPerSecond = addon.clockTicksPerSecond;
/** bind + listen on 127.0.0.1:port; the fd, or throws with code EADDRINUSE. */
export const reservePort = addon.reservePort;
/** A memfd holding procyard's built-in seccomp BPF program (see native/seccomp.cc). */
export const builtinSeccompFilter = addon.builtinSeccompFilter;
/** What the built-in filter denies, one entry per rule (`ptrace`, `ioctl(TIOCSTI)`, `clone3`...). */
export const builtinSeccompRules = addon.builtinSeccompRules;
/**
 * On a pool thread: makes the dirs and writes the limits. On failure the
 * dirs it made are removed; rejects naming the syscall and path.
 */
export const cgroupCreate = addon.cgroupCreate;
/** On a pool thread: writes each value to its cgroup file, in order. */
export const cgroupWrite = addon.cgroupWrite;
/** On a pool thread: rmdir of each dir (gone already is fine); resolves with those still busy (EBUSY). */
export const cgroupRemove = addon.cgroupRemove;
