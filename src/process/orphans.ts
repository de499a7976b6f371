// Sandboxes orphaned by a server that died during bwrap's set-up.
//
// bwrap's init (pid 1 of the sandbox) arms its parent-death signal only once
// its set-up is done; if the monitor dies in those few milliseconds (a server
// SIGKILLed mid-spawn), the init and the app live on, reparented. They are
// recognisable: a bwrap process that is pid 1 of its own pid namespace, runs
// as a worker UID, and whose parent is not a bwrap monitor.
import { closeSync, readFileSync, readlinkSync } from 'node:fs';
import { readdir, readFile, readlink, realpath } from 'node:fs/promises';
import { pidfdOpen, pidfdSignal, PidWatcherNative } from '../native.js';

interface ProcStatus {
  uid: number;
  ppid: number;
  /** Innermost pid (NSpid's last field): 1 for a namespace init. */
  innerPid: number;
}

/** The fields of a /proc/<pid>/status text that tell a sandbox init. */
function parseStatus(status: string): ProcStatus {
  const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '';
  const nspid = field('NSpid').split(/\s+/);
  return { uid: Number(field('Uid').split(/\s+/)[0]), ppid: Number(field('PPid')), innerPid: Number(nspid[nspid.length - 1]) };
}

async function procStatus(pid: number): Promise<ProcStatus | null> {
  try {
    return parseStatus(await readFile(`/proc/${pid}/status`, 'utf8'));
  } catch {
    return null; // gone meanwhile
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

/** The executable of pid (root can read anyone's), or '' when gone. */
function exeOf(pid: number): Promise<string> {
  return readlink(`/proc/${pid}/exe`).catch(() => '');
}

/**
 * SIGKILLs every orphaned sandbox init of the given bwrap running as a UID in
 * [uidStart, uidEnd]; its pid namespace dies with it. A live sandbox's init
 * always has its monitor as parent, so peers' workers are never touched.
 * Returns the pids killed.
 */
export async function killOrphanSandboxes(bwrapPath: string, uidStart: number, uidEnd: number): Promise<number[]> {
  const bwrap = await realpath(bwrapPath);
  const pids = (await readdir('/proc')).filter((n) => /^\d+$/.test(n)).map(Number);
  // One small read per process, 64 at a time: cheap, and never a long stall.
  const candidates: { pid: number; ppid: number }[] = [];
  for (let i = 0; i < pids.length; i += 64) {
    const batch = pids.slice(i, i + 64);
    const statuses = await Promise.all(batch.map(procStatus));
    statuses.forEach((s, j) => {
      if (s && s.innerPid === 1 && s.uid >= uidStart && s.uid <= uidEnd) candidates.push({ pid: batch[j], ppid: s.ppid });
    });
  }
  const killed: number[] = [];
  for (const { pid, ppid } of candidates) {
    if ((await exeOf(pid)) !== bwrap || (await exeOf(ppid)) === bwrap) continue;
    let pidfd: number;
    try {
      pidfd = pidfdOpen(pid);
    } catch {
      continue;
    }
    // Re-checked with the pid pinned, so a recycled pid is never hit.
    const again = await procStatus(pid);
    if (again?.ppid === ppid && (await exeOf(pid)) === bwrap && pidfdSignal(pidfd, 9)) {
      killed.push(pid);
      // When we are PID 1 or a subreaper the orphan is our child now: the
      // watcher reaps it once it is dead, so it does not stay a zombie.
      new PidWatcherNative(pidfd, () => closeSync(pidfd), false).unref();
    } else {
      closeSync(pidfd);
    }
  }
  return killed;
}
