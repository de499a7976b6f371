// Preflight `resource_limits` (SPEC §6, §8): how per-worker limits are
// enforced on this host, or why they are not and what to do about it.
import { inspectCgroups } from '../../process/cgroup.js';
import { resolveLimitsConfig, type LimitsConfig } from '../../process/limits.js';
import type { PreflightContext, Verdict } from '../checks.js';

const MiB = 2 ** 20;

function size(bytes: number): string {
  return bytes % 2 ** 30 === 0 ? `${bytes / 2 ** 30} GiB` : bytes % MiB === 0 ? `${bytes / MiB} MiB` : `${bytes} bytes`;
}

/** The [server] defaults that are set, as the TOML names them. */
function defaultsSet(ctx: PreflightContext): string[] {
  const server = ctx.config.server ?? {};
  const set: string[] = [];
  if (server.defaultMemoryLimit) set.push(`default_memory_limit = ${JSON.stringify(server.defaultMemoryLimit)}`);
  if (server.defaultCpuLimit) set.push(`default_cpu_limit = ${server.defaultCpuLimit}`);
  return set;
}

function what(limits: LimitsConfig): string {
  return (
    `pids_limit ${limits.pidsLimit || 'none'}; memory ${limits.memoryBytes ? size(limits.memoryBytes) : 'unlimited'} ` +
    `and cpu ${limits.cpus ? `${limits.cpus} CPUs` : 'unlimited'} unless the spec sets them`
  );
}

export async function resourceLimitsVerdict(ctx: PreflightContext): Promise<Verdict> {
  let limits: LimitsConfig;
  try {
    limits = resolveLimitsConfig(ctx.config);
  } catch (err) {
    return { severity: 'error', message: (err as Error).message };
  }
  const defaults = defaultsSet(ctx);
  const named = defaults.length > 0 ? `[server] ${defaults.join(' and ')} ${defaults.length > 1 ? 'are' : 'is'} set but cannot be enforced: ` : '';
  if (limits.mode === 'off')
    return defaults.length > 0
      ? { severity: 'warning', message: `${named}[process] resource_limits = "off", so workers run without memory, CPU or process limits: set resource_limits = "auto"` }
      : { severity: 'info', message: 'resource_limits = "off": workers run without per-worker memory, CPU or process limits' };

  const support = await inspectCgroups(limits.cgroupParent);
  const nproc = ctx.isRoot && limits.pidsLimit > 0 ? `; pids_limit ${limits.pidsLimit} still holds through RLIMIT_NPROC on each worker's own UID` : '';
  if (support.problem) {
    if (limits.mode === 'required')
      return { severity: 'error', message: `resource_limits = "required" cannot be met, so spawn and build will fail: ${support.problem.message}` };
    return {
      severity: 'warning',
      message: `${named}no usable cgroup (${support.problem.problem}), so workers run without memory and CPU limits${nproc}: ${support.problem.fix}`,
    };
  }
  const where = support.controllers.map((c) => `${c.controller} under ${c.parent}`).join(', ');
  const plan = support.actions.length > 0 ? `; on its first spawn the server will ${support.actions.join(', then ')}` : '';
  if (support.missing.length > 0) {
    const missing = support.missing.map((m) => m.why).join('; ');
    if (limits.mode === 'required')
      return { severity: 'error', message: `resource_limits = "required" cannot be met, so spawn and build will fail: ${missing}: delegate memory, cpu and pids (systemd: Delegate=yes)` };
    return {
      severity: 'warning',
      message: `cgroup v${support.version} without ${support.missing.map((m) => m.controller).join(', ')} (${missing}): those limits are not enforced${defaults.length ? ` (${defaults.join(', ')})` : ''}; the rest are: ${where}${plan}`,
    };
  }
  return { severity: 'ok', message: `cgroup v${support.version}, a cgroup per worker (${what(limits)}): ${where}${plan}` };
}
