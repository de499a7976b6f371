// Mount targets on the host. bwrap cannot mkdir them on the read-only root,
// so the server creates them, as root: without following anything a worker
// could have planted (see native/mounttarget.cc).
import { lstatSync, realpathSync } from 'node:fs';
import { resolveMountTarget } from '../native.js';

/**
 * Under the sandbox's own tmpfs /tmp and /run (the host's are hidden), bwrap
 * creates targets itself, in the sandbox: the path bwrap must be given, or
 * null for a host path. /var/run is given as /run where it links there:
 * bwrap 0.8 resolves an absolute symlink in a target against the host root.
 */
function sandboxPrivate(p: string): string | null {
  if (p === '/tmp' || p.startsWith('/tmp/') || p.startsWith('/run/')) return p;
  if (p.startsWith('/var/run/') && varRunIsRun()) return `/run/${p.slice('/var/run/'.length)}`;
  return null;
}

let varRunLinksToRun: boolean | undefined;
function varRunIsRun(): boolean {
  if (varRunLinksToRun === undefined) {
    try {
      varRunLinksToRun = realpathSync('/var/run') === '/run';
    } catch {
      varRunLinksToRun = false;
    }
  }
  return varRunLinksToRun;
}

/** Who the server must not trust (as root): the worker UIDs and group. */
export interface WorkerIdentities {
  uids: [number, number];
  gid: number;
}

export type PreparedTarget = { path: string; problem?: undefined } | { problem: string; path?: undefined };

/**
 * Makes a bind target reachable inside the sandbox, creating missing
 * directories on the host, and gives the path bwrap must be given: the real
 * path, because bwrap 0.8 resolves an absolute symlink in a target against its
 * set-up root (`/var/run/blockyard` with /var/run -> /run fails otherwise).
 * Follows only symlinks owned by root (or the server's own uid) and, as root,
 * refuses any target under a directory a worker can write: a worker could
 * otherwise plant a symlink there and make root create directories anywhere,
 * or swap a directory before bwrap mounts onto it. `guard` is null when the
 * server is not root (workers then run as the server's own user).
 */
export function prepareMountTarget(p: string, field: string, mustBeDir: boolean, guard: WorkerIdentities | null): PreparedTarget {
  const inSandbox = sandboxPrivate(p);
  if (inSandbox !== null) return { path: inSandbox };
  const r = resolveMountTarget(p, {
    create: true,
    trustedUid: process.geteuid?.() ?? 0,
    ...(guard ? { workerUids: guard.uids, workerGid: guard.gid } : {}),
  });
  if (r.problem !== undefined) {
    if (r.code === '')
      return {
        problem:
          `${field} "${p}": ${r.problem}, so a worker could redirect this mount through it; ` +
          'use a target outside directories that workers can write',
      };
    return {
      problem:
        `${field} "${p}" does not exist on the host and cannot be created (${r.code}: ${r.problem}); ` +
        'bwrap binds onto the read-only host root, so the directory must exist: ' +
        `create it as root (mkdir -p ${p}) or use a path under /tmp`,
    };
  }
  if (mustBeDir && !lstatSync(r.path).isDirectory()) return { problem: `${field} "${p}" exists and is not a directory` };
  return { path: r.path };
}
