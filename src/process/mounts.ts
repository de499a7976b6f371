// Mount targets on the host. bwrap cannot mkdir them on the read-only root,
// so the server creates them, as root: without following anything a worker
// could have planted (see native/mounttarget.cc).
import { lstatSync, realpathSync, rmdirSync } from 'node:fs';
import type { MountEntry } from '../backend.js';
import { resolveMountTarget } from '../native.js';
import { SpecError } from './validate.js';

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

export type PreparedTarget =
  | { path: string; created: string[]; problem?: undefined }
  | { problem: string; path?: undefined; created?: undefined };

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
  if (inSandbox !== null) return { path: inSandbox, created: [] };
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
  return { path: r.path, created: r.created };
}

/**
 * Removes directories prepareMountTarget made, innermost first, while they
 * are empty: a worker's mount targets must not outlive it on the host. Their
 * parents were checked (no worker can have swapped them), and rmdir never
 * removes anything a worker put inside.
 */
export function removeCreated(created: readonly string[]): void {
  for (const dir of [...created].reverse()) {
    try {
      rmdirSync(dir);
    } catch {
      return; // not empty (or gone): its parents are not empty either
    }
  }
}

interface TargetEntry {
  /** The target as the spec gave it (the key of this entry). */
  target: string;
  /** What bwrap is given. */
  path: string;
  /** Directories made for it (removed when no sandbox uses it); [] for one that existed, or a fixed one. */
  created: string[];
  users: number;
}

/**
 * The mount targets of one backend: prepared once, shared by the sandboxes
 * that use them, and what was created for them removed when the last of
 * those sandboxes is gone (the fixed targets made at construction stay).
 */
export class MountTargets {
  private readonly ready = new Map<string, TargetEntry>();
  /** Fixed targets that could not be made, with the message to show at spawn. */
  private readonly unreachable = new Map<string, string>();

  constructor(private readonly guard: WorkerIdentities | null) {}

  /** A target of the server's own layout, made at construction and kept. */
  prepareFixed(target: string, field: string, mustBeDir: boolean): string | null {
    const prepared = prepareMountTarget(target, field, mustBeDir, this.guard);
    if (prepared.problem !== undefined) {
      this.unreachable.set(target, prepared.problem);
      return prepared.problem;
    }
    this.ready.set(target, { target, path: prepared.path, created: [], users: 0 });
    return null;
  }

  /**
   * The mounts with each target as bwrap must see it (see prepareMountTarget),
   * and the release to call once the sandbox is gone. Throws SpecError naming
   * the field when a target cannot be made safely; then nothing is held.
   */
  acquire(mounts: MountEntry[], field: string): { mounts: MountEntry[]; release(): void } {
    const held: TargetEntry[] = [];
    const release = () => {
      for (const entry of held.splice(0)) this.drop(entry);
    };
    try {
      const bound = mounts.map((m) => {
        const entry = this.entry(m.target, `${field} target`);
        entry.users++;
        held.push(entry);
        return { ...m, target: entry.path };
      });
      return { mounts: bound, release };
    } catch (err) {
      release();
      throw err;
    }
  }

  private entry(target: string, field: string): TargetEntry {
    const known = this.ready.get(target);
    if (known) return known;
    const unreachable = this.unreachable.get(target);
    if (unreachable) throw new SpecError(unreachable);
    const prepared = prepareMountTarget(target, field, false, this.guard);
    if (prepared.problem !== undefined) throw new SpecError(prepared.problem);
    const entry = { target, path: prepared.path, created: prepared.created, users: 0 };
    this.ready.set(target, entry);
    return entry;
  }

  private drop(entry: TargetEntry): void {
    if (--entry.users > 0) return;
    if (entry.created.length > 0) {
      this.ready.delete(entry.target);
      removeCreated(entry.created);
    } else if (this.ready.size > 1024) {
      this.ready.delete(entry.target); // a pre-existing target: only a cache entry
    }
  }
}
