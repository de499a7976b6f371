// One bwrap sandbox started through the native spawn: the shared path of
// workers, builds and the preflight probes.
import { closeSync, openSync, readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { constants as osConstants } from 'node:os';
import {
  builtinSeccompFilter,
  pidfdOpen,
  pidfdSignal,
  pipe,
  PidWatcherNative,
  spawnNative,
  type ExitStatus,
  type PidWatcher,
} from '../native.js';
import { bwrapArgs, SECCOMP_FD, STATUS_FD, type SandboxPlan } from './bwrap.js';
import { LineSplitter } from './logs.js';

export interface SandboxOptions {
  bwrapPath: string;
  plan: Omit<SandboxPlan, 'seccomp'>;
  /** '' for none, 'builtin', or the path of a compiled BPF program. */
  seccompProfile: string;
  env: string[];
  /** Run bwrap as plan.uid/plan.gid on the host (needs root). */
  hostCredentials: boolean;
  /** Closed right before the clone: the held port listener. */
  closeBeforeClone?: number;
  /** Each output line, stdout and stderr as they arrive. */
  onLine: (line: string) => void;
}

let builtinFilterFd = -1;

/** A fresh fd (own file offset) on the seccomp program: bwrap reads it from where the offset stands. */
function openSeccomp(profile: string): number {
  if (profile === 'builtin') {
    if (builtinFilterFd < 0) builtinFilterFd = builtinSeccompFilter();
    return openSync(`/proc/self/fd/${builtinFilterFd}`, 'r');
  }
  return openSync(profile, 'r');
}

function signalNumber(sig: NodeJS.Signals | number): number {
  return typeof sig === 'number' ? sig : osConstants.signals[sig];
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // already closed
  }
}

export class Sandbox {
  /** Host pid of the bwrap monitor. */
  readonly pid: number;
  /** Resolves with the bwrap monitor's exit once every output line is delivered. */
  readonly exited: Promise<ExitStatus>;
  /** Host pid of the app (the child of bwrap's init), or null when it never started. */
  readonly appPid: Promise<number | null>;
  private exitStatus: ExitStatus | null = null;
  private readonly watcher: PidWatcher;
  private appPidfd = -1;
  /** bwrap's init (pid 1 inside): SIGKILL to it ends the whole pid namespace. */
  private initPidfd = -1;
  private readonly initKnown: Promise<void>;

  /** @internal use startSandbox() */
  constructor(
    private readonly pidfd: number,
    pid: number,
    stdoutFd: number,
    stderrFd: number,
    statusFd: number,
    onLine: (line: string) => void,
  ) {
    this.pid = pid;
    const streams = [stdoutFd, stderrFd].map((fd) => {
      const socket = new net.Socket({ fd, readable: true, writable: false });
      socket.setEncoding('utf8');
      const splitter = new LineSplitter(onLine);
      socket.on('data', (text: string) => splitter.push(text));
      socket.on('error', () => socket.destroy());
      return new Promise<void>((resolve) =>
        socket.once('close', () => {
          splitter.end();
          resolve();
        }),
      );
    });
    const initPid = readChildPid(statusFd);
    this.initKnown = initPid.then((pid) => {
      if (pid !== null && this.exitStatus === null) this.initPidfd = openChild(pid, this.pid);
    });
    this.appPid = initPid
      .then((pid) => (pid === null ? null : findApp(pid, () => this.exitStatus !== null)))
      .then((found) => {
        if (!found) return null;
        if (this.exitStatus !== null) {
          closeQuietly(found.pidfd);
          return null;
        }
        this.appPidfd = found.pidfd;
        return found.pid;
      });
    let onExit: (status: ExitStatus) => void = () => {};
    const monitorExit = new Promise<ExitStatus>((resolve) => (onExit = resolve));
    this.watcher = new PidWatcherNative(
      pidfd,
      (status) => {
        this.exitStatus = status;
        for (const fd of [this.pidfd, this.appPidfd, this.initPidfd]) if (fd >= 0) closeQuietly(fd);
        this.appPidfd = this.initPidfd = -1;
        onExit(status);
      },
      true,
    );
    // With the pid namespace gone every writer of the pipes is dead, so they
    // close promptly; the exit waits for them so no line is lost.
    this.exited = Promise.all([monitorExit, ...streams]).then(([status]) => status);
  }

  get status(): ExitStatus | null {
    return this.exitStatus;
  }

  get running(): boolean {
    return this.exitStatus === null;
  }

  /** Signals the bwrap monitor. */
  signal(sig: NodeJS.Signals | number): boolean {
    return this.exitStatus === null && pidfdSignal(this.pidfd, signalNumber(sig));
  }

  /**
   * Kills the whole sandbox. Killing only the monitor is not enough: during
   * bwrap's set-up its init has no parent-death signal yet (its uid change
   * clears it), so it would live on, orphaned. So wait until bwrap has said
   * who its init is, SIGKILL that (the pid namespace dies with it), then the
   * monitor.
   */
  async kill(): Promise<void> {
    await Promise.race([this.initKnown, this.exited]);
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
    const children = await readFile(`/proc/${initPid}/task/${initPid}/children`, 'utf8').catch(() => null);
    if (children === null) return null;
    const pid = Number(children.trim().split(' ')[0]);
    if (pid > 0) {
      const pidfd = openChild(pid, initPid);
      return pidfd >= 0 ? { pid, pidfd } : null;
    }
    await new Promise((r) => setTimeout(r, wait));
  }
  return null;
}

/** A pidfd on pid if it is still a child of parentPid, else -1. */
function openChild(pid: number, parentPid: number): number {
  let pidfd: number;
  try {
    pidfd = pidfdOpen(pid);
  } catch {
    return -1;
  }
  // Checked after pinning it: a pid recycled before the open fails this.
  if (parentOf(pid) === parentPid) return pidfd;
  closeQuietly(pidfd);
  return -1;
}

function parentOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return -1;
  }
}

/** Reads bwrap's --json-status-fd until `child-pid` shows up (or the pipe closes). */
function readChildPid(fd: number): Promise<number | null> {
  return new Promise((resolve) => {
    const socket = new net.Socket({ fd, readable: true, writable: false });
    socket.setEncoding('utf8');
    let text = '';
    let settled = false;
    const settle = (pid: number | null) => {
      if (!settled) {
        settled = true;
        resolve(pid);
      }
    };
    socket.on('data', (chunk: string) => {
      text += chunk;
      const match = /"child-pid"\s*:\s*(\d+)/.exec(text);
      if (match) settle(Number(match[1]));
      if (text.length > 65536) text = text.slice(-1024);
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => settle(null));
  });
}

/**
 * Starts `bwrap <plan> -- cmd` through the native spawn. closeBeforeClone is
 * closed whatever happens (also when this rejects before the spawn call).
 */
export async function startSandbox(opts: SandboxOptions): Promise<Sandbox> {
  const owned: number[] = [];
  let statusRead = -1;
  let spawnCalled = false;
  try {
    const [r, w] = pipe();
    statusRead = r;
    owned.push(w);
    const fds = [{ source: w, target: STATUS_FD }];
    const seccomp = opts.seccompProfile !== '';
    if (seccomp) {
      const fd = openSeccomp(opts.seccompProfile);
      owned.push(fd);
      fds.push({ source: fd, target: SECCOMP_FD });
    }
    spawnCalled = true;
    const child = await spawnNative({
      file: opts.bwrapPath,
      argv: [opts.bwrapPath, ...bwrapArgs({ ...opts.plan, seccomp })],
      env: opts.env,
      ...(opts.hostCredentials ? { uid: opts.plan.uid, gid: opts.plan.gid } : {}),
      fds,
      ...(opts.closeBeforeClone !== undefined && opts.closeBeforeClone >= 0
        ? { closeBeforeClone: opts.closeBeforeClone }
        : {}),
    });
    const sandbox = new Sandbox(child.pidfd, child.pid, child.stdout, child.stderr, r, opts.onLine);
    statusRead = -1;
    return sandbox;
  } catch (err) {
    if (statusRead >= 0) closeQuietly(statusRead);
    if (!spawnCalled && opts.closeBeforeClone !== undefined && opts.closeBeforeClone >= 0)
      closeQuietly(opts.closeBeforeClone);
    throw err;
  } finally {
    for (const fd of owned) closeQuietly(fd);
  }
}
