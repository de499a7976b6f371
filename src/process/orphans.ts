// Sandboxes orphaned by a server that died during bwrap's set-up.
//
// bwrap's init (pid 1 of the sandbox) arms its parent-death signal only once
// its set-up is done; if the monitor dies in those few milliseconds (a server
// SIGKILLed mid-spawn), the init and the app live on, reparented. They are
// recognisable: a bwrap process that is pid 1 of its own pid namespace, runs
// as a worker UID, and whose parent is not a bwrap monitor.
import { readdir, readFile, readlink, realpath } from 'node:fs/promises';
import { pidfdOpen, pidfdSignal } from '../native.js';
import { closeSync } from 'node:fs';

interface ProcInfo {
  uid: number;
  ppid: number;
  /** Innermost pid (NSpid's last field): 1 for a namespace init. */
  innerPid: number;
  /** The executable (needs root for other users' processes). */
  exe: string;
}

async function procInfo(pid: number): Promise<ProcInfo | null> {
  try {
    const [status, exe] = await Promise.all([readFile(`/proc/${pid}/status`, 'utf8'), readlink(`/proc/${pid}/exe`)]);
    const field = (name: string) => new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(status)?.[1] ?? '';
    const nspid = field('NSpid').split(/\s+/);
    return {
      uid: Number(field('Uid').split(/\s+/)[0]),
      ppid: Number(field('PPid')),
      innerPid: Number(nspid[nspid.length - 1]),
      exe,
    };
  } catch {
    return null; // gone meanwhile
  }
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
  const killed: number[] = [];
  for (const pid of pids) {
    const info = await procInfo(pid);
    if (!info || info.exe !== bwrap || info.innerPid !== 1 || info.uid < uidStart || info.uid > uidEnd) continue;
    const parent = await procInfo(info.ppid);
    if (parent?.exe === bwrap) continue;
    let pidfd: number;
    try {
      pidfd = pidfdOpen(pid);
    } catch {
      continue;
    }
    // Re-checked with the pid pinned, so a recycled pid is never hit.
    const again = await procInfo(pid);
    if (again && again.exe === bwrap && again.ppid === info.ppid && pidfdSignal(pidfd, 9)) killed.push(pid);
    closeSync(pidfd);
  }
  return killed;
}
