// Preflight `warm_pool` (SPEC §12): what the configured pool would hold
// here, or why it cannot work (every spawn then starts cold) and the fix.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { kernelRelease } from '../../native.js';
import { resolveRBinary } from '../../process/rversion.js';
import { warmPoolProblem } from '../../process/warm-handoff.js';
import type { PreflightContext, Verdict } from '../checks.js';

const PROBE_TIMEOUT_MS = 15_000;

/** The preload packages this Rscript cannot load, or the failure. */
function missingPackages(rscript: string, packages: string[]): Promise<string[] | { failure: string }> {
  // The names travel as arguments, never as code (config validation allows package names only anyway).
  const code = 'for (p in commandArgs(TRUE)) if (!requireNamespace(p, quietly = TRUE)) cat(p, "\\n")';
  return new Promise((resolve) => {
    execFile(rscript, ['--vanilla', '-e', code, ...packages], { timeout: PROBE_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout) => {
      if (err) resolve({ failure: err.message.split('\n')[0]! });
      else resolve(stdout.split(/\s+/).filter(Boolean));
    });
  });
}

export async function checkWarmPool(ctx: PreflightContext): Promise<Verdict> {
  const entries = ctx.proc.warmPool.filter((e) => e.size > 0);
  if (entries.length === 0)
    return { severity: 'info', message: 'no warm pool configured: every R app starts cold ([[process.warm_pool]] with size and preload)' };
  const problem = warmPoolProblem(ctx.isRoot, kernelRelease());
  if (problem)
    return {
      severity: 'warning',
      message: `${problem}, so every spawn starts cold. Fix: ${ctx.isRoot ? 'upgrade the kernel' : 'run the server as root'}, or remove [[process.warm_pool]]`,
    };
  const held: string[] = [];
  const problems: string[] = [];
  for (const entry of entries) {
    const version = entry.rVersion ?? '';
    const preload = entry.preload ?? ['shiny'];
    const r = resolveRBinary(version, ctx.proc.rPath, ctx.proc.rigBase);
    const what = `R ${version || '(process.r_path)'}`;
    if (r.fellBack) {
      problems.push(`${what} is not installed under ${ctx.proc.rigBase}`);
      continue;
    }
    const missing = await missingPackages(path.join(path.dirname(r.path), 'Rscript'), preload);
    if ('failure' in missing) problems.push(`${what} could not be run (${missing.failure})`);
    else if (missing.length > 0) problems.push(`${what} lacks the preload package${missing.length > 1 ? 's' : ''} ${missing.join(', ')}`);
    else held.push(`${entry.size} sandbox${entry.size > 1 ? 'es' : ''} of ${what} with ${preload.join(', ') || 'nothing'} loaded`);
  }
  if (problems.length > 0)
    return {
      severity: 'warning',
      message:
        `the warm pool cannot start every entry: ${problems.join('; ')}. Spawns those entries would serve start cold. ` +
        `Fix: install that R (rig add <version>) and the packages into its library, or change [[process.warm_pool]]` +
        (held.length ? `. It holds: ${held.join('; ')}` : ''),
    };
  return {
    severity: 'ok',
    message: `the warm pool holds ${held.join('; ')}, each started ahead as a worker's sandbox: an R app whose spec fits takes one`,
  };
}
