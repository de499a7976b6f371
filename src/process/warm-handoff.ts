// Which spawns a warm sandbox may serve, and what it is handed (SPEC §12).
// A warm sandbox runs R already: whatever R reads only as it starts (its
// locale, temp directory, library paths from the environment, its own R_*
// settings) is fixed, so a spec that sets one starts cold. So does anything
// a handoff cannot make the same as a cold start.
import { readdirSync, statSync } from 'node:fs';
import { write } from 'node:fs';
import type { WorkerSpec } from '../backend.js';
import type { WarmPoolEntry } from '../config.js';
import { kernelVersion } from '../preflight/checks.js';
import { workerEnv } from './bwrap.js';
import type { Limits } from './limits.js';
import { USER_PROFILE_ENV } from './r-app.js';
import type { PathCheck } from './validate.js';
import type { WarmSandbox } from './warm-pool.js';

/** Why the pool cannot work on this host, or null. */
export function warmPoolProblem(asRoot: boolean, release: string): string | null {
  if (!asRoot) return 'the warm pool needs root: the app is mounted into a running sandbox with the mount API, as root';
  const version = kernelVersion(release);
  if (!version || version[0] < 5 || (version[0] === 5 && version[1] < 12))
    return `the warm pool needs Linux 5.12 or later (open_tree, move_mount, mount_setattr); this is ${release}`;
  return null;
}

/** What a warm sandbox starts with: a cold R worker's environment, less the spec's part. */
export function warmEnv(port: number): string[] {
  return workerEnv({}, port, true);
}

/** Set at the warm sandbox's start, or handled by its R profile: not handed over again. */
export const WARM_OWN_ENV: ReadonlySet<string> = new Set(['R_PROFILE_USER', USER_PROFILE_ENV, 'SHINY_PORT', 'SHINY_HOST']);

/**
 * Variables read only as a process starts: by R, by the dynamic loader and
 * glibc (LD_PRELOAD, GLIBC_TUNABLES, MALLOC_*), and by the BLAS and OpenMP
 * libraries R loads with it (their thread counts); and procyard's R
 * profile's own. A spec that sets one runs cold.
 */
const STARTUP_ENV = /^(R_.*|LANG|LANGUAGE|LC_.*|HOME|TMPDIR|TMP|TEMP|LD_.*|GLIBC_TUNABLES|MALLOC_.*|OMP_.*|OPENBLAS_.*|GOTO_.*|MKL_.*|BLIS_.*|PROCYARD_.*)$/;

/**
 * Whether `warm` can serve `spec` exactly as a cold start would: same R
 * version, no start-up variable in its environment, limits a live cgroup
 * can take (a memory limit at least twice what it holds: the app needs
 * room of its own), every host path there and a directory (a cold start reports a
 * missing one, and binds a file), and an app library that holds none of
 * the packages R has loaded already.
 */
export function warmFits(
  spec: WorkerSpec,
  entry: WarmPoolEntry,
  warm: WarmSandbox,
  ctx: { limits: Limits; defaults: Limits; checks: PathCheck[] },
): boolean {
  if ((spec.rVersion ?? '') !== (entry.rVersion ?? '')) return false;
  if (Object.keys(spec.env ?? {}).some((name) => STARTUP_ENV.test(name))) return false;
  // A limit can be changed on a live cgroup, not taken away; and a memory
  // limit under what the warm R holds already would end it at once.
  if ((ctx.limits.memoryBytes === 0 && ctx.defaults.memoryBytes > 0) || (ctx.limits.cpus === 0 && ctx.defaults.cpus > 0)) return false;
  if (ctx.limits.memoryBytes > 0 && (warm.cgroup?.memoryCharged() ?? 0) > ctx.limits.memoryBytes / 2) return false;
  // A missing path is a cold start's error to report; a file bound onto a file is a cold start's to make.
  for (const check of ctx.checks) {
    try {
      if (!statSync(check.path).isDirectory()) return false;
    } catch {
      return false;
    }
  }
  for (const library of [spec.libDir, spec.libraryPath]) {
    if (!library) continue;
    let packages: string[];
    try {
      packages = readdirSync(library);
    } catch {
      return false;
    }
    if (packages.some((name) => warm.loaded.includes(name))) return false;
  }
  return true;
}

/** Writes all of `bytes` to a (blocking) fd, off the loop. */
export async function writeAll(fd: number, bytes: Buffer): Promise<void> {
  for (let offset = 0; offset < bytes.length; ) {
    offset += await new Promise<number>((resolve, reject) =>
      write(fd, bytes, offset, bytes.length - offset, null, (err, written) => (err ? reject(err) : resolve(written))),
    );
  }
}
