// Input checks for WorkerSpec and BuildSpec: every message names the field.
import { stat } from 'node:fs/promises';
import path from 'node:path';
import type { BuildSpec, MountEntry, WorkerSpec } from '../backend.js';
import { cpuField, memoryField } from './limits.js';

export class SpecError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SpecError';
  }
}

const WORKER_ID = /^[A-Za-z0-9._-]{1,128}$/;
const ENV_KEY = /^[A-Za-z_][A-Za-z0-9_]*$/;

function fail(message: string): never {
  throw new SpecError(message);
}

function checkString(value: unknown, field: string, { required = false, nonEmpty = false } = {}): void {
  if (value === undefined && !required) return;
  if (typeof value !== 'string') fail(`${field} must be a string, got ${describe(value)}`);
  if (nonEmpty && value.length === 0) fail(`${field} must not be empty`);
  if (value.includes('\0')) fail(`${field} must not contain a NUL byte`);
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'string' ? JSON.stringify(value.slice(0, 40)) : typeof value;
}

/**
 * An environment entry or key as an error may show it: its name, cut at 40
 * characters, and never what follows an "=" (a value, maybe a secret, put in
 * the wrong place).
 */
function envName(text: string): string {
  const eq = text.indexOf('=');
  const name = eq < 0 ? text : text.slice(0, eq);
  return `${JSON.stringify(name.slice(0, 40))}${name.length > 40 ? ' (cut)' : ''}${eq < 0 ? '' : ' followed by "=" and more (not shown)'}`;
}

/** rVersion names a dir under rigBase: '../..' would pick any binary on the host. */
function checkVersion(value: unknown, field: string): void {
  checkString(value, field);
  if (typeof value === 'string' && (value.includes('/') || value === '.' || value === '..'))
    fail(`${field} must be a version like 4.4.1, not a path, got ${describe(value)}`);
}

function checkAbsolute(value: string, field: string): void {
  if (!path.posix.isAbsolute(value)) fail(`${field} must be an absolute path, got ${JSON.stringify(value)}`);
  if (value.split('/').includes('..')) fail(`${field} must not contain "..", got ${JSON.stringify(value)}`);
  if (path.posix.normalize(value) === '/') fail(`${field} must not be "/"`);
}

/** A host path the server binds or reads: absolute ('..' is resolved, as the host has it). */
function checkHostPath(value: unknown, field: string): void {
  if (typeof value === 'string' && value !== '' && !path.posix.isAbsolute(value))
    fail(`${field} must be an absolute host path, got ${JSON.stringify(value)}`);
}

function checkStringArray(value: unknown, field: string): void {
  if (!Array.isArray(value) || value.length === 0) fail(`${field} must be a non-empty array of strings`);
  value.forEach((v, i) => checkString(v, `${field}[${i}]`, { required: true }));
  checkString(value[0], `${field}[0]`, { required: true, nonEmpty: true });
}

function checkRecord(value: unknown, field: string, keyPattern?: RegExp): void {
  if (value === undefined) return;
  if (typeof value !== 'object' || value === null || Array.isArray(value))
    fail(`${field} must be an object of strings`);
  for (const [k, v] of Object.entries(value)) {
    if (keyPattern && !keyPattern.test(k)) fail(`${field} key ${envName(k)} is not a valid variable name`);
    checkString(k, `${field} key`);
    checkString(v, `${field}.${k}`, { required: true });
  }
}

function checkMounts(value: unknown, field: string): asserts value is MountEntry[] | undefined {
  if (value === undefined) return;
  if (!Array.isArray(value)) fail(`${field} must be an array of {source, target}`);
  value.forEach((m: unknown, i) => {
    if (typeof m !== 'object' || m === null) fail(`${field}[${i}] must be {source, target}`);
    const { source, target, readOnly } = m as Record<string, unknown>;
    checkString(source, `${field}[${i}].source`, { required: true, nonEmpty: true });
    checkHostPath(source, `${field}[${i}].source`);
    checkString(target, `${field}[${i}].target`, { required: true, nonEmpty: true });
    checkAbsolute(target as string, `${field}[${i}].target`);
    if (readOnly !== undefined && typeof readOnly !== 'boolean') fail(`${field}[${i}].readOnly must be a boolean`);
  });
}

async function checkExists(p: string, field: string, kind: 'dir' | 'any'): Promise<void> {
  let info;
  try {
    info = await stat(p);
  } catch {
    fail(`${field} ${JSON.stringify(p)} does not exist`);
  }
  if (kind === 'dir' && !info.isDirectory()) fail(`${field} ${JSON.stringify(p)} is not a directory`);
}

/** The checks of a WorkerSpec that need no I/O; throws a SpecError naming the field. */
export function checkWorkerSpec(spec: WorkerSpec): void {
  if (typeof spec !== 'object' || spec === null) fail('spec must be an object');
  checkString(spec.workerId, 'workerId', { required: true });
  if (!WORKER_ID.test(spec.workerId))
    fail(`workerId must be 1-128 characters from [A-Za-z0-9._-], got ${describe(spec.workerId)}`);
  checkString(spec.appId, 'appId', { required: true });
  checkString(spec.bundlePath, 'bundlePath', { required: true, nonEmpty: true });
  checkString(spec.workerMount, 'workerMount', { required: true, nonEmpty: true });
  checkAbsolute(spec.workerMount, 'workerMount');
  if (spec.cmd !== undefined) checkStringArray(spec.cmd, 'cmd');
  for (const field of ['libraryPath', 'libDir', 'transferDir', 'tokenDir', 'rProfilePath'] as const)
    checkString(spec[field], field);
  for (const field of ['bundlePath', 'libraryPath', 'libDir', 'transferDir', 'tokenDir'] as const) checkHostPath(spec[field], field);
  checkVersion(spec.rVersion, 'rVersion');
  checkRecord(spec.env, 'env', ENV_KEY);
  checkRecord(spec.labels, 'labels');
  checkMounts(spec.dataMounts, 'dataMounts');
  if (spec.memoryLimit !== undefined && spec.memoryLimit !== '') {
    const memory = memoryField(spec.memoryLimit, 'memoryLimit');
    if (typeof memory === 'string') fail(memory);
  }
  if (spec.cpuLimit !== undefined) {
    const cpus = cpuField(spec.cpuLimit, 'cpuLimit');
    if (typeof cpus === 'string') fail(cpus);
  }
  checkCommandLine(spec.cmd, spec.dataMounts ?? [], [spec.bundlePath, spec.workerMount, spec.libraryPath, spec.libDir, spec.transferDir, spec.tokenDir]);
}

/**
 * What bwrap's command line may take of a spec: its cmd and its mounts'
 * paths. The clone child execs bwrap while it still shares the server's
 * memory, and the kernel copies that command line into memory charged to
 * the worker's new cgroup first: a 5.8 MiB cmd under a 4 MiB limit had the
 * OOM killer end the child, and the server with it. Well under the 4 MiB
 * floor, with room for the mounts' real paths (resolved, up to 4 KiB each).
 */
const MAX_COMMAND_LINE = 1024 * 1024;

function checkCommandLine(cmd: readonly string[] | undefined, mounts: readonly MountEntry[], paths: readonly (string | undefined)[]): void {
  let bytes = 0;
  for (const s of [...(cmd ?? []), ...paths, ...mounts.flatMap((m) => [m.source, m.target])]) bytes += s === undefined ? 0 : Buffer.byteLength(s) + 1;
  // A resolved source may be longer than the given one: PATH_MAX at most.
  bytes += mounts.length * 4096;
  if (bytes > MAX_COMMAND_LINE)
    fail(`cmd and the mounts' paths must total at most 1 MiB (${MAX_COMMAND_LINE} bytes), got ${bytes} (with ${mounts.length} mounts at 4 KiB each for their resolved paths)`);
}

/** A host path a spec names, checked by the spawn call itself (NativeSpawnOptions.checkPaths). */
export interface PathCheck {
  path: string;
  directory: boolean;
  /** The spec's field, for the error. */
  field: string;
}

/** The host paths of a checked WorkerSpec that must exist. */
export function workerPathChecks(spec: WorkerSpec): PathCheck[] {
  const checks: PathCheck[] = [{ path: spec.bundlePath, directory: true, field: 'bundlePath' }];
  for (const field of ['libraryPath', 'libDir', 'transferDir', 'tokenDir'] as const)
    if (spec[field]) checks.push({ path: spec[field]!, directory: true, field });
  (spec.dataMounts ?? []).forEach((m, i) => checks.push({ path: m.source, directory: false, field: `dataMounts[${i}].source` }));
  return checks;
}

/** A spawn's failed path check as the SpecError naming the field; any other error as it is. */
export function pathCheckError(err: unknown, checks: readonly PathCheck[]): unknown {
  const e = err as { syscall?: unknown; pathIndex?: unknown } | null;
  const check = typeof e?.pathIndex === 'number' ? checks[e.pathIndex] : undefined;
  if (!check) return err;
  const what = `${check.field} ${JSON.stringify(check.path)}`;
  return new SpecError(e?.syscall === 'S_ISDIR' ? `${what} is not a directory` : `${what} does not exist`);
}

/** Checks a BuildSpec; rejects with a SpecError naming the field. */
export async function validateBuildSpec(spec: BuildSpec): Promise<void> {
  if (typeof spec !== 'object' || spec === null) fail('spec must be an object');
  checkString(spec.appId, 'appId', { required: true });
  checkString(spec.bundleId, 'bundleId', { required: true });
  checkStringArray(spec.cmd, 'cmd');
  checkVersion(spec.rVersion, 'rVersion');
  if (spec.env !== undefined) {
    if (!Array.isArray(spec.env)) fail('env must be an array of "KEY=VALUE" strings');
    spec.env.forEach((e, i) => {
      checkString(e, `env[${i}]`, { required: true });
      const key = e.slice(0, e.indexOf('='));
      if (!e.includes('='))
        fail(`env[${i}] must be "KEY=VALUE": it has no "=" (${e.length} characters, not shown: it may be a secret)`);
      if (!ENV_KEY.test(key)) fail(`env[${i}] must be "KEY=VALUE": its KEY ${envName(key)} is not a valid variable name`);
    });
  }
  if (spec.logWriter !== undefined && typeof spec.logWriter !== 'function') fail('logWriter must be a function');
  checkRecord(spec.labels, 'labels');
  checkMounts(spec.mounts, 'mounts');
  checkCommandLine(spec.cmd, spec.mounts ?? [], []);
  await Promise.all((spec.mounts ?? []).map((m, i) => checkExists(m.source, `mounts[${i}].source`, 'any')));
}
