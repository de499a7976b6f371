// Configuration types and every default, in one place, and the TOML loader.
import { readFileSync } from 'node:fs';
import { parse as parseToml, TomlError } from 'smol-toml';

export interface ProcessConfig {
  /** Path of the bubblewrap binary. Default '/usr/bin/bwrap'. */
  bwrapPath?: string;
  /** R used when a spec names no version. Default '/usr/bin/R'. */
  rPath?: string;
  /** Where rig keeps R installs (`<rigBase>/<version>/bin/R`). Default '/opt/R'. */
  rigBase?: string;
  /** A compiled BPF program, 'builtin' for procyard's own filter, or '' for none. Default ''. */
  seccompProfile?: string;
  /** First worker port (inclusive). Default 10000. */
  portRangeStart?: number;
  /** Last worker port (inclusive). Default 10999. */
  portRangeEnd?: number;
  /** First worker UID (inclusive). Default 60000. */
  workerUidStart?: number;
  /** Last worker UID (inclusive). Default 60999. */
  workerUidEnd?: number;
  /** GID of every worker. Default 65534. */
  workerGid?: number;
  /** Skip the cloud-metadata reachability checks. Default false. */
  skipMetadataCheck?: boolean;
  /** Target of the cloud_metadata and worker_egress checks. Default '169.254.169.254:80'. */
  metadataAddr?: string;
  /** How long stop() waits after SIGTERM before SIGKILL. Default 10000. */
  stopGraceMs?: number;
  /** Log lines kept per worker. Default 10000. */
  logLines?: number;
  /** Cap of each worker's private /tmp in bytes; 0 = none. Default 1 GiB. */
  tmpSizeBytes?: number;
  /**
   * Per-worker limits through a cgroup of its own (SPEC §8): 'auto' enforces
   * them where the host allows and runs workers unlimited where not
   * (preflight says which); 'required' makes spawn and build reject when they
   * cannot be enforced; 'off' never sets them. Default 'auto'.
   */
  resourceLimits?: 'auto' | 'required' | 'off';
  /**
   * Absolute cgroup path (inside the hierarchy, e.g. '/procyard.slice') under
   * which workers' cgroups are made; '' = the server's own cgroup, as a
   * delegated subtree (systemd: Delegate=yes). Default ''.
   */
  cgroupParent?: string;
  /** Processes (tasks) per worker; 0 = no cap. Default 1024. */
  pidsLimit?: number;
}

export interface Config {
  process?: ProcessConfig;
  server?: { defaultMemoryLimit?: string; defaultCpuLimit?: number };
  redis?: { url: string };
  openbao?: { address: string };
  /** Accepted as an alias of `openbao`. */
  vault?: { address: string };
  database?: { driver: 'sqlite' | 'postgres'; url?: string; path?: string };
  storage?: { bundleWorkerPath?: string };
}

export type ResolvedProcessConfig = Required<ProcessConfig>;

export const PROCESS_DEFAULTS: ResolvedProcessConfig = Object.freeze({
  bwrapPath: '/usr/bin/bwrap',
  rPath: '/usr/bin/R',
  rigBase: '/opt/R',
  seccompProfile: '',
  portRangeStart: 10000,
  portRangeEnd: 10999,
  workerUidStart: 60000,
  workerUidEnd: 60999,
  workerGid: 65534,
  skipMetadataCheck: false,
  metadataAddr: '169.254.169.254:80',
  stopGraceMs: 10000,
  logLines: 10000,
  tmpSizeBytes: 1024 ** 3,
  resourceLimits: 'auto',
  cgroupParent: '',
  pidsLimit: 1024,
});

export const DEFAULT_BUNDLE_WORKER_PATH = '/app';

/** The process section with every default filled in. */
export function resolveProcessConfig(config: Config): ResolvedProcessConfig {
  const given = Object.fromEntries(
    Object.entries(config.process ?? {}).filter(([, v]) => v !== undefined),
  ) as ProcessConfig;
  return { ...PROCESS_DEFAULTS, ...given };
}

/** OpenBao's address under either name. */
export function openbaoAddress(config: Config): string | undefined {
  return config.openbao?.address ?? config.vault?.address;
}

// ---------------------------------------------------------------------------
// TOML loading: the original server's snake_case sections and keys.

/** A config file that cannot be read, parsed or mapped; the message names the file and key. */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    message: string,
    /** The config file. */
    readonly file: string,
    /** `section.key` when one key is at fault. */
    readonly key?: string,
  ) {
    super(message);
  }
}

type FieldType = 'string' | 'integer' | 'number' | 'boolean';

/** [process] key → ProcessConfig field, and the TOML type it must have. */
const PROCESS_KEYS: Record<string, [keyof ProcessConfig, FieldType]> = {
  bwrap_path: ['bwrapPath', 'string'],
  r_path: ['rPath', 'string'],
  rig_base: ['rigBase', 'string'],
  seccomp_profile: ['seccompProfile', 'string'],
  port_range_start: ['portRangeStart', 'integer'],
  port_range_end: ['portRangeEnd', 'integer'],
  worker_uid_range_start: ['workerUidStart', 'integer'],
  worker_uid_range_end: ['workerUidEnd', 'integer'],
  worker_gid: ['workerGid', 'integer'],
  skip_metadata_check: ['skipMetadataCheck', 'boolean'],
  metadata_addr: ['metadataAddr', 'string'],
  stop_grace_ms: ['stopGraceMs', 'integer'],
  log_lines: ['logLines', 'integer'],
  tmp_size_bytes: ['tmpSizeBytes', 'integer'],
  resource_limits: ['resourceLimits', 'string'],
  cgroup_parent: ['cgroupParent', 'string'],
  pids_limit: ['pidsLimit', 'integer'],
};

function typeOk(value: unknown, type: FieldType): boolean {
  switch (type) {
    case 'string':
      return typeof value === 'string';
    case 'boolean':
      return typeof value === 'boolean';
    case 'number':
      return typeof value === 'number' && Number.isFinite(value);
    case 'integer':
      return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
  }
}

const TYPE_NAMES: Record<FieldType, string> = {
  string: 'a string',
  integer: 'a non-negative integer',
  number: 'a number',
  boolean: 'true or false',
};

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Date) return 'a date';
  if (value !== null && typeof value === 'object') return 'a table';
  return `${typeof value} ${JSON.stringify(value)}`;
}

/** Closest known key within edit distance 3, for "did you mean". */
function closest(key: string, known: string[]): string | undefined {
  const distance = (a: string, b: string): number => {
    let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
    for (let i = 1; i <= a.length; i++) {
      const row = [i];
      for (let j = 1; j <= b.length; j++)
        row[j] = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = row;
    }
    return prev[b.length]!;
  };
  let best: string | undefined;
  let bestDistance = 4;
  for (const k of known) {
    const d = distance(key, k);
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best;
}

/** Reads `section` as a table (absent → undefined). */
function table(doc: Record<string, unknown>, section: string, file: string): Record<string, unknown> | undefined {
  const value = doc[section];
  if (value === undefined) return undefined;
  if (value === null || typeof value !== 'object' || Array.isArray(value) || value instanceof Date)
    throw new ConfigError(`[${section}] in ${file} must be a table, got ${describe(value)}`, file, section);
  return value as Record<string, unknown>;
}

/** One typed key of a section; wrong types throw naming the key and the file. */
function field<T>(t: Record<string, unknown>, section: string, key: string, type: FieldType, file: string): T | undefined {
  const value = t[key];
  if (value === undefined) return undefined;
  if (!typeOk(value, type))
    throw new ConfigError(
      `${section}.${key} in ${file} must be ${TYPE_NAMES[type]}, got ${describe(value)}`,
      file,
      `${section}.${key}`,
    );
  return value as T;
}

function required<T>(value: T | undefined, section: string, key: string, file: string): T {
  if (value === undefined)
    throw new ConfigError(`[${section}] in ${file} needs ${key}`, file, `${section}.${key}`);
  return value;
}

/**
 * Maps a parsed TOML document to a Config with every default applied.
 * Unknown keys in [process] are errors (a typo there silently weakens the
 * sandbox); other sections belong to the wider server and may hold more.
 */
export function configFromToml(doc: Record<string, unknown>, file = '<config>'): Config {
  const config: Config = {};

  const proc = table(doc, 'process', file) ?? {};
  const processConfig: ProcessConfig = {};
  for (const [key, value] of Object.entries(proc)) {
    const spec = PROCESS_KEYS[key];
    if (!spec) {
      const hint = closest(key, Object.keys(PROCESS_KEYS));
      throw new ConfigError(
        `unknown key "${key}" in [process] of ${file}` +
          (hint ? ` (did you mean "${hint}"?)` : `; known keys: ${Object.keys(PROCESS_KEYS).join(', ')}`),
        file,
        `process.${key}`,
      );
    }
    const [name, type] = spec;
    (processConfig as Record<string, unknown>)[name] = field(proc, 'process', key, type, file) ?? value;
  }
  config.process = resolveProcessConfig({ process: processConfig });

  const server = table(doc, 'server', file);
  if (server) {
    const defaultMemoryLimit = field<string>(server, 'server', 'default_memory_limit', 'string', file);
    const defaultCpuLimit = field<number>(server, 'server', 'default_cpu_limit', 'number', file);
    config.server = {
      ...(defaultMemoryLimit !== undefined ? { defaultMemoryLimit } : {}),
      ...(defaultCpuLimit !== undefined ? { defaultCpuLimit } : {}),
    };
  }

  const redis = table(doc, 'redis', file);
  if (redis) config.redis = { url: required(field<string>(redis, 'redis', 'url', 'string', file), 'redis', 'url', file) };

  // [openbao] is the current name, [vault] the older one; both map to `openbao`.
  for (const section of ['vault', 'openbao']) {
    const t = table(doc, section, file);
    if (t)
      config.openbao = {
        address: required(field<string>(t, section, 'address', 'string', file), section, 'address', file),
      };
  }

  const database = table(doc, 'database', file);
  if (database) {
    const driver = field<string>(database, 'database', 'driver', 'string', file) ?? 'sqlite';
    if (driver !== 'sqlite' && driver !== 'postgres')
      throw new ConfigError(
        `database.driver in ${file} must be "sqlite" or "postgres", got ${JSON.stringify(driver)}`,
        file,
        'database.driver',
      );
    const url = field<string>(database, 'database', 'url', 'string', file);
    const dbPath = field<string>(database, 'database', 'path', 'string', file);
    config.database = { driver, ...(url !== undefined ? { url } : {}), ...(dbPath !== undefined ? { path: dbPath } : {}) };
  }

  const storage = table(doc, 'storage', file);
  config.storage = {
    bundleWorkerPath:
      (storage && field<string>(storage, 'storage', 'bundle_worker_path', 'string', file)) ?? DEFAULT_BUNDLE_WORKER_PATH,
  };
  return config;
}

/** Reads a TOML config file (see configFromToml). Throws ConfigError naming the file. */
export function loadConfig(file: string): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`, file);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parseToml(text);
  } catch (err) {
    const where = err instanceof TomlError ? `:${err.line}:${err.column}` : '';
    throw new ConfigError(`invalid TOML in ${file}${where}: ${(err as Error).message.split('\n')[0]}`, file);
  }
  return configFromToml(doc, file);
}
