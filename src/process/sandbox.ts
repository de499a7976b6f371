// One bwrap sandbox started through the native spawn: the shared path of
// workers, builds and the preflight probes.
import { readFileSync, readSync, realpathSync } from 'node:fs';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import {
  adoptsOrphans,
  builtinSeccompFilter,
  closeFd,
  pidfdOpen,
  pidfdSignal,
  PidWatcherNative,
  socketSeccompFilter,
  spawnSlot,
  spawnStart,
  type ExitStatus,
  type NativeLandlockRules,
  type NativeSpawnOptions,
  type PidWatcher,
} from '../native.js';
import { ConfigError } from '../config.js';
import { ARGS_FD, bwrapArgs, BWRAP_ENV, envArgs, FILES_FD, SECCOMP_FD, STATUS_FD, type SandboxPlan } from './bwrap.js';
import { killAndAwait, parentOf } from './ending.js';
import { logBudget } from './log-budget.js';
import { LineSplitter } from './logs.js';
import { isLiveNamespaceInit, isOrphanedInit } from './orphans.js';
import { hasHostCgroups, hostRunPlan } from './run-dir.js';
import { spawnStep } from './trace.js';

export interface SandboxOptions {
  bwrapPath: string;
  plan: Omit<SandboxPlan, 'seccomp'>;
  /** '' for none, 'builtin', or the path of a compiled BPF program. */
  seccompProfile: string;
  /** The app's environment (KEY=VALUE). bwrap itself runs with BWRAP_ENV. */
  env: string[];
  /** Run bwrap as plan.uid/plan.gid on the host (needs root). */
  hostCredentials: boolean;
  /** Closed right before the clone: the held port listener. */
  closeBeforeClone?: number;
  /** The Landlock domain of the whole sandbox (NetworkPolicy); absent = none. */
  landlock?: NativeLandlockRules;
  /** Names the spawn's steps on the 'procyard:spawn' diagnostics channel (trace.ts); absent = not traced. */
  traceId?: string;
  /** Host paths that must exist, checked by the spawn call before anything else (see NativeSpawnOptions). */
  checkPaths?: NativeSpawnOptions['checkPaths'];
  /** Each output line, stdout and stderr as they arrive, with its length in UTF-8 bytes. */
  onLine: (line: string, utf8Bytes: number) => void;
  /** Limits (cgroup.ts): the cgroup the child enters and the limits written first, or the RLIMIT_NPROC cap. */
  limits?: Pick<NativeSpawnOptions, 'cgroupEnter' | 'cgroupDir' | 'cgroupWrites' | 'rlimitNproc'>;
  /** Read-only files put into the sandbox from these bytes (no host file behind them). */
  files?: readonly { target: string; data: string }[];
  /** A pipe's read end as the sandbox's stdin (left open: the caller closes it); default /dev/null. */
  stdin?: number;
  /** Directories made in the hidden /run (see SandboxPlan.runDirs). */
  runDirs?: readonly string[];
}

/** Programs made here, read once: the builtin one with and without the socket rules, and the socket filter alone. */
const programs = new Map<string, Buffer>();

function program(name: 'builtin' | 'builtin+socket' | 'socket'): Buffer {
  let bytes = programs.get(name);
  if (bytes === undefined) {
    const fd = name === 'socket' ? socketSeccompFilter() : builtinSeccompFilter(name === 'builtin+socket');
    try {
      bytes = readFileSync(`/proc/self/fd/${fd}`);
    } finally {
      closeFd(fd);
    }
    programs.set(name, bytes);
  }
  return bytes;
}

/**
 * What bwrap's --seccomp fd gives it, or null for nothing: the builtin
 * program's bytes (the spawn hands them over in a pipe), or a compiled
 * program's file, opened by the spawn (each open its own file offset: bwrap
 * reads from where it stands). Under the network policy's TCP rules the
 * program also refuses MPTCP sockets, Fast Open sends and io_uring (native/seccomp.h says
 * why): the builtin program carries those rules, no profile gets the socket
 * filter alone, and a compiled profile cannot carry them, so the clone
 * child attaches them itself (`child`).
 */
function seccompPlan(
  profile: string,
  tcpRules: boolean,
): { fd: NonNullable<NativeSpawnOptions['fds']>[number] | { data: Buffer; target: number } | null; child: boolean } {
  if (profile === 'builtin') return { fd: { data: program(tcpRules ? 'builtin+socket' : 'builtin'), target: SECCOMP_FD }, child: false };
  if (profile === '') return { fd: tcpRules ? { data: program('socket'), target: SECCOMP_FD } : null, child: false };
  return { fd: { path: profile, target: SECCOMP_FD }, child: tcpRules };
}

/** The spawn's failure to open a compiled seccomp profile, as the config error it is; others as they are. */
function profileError(err: unknown, profile: string): unknown {
  const e = err as NodeJS.ErrnoException;
  if (profile === 'builtin' || profile === '' || e?.path !== profile || !String(e.syscall).startsWith('open')) return err;
  const why = e.code === 'EINVAL' ? 'is not a regular file' : `cannot be opened (${e.code})`;
  return new ConfigError(
    `process.seccompProfile "${profile}" ${why}: give a compiled BPF program file, "builtin" or "" (none)`,
    undefined,
    'process.seccompProfile',
  );
}

function signalNumber(sig: NodeJS.Signals | number): number {
  return typeof sig === 'number' ? sig : osConstants.signals[sig];
}

export class Sandbox {
  /** Host pid of the bwrap monitor. */
  readonly pid: number;
  /** Resolves with the bwrap monitor's exit once every output line is delivered. */
  readonly exited: Promise<ExitStatus>;
  /**
   * The bwrap monitor's exit alone: the end of the sandbox. exited may come
   * later, or never while something of the sandbox still holds its pipes
   * (the owner ends those: ProcessBackend kills what is left).
   */
  readonly monitorExit: Promise<ExitStatus>;
  /**
   * Settles after monitorExit: true once bwrap's init is seen to have ended,
   * and with it, by the kernel's rule for a pid namespace, every process of
   * the sandbox; false when that cannot be told (its init was never named,
   * or was turned into another program).
   */
  readonly initEnded: Promise<boolean>;
  private exitStatus: ExitStatus | null = null;
  private readonly watcher: PidWatcher;
  /**
   * Read end of bwrap's --json-status-fd, O_NONBLOCK. Read only when needed
   * (stop, kill): bwrap's few writes fit the pipe buffer, and keeping it open
   * until exit spares bwrap a SIGPIPE on its final write.
   */
  private statusFd: number;
  private statusText = '';
  private initLookup?: Promise<number | null>;
  private appLookup?: Promise<number | null>;
  /** bwrap's init (pid 1 inside): SIGKILL to it ends the whole pid namespace. */
  private initPidfd = -1;
  private appPidfd = -1;
  private readonly readers: LineReader[] = [];
  private pipesLetGo = false;

  /** @internal use startSandbox() */
  constructor(
    private readonly pidfd: number,
    pid: number,
    stdoutFd: number,
    stderrFd: number,
    statusFd: number,
    onLine: (line: string, utf8Bytes: number) => void,
    identity: SandboxIdentity,
  ) {
    this.pid = pid;
    this.statusFd = statusFd;
    // The readers start on the next turn of the loop, so spawn() resolves
    // without waiting for them; the pipes buffer 64 KiB meanwhile.
    const streams = new Promise<void>((resolve) =>
      setImmediate(() => {
        if (this.pipesLetGo) for (const fd of [stdoutFd, stderrFd]) closeFd(fd);
        else this.readers.push(...[stdoutFd, stderrFd].map((fd) => readLines(fd, onLine)));
        void Promise.all(this.readers.map((r) => r.closed)).then(() => resolve());
      }),
    );
    let onExit: (status: ExitStatus) => void = () => {};
    this.monitorExit = new Promise<ExitStatus>((resolve) => (onExit = resolve));
    let initGone: Promise<boolean> = Promise.resolve(false);
    this.watcher = new PidWatcherNative(
      pidfd,
      (status) => {
        this.exitStatus = status;
        // The monitor also exits when its init reports the app's end, before
        // the init is gone, and an app can fake that report: it runs as the
        // init's UID, so it can rewrite the init through /proc/1/mem (clearing
        // its parent-death signal) and fire its eventfd. So the init may live
        // on, orphaned, with the app: the sandbox is over, it must go. When we
        // are PID 1 or a subreaper it is our child now (its pid is held until
        // we reap it); else it is checked to be this sandbox's init.
        const init = this.readStatus();
        if (this.initPidfd < 0 && init !== null)
          this.initPidfd = adoptsOrphans() ? openChild(init, process.pid) : openOrphanedInit(init, identity);
        for (const fd of [this.pidfd, this.appPidfd, this.statusFd]) if (fd >= 0) closeFd(fd);
        // SIGKILLed first: an init killed before it armed its parent-death signal would live on.
        // Reaped if it has become ours: nobody here spawned it (our child is its monitor).
        if (this.initPidfd >= 0) initGone = killAndAwait(this.initPidfd, true);
        else if (init !== null) initGone = Promise.resolve(!isLiveNamespaceInit(init));
        this.appPidfd = this.initPidfd = this.statusFd = -1;
        onExit(status);
      },
      true,
    );
    // A SIGKILLed monitor exits before its init has finished dying, and the
    // init's exit waits for every process of its pid namespace: so the
    // sandbox has exited (ports closed, UIDs unused) only once the init has.
    // With the pid namespace gone every writer of the pipes is dead, so they
    // close promptly; the exit waits for them too so no line is lost.
    this.initEnded = this.monitorExit.then(() => initGone);
    this.exited = Promise.all([this.monitorExit.then((status) => initGone.then(() => status)), streams]).then(
      ([status]) => status,
    );
  }

  /**
   * Stops reading the output pipes and lets exited settle: for a sandbox
   * whose processes have all ended while something outside it (another
   * worker it passed them to) still holds the pipes' write ends. What was
   * read is kept; what waits in the pipes is not.
   */
  letGoOfPipes(): void {
    this.pipesLetGo = true;
    for (const reader of this.readers) reader.close();
  }

  get running(): boolean {
    return this.exitStatus === null;
  }

  /** Host pid of the app (the child of bwrap's init), or null when it never started. Looked up on first use. */
  get appPid(): Promise<number | null> {
    this.appLookup ??= this.initPid()
      .then((init) => (init === null ? null : findApp(init, () => this.exitStatus !== null)))
      .then((found) => {
        if (!found) return null;
        if (this.exitStatus !== null) {
          closeFd(found.pidfd);
          return null;
        }
        this.appPidfd = found.pidfd;
        return found.pid;
      });
    return this.appLookup;
  }

  /** Signals the bwrap monitor. */
  signal(sig: NodeJS.Signals | number): boolean {
    return this.exitStatus === null && pidfdSignal(this.pidfd, signalNumber(sig));
  }

  /**
   * Kills the whole sandbox. Killing only the monitor is not enough: bwrap's
   * init arms its parent-death signal only after set-up, so in those first
   * milliseconds it would live on, orphaned. So wait until bwrap has said who
   * its init is, SIGKILL that (the pid namespace dies with it), then the
   * monitor.
   */
  async kill(): Promise<void> {
    await Promise.race([this.initPid(), this.monitorExit]);
    if (this.exitStatus !== null) return;
    if (this.initPidfd >= 0) pidfdSignal(this.initPidfd, osConstants.signals.SIGKILL);
    this.signal('SIGKILL');
  }

  /**
   * Signals the app inside the sandbox. SIGTERM to the monitor would make
   * --die-with-parent SIGKILL the app, so its cleanup handlers would not run.
   */
  async signalApp(sig: NodeJS.Signals | number): Promise<boolean> {
    await this.appPid;
    if (this.exitStatus !== null || this.appPidfd < 0) return false;
    return pidfdSignal(this.appPidfd, signalNumber(sig));
  }

  /** Whether the event loop stays alive for this sandbox. */
  ref(): void {
    this.watcher.ref();
  }

  unref(): void {
    this.watcher.unref();
  }

  /** bwrap's `child-pid` (its init), pinned by a pidfd; null when bwrap exits first. */
  private initPid(): Promise<number | null> {
    this.initLookup ??= (async () => {
      const deadline = Date.now() + 10_000;
      for (let wait = 1; this.exitStatus === null && Date.now() < deadline; wait = Math.min(wait * 2, 25)) {
        const pid = this.readStatus();
        if (pid !== null) {
          this.initPidfd = openChild(pid, this.pid);
          return pid;
        }
        await Promise.race([new Promise((r) => setTimeout(r, wait)), this.monitorExit]);
      }
      return null;
    })();
    return this.initLookup;
  }

  /** Drains what bwrap has written to the status pipe; the init pid once it is there. */
  private readStatus(): number | null {
    const buf = Buffer.alloc(4096);
    for (let i = 0; i < 16 && this.statusFd >= 0; i++) {
      let n: number;
      try {
        n = readSync(this.statusFd, buf);
      } catch {
        break; // EAGAIN: nothing more yet
      }
      if (n === 0) break;
      this.statusText += buf.toString('utf8', 0, n);
    }
    const match = /"child-pid"\s*:\s*(\d+)/.exec(this.statusText);
    return match ? Number(match[1]) : null;
  }
}

/**
 * With --unshare-pid, bwrap's `child-pid` is its init (pid 1 inside), which
 * ignores SIGTERM; the app is that init's only child. Polls briefly for the
 * fork, then pins the app with a pidfd and checks it is still init's child
 * (so a recycled pid is never signalled).
 */
async function findApp(initPid: number, gone: () => boolean): Promise<{ pid: number; pidfd: number } | null> {
  const deadline = Date.now() + 5000;
  for (let wait = 1; !gone() && Date.now() < deadline; wait = Math.min(wait * 2, 25)) {
    let children: string;
    try {
      // procfs is in memory: a sync read is cheaper than a pool round trip.
      children = readFileSync(`/proc/${initPid}/task/${initPid}/children`, 'utf8');
    } catch {
      return null;
    }
    const pid = Number(children.trim().split(' ')[0]);
    if (pid > 0) {
      const pidfd = openChild(pid, initPid);
      return pidfd >= 0 ? { pid, pidfd } : null;
    }
    await new Promise((r) => setTimeout(r, wait));
  }
  return null;
}

interface LineReader {
  /** Settles when the pipe has closed (or was let go), its last line delivered. */
  closed: Promise<void>;
  /** Stops reading: the pipe's read end is closed. */
  close(): void;
}

/** Reads a pipe on the event loop into lines. */
function readLines(fd: number, onLine: (line: string, utf8Bytes: number) => void): LineReader {
  const socket = new net.Socket({ fd, readable: true, writable: false });
  const splitter = new LineSplitter(onLine);
  // Metered: past its share of the loop the worker's pipe waits (log-budget.ts).
  logBudget.attach(socket, (chunk) => splitter.push(chunk));
  socket.on('error', () => socket.destroy());
  const closed = new Promise<void>((resolve) =>
    socket.once('close', () => {
      splitter.end();
      resolve();
    }),
  );
  return { closed, close: () => socket.destroy() };
}

/** What a sandbox's init is known by: bwrap's real path, and its host UID when workers get their own. */
export interface SandboxIdentity {
  bwrap: string;
  uid: number | null;
}

const realPaths = new Map<string, string>();
function realBwrap(bwrapPath: string): string {
  let real = realPaths.get(bwrapPath);
  if (real === undefined) {
    try {
      real = realpathSync(bwrapPath);
    } catch {
      real = bwrapPath;
    }
    realPaths.set(bwrapPath, real);
  }
  return real;
}

/**
 * A pidfd on pid if, once pinned, `is(pid)` holds, else -1. Checked after
 * pinning it: a pid recycled before the open fails the check.
 */
function openIf(pid: number, is: (pid: number) => boolean): number {
  let pidfd: number;
  try {
    pidfd = pidfdOpen(pid);
  } catch {
    return -1;
  }
  if (is(pid)) return pidfd;
  closeFd(pidfd);
  return -1;
}

/** A pidfd on pid if it is an orphaned init of this sandbox's kind, else -1. */
function openOrphanedInit(pid: number, identity: SandboxIdentity): number {
  return openIf(pid, (p) => isOrphanedInit(p, identity.bwrap, identity.uid));
}

/** A pidfd on pid if it is still a child of parentPid, else -1. */
function openChild(pid: number, parentPid: number): number {
  return openIf(pid, (p) => parentOf(p) === parentPid);
}

/**
 * Starts `bwrap <plan> -- cmd` through the native spawn: one call that
 * checks the paths, makes the pipes and fds, and clones. The Sandbox is set
 * up while bwrap's child sets itself up; the promise settles once bwrap
 * runs. closeBeforeClone is closed whatever happens.
 */
export async function startSandbox(opts: SandboxOptions): Promise<Sandbox> {
  const release = await spawnSlot();
  try {
    return await startSandboxNow(opts);
  } finally {
    release();
  }
}

async function startSandboxNow(opts: SandboxOptions): Promise<Sandbox> {
  const closeBeforeClone = opts.closeBeforeClone !== undefined && opts.closeBeforeClone >= 0 ? opts.closeBeforeClone : -1;
  let options: NativeSpawnOptions;
  try {
    // The app's environment, for bwrap's --args: never in argv, which any host user can read.
    const data = [{ data: envArgs(opts.env), target: ARGS_FD }];
    const files = opts.files ?? [];
    files.forEach((f, i) => data.push({ data: Buffer.from(f.data, 'utf8'), target: FILES_FD + i }));
    const fds: NonNullable<NativeSpawnOptions['fds']> = [];
    const tcpRules = opts.landlock !== undefined && (opts.landlock.restrictBind || opts.landlock.restrictConnect);
    const filter = seccompPlan(opts.seccompProfile, tcpRules);
    const seccomp = filter.fd !== null;
    if (filter.fd && 'data' in filter.fd) data.push(filter.fd);
    else if (filter.fd) fds.push(filter.fd);
    options = {
      file: opts.bwrapPath,
      // /run is hidden in every sandbox, whatever the network policy (a plan may say how).
      argv: [
        opts.bwrapPath,
        ...bwrapArgs({ ...opts.plan, seccomp, files: files.map((f) => f.target), runDirs: opts.runDirs ?? [], run: opts.plan.run !== undefined ? opts.plan.run : hostRunPlan(), hideCgroups: hasHostCgroups() }),
      ],
      env: [...BWRAP_ENV],
      data,
      fds,
      statusPipe: STATUS_FD,
      ...(opts.hostCredentials ? { uid: opts.plan.uid, gid: opts.plan.gid } : {}),
      ...(closeBeforeClone >= 0 ? { closeBeforeClone } : {}),
      ...(opts.landlock ? { landlock: opts.landlock } : {}),
      ...(filter.child ? { socketFilter: true } : {}),
      ...(opts.checkPaths?.length ? { checkPaths: opts.checkPaths } : {}),
      ...(opts.stdin !== undefined ? { stdin: opts.stdin } : {}),
      ...opts.limits,
    };
  } catch (err) {
    // The spawn call closes it from here on; this one never happened.
    if (closeBeforeClone >= 0) closeFd(closeBeforeClone);
    throw err;
  }
  spawnStep(opts.traceId, 'options');
  let child: ReturnType<typeof spawnStart>;
  try {
    child = spawnStart(options);
  } catch (err) {
    throw profileError(err, opts.seccompProfile);
  }
  spawnStep(opts.traceId, 'cloned');
  const identity = { bwrap: realBwrap(opts.bwrapPath), uid: opts.hostCredentials ? opts.plan.uid : null };
  const sandbox = new Sandbox(child.pidfd, child.pid, child.stdout, child.stderr, child.status!, opts.onLine, identity);
  spawnStep(opts.traceId, 'sandbox');
  try {
    await child.ready;
    spawnStep(opts.traceId, 'exec');
  } catch (err) {
    // bwrap never ran: its watcher collects the child (exit 127) and the pipes close.
    await sandbox.exited;
    throw err;
  }
  return sandbox;
}
