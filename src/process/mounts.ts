// Mount targets on the read-only root: bwrap cannot mkdir them there.
import { mkdirSync, statSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import path from 'node:path';

/** Under the sandbox's own tmpfs /tmp, bwrap creates targets itself. */
function underTmp(p: string): boolean {
  return p === '/tmp' || p.startsWith('/tmp/');
}

function cannotCreate(p: string, field: string, err: unknown): string {
  const reason = (err as NodeJS.ErrnoException).code ?? String(err);
  return (
    `${field} "${p}" does not exist on the host and cannot be created (${reason}); ` +
    `bwrap binds onto the read-only host root, so the directory must exist: ` +
    `create it as root (mkdir -p ${p}) or use a path under /tmp`
  );
}

/**
 * Each missing ancestor of p, top-down. Node's recursive mkdir is not used:
 * on /proc (mkdir gives ENOENT under an existing parent) it loops forever.
 */
function missingChain(p: string, exists: (dir: string) => boolean): string[] {
  const chain: string[] = [];
  for (let dir = path.resolve(p); !exists(dir); dir = path.dirname(dir)) {
    chain.unshift(dir);
    if (dir === '/') break;
  }
  return chain;
}

function existsSync(dir: string): boolean {
  try {
    statSync(dir);
    return true;
  } catch {
    return false;
  }
}

/**
 * Makes sure a bind target can be reached inside the sandbox, creating it on
 * the host when missing; returns an error message naming the path and the
 * fix, or null when it is fine. Synchronous: a few stats of local paths, and
 * the backend remembers a target once it is reachable.
 */
export function ensureMountTarget(p: string, field: string, mustBeDir: boolean): string | null {
  if (underTmp(p)) return null;
  try {
    const info = statSync(p);
    return mustBeDir && !info.isDirectory() ? `${field} "${p}" exists and is not a directory` : null;
  } catch {
    // fall through to create it
  }
  try {
    for (const dir of missingChain(p, existsSync)) mkdirSync(dir, { mode: 0o755 });
    return null;
  } catch (err) {
    return cannotCreate(p, field, err);
  }
}

/**
 * The target as bwrap must be given it. bwrap 0.8 resolves an absolute
 * symlink in a bind target against its set-up root, not the sandbox's:
 * `/var/run/blockyard` (with /var/run -> /run) fails with "Can't mkdir".
 * The sandbox root is the host's, so the host's real path is the same place.
 */
export async function bindTarget(p: string): Promise<string> {
  if (underTmp(p)) return p;
  try {
    return await realpath(p);
  } catch {
    return p;
  }
}
