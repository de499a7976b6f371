// Mount targets on the host. bwrap cannot mkdir them on the read-only root,
// so the server creates them, as root: without following anything a worker
// could have planted (see native/mounttarget.cc).
import { lstatSync, realpathSync, rmdirSync } from 'node:fs';
import path from 'node:path';
import { readdir, readFile, readlink } from 'node:fs/promises';
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

/** A mountinfo path field: spaces, tabs, newlines and backslashes come octal-escaped. */
function unescapeMountPath(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/**
 * The mount points of every mount namespace but ours: where sandboxes (of
 * any backend on this host) have something mounted. One read of mountinfo
 * per namespace; only when directories are about to be removed.
 */
async function otherNamespaceMounts(): Promise<Set<string>> {
  const points = new Set<string>();
  const seen = new Set([await readlink('/proc/self/ns/mnt').catch(() => '')]);
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const ns = await readlink(`/proc/${name}/ns/mnt`).catch(() => '');
    if (ns === '' || seen.has(ns)) continue;
    seen.add(ns);
    const info = await readFile(`/proc/${name}/mountinfo`, 'utf8').catch(() => '');
    for (const line of info.split('\n')) points.add(unescapeMountPath(line.split(' ')[4] ?? ''));
  }
  return points;
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
  /** The sources of the sandboxes holding mounts now, as given to bwrap: how many hold each, and how many of those read-write. */
  private readonly live = new Map<string, { users: number; writers: number }>();
  /**
   * Every source a sandbox of this backend has had read-write. A worker can
   * pass an fd of such a directory on (through a unix socket) before it ends,
   * and the holder can still change what is in it: the mount stays writable
   * through that fd.
   */
  private readonly everWritable = new Set<string>();

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
  acquire(mounts: MountEntry[], field: string): { mounts: MountEntry[]; release(): Promise<void> } {
    const held: TargetEntry[] = [];
    let sources: MountEntry[] = [];
    const release = async () => {
      for (const m of sources.splice(0)) this.forget(m);
      await Promise.all(held.splice(0).map((entry) => this.drop(entry)));
    };
    try {
      const bound = mounts.map((m) => {
        const source = this.source(m.source, m.target);
        const entry = this.entry(m.target, `${field} target`);
        entry.users++;
        held.push(entry);
        return { ...m, source, target: entry.path };
      });
      bound.forEach((m, i) => this.checkOverlap(m, mounts[i]!));
      // As bwrap is given them: /var/run/x is /run/x there, a host path its real one.
      const targets = bound.map((m) => sandboxPath(m.target));
      mounts.forEach((m, i) => this.checkNested(m, i, mounts, bound, targets));
      sources = bound;
      for (const m of sources) this.remember(m);
      return { mounts: bound, release };
    } catch (err) {
      void release(); // what was made for the targets before this one goes
      throw err;
    }
  }

  /**
   * A bind source as bwrap (or the warm handoff) is given it: its real path,
   * reached following only symlinks root (or the server's uid) owns, and (as
   * root) through no directory a worker UID owns or the worker group can
   * write. A worker that can write into a directory the host later binds
   * for it (its data) could otherwise leave a symlink there to `/` or to
   * another tenant's files, for the next spec that names the link; swapping
   * a directory there for such a symlink after this check is checkOverlap's.
   * A source that does not exist is left as it is: the spawn's path check
   * names it.
   */
  private source(source: string, target: string): string {
    const r = resolveMountTarget(source, {
      create: false,
      trustedUid: process.geteuid?.() ?? 0,
      // Directories a worker made (another backend's, whose sandboxes this one does not know; see checkOverlap).
      ...(this.guard ? { workerUids: this.guard.uids, workerGid: this.guard.gid, strangers: false } : {}),
    });
    if (r.problem === undefined) return r.path;
    if (r.code === '')
      throw new SpecError(
        `the mount source "${source}" (for ${target}) is refused: ${r.problem}; a worker could make it name another path ` +
          'when it is mounted, so give a path that no worker can change',
      );
    return source;
  }

  /**
   * Refuses a source inside another sandbox's read-write source, or a
   * read-write source holding another sandbox's: the worker that can write
   * there could swap the inner path for a symlink (to `/`) between the check
   * above and bwrap's mount, which follows it as root. Both sides are known
   * here before either sandbox starts, so there is no race to win.
   */
  private checkOverlap(m: MountEntry, given: MountEntry): void {
    // Its ancestors looked up, rather than every directory ever written compared: a spawn's cost stays the path's depth.
    for (let dir = path.dirname(m.source); path.isAbsolute(m.source); dir = path.dirname(dir)) {
      if (this.everWritable.has(dir))
        throw new SpecError(
          `the mount source "${given.source}" (for ${given.target}) is refused: it is inside "${dir}", which a sandbox of this ` +
            'server has had read-write: a worker may still hold a handle to it and swap the path for a symlink before it is mounted; ' +
            'mount that directory itself, or a path outside it',
        );
      if (dir === '/') break;
    }
    for (const other of this.live.keys()) {
      if (!m.readOnly && inside(other, m.source))
        throw new SpecError(
          `the read-write mount source "${given.source}" (for ${given.target}) is refused: it holds "${other}", which a running ` +
            'sandbox has mounted, and this worker could swap that path for a symlink; mount it read-only, or once those sandboxes are gone',
        );
    }
  }

  /**
   * bwrap makes a target that lies inside an earlier mount of the sandbox
   * through that mount's content (its bundle, its data: the tenant's), in a
   * set-up namespace whose /oldroot is the host's root, writable: a symlink
   * on the way to /oldroot/<path> had it create <path> on the host. So the
   * path below the outer mount must hold no symlink when checked, and no
   * running sandbox may be able to write there until this one is set up.
   * procyard's own files (/tmp/.procyard) come after every mount: no mount
   * may hold them.
   */
  private checkNested(m: MountEntry, i: number, given: MountEntry[], bound: MountEntry[], targets: string[]): void {
    const target = targets[i]!;
    const refuse = (why: string): never => {
      throw new SpecError(`the mount target ${JSON.stringify(m.target)} is refused: ${why}`);
    };
    if (target === '/tmp' || target === OWN_FILES || inside(target, OWN_FILES))
      refuse(`procyard puts its own files under ${OWN_FILES}, after the mounts; mount elsewhere (a path under /tmp is fine)`);
    let outer = -1;
    for (let j = 0; j < i; j++) if (inside(target, targets[j]!) && (outer < 0 || targets[j]!.length > targets[outer]!.length)) outer = j;
    if (outer < 0) return;
    const outerTarget = targets[outer]!;
    const source = bound[outer]!.source;
    const below = path.posix.relative(outerTarget, target);
    const where = `it lies inside ${JSON.stringify(given[outer]!.target)}, whose content`;
    // Without root every worker is the server's uid: what this backend's sandboxes have had read-write is all that can be told.
    if (!this.guard)
      for (const other of this.everWritable)
        if (other === source || inside(source, other) || inside(other, source))
          refuse(`${where} a sandbox of this server has had read-write, so a worker could put a symlink on its path before it is made; mount it elsewhere`);
    // No symlink at all on the way (a bundle's are the tenant's, whoever owns them), and, as root, no
    // directory a worker could change: any process holding an fd of it (passed on, say) could swap an entry.
    const r = resolveMountTarget(path.join(source, below), {
      create: false,
      trustedUid: process.geteuid?.() ?? 0,
      noSymlinks: true,
      ...(this.guard ? { workerUids: this.guard.uids, workerGid: this.guard.gid } : {}),
    });
    if (r.problem === undefined || r.code === 'ENOENT') return; // from a missing part on, bwrap makes it inside the mount
    const inContent = r.problem.replace(source, given[outer]!.target.replace(/\/+$/, ''));
    refuse(`${where} is not safe to make it through: ${inContent}; bwrap would follow it on the host, so mount it elsewhere`);
  }

  private remember(m: MountEntry): void {
    if (!m.readOnly && this.everWritable.size < 100_000) this.everWritable.add(m.source);
    const known = this.live.get(m.source) ?? { users: 0, writers: 0 };
    known.users++;
    if (!m.readOnly) known.writers++;
    this.live.set(m.source, known);
  }

  private forget(m: MountEntry): void {
    const known = this.live.get(m.source);
    if (!known) return;
    known.users--;
    if (!m.readOnly) known.writers--;
    if (known.users <= 0) this.live.delete(m.source);
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

  private async drop(entry: TargetEntry): Promise<void> {
    if (--entry.users > 0) return;
    if (entry.created.length > 0) {
      this.ready.delete(entry.target);
      await this.removeCreated(entry.created);
    } else if (this.ready.size > 1024) {
      this.ready.delete(entry.target); // a pre-existing target: only a cache entry
    }
  }

  /**
   * Removes directories made for a target, innermost first, while they are
   * empty: a worker's mount targets must not outlive it on the host. Their
   * parents were checked (no worker can have swapped them), and rmdir never
   * removes anything a worker put inside. But one may be another sandbox's
   * mount target too (p, made for p/q, then a neighbour's target), and rmdir
   * of a mount point in another mount namespace succeeds, detaching the
   * neighbour's mount: such a directory stays. If it is a target of ours it
   * (and the rest made with it) goes when that one's last sandbox does.
   */
  private async removeCreated(created: readonly string[]): Promise<void> {
    const mounted = await otherNamespaceMounts().catch(() => null);
    for (let i = created.length - 1; i >= 0; i--) {
      const dir = created[i]!;
      // Ours first: our own sandboxes are mounted in other namespaces too.
      if (this.handedOver(dir, created.slice(0, i + 1))) return;
      if (mounted === null || mounted.has(dir)) return;
      try {
        rmdirSync(dir);
      } catch {
        return; // not empty (or gone): its parents are not empty either
      }
    }
  }

  /** Whether dir is a target of ours in use: it then takes over dirs (dir and its made parents). */
  private handedOver(dir: string, dirs: readonly string[]): boolean {
    for (const other of this.ready.values()) {
      if (other.path !== dir) continue;
      if (other.users > 0) {
        other.created = [...new Set([...dirs, ...other.created])].sort((a, b) => a.length - b.length);
        return true;
      }
      this.ready.delete(other.target); // a cache entry for a directory about to go
    }
    return false;
  }
}

/** Where an R worker's files from procyard go (bwrap.ts R_PROFILE_TARGET, r-app.ts). */
const OWN_FILES = '/tmp/.procyard';

/** A target as the sandbox resolves it, for comparing: normalized, no trailing slash. */
function sandboxPath(p: string): string {
  return path.posix.normalize(p).replace(/(.)\/+$/, '$1');
}

/** Whether path p lies strictly inside directory dir (both real paths). */
function inside(p: string, dir: string): boolean {
  return p !== dir && p.startsWith(dir === '/' ? '/' : `${dir}/`);
}
