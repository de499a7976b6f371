// Per-worker limits as values: the config and spec fields checked and turned
// into the numbers the kernel takes. Pure (no I/O): tests need no cgroup.
import path from 'node:path';
import type { Config } from '../config.js';
import { memoryFloorProblem, parseMemorySize, resolveProcessConfig } from '../config.js';

export type LimitsMode = 'auto' | 'required' | 'off';

/** The limits part of the config, checked, with every default applied. */
export interface LimitsConfig {
  mode: LimitsMode;
  /** '' = the server's own cgroup. */
  cgroupParent: string;
  /** 0 = no cap. */
  pidsLimit: number;
  /** server.defaultMemoryLimit in bytes; 0 = none. */
  memoryBytes: number;
  /** server.defaultCpuLimit in CPUs; 0 = none. */
  cpus: number;
}

/** The limits one worker or build runs under; 0 = none. */
export interface Limits {
  memoryBytes: number;
  cpus: number;
  pids: number;
}

/** The memory sizes of specs and config: one parser (config.ts). */
export { parseMemorySize };

/** The most CPUs a limit may give: past it the kernel's CFS quota overflows (its error named host paths). */
export const MAX_CPUS = 4096;

/** A non-negative, finite number of CPUs (0 = none). */
export function isCpuCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value) && value >= 0;
}

const MEMORY_FORMS = 'a size such as "512k", "64m", "2g" or plain bytes ("0" for none)';

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
  if (typeof value === 'number' || typeof value === 'boolean' || value === null) return String(value);
  return typeof value;
}

/** The memory size in a field, or an error message naming the field. */
export function memoryField(value: unknown, field: string): number | string {
  if (typeof value !== 'string') return `${field} must be ${MEMORY_FORMS}, got ${show(value)}`;
  const bytes = parseMemorySize(value);
  if (bytes === null) return `${field} must be ${MEMORY_FORMS}, got ${show(value)}`;
  return memoryFloorProblem(bytes, field, show(value)) ?? bytes;
}

/** The CPU count in a field, or an error message naming the field. */
export function cpuField(value: unknown, field: string): number | string {
  if (!isCpuCount(value)) return `${field} must be a non-negative number of CPUs such as 0.5 or 2 (0 for none), got ${show(value)}`;
  return value <= MAX_CPUS ? value : `${field} must be at most ${MAX_CPUS} CPUs, got ${show(value)}`;
}

/**
 * cgroupParent names a cgroup inside the hierarchy: absolute, clean, and
 * without '..', which would climb out of the subtree it was meant to stay in.
 */
export function cgroupParentProblem(value: unknown): string | null {
  const field = 'process.cgroupParent (TOML cgroup_parent)';
  if (typeof value !== 'string') return `${field} must be a string, got ${show(value)}`;
  if (value === '') return null;
  const fix = 'give an absolute cgroup path such as "/procyard.slice", or "" for the server\'s own cgroup';
  if (value.includes('\0') || value.includes('\n')) return `${field} must not contain NUL or newline characters: ${fix}`;
  if (!value.startsWith('/')) return `${field} must be absolute, got ${show(value)}: ${fix}`;
  if (value.split('/').some((part) => part === '..' || part === '.'))
    return `${field} must not contain ".." or "." components, got ${show(value)}: ${fix}`;
  if (path.posix.normalize(value) !== value && `${path.posix.normalize(value)}/` !== value)
    return `${field} must be a clean path (no "//"), got ${show(value)}: ${fix}`;
  return null;
}

/** The limits settings of a config, checked; throws a RangeError naming the field and the fix. */
export function resolveLimitsConfig(config: Config): LimitsConfig {
  const proc = resolveProcessConfig(config);
  const mode = proc.resourceLimits;
  if (mode !== 'auto' && mode !== 'required' && mode !== 'off')
    throw new RangeError(`process.resourceLimits (TOML resource_limits) must be "auto", "required" or "off", got ${show(mode)}`);
  const parentProblem = cgroupParentProblem(proc.cgroupParent);
  if (parentProblem) throw new RangeError(parentProblem);
  if (!Number.isSafeInteger(proc.pidsLimit) || proc.pidsLimit < 0)
    throw new RangeError(`process.pidsLimit (TOML pids_limit) must be a non-negative integer (0 for no cap), got ${show(proc.pidsLimit)}`);
  const server = config.server ?? {};
  let memoryBytes = 0;
  if (server.defaultMemoryLimit !== undefined && server.defaultMemoryLimit !== '') {
    const m = memoryField(server.defaultMemoryLimit, 'server.defaultMemoryLimit (TOML default_memory_limit)');
    if (typeof m === 'string') throw new RangeError(m);
    memoryBytes = m;
  }
  let cpus = 0;
  if (server.defaultCpuLimit !== undefined) {
    const c = cpuField(server.defaultCpuLimit, 'server.defaultCpuLimit (TOML default_cpu_limit)');
    if (typeof c === 'string') throw new RangeError(c);
    cpus = c;
  }
  return { mode, cgroupParent: proc.cgroupParent, pidsLimit: proc.pidsLimit, memoryBytes, cpus };
}

/** A worker's limits: the spec's own, else the server's defaults. The spec was checked (validate.ts). */
export function workerLimits(spec: { memoryLimit?: string; cpuLimit?: number }, config: LimitsConfig): Limits {
  const memory = spec.memoryLimit === undefined || spec.memoryLimit === '' ? null : parseMemorySize(spec.memoryLimit);
  return {
    memoryBytes: memory ?? config.memoryBytes,
    cpus: spec.cpuLimit ?? config.cpus,
    pids: config.pidsLimit,
  };
}

/** The defaults: what a build gets, and what prepared cgroups are made with. */
export function defaultLimits(config: LimitsConfig): Limits {
  return { memoryBytes: config.memoryBytes, cpus: config.cpus, pids: config.pidsLimit };
}

/** The CFS period, 100 ms, as the kernel's default. */
export const CPU_PERIOD_US = 100_000;

/** CPUs as a CFS quota per period; the kernel takes no quota under 1 ms. */
export function cpuQuotaUs(cpus: number): number {
  return Math.max(1000, Math.round(cpus * CPU_PERIOD_US));
}
