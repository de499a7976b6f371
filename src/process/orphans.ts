// Sandboxes orphaned by a server that died during bwrap's set-up.
//
// bwrap's init (pid 1 of the sandbox) arms its parent-death signal only once
// its set-up is done; if the monitor dies in those few milliseconds (a server
// SIGKILLed mid-spawn), the init and the app live on, reparented. So can an
// init an app took over (it runs as the app's UID) once its server is gone.
// They are recognisable: pid 1 of its own pid namespace, a worker UID (only
// sandboxes make pid namespaces as worker UIDs; what the init runs now does
// not matter), and a parent that is not its bwrap monitor. The monitor runs
// as the worker's UID too; whoever adopts an orphan (the host's PID 1, a
// subreaper) does not. The monitor's binary is not what tells: after an
// upgrade of bubblewrap it reads "(deleted)", and a peer server may run
// bwrap from another path.
import { readFileSync, readlinkSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { closeFd, pidfdOpen, pidfdSignal, PidWatcherNative } from '../native.js';
import { killAndAwait, reapableWhenAdopted } from './ending.js';

interface ProcStatus {
  uid: number;
  /** A zombie (or dead): it runs no more code, only waits to be reaped. */
  ended: boolean;
  ppid: number;
  /** Innermost pid (NSpid's last field): 1 for a namespace init. */
  innerPid: number;
}

/** The fields of a /proc/<pid>/status text that tell a sandbox init. */
function parseStatus(status: string): ProcStatus {
  const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '';
  const nspid = field('NSpid').split(/\s+/);
  return {
    uid: Number(field('Uid').split(/\s+/)[0]),
    ended: /^[ZX]/.test(field('State')),
    ppid: Number(field('PPid')),
    innerPid: Number(nspid[nspid.length - 1]),
  };
}

async function procStatus(pid: number): Promise<ProcStatus | null> {
  try {
    return parseStatus(await readFile(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return null; // gone meanwhile
  }
}

/**
 * A pidfd on pid with its status read once pinned, if that status still
 * passes `is` (so a pid recycled meanwhile is never hit); null otherwise.
 */
async function pinIf(pid: number, is: (status: ProcStatus) => boolean): Promise<{ pidfd: number; status: ProcStatus } | null> {
  let pidfd: number;
  try {
    pidfd = pidfdOpen(pid);
  } catch {
    return null; // gone
  }
  const status = await procStatus(pid);
  if (status && is(status)) return { pidfd, status };
  closeFd(pidfd);
  return null;
}

/** Every process of the host with its status: one small read each, 64 at a time (cheap, and never a long stall). */
async function processes(): Promise<{ pid: number; status: ProcStatus }[]> {
  const pids = (await readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number);
  const out: { pid: number; status: ProcStatus }[] = [];
  for (let i = 0; i < pids.length; i += 64) {
    const batch = pids.slice(i, i + 64);
    (await Promise.all(batch.map(procStatus))).forEach((status, j) => status && out.push({ pid: batch[j]!, status }));
  }
  return out;
}

/**
 * Whether pid is, right now, a live (not zombie) init of a pid namespace.
 * Once a sandbox's init pid is not, that init has ended, and the kernel ends
 * every process of its namespace before its init becomes a zombie.
 */
export function isLiveNamespaceInit(pid: number): boolean {
  try {
    const status = parseStatus(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return status.innerPid === 1 && !status.ended;
  } catch {
    return false; // gone
  }
}

/**
 * Whether pid (pinned by the caller's pidfd) is an orphaned sandbox init of
 * `bwrap` (its real path): pid 1 of its own pid namespace, running as `uid`
 * when given, and no longer the child of a bwrap monitor. Synchronous: a few
 * small /proc reads, for the moment a monitor is seen to exit.
 */
export function isOrphanedInit(pid: number, bwrap: string, uid: number | null): boolean {
  try {
    const status = parseStatus(readFileSync(`/proc/${pid}/status`, 'utf8'));
    if (status.innerPid !== 1) return false;
    if (uid !== null && status.uid !== uid) return false;
    if (readlinkSync(`/proc/${pid}/exe`) !== bwrap) return false;
    let parentExe = '';
    try {
      parentExe = readlinkSync(`/proc/${status.ppid}/exe`);
    } catch {
      // the parent is gone, or not ours to read
    }
    return parentExe !== bwrap;
  } catch {
    return false; // gone, a zombie (no exe), or unreadable
  }
}

/**
 * SIGKILLs every orphaned sandbox init running as a UID in [uidStart,
 * uidEnd]; its pid namespace dies with it. A live sandbox's init always has
 * its monitor, of the same UID, as parent, so peers' workers are never
 * touched. Returns the pids killed.
 */
export async function killOrphanSandboxes(uidStart: number, uidEnd: number): Promise<number[]> {
  const killed: number[] = [];
  for (const { pid, status } of await processes()) {
    const { ppid, uid } = status;
    if (status.ended || status.innerPid !== 1 || uid < uidStart || uid > uidEnd) continue;
    if ((await procStatus(ppid))?.uid === uid) continue; // its monitor: alive
    const pin = await pinIf(pid, (again) => again.ppid === ppid);
    if (!pin) continue;
    if (pidfdSignal(pin.pidfd, 9)) {
      killed.push(pid);
      // When we are PID 1 or a subreaper the orphan is our child now: the
      // watcher reaps it once it is dead, so it does not stay a zombie (a
      // sandbox's init: nothing here spawned it).
      new PidWatcherNative(pin.pidfd, () => closeFd(pin.pidfd), true).unref();
    } else {
      closeFd(pin.pidfd);
    }
  }
  return killed;
}

/**
 * SIGKILLs every live process running as uid (its real UID), each pinned by
 * a pidfd and re-checked, so a recycled pid is never hit. For a worker's UID
 * once its sandbox is over (each worker has a UID of its own, as root):
 * whatever still runs as it was left behind. Resolves once those have ended
 * (or after waitMs) with how many there were; zombies are not counted.
 */
export async function killUidProcesses(uid: number, waitMs = 2000): Promise<number> {
  const ending: Promise<boolean>[] = [];
  for (const { pid, status } of await processes()) {
    if (status.uid !== uid || status.ended) continue;
    const pin = await pinIf(pid, (again) => again.uid === uid);
    if (pin) ending.push(killAndAwait(pin.pidfd, reapableWhenAdopted(pin.status.ppid), waitMs));
  }
  await Promise.all(ending);
  return ending.length;
}

/** The UIDs in [lo, hi] that a live (not zombie) process on this host runs as. */
export async function runningUids(lo: number, hi: number): Promise<number[]> {
  const found = new Set<number>();
  for (const { status } of await processes()) if (!status.ended && status.uid >= lo && status.uid <= hi) found.add(status.uid);
  return [...found];
}
