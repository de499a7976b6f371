// Can the sandbox exec this program? Answered on the host before anything
// starts: the sandbox sees the host's root read-only, the bundle at its
// mount point and a fresh, empty /tmp. bwrap itself only says so after the
// sandbox is up ("bwrap: execvp ...: No such file or directory").
import { statSync } from 'node:fs';
import path from 'node:path';
import { BASE_ENV } from './bwrap.js';

export interface SandboxView {
  /** Host path of the bundle, and where the sandbox sees it. */
  bundlePath: string;
  workerMount: string;
  /** Other binds: host source → sandbox target. */
  mounts?: { source: string; target: string }[];
  /** The worker's PATH (default: procyard's minimal one). */
  searchPath?: string;
}

const within = (p: string, dir: string) => p === dir || p.startsWith(dir.endsWith('/') ? dir : `${dir}/`);

/** Host path behind an absolute sandbox path; null when no host file backs it (the sandbox's own /tmp, /proc, /dev). */
export function hostPathOf(sandboxPath: string, view: SandboxView): string | null {
  const p = path.posix.normalize(sandboxPath);
  const binds = [{ source: view.bundlePath, target: view.workerMount }, ...(view.mounts ?? [])]
    // The longest target wins, as the later, deeper bind does in bwrap.
    .sort((a, b) => b.target.length - a.target.length);
  for (const m of binds) if (within(p, m.target)) return path.join(m.source, path.posix.relative(m.target, p));
  if (within(p, '/tmp') || within(p, '/proc') || within(p, '/dev')) return null;
  return p;
}

function executable(hostPath: string): boolean {
  try {
    const st = statSync(hostPath);
    return st.isFile() && (st.mode & 0o111) !== 0;
  } catch {
    return false;
  }
}

/**
 * Why `program` cannot be exec'd in the sandbox, or null when it can (or
 * when the host cannot tell: a path in the sandbox's own /tmp or /proc).
 * R and Rscript are resolved by the backend (process.rPath, rig) and not
 * checked here.
 */
export function commandProblem(program: string, view: SandboxView): string | null {
  if (program === 'R' || program === 'Rscript') return null;
  if (!program.includes('/')) {
    const searchPath = view.searchPath ?? BASE_ENV.PATH;
    for (const dir of searchPath.split(':')) {
      if (!path.posix.isAbsolute(dir)) continue;
      const host = hostPathOf(path.posix.join(dir, program), view);
      if (host === null || executable(host)) return null;
    }
    return `"${program}" is not found in the sandbox's PATH (${searchPath})`;
  }
  if (!path.posix.isAbsolute(program))
    return `"${program}" is relative to the sandbox's working directory /tmp, which starts empty: give an absolute path`;
  const host = hostPathOf(program, view);
  if (host === null) return null;
  return executable(host) ? null : `"${program}" (host path ${host}) is not an executable file`;
}
