// Host-wide allocators: ports and UIDs claimed through kernel-held locks on
// two files in a runtime directory. Every backend and CLI on the host that
// uses the same directory sees every other's claims, and the kernel frees a
// killed process's claims the moment its last fd on the file closes.
//
// A claim is an open-file-description (OFD) write lock on one byte: byte N
// of ports.lock is port N, byte N of uids.lock is UID N. Indexing by the
// value itself lets backends with different ranges still see each other.
import { closeSync, constants as fsConstants, fstatSync, lstatSync, mkdirSync, openSync, readSync, writeSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import path from 'node:path';
import { lockBytes, unlockBytes } from '../../native.js';
import { closeListener, tryBindPort } from './memory.js';
import { ExhaustedError, type Allocators, type PortAllocator, type PortLease, type UidAllocator } from './types.js';

/**
 * uids.lock also holds the order in which UIDs are handed out, in its data
 * (locks and data are independent): bytes [0, 8) a counter, and at
 * 8 * (uid + 1) the UID's stamp, a float64 (0 = never used). A claim stamps
 * IN_USE + counter, a release stamps counter, so the free UID with the
 * lowest stamp is the least recently used, and one whose holder was killed
 * (no release stamp) comes after every UID released properly.
 */
const IN_USE = 2 ** 52;
/** A byte past every UID: its lock guards the counter and the stamps. */
const ORDER_LOCK = 2 ** 33;
const ORDER_LOCK_TRIES = 1000;

function euid(): number {
  return process.geteuid?.() ?? 0;
}

/**
 * Creates dir (0700) if needed and checks it is a real directory of ours
 * that nobody else can write: whoever can write it could replace the lock
 * files and hand our UIDs out twice.
 */
export function prepareRuntimeDir(dir: string): void {
  if (!path.isAbsolute(dir))
    throw new Error(`process.runtimeDir must be an absolute path, got ${JSON.stringify(dir)}`);
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new Error(
      `cannot create process.runtimeDir ${dir}: ${(err as Error).message}; create it (mode 0700) or set process.runtimeDir to a directory this user owns`,
    );
  }
  const st = lstatSync(dir);
  if (!st.isDirectory())
    throw new Error(`process.runtimeDir ${dir} is not a directory (a symlink or a file): remove it or set process.runtimeDir elsewhere`);
  if (st.uid !== euid())
    throw new Error(
      `process.runtimeDir ${dir} is owned by uid ${st.uid}, not by this process's uid ${euid()}: ` +
        'another user could forge claims there; remove it or set process.runtimeDir to a directory of your own',
    );
  if ((st.mode & 0o022) !== 0)
    throw new Error(
      `process.runtimeDir ${dir} is writable by group or others (mode 0${(st.mode & 0o777).toString(8)}): chmod 700 it`,
    );
}

/** Opens (creating) a lock file without following a symlink, and checks it is a regular file of ours. */
function openLockFile(dir: string, name: string): number {
  const file = path.join(dir, name);
  const fd = openSync(file, fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_NOFOLLOW, 0o600);
  const st = fstatSync(fd);
  if (!st.isFile() || st.uid !== euid()) {
    closeSync(fd);
    throw new Error(`lock file ${file} is not a regular file owned by uid ${euid()}: remove it`);
  }
  return fd;
}

/** Values in [lo, hi] from a random start, wrapping: no worker can predict the next one. */
function* fromRandomStart(lo: number, hi: number): Generator<number> {
  const n = hi - lo + 1;
  const start = randomInt(n);
  for (let i = 0; i < n; i++) yield lo + ((start + i) % n);
}

export class HostPortAllocator implements PortAllocator {
  private readonly held = new Set<number>();

  constructor(
    private readonly fd: number,
    private readonly start: number,
    private readonly end: number,
  ) {}

  async reserve(): Promise<PortLease> {
    for (const port of fromRandomStart(this.start, this.end)) {
      if (this.held.has(port) || !lockBytes(this.fd, port)) continue;
      let listenerFd: number;
      try {
        listenerFd = tryBindPort(port);
      } catch (err) {
        unlockBytes(this.fd, port);
        throw err;
      }
      if (listenerFd >= 0) {
        this.held.add(port);
        return { port, listenerFd };
      }
      // Another program has it: not ours to claim.
      unlockBytes(this.fd, port);
    }
    throw new ExhaustedError('port', this.start, this.end);
  }

  async release(lease: PortLease): Promise<void> {
    closeListener(lease);
    if (this.held.delete(lease.port)) unlockBytes(this.fd, lease.port);
  }

  inUse(): number {
    return this.held.size;
  }

  releaseAll(): void {
    for (const port of this.held) unlockBytes(this.fd, port);
    this.held.clear();
  }
}

export class HostUidAllocator implements UidAllocator {
  private readonly held = new Set<number>();
  private readonly stamps: Float64Array;
  private readonly word = new Float64Array(1);

  constructor(
    private readonly fd: number,
    private readonly start: number,
    private readonly end: number,
  ) {
    this.stamps = new Float64Array(end - start + 1);
  }

  async alloc(): Promise<number> {
    return this.ordered(() => {
      const { stamps } = this;
      // Reads past the end of the file leave zeros: never used.
      stamps.fill(0);
      readSync(this.fd, new Uint8Array(stamps.buffer), 0, stamps.byteLength, 8 * (this.start + 1));
      for (const uid of this.held) stamps[uid - this.start] = Infinity;
      // Least recently used first. A UID whose lock another process holds
      // is skipped (Infinity) and the next oldest tried.
      for (let tries = 0; tries < stamps.length; tries++) {
        let best = -1;
        for (let i = 0; i < stamps.length; i++) if (stamps[i]! !== Infinity && (best < 0 || stamps[i]! < stamps[best]!)) best = i;
        if (best < 0) break;
        const uid = this.start + best;
        if (lockBytes(this.fd, uid)) {
          this.held.add(uid);
          this.stamp(uid, IN_USE);
          return uid;
        }
        stamps[best] = Infinity;
      }
      throw new ExhaustedError('uid', this.start, this.end);
    });
  }

  async release(uid: number): Promise<void> {
    this.free(uid);
  }

  inUse(): number {
    return this.held.size;
  }

  releaseAll(): void {
    for (const uid of [...this.held]) this.free(uid);
  }

  private free(uid: number): void {
    if (!this.held.delete(uid)) return;
    // Stamped before the unlock: once free it is already at the back of the queue.
    this.ordered(() => this.stamp(uid, 0));
    unlockBytes(this.fd, uid);
  }

  /** Advances the shared counter and stamps uid with it (plus IN_USE for a claim). */
  private stamp(uid: number, flag: number): void {
    const bytes = new Uint8Array(this.word.buffer);
    this.word[0] = 0;
    readSync(this.fd, bytes, 0, 8, 0);
    const next = (this.word[0]! % IN_USE) + 1;
    this.word[0] = next;
    writeSync(this.fd, bytes, 0, 8, 0);
    this.word[0] = flag + next;
    writeSync(this.fd, bytes, 0, 8, 8 * (uid + 1));
  }

  /**
   * Runs fn holding the order lock, so two processes do not interleave their
   * counter updates. Never waits on it: a peer stopped (SIGSTOP) while holding
   * it must not freeze this event loop. Without it after a short spin the
   * order may slip by one; claims stay exclusive either way (the byte locks).
   */
  private ordered<T>(fn: () => T): T {
    let locked = false;
    for (let i = 0; i < ORDER_LOCK_TRIES && !locked; i++) locked = lockBytes(this.fd, ORDER_LOCK);
    try {
      return fn();
    } finally {
      if (locked) unlockBytes(this.fd, ORDER_LOCK);
    }
  }
}

/** Port and UID allocators shared by every process on the host that uses runtimeDir. */
export function hostAllocators(runtimeDir: string, ports: [number, number], uids: [number, number]): Allocators {
  prepareRuntimeDir(runtimeDir);
  const portFd = openLockFile(runtimeDir, 'ports.lock');
  let uidFd: number;
  try {
    uidFd = openLockFile(runtimeDir, 'uids.lock');
  } catch (err) {
    closeSync(portFd);
    throw err;
  }
  const portAllocator = new HostPortAllocator(portFd, ports[0], ports[1]);
  const uidAllocator = new HostUidAllocator(uidFd, uids[0], uids[1]);
  let closed = false;
  // After close the fd numbers may belong to other files: nothing may touch them.
  const open = <A extends unknown[], R>(fn: (...args: A) => Promise<R>) =>
    (...args: A): Promise<R> => (closed ? Promise.reject(new Error('procyard: the host-wide allocators are closed')) : fn(...args));
  return {
    ports: {
      reserve: open(() => portAllocator.reserve()),
      // Everything was released at close; only a still-held listener is left to close.
      release: async (lease: PortLease) => (closed ? closeListener(lease) : portAllocator.release(lease)),
      inUse: () => portAllocator.inUse(),
    },
    uids: {
      alloc: open(() => uidAllocator.alloc()),
      release: async (uid: number) => (closed ? undefined : uidAllocator.release(uid)),
      inUse: () => uidAllocator.inUse(),
    },
    // The kernel frees a dead process's locks itself.
    cleanupOrphans: async () => {},
    close: async () => {
      if (closed) return;
      closed = true;
      portAllocator.releaseAll();
      uidAllocator.releaseAll();
      closeSync(portFd);
      closeSync(uidFd);
    },
  };
}
