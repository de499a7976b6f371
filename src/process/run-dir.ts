// The host's /run inside a sandbox: hidden behind an empty read-only tmpfs
// (SPEC §8), except what a worker legitimately needs from it. Also whether
// there is a /sys/fs/cgroup to hide the same way (bwrap.ts).
import { realpathSync, statSync } from 'node:fs';
import type { RunPlan } from './bwrap.js';

/**
 * Files a worker must still read when they live under /run: name resolution
 * (systemd-resolved and NetworkManager point /etc/resolv.conf there).
 */
export const RUN_KEEP_FILES: readonly string[] = Object.freeze(['/etc/resolv.conf']);

let hostHasRun: boolean | undefined;

/** The host path under /run that `file` resolves to, or null (not under /run, or missing). */
export function runTarget(file: string): string | null {
  let real: string;
  try {
    // One realpath(3) call: cheap enough per spawn, so a changed symlink is followed.
    real = realpathSync.native(file);
  } catch {
    return null;
  }
  return real.startsWith('/run/') ? real : null;
}

/**
 * How the sandbox hides /run: keep lists the host paths under /run that
 * `files` resolve to. Null on a host without a /run directory (nothing to hide).
 */
export function hostRunPlan(files: readonly string[] = RUN_KEEP_FILES): RunPlan | null {
  if (hostHasRun === undefined) {
    try {
      hostHasRun = statSync('/run').isDirectory();
    } catch {
      hostHasRun = false;
    }
  }
  if (!hostHasRun) return null;
  const keep = files.map(runTarget).filter((p): p is string => p !== null);
  return { keep: [...new Set(keep)] };
}

let hostCgroups: boolean | undefined;

/** Whether the host has a /sys/fs/cgroup directory for a sandbox to hide (read once). */
export function hasHostCgroups(): boolean {
  if (hostCgroups === undefined) {
    try {
      hostCgroups = statSync('/sys/fs/cgroup').isDirectory();
    } catch {
      hostCgroups = false;
    }
  }
  return hostCgroups;
}
