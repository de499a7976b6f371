// Ending a process held by a pidfd, and knowing when it has ended.
import { readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { closeFd, parseStat, pidfdSignal, PidWatcherNative } from '../native.js';

/** pid's parent, from /proc (-1 when it is gone). */
export function parentOf(pid: number): number {
  try {
    return parseStat(readFileSync(`/proc/${pid}/stat`, 'utf8'))?.ppid ?? -1;
  } catch {
    return -1;
  }
}

/**
 * Whether a process whose parent (read with it pinned by a pidfd) is
 * parentPid may be reaped here once it has ended: not when it is our child
 * already, for then something
 * in this process spawned it and waits for it (libuv's child_process, or a
 * sandbox's own watcher), and reaping it would steal its exit: a
 * ChildProcess whose 'exit' never comes, a worker's exit status lost. One
 * that becomes our child later was adopted (we are PID 1 or a subreaper),
 * and nobody else would reap it.
 */
export function reapableWhenAdopted(parentPid: number): boolean {
  return parentPid !== process.pid;
}

/**
 * SIGKILLs the process behind pidfd and resolves once it has ended: a zombie
 * or reaped, running no more code. A signal alone is not that: the process
 * still tears down (frees its memory, leaves its cgroup) and a pid
 * namespace's init lives until every process of its namespace is gone, so a
 * sandbox is over only when its init has ended. Takes pidfd (closes it).
 * With reap, the process is reaped if it is our child by then (see
 * reapableWhenAdopted). Resolves false when it has not ended within timeoutMs.
 */
export function killAndAwait(pidfd: number, reap: boolean, timeoutMs = Infinity): Promise<boolean> {
  try {
    pidfdSignal(pidfd, osConstants.signals.SIGKILL);
  } catch {
    // ended already: the watcher fires at once
  }
  return new Promise<boolean>((resolve) => {
    let timer: NodeJS.Timeout | undefined;
    const watcher = new PidWatcherNative(
      pidfd,
      () => {
        clearTimeout(timer);
        closeFd(pidfd);
        resolve(true);
      },
      reap,
    );
    if (Number.isFinite(timeoutMs))
      timer = setTimeout(() => {
        watcher.close();
        closeFd(pidfd);
        resolve(false);
      }, timeoutMs);
  });
}
