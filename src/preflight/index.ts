// runPreflight: every check at once, results in the documented order.
import { performance } from 'node:perf_hooks';
import { resolveProcessConfig, type Config } from '../config.js';
import {
  checkBwrapAvailable,
  checkBwrapHostUidMapping,
  checkBwrapSetuid,
  checkCloudMetadata,
  checkMountTargets,
  checkPidfdSupport,
  checkPortRange,
  checkRBinary,
  checkRedisAuth,
  checkResourceLimits,
  checkRigVersions,
  checkSeccompProfile,
  checkUserNamespaces,
  checkWorkerEgress,
  type PreflightContext,
  type Verdict,
} from './checks.js';
import { checkNetworkPolicy } from './checks/network-policy.js';
import { checkWarmPool } from './checks/warm-pool.js';
import { PreflightReport, type CheckResult } from './report.js';

interface CheckDef {
  name: string;
  category: string;
  run: (ctx: PreflightContext) => Verdict | Promise<Verdict>;
}

/** The eleven of SPEC §6 in their order, then procyard's own. */
export const CHECKS: readonly CheckDef[] = Object.freeze([
  { name: 'bwrap_available', category: 'sandbox', run: checkBwrapAvailable },
  { name: 'r_binary', category: 'runtime', run: checkRBinary },
  { name: 'rig_versions', category: 'runtime', run: checkRigVersions },
  { name: 'user_namespaces', category: 'sandbox', run: checkUserNamespaces },
  { name: 'port_range', category: 'config', run: checkPortRange },
  { name: 'resource_limits', category: 'config', run: checkResourceLimits },
  { name: 'seccomp_profile', category: 'security', run: checkSeccompProfile },
  { name: 'bwrap_host_uid_mapping', category: 'sandbox', run: checkBwrapHostUidMapping },
  { name: 'cloud_metadata', category: 'network', run: checkCloudMetadata },
  { name: 'redis_auth', category: 'security', run: checkRedisAuth },
  { name: 'worker_egress', category: 'network', run: checkWorkerEgress },
  { name: 'pidfd_support', category: 'runtime', run: checkPidfdSupport },
  { name: 'bwrap_setuid', category: 'security', run: checkBwrapSetuid },
  { name: 'mount_targets', category: 'sandbox', run: checkMountTargets },
  { name: 'network_policy', category: 'network', run: checkNetworkPolicy },
  { name: 'warm_pool', category: 'runtime', run: checkWarmPool },
]);

/** A check that hangs must not hold the report: its probes have their own, shorter timeouts. */
const CHECK_TIMEOUT_MS = 20_000;

export interface CheckTiming {
  name: string;
  /** performance.now() at start and end, in ms. */
  startedAt: number;
  endedAt: number;
}

export interface PreflightOptions {
  /** Root of the sysctl tree (tests use fixtures). Default '/proc/sys'. */
  procSysRoot?: string;
}

async function runOne(def: CheckDef, ctx: PreflightContext): Promise<CheckResult> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`did not finish within ${CHECK_TIMEOUT_MS / 1000} s`)), CHECK_TIMEOUT_MS);
    });
    // Promise.resolve().then: a synchronous throw becomes a rejection too.
    const verdict = await Promise.race([Promise.resolve().then(() => def.run(ctx)), timeout]);
    return { name: def.name, severity: verdict.severity, message: verdict.message, category: def.category };
  } catch (err) {
    const e = err as Error;
    return {
      name: def.name,
      severity: 'error',
      message: `the check itself failed (${e?.name ?? 'Error'}: ${e?.message ?? String(err)}); please report this with the host details`,
      category: def.category,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** runPreflight, also returning when each check started and ended. */
export async function runPreflightTimed(
  config: Config,
  options: PreflightOptions = {},
): Promise<{ report: PreflightReport; timings: CheckTiming[] }> {
  const ranAt = new Date();
  const ctx: PreflightContext = {
    config,
    proc: resolveProcessConfig(config),
    isRoot: process.getuid?.() === 0,
    procSysRoot: options.procSysRoot ?? '/proc/sys',
  };
  // All at once: no check depends on another's result, and an early failure
  // must not hide the later ones.
  const timings: CheckTiming[] = [];
  const results = await Promise.all(
    CHECKS.map(async (def) => {
      const startedAt = performance.now();
      const result = await runOne(def, ctx);
      timings.push({ name: def.name, startedAt, endedAt: performance.now() });
      return result;
    }),
  );
  timings.sort((a, b) => CHECKS.findIndex((c) => c.name === a.name) - CHECKS.findIndex((c) => c.name === b.name));
  return { report: new PreflightReport(results, ranAt), timings };
}

/**
 * Checks the host for everything procyard needs and everything that would
 * weaken the sandbox; resolves with every finding, never rejects.
 */
export async function runPreflight(config: Config): Promise<PreflightReport> {
  return (await runPreflightTimed(config)).report;
}
