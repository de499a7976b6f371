// Where the cgroup hierarchies are, where this server sits in them, and how a
// parent cgroup is made ready to hold workers' cgroups (SPEC §8). Parsing is
// pure; the rest reads and writes cgroupfs. See cgroup.ts for the workers'.
import { access, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import path from 'node:path';
import { parseStat } from '../native.js';

export type Controller = 'memory' | 'cpu' | 'pids';
/**
 * In the order a v1 clone child enters their hierarchies: cpu last. Measured
 * here, a child that moved into its new cpu cgroup first lost ~0.3 ms more
 * to the scheduler before its exec than one that moved there last.
 */
export const CONTROLLERS: readonly Controller[] = Object.freeze(['memory', 'pids', 'cpu']);

/** v2: the leaf the server moves into when its own cgroup must hand controllers to children. */
export const SERVER_LEAF = 'procyard-server';

export interface CgroupMount {
  fstype: 'cgroup' | 'cgroup2';
  /** The mount's root inside the hierarchy (mountinfo's 4th field), usually '/'. */
  root: string;
  mountPoint: string;
  /** v1: the controllers in its super options (memory, cpu, cpuacct, ...). */
  options: string[];
}

/** One hierarchy whose controllers procyard uses. */
export interface Hierarchy {
  mountPoint: string;
  mountRoot: string;
  /** v1: the controllers of ours it carries; v2: all three (what is delegated is checked later). */
  controllers: Controller[];
  /** This process's cgroup in it, as /proc/self/cgroup shows it ('/system.slice/x.service'). */
  ownPath: string;
}

export type Layout =
  | { version: 1 | 2; hierarchies: Hierarchy[] }
  | { version: 0; reason: string };

/** A cgroup problem with the fix: what 'required' rejects with and preflight reports. */
export class CgroupProblem extends Error {
  override readonly name = 'CgroupProblem';
  constructor(
    readonly problem: string,
    readonly fix: string,
  ) {
    super(`${problem}: ${fix}`);
  }
}

const unescapeMount = (s: string) => s.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(parseInt(octal, 8)));

/** The cgroup and cgroup2 mounts in /proc/self/mountinfo. */
export function parseMountinfo(text: string): CgroupMount[] {
  const out: CgroupMount[] = [];
  for (const line of text.split('\n')) {
    const dash = line.indexOf(' - ');
    if (dash < 0) continue;
    const before = line.slice(0, dash).split(' ');
    const [fstype, , superOptions = ''] = line.slice(dash + 3).split(' ');
    if ((fstype !== 'cgroup' && fstype !== 'cgroup2') || before.length < 5) continue;
    out.push({
      fstype,
      root: unescapeMount(before[3]!),
      mountPoint: unescapeMount(before[4]!),
      options: superOptions.split(','),
    });
  }
  return out;
}

export interface ProcCgroupLine {
  id: number;
  /** v1: 'cpu', 'cpuacct', ... ; v2: none. */
  controllers: string[];
  path: string;
}

/** /proc/<pid>/cgroup: `id:controllers:path` per hierarchy. */
export function parseProcCgroup(text: string): ProcCgroupLine[] {
  const out: ProcCgroupLine[] = [];
  for (const line of text.split('\n')) {
    const first = line.indexOf(':');
    const second = line.indexOf(':', first + 1);
    if (first < 0 || second < 0) continue;
    const list = line.slice(first + 1, second);
    out.push({ id: Number(line.slice(0, first)), controllers: list === '' ? [] : list.split(','), path: line.slice(second + 1) });
  }
  return out;
}

/**
 * Which hierarchy holds each of memory, cpu and pids. Any of them on a v1
 * hierarchy means v1 (a hybrid host's v2 tree then has none of them);
 * otherwise the unified (v2) hierarchy.
 */
export function layoutFrom(mountinfo: string, procCgroup: string): Layout {
  const mounts = parseMountinfo(mountinfo);
  const lines = parseProcCgroup(procCgroup);
  const v1: Hierarchy[] = [];
  const taken = new Set<Controller>();
  for (const m of mounts) {
    if (m.fstype !== 'cgroup') continue;
    const controllers = CONTROLLERS.filter((c) => m.options.includes(c) && !taken.has(c));
    if (controllers.length === 0) continue;
    const line = lines.find((l) => l.controllers.some((c) => m.options.includes(c)));
    if (!line) continue;
    controllers.forEach((c) => taken.add(c));
    v1.push({ mountPoint: m.mountPoint, mountRoot: m.root, controllers, ownPath: line.path });
  }
  const rank = (h: Hierarchy) => Math.min(...h.controllers.map((c) => CONTROLLERS.indexOf(c)));
  if (v1.length > 0) return { version: 1, hierarchies: v1.sort((a, b) => rank(a) - rank(b)) };
  const unified = mounts.find((m) => m.fstype === 'cgroup2');
  const own = lines.find((l) => l.id === 0 && l.controllers.length === 0);
  if (!unified)
    return { version: 0, reason: 'no cgroup filesystem is mounted (/proc/self/mountinfo lists neither cgroup2 nor a v1 memory, cpu or pids hierarchy)' };
  if (!own) return { version: 0, reason: `cgroup2 is mounted at ${unified.mountPoint} but /proc/self/cgroup has no "0::" line` };
  return { version: 2, hierarchies: [{ mountPoint: unified.mountPoint, mountRoot: unified.root, controllers: [...CONTROLLERS], ownPath: own.path }] };
}

/**
 * The cgroup2 hierarchy, with this process's place in it, whether it holds
 * the controllers (v2) or not (a hybrid host's, beside the v1 ones); null
 * when cgroup2 is not mounted.
 */
export function unifiedFrom(mountinfo: string, procCgroup: string): Hierarchy | null {
  const unified = parseMountinfo(mountinfo).find((m) => m.fstype === 'cgroup2');
  const own = parseProcCgroup(procCgroup).find((l) => l.id === 0 && l.controllers.length === 0);
  if (!unified || !own) return null;
  return { mountPoint: unified.mountPoint, mountRoot: unified.root, controllers: [], ownPath: own.path };
}

/** The hierarchies as this process sees them now. */
export async function detectLayout(): Promise<Layout> {
  try {
    const [mountinfo, procCgroup] = await Promise.all([readFile('/proc/self/mountinfo', 'utf8'), readFile('/proc/self/cgroup', 'utf8')]);
    return layoutFrom(mountinfo, procCgroup);
  } catch (err) {
    return { version: 0, reason: `cannot read /proc/self/mountinfo or /proc/self/cgroup (${(err as Error).message})` };
  }
}

/** The directory of cgroup `cgroupPath` in h, or null when it lies outside the mounted part. */
export function dirOf(h: Hierarchy, cgroupPath: string): string | null {
  const root = h.mountRoot === '/' ? '' : h.mountRoot;
  if (cgroupPath !== root && !cgroupPath.startsWith(`${root}/`)) return null;
  const rest = cgroupPath.slice(root.length);
  return rest === '' || rest === '/' ? h.mountPoint : path.join(h.mountPoint, rest);
}

/** The cgroup workers' cgroups go under: cgroupParent, else the server's own (its leaf's parent). */
export function parentPath(h: Hierarchy, cgroupParent: string): string {
  if (cgroupParent !== '') return cgroupParent;
  return path.posix.basename(h.ownPath) === SERVER_LEAF ? path.posix.dirname(h.ownPath) : h.ownPath;
}

/** A parent made ready: its directory, and the controllers its children get. */
export interface ReadyParent {
  dir: string;
  controllers: Controller[];
  /** Controllers that cannot be had here, each with the reason. */
  missing: { controller: Controller; why: string }[];
  /** What was done (or, in a dry run, would be done) to get there. */
  actions: string[];
}

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ?? e.message;
}

/** Whether dir exists; something there that is no directory is a problem. */
async function exists(dir: string): Promise<boolean> {
  const info = await stat(dir).catch(() => null);
  if (info && !info.isDirectory())
    throw new CgroupProblem(`${dir} is not a cgroup (not a directory)`, 'set process.cgroupParent to a cgroup path, or "" for the server\'s own');
  return info !== null;
}

async function words(file: string): Promise<string[]> {
  return (await readFile(file, 'utf8')).split(/\s+/).filter(Boolean);
}

const HOW_TO_DELEGATE =
  'run the server as root, or under systemd with Delegate=yes (see the README\'s "Resources"), or set process.cgroupParent to a cgroup delegated to the server\'s user';

/**
 * Makes the parent cgroup exist and (v2) hand memory, cpu and pids to its
 * children. v2 lets a cgroup with processes of its own hand no controllers
 * down ("no internal processes"): when the parent is the server's own
 * cgroup, the server moves into a leaf of it, SERVER_LEAF. A dry run
 * (preflight) changes nothing and says what it would do. Throws a
 * CgroupProblem when the parent cannot be had at all.
 */
export async function readyParent(version: 1 | 2, h: Hierarchy, cgroupParent: string, dryRun: boolean): Promise<ReadyParent> {
  const wanted = h.controllers;
  const cgPath = parentPath(h, cgroupParent);
  const dir = dirOf(h, cgPath);
  if (dir === null)
    throw new CgroupProblem(
      `cgroup ${cgPath} lies outside the part of the hierarchy mounted at ${h.mountPoint} (its root there is ${h.mountRoot})`,
      'set process.cgroupParent to a cgroup under that root, or "" for the server\'s own',
    );
  // The deepest ancestor (or the dir itself) that exists; below it, what to make.
  const toMake: string[] = [];
  let existing = dir;
  while (!(await exists(existing))) {
    if (existing === h.mountPoint)
      throw new CgroupProblem(`the cgroup hierarchy at ${h.mountPoint} is not there`, 'mount it, or set process.resourceLimits to "off"');
    toMake.unshift(existing);
    existing = path.dirname(existing);
  }
  const actions: string[] = [];
  try {
    await access(existing, fsConstants.W_OK);
  } catch {
    throw new CgroupProblem(`cannot create cgroups in ${existing}: not writable by this user (uid ${process.getuid?.()})`, HOW_TO_DELEGATE);
  }
  if (version === 1) {
    if (toMake.length > 0) {
      actions.push(`create ${dir}`);
      if (!dryRun) await mkdirCgroup(dir, true);
    }
    return { dir, controllers: wanted, missing: [], actions };
  }

  // v2: what the existing ancestor may hand down, and making it do so.
  const available = new Set(await words(path.join(existing, 'cgroup.controllers')).catch(() => [] as string[]));
  const controllers = wanted.filter((c) => available.has(c));
  const missing = wanted
    .filter((c) => !available.has(c))
    .map((controller) => ({
      controller,
      why: `${existing}/cgroup.controllers lists ${[...available].join(' ') || 'nothing'}: ${controller} is not delegated to that cgroup`,
    }));
  const enabled = new Set(await words(path.join(existing, 'cgroup.subtree_control')).catch(() => [] as string[]));
  const toEnable = controllers.filter((c) => !enabled.has(c));
  if (toEnable.length > 0) {
    // A process the server starts meanwhile (a probe, a sandbox without
    // limits) lands in `existing` and makes the enabling fail: try again.
    for (let attempt = 1; ; attempt++) {
      if (existing !== h.mountPoint) await vacate(existing, actions, dryRun);
      if (attempt === 1) actions.push(`enable ${toEnable.join(', ')} in ${existing}/cgroup.subtree_control`);
      if (dryRun) break;
      try {
        await enable(existing, toEnable);
        break;
      } catch (err) {
        if (attempt >= 3) throw err;
      }
    }
  }
  for (const d of toMake) {
    actions.push(`create ${d}`);
    if (!dryRun) {
      await mkdirCgroup(d, false);
      await enable(d, controllers);
    }
  }
  return { dir, controllers, missing, actions };
}

/** Whether pid is this process or one it started (a probe, a sandbox), or gone already. */
async function whose(pid: number): Promise<'ours' | 'other' | 'gone'> {
  for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
    if (p === process.pid) return 'ours';
    const stat = parseStat(await readFile(`/proc/${p}/stat`, 'utf8').catch(() => ''));
    // Exited between the listing and now (or a zombie): in no one's way.
    if (!stat || stat.state === 'Z' || stat.state === 'X') return p === pid ? 'gone' : 'other';
    p = stat.ppid;
  }
  return 'other';
}

/**
 * Empties a cgroup that must hand controllers down: the server, and what it
 * started, move into its leaf SERVER_LEAF. Anyone else's process there is a
 * problem the server cannot solve.
 */
async function vacate(dir: string, actions: string[], dryRun: boolean): Promise<void> {
  let ours: number[] = [];
  let others: number[] = [];
  // Looked at again after a moment: a sandbox the server is tearing down has
  // processes that outlive their parent for a few milliseconds.
  for (let look = 0; look < 4 && (look === 0 || others.length > 0); look++) {
    if (look > 0) await new Promise((resolve) => setTimeout(resolve, 50));
    ours = [];
    others = [];
    for (const pid of (await words(path.join(dir, 'cgroup.procs')).catch(() => [] as string[])).map(Number)) {
      const owner = await whose(pid);
      if (owner !== 'gone') (owner === 'ours' ? ours : others).push(pid);
    }
  }
  if (ours.length === 0 && others.length === 0) return;
  if (others.length > 0) {
    const named = await Promise.all(
      others.slice(0, 5).map(async (pid) => `${pid} ${(await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '?')).trim()}`),
    );
    throw new CgroupProblem(
      `cgroup ${dir} holds processes (${named.join(', ')}${others.length > 5 ? ', …' : ''}) besides the server, and cgroup v2 lets a cgroup with processes hand no controllers to children`,
      'run the server as its unit\'s only process (systemd: Delegate=yes), or set process.cgroupParent to a delegated cgroup that holds no processes',
    );
  }
  const leaf = path.join(dir, SERVER_LEAF);
  if (!actions.some((a) => a.startsWith('move the server')))
    actions.push(`move the server (pid ${process.pid}) and what it started into ${leaf}`);
  if (dryRun) return;
  await mkdirCgroup(leaf, false);
  for (const pid of ours) {
    try {
      await writeFile(path.join(leaf, 'cgroup.procs'), String(pid));
    } catch (err) {
      // A child that exited meanwhile is fine; the server itself must move.
      if (pid === process.pid || (err as NodeJS.ErrnoException).code !== 'ESRCH')
        throw new CgroupProblem(`cannot move pid ${pid} into ${leaf} (${errText(err)})`, HOW_TO_DELEGATE);
    }
  }
}

/** mkdir, EEXIST being fine unless `exclusive`; errors become CgroupProblems naming the dir. */
export async function mkdirCgroup(dir: string, recursive: boolean, exclusive = false): Promise<void> {
  try {
    await mkdir(dir, { recursive, mode: 0o755 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST' && !exclusive) return;
    throw new CgroupProblem(`cannot create cgroup ${dir} (${errText(err)})`, HOW_TO_DELEGATE);
  }
}

async function writeCgroup(file: string, value: string): Promise<void> {
  try {
    await writeFile(file, value);
  } catch (err) {
    throw new CgroupProblem(`cannot write "${value}" to ${file} (${errText(err)})`, HOW_TO_DELEGATE);
  }
}

/** v2: lets the children of dir have these controllers. */
export async function enable(dir: string, controllers: readonly Controller[]): Promise<void> {
  if (controllers.length === 0) return;
  await writeCgroup(path.join(dir, 'cgroup.subtree_control'), controllers.map((c) => `+${c}`).join(' '));
}
