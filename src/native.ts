// The one place that loads the C++ addon and gives it TypeScript types.
import { existsSync, readdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
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
  /**
   * Placed at `target` (>= 3) in the child: a parent fd (`source`), or a file
   * the spawn opens read-only (`path`), with a file offset of its own.
   */
  fds?: ({ source: number; target: number } | { path: string; target: number })[];
  /** A pipe whose write end the child gets at this fd; its read end (O_NONBLOCK) comes back as `status`. */
  statusPipe?: number;
  /**
   * Host paths checked before anything else is done (stat, following
   * symlinks). A missing one, or one that is not a directory where
   * `directory` is set, rejects with `syscall` 'stat', `path` and
   * `pathIndex` (ENOENT, ENOTDIR, ...).
   */
  checkPaths?: { path: string; directory: boolean }[];
  /**
   * Closed in the parent right before the clone (the held port listener), shut
   * down first so it stops accepting even if another reference to it lives on;
   * closed by every call, even one that fails.
   */
  closeBeforeClone?: number;
  /**
   * Bytes the child reads from fd `target` (bwrap's --args, --seccomp): a
   * pipe holding them, its write end closed, or a sealed memfd when they do
   * not fit one. At most 4.
   */
  data?: { data: Buffer; target: number }[];
  /** A parent fd (left open) the child gets as its stdin; default /dev/null. */
  stdin?: number;
  /** A Landlock domain the child enters right before exec (see src/process/landlock.ts). */
  landlock?: NativeLandlockRules;
  /**
   * With landlock: the child also attaches the socket filter (socketSeccompFilter's
   * program) itself, for a sandbox whose bwrap --seccomp program lacks its rules.
   */
  socketFilter?: boolean;
  /**
   * Limits (src/process/cgroup.ts): the files the child writes "0" to before
   * its UID switch, entering its cgroup (v1 `tasks`, one per hierarchy; v2
   * cgroup.procs).
   */
  cgroupEnter?: string[];
  /**
   * A cgroup2 directory to be born in (clone3 CLONE_INTO_CGROUP): the worker's
   * own on v2, or the socket hooks' on a hybrid host. cgroupEnter[0] must be
   * its cgroup.procs, written instead where the kernel refuses clone3.
   */
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

/** Landlock network rules and scopes; filesystem access is never restricted (bwrap must mount). */
export interface NativeLandlockRules {
  /** TCP bind only on bindPorts (Landlock ABI >= 4). */
  restrictBind: boolean;
  bindPorts: number[];
  /** TCP connect only to connectPorts (ABI >= 4). */
  restrictConnect: boolean;
  connectPorts: number[];
  /** No connect to abstract unix sockets created outside the domain (ABI >= 6). */
  scopeAbstractUnix: boolean;
  /** No signals to processes outside the domain (ABI >= 6). */
  scopeSignals: boolean;
}

export interface NativeChild {
  pid: number;
  pidfd: number;
  /** Read ends of the child's stdout and stderr pipes (O_CLOEXEC). */
  stdout: number;
  stderr: number;
  /** Read end of the statusPipe, when one was asked for. */
  status?: number;
}

/** A child spawnStart has cloned: its fds are the caller's at once. */
export interface NativeStartedChild extends NativeChild {
  /**
   * Settles once the child has exec'd; rejects naming the failed step (the
   * child then exits 127: watch its pidfd with reap to collect it).
   */
  ready: Promise<void>;
}

type JoinedArgv = Omit<NativeSpawnOptions, 'argv'> & { argv: string };

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
  /** utime + stime + cutime + cstime over the tree, in clock ticks: its CPU since it started, reaped children's included (not those auto-reaped, SIGCHLD ignored) */
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

/** A TCP listener: its owner (the UID that made it, whoever holds it now) and its socket inode. */
export interface Listener {
  uid: number;
  inode: number;
}

/** A destination of the socket hooks (native/sockhooks.h AddrRule). */
export interface NativeAddrRule {
  /** Any address of this host (loopback, unspecified, the local-address map); else address/prefix. */
  local: boolean;
  family?: 4 | 6;
  /** 4 or 16 bytes, host bits zero. */
  address?: Uint8Array;
  prefix?: number;
  /** Inclusive; absent = every port. */
  ports?: readonly [number, number];
}

/** The rule table the socket hooks are assembled from. */
export interface NativeSockHookRules {
  /** Refused on local addresses: the workers' ports. */
  workerPorts: readonly [number, number];
  deny: NativeAddrRule[];
  /** When given, the only destinations allowed. */
  allow?: NativeAddrRule[];
  /** When given, TCP connects go only to these port spans. */
  tcpPorts?: (readonly [number, number])[];
  /** Capacity of the UID → port map. */
  uidEntries: number;
}

/** A host directory for mountInject, and where it goes in the sandbox. */
export interface NativeInjectMount {
  /** Absolute host path. */
  source: string;
  /** Absolute and normalized (no `.`/`..` components, no trailing slash), not "/". */
  target: string;
  readOnly: boolean;
}

/** Loaded hooks: the maps and each program's fd (connect4, connect6, sendmsg4, sendmsg6, bind4, bind6, ingress, sock_create). */
export interface NativeSockHooks {
  uidPorts: number;
  localAddrs: number;
  /** Ports of other backends' workers on this host, refused on local addresses: one entry (key 0), 8192 bytes, bit p & 7 of byte p >> 3. */
  otherPorts: number;
  programs: { name: string; fd: number }[];
}

interface Addon {
  spawn(options: NativeSpawnOptions | JoinedArgv): Promise<NativeChild>;
  spawnStart(options: NativeSpawnOptions | JoinedArgv): NativeStartedChild;
  PidWatcher: new (pidfd: number, onExit: (status: ExitStatus) => void, reap: boolean) => PidWatcher;
  pidfdOpen(pid: number): number;
  pidfdSignal(pidfd: number, signal: number): boolean;
  pipe(options?: { nonBlockingRead?: boolean }): [number, number];
  probeUserNamespace(credentials?: { uid: number; gid: number }): Promise<ProbeResult>;
  probePidfd(): ProbeResult;
  kernelRelease(): string;
  adoptsOrphans(): boolean;
  closeFd(fd: number): boolean;
  Bitset: new (size: number) => NativeBitset;
  parseStat(line: string): StatFields | null;
  sampleTrees(pids: number[]): Promise<TreeSample[]>;
  clockTicksPerSecond: number;
  reservePort(port: number): number;
  loopbackListeners(port: number): Promise<Listener[]>;
  socketsHeldInTree(root: number, inodes: number[], maxFds: number): Promise<number[]>;
  builtinSeccompFilter(socketRules?: boolean): number;
  socketSeccompFilter(): number;
  builtinSeccompRules(): string[];
  resolveMountTarget(
    path: string,
    options: { create: boolean; trustedUid: number; workerUids?: [number, number]; workerGid?: number; strangers?: boolean; noSymlinks?: boolean },
  ): { path: string; created: string[]; problem?: undefined; code?: undefined } | { problem: string; code: string; path?: undefined };
  landlockAbi(): { abi: number; code: string };
  lockBytes(fd: number, offset: number, length?: number): boolean;
  unlockBytes(fd: number, offset: number, length?: number): void;
  cgroupCreate(options: { dirs: string[]; writes: CgroupWrite[] }): Promise<void>;
  cgroupWrite(writes: CgroupWrite[]): Promise<void>;
  cgroupRemove(dirs: string[]): Promise<string[]>;
  sockHooksLoad(rules: NativeSockHookRules): Promise<NativeSockHooks>;
  sockHooksAttach(programs: number[], dir: string): void;
  bpfMapSet(map: number, key: Uint8Array, value: Uint8Array): void;
  bpfMapDelete(map: number, key: Uint8Array): boolean;
  bpfMapKeys(map: number, keySize: number): Uint8Array[];
  mountInject(pid: number, mounts: NativeInjectMount[], owner: { uid: number; gid: number }): Promise<void>;
}

/** No addon binary this host can load: neither a local build nor a shipped prebuild. */
export class NativeAddonError extends Error {
  override name = 'NativeAddonError';
}

/**
 * A developer's own build (build/Release, from `npm run build:native`) comes
 * first, as with node-gyp-build, so a rebuilt addon is never shadowed by an
 * older prebuild left in the checkout. An installed package has no build/ and
 * loads prebuilds/<platform>-<arch>/procyard.node (built for glibc). Nothing
 * is compiled at install time.
 */
function loadAddon(): Addon {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
  const target = `${process.platform}-${process.arch}`;
  const candidates = [
    path.join(root, 'build', 'Release', 'procyard.node'),
    path.join(root, 'prebuilds', target, 'procyard.node'),
  ];
  const failures: string[] = [];
  for (const file of candidates) {
    if (!existsSync(file)) continue;
    try {
      return createRequire(import.meta.url)(file) as Addon;
    } catch (err) {
      // A binary that exists but will not load (an older glibc, another arch): say why.
      failures.push(`${file}: ${(err as Error).message.split('\n')[0]}`);
    }
  }
  let shipped: string[] = [];
  try {
    shipped = readdirSync(path.join(root, 'prebuilds'));
  } catch {
    // a developer checkout before `npm pack` has none
  }
  // Only on this error path: process.report costs a few ms.
  const glibc = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header
    ?.glibcVersionRuntime;
  const host = `platform ${process.platform}, arch ${process.arch}, libc ${glibc ? `glibc ${glibc}` : 'not glibc'}, Node ${process.version}`;
  throw new NativeAddonError(
    `procyard has no native addon that loads on this host (${host}). ` +
      `It ships prebuilt binaries (for glibc) for ${shipped.length ? shipped.join(', ') : 'no platform in this copy'}. ` +
      (failures.length ? `Tried: ${failures.join('; ')}. ` : '') +
      'Build it from source (needs python3, make and g++): in a clone of procyard, `npm ci` builds it ' +
      '(`npm run build:native` rebuilds it), and `npm pack` there makes a tarball that carries a binary for this host.',
  );
}

const addon = loadAddon();

/**
 * Clones a child and execs `file`. The child gets a new session, default
 * signal handling, only the fds asked for, the credentials asked for, and
 * SIGKILL when the calling thread (this JS thread) ends. Everything before
 * the clone happens in this call; the child then sets itself up alongside
 * the event loop, and the promise settles on the loop once it has exec'd.
 * Rejects with an Error naming the failed step (`execve(/nope): ENOENT`),
 * with `code`.
 */
export function spawnNative(options: NativeSpawnOptions): Promise<NativeChild> {
  const start = (release: () => void): Promise<NativeChild> => {
    let spawning: Promise<NativeChild>;
    try {
      spawning = addon.spawn(joinArgv(options));
    } catch (err) {
      release();
      throw err;
    }
    return spawning.finally(release);
  };
  // Bad options throw here and now, as the addon does, unless the call has
  // to wait for a place (then they reject).
  const release = takeSlot();
  return release ? start(release) : spawnSlot().then(start);
}

/**
 * How many children may be between clone and exec at once in this process.
 * A burst of spawns would otherwise clone as fast as the JS thread can, and
 * the children's set-up would crowd the loop off the CPUs of a small host.
 */
const MAX_SETTING_UP = Math.max(2, availableParallelism());
let settingUp = 0;
const waitingForSlot: (() => void)[] = [];

/**
 * A place among the children being set up; call the function it resolves
 * with once the child has exec'd or failed. spawnNative takes one itself;
 * a caller of spawnStart holds one until `ready` settles.
 */
export async function spawnSlot(): Promise<() => void> {
  const now = takeSlot();
  if (now) return now;
  await new Promise<void>((resolve) => waitingForSlot.push(resolve));
  return releaser();
}

/** A place now, or null when all are taken. */
function takeSlot(): (() => void) | null {
  if (settingUp >= MAX_SETTING_UP) return null;
  settingUp++;
  return releaser();
}

function releaser(): () => void {
  let released = false;
  return () => {
    if (released) return;
    released = true;
    // Handed straight to the next spawn in line, or freed.
    const next = waitingForSlot.shift();
    if (next) next();
    else settingUp--;
  };
}

/**
 * spawnNative for a caller that watches the child itself: everything up to
 * the clone happens in this call, which returns the child and its fds (the
 * caller's from now on) while the child is still setting itself up, so the
 * caller's own work overlaps it; `ready` settles once it has exec'd. Throws
 * for what fails before the clone (bad options, a missing checkPaths entry,
 * closeBeforeClone closed all the same). Hold a spawnSlot() around it.
 */
export function spawnStart(options: NativeSpawnOptions): NativeStartedChild {
  return addon.spawnStart(joinArgv(options));
}

/**
 * argv goes over as one NUL-separated string: one conversion in the addon
 * instead of one per item. An item that is not a plain string goes as the
 * array, for the addon to name it in its error.
 */
function joinArgv(options: NativeSpawnOptions): NativeSpawnOptions | JoinedArgv {
  const argv = options?.argv;
  if (Array.isArray(argv) && argv.length > 0 && argv.every((a) => typeof a === 'string' && !a.includes('\0')))
    return { ...options, argv: argv.join('\0') };
  return options;
}
/** Watches a pidfd; `reap` for children we cloned (their status is reported); without it, a process reparented to us (PID 1, subreaper) is still reaped. */
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
/** Orphans are reparented to this process: it is PID 1 (a container without an init) or a child subreaper. */
export const adoptsOrphans = addon.adoptsOrphans;
/**
 * Closes an fd the addon opened (pidfds, pipes, sockets, memfds); false when
 * it was not open. Not fs.closeSync: in a worker_thread that warns about
 * every fd fs did not open there.
 */
export const closeFd = addon.closeFd;
export const Bitset = addon.Bitset;
export const parseStat = addon.parseStat;
/** Per root pid: summed RSS and CPU ticks over its process tree. */
export const sampleTrees = addon.sampleTrees;
export const clockTicksPerSecond = addon.clockTicksPerSecond;
/** bind + listen on 127.0.0.1:port; the fd, or throws with code EADDRINUSE. */
export const reservePort = addon.reservePort;
/**
 * The TCP listeners a connect to 127.0.0.1:port could reach (IPv4 and IPv6),
 * from the kernel's sock_diag (native/sockdiag.h); rejects with `syscall`
 * 'sock_diag' and the errno's `code` where the kernel cannot answer.
 */
export const loopbackListeners = addon.loopbackListeners;
/**
 * Which of the socket inodes a process of root's tree holds an fd of,
 * reading at most maxFds fd links (native/sockdiag.h).
 */
export const socketsHeldInTree = addon.socketsHeldInTree;
/**
 * A memfd holding procyard's built-in seccomp BPF program (see
 * native/seccomp.cc); with socketRules, also the network policy's socket rules.
 */
export const builtinSeccompFilter = addon.builtinSeccompFilter;
/**
 * A memfd holding the network policy's socket filter alone: socket(2) with
 * IPPROTO_MPTCP and io_uring_setup fail with EPERM (native/seccomp.h).
 */
export const socketSeccompFilter = addon.socketSeccompFilter;
/**
 * Walks an absolute path from / without following untrusted symlinks (see
 * native/mounttarget.h), creating missing directories when asked: the real
 * path and the directories made (outermost first), or what is wrong (`code` '' for a policy refusal, else an errno name).
 */
export const resolveMountTarget = addon.resolveMountTarget;
/** What the built-in filter denies, one entry per rule (`ptrace`, `ioctl(TIOCSTI)`, `clone3`...). */
export const builtinSeccompRules = addon.builtinSeccompRules;
/** The kernel's Landlock ABI version; 0 with code ENOSYS (not built in) or EOPNOTSUPP (not enabled at boot). */
export const landlockAbi = addon.landlockAbi;
/**
 * Write-locks bytes [offset, offset + length) of fd's file with an
 * open-file-description lock (F_OFD_SETLK, no waiting): true when ours now,
 * false when another open file description (another process, or another
 * open() in this one) holds any of them. Freed by the kernel when the
 * description's last fd closes, also when the process is killed.
 */
export const lockBytes = addon.lockBytes;
/** Unlocks bytes [offset, offset + length); a range not held is a no-op. */
export const unlockBytes = addon.unlockBytes;
/**
 * On a pool thread: makes the dirs and writes the limits. On failure the
 * dirs it made are removed; rejects naming the syscall and path.
 */
export const cgroupCreate = addon.cgroupCreate;
/** On a pool thread: writes each value to its cgroup file, in order. */
export const cgroupWrite = addon.cgroupWrite;
/** On a pool thread: rmdir of each dir (gone already is fine); resolves with those still busy (EBUSY). */
export const cgroupRemove = addon.cgroupRemove;
/**
 * On a pool thread: makes the hooks' maps and loads their programs (the
 * kernel's verifier checks each). Rejects naming the step (`bpf(BPF_PROG_LOAD
 * connect4)`), with the verifier's log as `verifierLog` when it refused one.
 */
export const sockHooksLoad = addon.sockHooksLoad;
/** Attaches the programs (fds, in sockHooksLoad's order) to a cgroup2 directory, alongside any already there. */
export const sockHooksAttach = addon.sockHooksAttach;
/** Sets a key of a BPF map (sizes as the map was made with). */
export const bpfMapSet = addon.bpfMapSet;
/** Deletes a key of a BPF map; false when it was not there. */
export const bpfMapDelete = addon.bpfMapDelete;
/** Every key of a BPF map. */
export const bpfMapKeys = addon.bpfMapKeys;
/**
 * Puts each host directory `source` at `target` inside the mount namespace
 * of process `pid` (a sandbox's process), as bwrap's --ro-bind/--bind would
 * have: recursive, nosuid, nodev, read-only when asked, a slave of the host's
 * mounts. Missing target directories are made (mode 0755, by and owned by
 * owner.uid/gid). Root only; on a pool thread, in order, stopping at the
 * first failure (the mounts before it stay). Bad arguments throw a TypeError
 * or RangeError; a failure rejects naming the step (`open_tree`,
 * `mount_setattr`, `pidfd_open`, `setns`, `mkdir`, `chown`, `move_mount`) as
 * `syscall`, with `code`, `path` (the source, the directory or target, or
 * the pid) and `mount`, the index of the mount concerned.
 */
export const mountInject = addon.mountInject;
