// bwrap argv and the worker environment: pure functions, no I/O.
import type { MountEntry } from '../backend.js';

/** Fixed in-sandbox mount targets. bwrap cannot mkdir them on the read-only root. */
export const MOUNT_TARGETS = Object.freeze({
  library: '/blockyard-lib',
  libraryStore: '/blockyard-lib-store',
  token: '/var/run/blockyard',
  transfer: '/transfer',
});

/** Where an R worker finds procyard's R profile (r-app.ts), and the spec's rProfilePath for it to run. */
export const R_PROFILE_TARGET = '/tmp/.procyard/Rprofile';
export const USER_PROFILE_ENV = 'PROCYARD_R_PROFILE_USER';

/** fd numbers in the child for bwrap's side channels. */
export const STATUS_FD = 3;
export const SECCOMP_FD = 4;
/** bwrap reads the app's environment options from here (--args): not in argv, which any host user can read. */
export const ARGS_FD = 5;
/** The first fd of the plan's files (--ro-bind-data); one each, in order. */
export const FILES_FD = 6;

/**
 * bwrap's own environment. The app's never reaches bwrap: LD_PRELOAD and the
 * like in it would run code in bwrap, on the host, before any sandbox exists.
 */
export const BWRAP_ENV: readonly string[] = Object.freeze(['PATH=/usr/bin:/bin', 'LANG=C.UTF-8']);

/** Host devices a sandbox gets in its /dev; nothing else (no ptys, no disks). */
const DEVICES = ['null', 'zero', 'full', 'random', 'urandom', 'tty'];

export interface SandboxPlan {
  /** Sandbox uid and gid (also the host's view when the server runs as root). */
  uid: number;
  gid: number;
  /** Cap of the private /tmp; 0 = none. */
  tmpSizeBytes: number;
  /** Binds in order after the read-only root. */
  mounts: MountEntry[];
  /** Pass --seccomp SECCOMP_FD (the caller places the program there). */
  seccomp: boolean;
  cmd: string[];
  /** Hide the host's /run (see RunPlan); absent or null = /run as the host has it. */
  run?: RunPlan | null;
  /** Hide the host's cgroup file systems behind an empty read-only tmpfs (the host has /sys/fs/cgroup). */
  hideCgroups?: boolean;
  /** Read-only files made from data bwrap reads at FILES_FD, FILES_FD + 1, ... (procyard's R profile). */
  files?: readonly string[];
  /** Directories made in the hidden /run before it turns read-only (mount points a warm sandbox may be handed later). */
  runDirs?: readonly string[];
}

/** The host's /run hidden behind an empty tmpfs, read-only once every bind under it is made. */
export interface RunPlan {
  /** Host paths under /run bound back read-only, at the same path (bwrap skips a missing one). */
  keep: string[];
}

/** The argv after the bwrap binary. */
export function bwrapArgs(plan: SandboxPlan): string[] {
  const args = [
    '--unshare-pid',
    '--unshare-user',
    // No nested user namespaces: they expose a large kernel surface to the app.
    '--disable-userns',
    '--unshare-uts',
    '--unshare-ipc',
    '--unshare-cgroup-try',
    '--uid', String(plan.uid),
    '--gid', String(plan.gid),
    '--die-with-parent',
    '--new-session',
    '--ro-bind', '/', '/',
  ];
  // The private /tmp is RAM: uncapped, one worker could fill half the host.
  if (plan.tmpSizeBytes > 0) args.push('--size', String(plan.tmpSizeBytes));
  args.push('--tmpfs', '/tmp', '--proc', '/proc', ...devArgs(plan.tmpSizeBytes), '--chdir', '/tmp');
  // /proc/locks is host-wide: every server's port and UID claims, live, as
  // they are taken (a clock for racing a neighbour's start).
  args.push('--dev-bind', '/dev/null', '/proc/locks');
  // The host's /run holds daemons' sockets (D-Bus, container runtimes,
  // databases) that accept a connect() from anyone despite the read-only root.
  if (plan.run) {
    args.push('--tmpfs', '/run', '--symlink', '/dev/shm', '/run/shm');
    for (const p of plan.run.keep) args.push('--ro-bind-try', p, p);
    for (const dir of plan.runDirs ?? []) args.push('--dir', dir);
  }
  // The host's cgroups list every worker's memory, CPU and process counts,
  // and a new worker's cgroup filling up as it starts: none of a tenant's business.
  if (plan.hideCgroups) args.push('--tmpfs', '/sys/fs/cgroup', '--remount-ro', '/sys/fs/cgroup');
  for (const m of plan.mounts) args.push(m.readOnly ? '--ro-bind' : '--bind', m.source, m.target);
  (plan.files ?? []).forEach((target, i) => args.push('--perms', '0444', '--ro-bind-data', String(FILES_FD + i), target));
  // Read-only only now: bwrap makes the mount points under /run (tokenDir's) first.
  // A mount onto /run itself replaced the tmpfs: it stays as asked.
  if (plan.run && !plan.mounts.some((m) => m.target === '/run')) args.push('--remount-ro', '/run');
  args.push('--cap-drop', 'ALL', '--args', String(ARGS_FD));
  if (plan.seccomp) args.push('--seccomp', String(SECCOMP_FD));
  args.push('--json-status-fd', String(STATUS_FD), '--', ...plan.cmd);
  return args;
}

/**
 * A /dev made by hand rather than bwrap's --dev, which leaves the whole /dev
 * tmpfs writable (half the host's RAM), /dev/shm uncapped, and a devpts whose
 * /dev/ptmx lets one worker take every pty of the host. Here: the usual
 * device nodes, a /dev/shm capped like /tmp, and the rest read-only.
 */
function devArgs(shmSizeBytes: number): string[] {
  const args = ['--tmpfs', '/dev'];
  for (const node of DEVICES) args.push('--dev-bind', `/dev/${node}`, `/dev/${node}`);
  args.push('--symlink', '/proc/self/fd', '/dev/fd');
  ['stdin', 'stdout', 'stderr'].forEach((name, fd) => args.push('--symlink', `/proc/self/fd/${fd}`, `/dev/${name}`));
  if (shmSizeBytes > 0) args.push('--size', String(shmSizeBytes));
  args.push('--tmpfs', '/dev/shm', '--remount-ro', '/dev');
  return args;
}

/**
 * What bwrap reads from ARGS_FD: clear its own environment and set the
 * app's, NUL-separated. Entries are KEY=VALUE with a non-empty KEY and no NUL
 * (a NUL would smuggle in bwrap options); the validators guarantee it.
 */
export function envArgs(env: readonly string[]): Buffer {
  const parts = ['--clearenv'];
  for (const entry of env) {
    const eq = entry.indexOf('=');
    // The name alone in the message: the rest may be a secret.
    if (eq <= 0 || entry.includes('\0'))
      throw new Error(`environment entry ${JSON.stringify(entry.slice(0, Math.max(eq, 0)).slice(0, 40))}... is not KEY=VALUE`);
    parts.push('--setenv', entry.slice(0, eq), entry.slice(eq + 1));
  }
  return Buffer.from(parts.map((p) => `${p}\0`).join(''), 'utf8');
}

export interface WorkerMountsInput {
  bundlePath?: string;
  workerMount?: string;
  libraryPath?: string;
  libDir?: string;
  tokenDir?: string;
  transferDir?: string;
  dataMounts?: MountEntry[];
}

/** The worker's binds, bundle first; data mounts as given (readOnly absent = read-write, as in the original). */
export function workerMounts(spec: WorkerMountsInput): MountEntry[] {
  const mounts: MountEntry[] = [];
  if (spec.bundlePath && spec.workerMount)
    mounts.push({ source: spec.bundlePath, target: spec.workerMount, readOnly: true });
  if (spec.libraryPath) mounts.push({ source: spec.libraryPath, target: MOUNT_TARGETS.library, readOnly: true });
  if (spec.libDir) mounts.push({ source: spec.libDir, target: MOUNT_TARGETS.libraryStore, readOnly: true });
  if (spec.tokenDir) mounts.push({ source: spec.tokenDir, target: MOUNT_TARGETS.token, readOnly: true });
  if (spec.transferDir) mounts.push({ source: spec.transferDir, target: MOUNT_TARGETS.transfer, readOnly: false });
  for (const m of spec.dataMounts ?? []) mounts.push({ ...m, readOnly: m.readOnly === true });
  return mounts;
}

/** The minimal environment every sandbox starts from. Never the server's own. */
export const BASE_ENV = Object.freeze({
  PATH: '/usr/bin:/usr/local/bin:/bin',
  HOME: '/tmp',
  TMPDIR: '/tmp',
  LANG: 'C.UTF-8',
});

export interface WorkerEnvInput {
  libDir?: string;
  libraryPath?: string;
  rProfilePath?: string;
  env?: Record<string, string>;
}

/**
 * The worker's whole environment as KEY=VALUE; SHINY_* last so a spec cannot
 * move the app off loopback. An R worker (rWorker) starts with procyard's R
 * profile (r-app.ts), which runs the spec's rProfilePath in turn.
 */
export function workerEnv(spec: WorkerEnvInput, port: number, rWorker = false): string[] {
  const env: Record<string, string> = { ...BASE_ENV };
  // R_LIBS names a library only when one is mounted: an empty mount point there misleads R users.
  if (spec.libDir) env.R_LIBS = MOUNT_TARGETS.libraryStore;
  else if (spec.libraryPath) env.R_LIBS = MOUNT_TARGETS.library;
  if (rWorker) {
    env.R_PROFILE_USER = R_PROFILE_TARGET;
    if (spec.rProfilePath) env[USER_PROFILE_ENV] = spec.rProfilePath;
  } else if (spec.rProfilePath) env.R_PROFILE_USER = spec.rProfilePath;
  Object.assign(env, spec.env ?? {});
  env.SHINY_PORT = String(port);
  env.SHINY_HOST = '127.0.0.1';
  return Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

/** A build's environment: the minimal set, then the spec's KEY=VALUE entries. */
export function buildEnv(extra: string[] = []): string[] {
  return [...Object.entries(BASE_ENV).map(([k, v]) => `${k}=${v}`), ...extra];
}
