// bwrap argv and the worker environment: pure functions, no I/O.
import type { MountEntry } from '../backend.js';

/** Fixed in-sandbox mount targets. bwrap cannot mkdir them on the read-only root. */
export const MOUNT_TARGETS = Object.freeze({
  library: '/blockyard-lib',
  libraryStore: '/blockyard-lib-store',
  token: '/var/run/blockyard',
  transfer: '/transfer',
});

/** fd numbers in the child for bwrap's side channels. */
export const STATUS_FD = 3;
export const SECCOMP_FD = 4;

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
  args.push('--tmpfs', '/tmp', '--proc', '/proc', '--dev', '/dev', '--chdir', '/tmp');
  for (const m of plan.mounts) args.push(m.readOnly ? '--ro-bind' : '--bind', m.source, m.target);
  args.push('--cap-drop', 'ALL');
  if (plan.seccomp) args.push('--seccomp', String(SECCOMP_FD));
  args.push('--json-status-fd', String(STATUS_FD), '--', ...plan.cmd);
  return args;
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

/** The worker's whole environment as KEY=VALUE; SHINY_* last so a spec cannot move the app off loopback. */
export function workerEnv(spec: WorkerEnvInput, port: number): string[] {
  const env: Record<string, string> = { ...BASE_ENV };
  // R_LIBS names a library only when one is mounted: an empty mount point there misleads R users.
  if (spec.libDir) env.R_LIBS = MOUNT_TARGETS.libraryStore;
  else if (spec.libraryPath) env.R_LIBS = MOUNT_TARGETS.library;
  if (spec.rProfilePath) env.R_PROFILE_USER = spec.rProfilePath;
  Object.assign(env, spec.env ?? {});
  env.SHINY_PORT = String(port);
  env.SHINY_HOST = '127.0.0.1';
  return Object.entries(env).map(([k, v]) => `${k}=${v}`);
}

/** A build's environment: the minimal set, then the spec's KEY=VALUE entries. */
export function buildEnv(extra: string[] = []): string[] {
  return [...Object.entries(BASE_ENV).map(([k, v]) => `${k}=${v}`), ...extra];
}
