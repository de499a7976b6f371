// Configuration types and every default, in one place, and the TOML loader.
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { parseAddressRules } from './process/address-rules.js';
import { networkConfigProblem, type NetworkPolicyMode } from './process/network-policy.js';

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
  /**
   * Server memory the kept log lines of one worker may take, in bytes, counted
   * as V8 holds them (two bytes a character for non-ASCII text, plus a small
   * overhead per line). Default 16 MiB: a thousand flooding workers fit in one
   * server. The newest line is always kept (at most 128 KiB).
   */
  logBytes?: number;
  /** Cap of each worker's private /tmp in bytes; 0 = none. Default 1 GiB. */
  tmpSizeBytes?: number;
  /**
   * Landlock network policy of workers and builds (SPEC §8): 'auto' enforces
   * what the kernel supports, 'required' makes spawn and build reject on a
   * kernel without all of it, 'off' leaves the network as it is. Default 'auto'.
   */
  networkPolicy?: NetworkPolicyMode;
  /** TCP ports workers and builds may connect to (1-65535). Absent (default) = any; [] = none. */
  allowedConnectPorts?: number[];
  /**
   * Destinations workers and builds may not connect or send to (SPEC §11):
   * "ip", "ip:port", "cidr", "cidr:port", "[v6]:port" or "[v6/len]:port", a
   * port being 1-65535 or a range a-b. Always added: the cloud metadata
   * addresses and the server's own Redis, OpenBao and database. Default [].
   */
  deniedConnect?: string[];
  /**
   * When set, the only destinations workers and builds may connect or send
   * to (same forms as deniedConnect, which still applies). Absent (default) =
   * any. allowedConnectPorts narrows TCP further.
   */
  allowedConnect?: string[];
  /**
   * Without Redis: 'host' claims ports and UIDs through kernel-held locks on
   * files in runtimeDir, shared by every backend and CLI on the host; 'memory'
   * keeps them in this process only (two servers on one host would share
   * UIDs). Default 'host'.
   */
  allocator?: 'host' | 'memory';
  /**
   * Directory of the host-wide allocator's lock files; every process that
   * must not share ports or UIDs uses the same one. Created 0700. Default
   * '/run/procyard' as root, else `$XDG_RUNTIME_DIR/procyard`, else
   * `<os.tmpdir()>/procyard-<uid>`.
   */
  runtimeDir?: string;
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
  /**
   * Sandboxes started ahead, running R with `preload` loaded, that serve the
   * first request of an R app in a fraction of R's start-up (SPEC §12;
   * TOML `[[process.warm_pool]]` with size, preload, r_version). Default none.
   */
  warmPool?: WarmPoolEntry[];
}

/** One kind of warm sandbox: `size` of them kept ready. */
export interface WarmPoolEntry {
  /** How many to keep started (0-64). */
  size: number;
  /** R packages loaded ahead. Default ['shiny']. */
  preload?: string[];
  /** The R version (rig) they run; '' or absent = process.rPath's. */
  rVersion?: string;
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

/** Every field filled in, except allowedConnectPorts and allowedConnect, whose absence means "any". */
export type ResolvedProcessConfig = Required<Omit<ProcessConfig, 'allowedConnectPorts' | 'allowedConnect'>> &
  Pick<ProcessConfig, 'allowedConnectPorts' | 'allowedConnect'>;

/** The host-wide allocator's default directory for this user. */
export function defaultRuntimeDir(): string {
  const uid = process.geteuid?.() ?? 0;
  if (uid === 0) return '/run/procyard';
  const xdg = process.env.XDG_RUNTIME_DIR;
  if (xdg && path.isAbsolute(xdg)) return path.join(xdg, 'procyard');
  return path.join(tmpdir(), `procyard-${uid}`);
}

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
  logBytes: 16 * 1024 * 1024,
  tmpSizeBytes: 1024 ** 3,
  networkPolicy: 'auto',
  deniedConnect: [],
  allocator: 'host',
  runtimeDir: defaultRuntimeDir(),
  resourceLimits: 'auto',
  cgroupParent: '',
  pidsLimit: 1024,
  warmPool: [],
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

/**
 * A configuration that cannot be read, parsed or used; the message names the
 * file (when there is one), the key and the fix.
 */
export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  constructor(
    message: string,
    /** The config file; undefined for a Config given in code. */
    readonly file?: string,
    /** `section.key` when one key is at fault: TOML names from a file, field names otherwise. */
    readonly key?: string,
  ) {
    super(message);
  }
}

type FieldType = 'string' | 'integer' | 'number' | 'boolean' | 'ports' | 'strings' | 'tables';

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
  log_bytes: ['logBytes', 'integer'],
  tmp_size_bytes: ['tmpSizeBytes', 'integer'],
  network_policy: ['networkPolicy', 'string'],
  allowed_connect_ports: ['allowedConnectPorts', 'ports'],
  denied_connect: ['deniedConnect', 'strings'],
  allowed_connect: ['allowedConnect', 'strings'],
  allocator: ['allocator', 'string'],
  runtime_dir: ['runtimeDir', 'string'],
  resource_limits: ['resourceLimits', 'string'],
  cgroup_parent: ['cgroupParent', 'string'],
  pids_limit: ['pidsLimit', 'integer'],
  warm_pool: ['warmPool', 'tables'],
};

/** [[process.warm_pool]] key → WarmPoolEntry field. */
const WARM_POOL_KEYS: Record<string, [keyof WarmPoolEntry, FieldType]> = {
  size: ['size', 'integer'],
  preload: ['preload', 'strings'],
  r_version: ['rVersion', 'string'],
};

/** The other sections procyard reads: TOML key → Config field and type. */
const SECTION_KEYS: Record<string, Record<string, [string, FieldType]>> = {
  server: { default_memory_limit: ['defaultMemoryLimit', 'string'], default_cpu_limit: ['defaultCpuLimit', 'number'] },
  redis: { url: ['url', 'string'] },
  openbao: { address: ['address', 'string'] },
  vault: { address: ['address', 'string'] },
  database: { driver: ['driver', 'string'], url: ['url', 'string'], path: ['path', 'string'] },
  storage: { bundle_worker_path: ['bundleWorkerPath', 'string'] },
};

/**
 * Keys of the hosting server's own config file that procyard does not read:
 * accepted (the file is the server's), any value. Everything else is a typo
 * until proven otherwise.
 */
const SERVER_KEYS: Record<string, string[]> = {
  server: [
    'bind', 'token', 'management_bind', 'session_secret', 'external_url', 'shutdown_timeout', 'drain_timeout',
    'log_level', 'trusted_proxies', 'backend', 'skip_preflight', 'skip_docker_preflight', 'bootstrap_token', 'worker_env',
  ],
  docker: [
    'socket', 'image', 'shiny_port', 'rv_version', 'pak_version', 'service_network', 'runtime', 'runtime_defaults',
    'default_memory_limit', 'default_cpu_limit', 'store_retention',
  ],
  storage: ['bundle_server_path', 'bundle_retention', 'max_bundle_size', 'soft_delete_retention', 'store_retention', 'data_mounts'],
  database: ['vault_mount', 'vault_role', 'vault_db_connection', 'board_storage'],
  proxy: [
    'ws_cache_ttl', 'health_interval', 'worker_start_timeout', 'max_workers', 'log_retention', 'session_idle_ttl',
    'idle_worker_timeout', 'http_forward_timeout', 'max_cpu_limit', 'transfer_timeout', 'session_max_lifetime', 'session_store',
  ],
  redis: ['key_prefix'],
  oidc: ['issuer_url', 'issuer_discovery_url', 'client_id', 'client_secret', 'cookie_max_age', 'initial_admin', 'default_role'],
  openbao: ['admin_token', 'role_id', 'token_ttl', 'jwt_auth_path', 'token_file', 'skip_policy_scope_check', 'services'],
  vault: ['admin_token', 'role_id', 'token_ttl', 'jwt_auth_path', 'token_file', 'skip_policy_scope_check', 'services'],
  audit: ['path'],
  telemetry: ['metrics_enabled', 'otlp_endpoint'],
  update: ['schedule', 'channel', 'watch_period', 'repo', 'alt_bind_range', 'drain_idle_wait'],
};

/** Every known key of a section (procyard's and the server's). */
function knownKeys(section: string): string[] {
  const own = section === 'process' ? Object.keys(PROCESS_KEYS) : Object.keys(SECTION_KEYS[section] ?? {});
  return [...own, ...(SERVER_KEYS[section] ?? [])];
}

const KNOWN_SECTIONS = [...new Set(['process', ...Object.keys(SECTION_KEYS), ...Object.keys(SERVER_KEYS)])];

/** `process.portRangeStart` → `process.port_range_start`, for every field procyard reads. */
const TOML_NAMES: Map<string, string> = new Map([
  ...Object.entries(PROCESS_KEYS).map(([toml, [field]]): [string, string] => [`process.${field}`, `process.${toml}`]),
  ...Object.entries(SECTION_KEYS).flatMap(([section, keys]) =>
    Object.entries(keys).map(([toml, [field]]): [string, string] => [`${section}.${field}`, `${section}.${toml}`]),
  ),
]);

/**
 * Rewrites Config field names in a message (`process.portRangeStart`) to the
 * TOML names a config file's reader knows (`process.port_range_start`).
 */
export function withTomlNames(message: string): string {
  return message.replace(/\b(process|server|redis|openbao|vault|database|storage)\.([A-Za-z][A-Za-z0-9]*)\b/g, (name) => TOML_NAMES.get(name) ?? name);
}

const MEMORY_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/**
 * The smallest memory limit a sandbox gets (0 is none). Below a few pages
 * the spawn's clone child, which shares the server's memory until it execs
 * bwrap, is OOM-killed in its new cgroup, and the kernel kills every process
 * sharing that memory with it: the server. Nothing runs in 4 MiB anyway.
 */
export const MIN_MEMORY_BYTES = 4 * 1024 ** 2;

/** Why a memory limit in bytes is refused, or null: 0 (none) or at least MIN_MEMORY_BYTES. */
export function memoryFloorProblem(bytes: number, field: string, given: string): string | null {
  if (bytes === 0 || bytes >= MIN_MEMORY_BYTES) return null;
  return `${field} must be 0 (no limit) or at least 4m (${MIN_MEMORY_BYTES} bytes), got ${given}: a sandbox cannot start under less`;
}

/**
 * A memory size as the server's config and specs write it: plain bytes, or a
 * number with a binary unit k, m, g or t (case-insensitive, an optional
 * trailing b or ib): '64m', '2g', '512k', '1.5G', '1048576'. Null when malformed.
 */
export function parseMemorySize(text: string): number | null {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$/i.exec(text);
  if (!m) return null;
  const [, number, unit, suffix] = m;
  if (unit === '' && suffix?.toLowerCase() === 'ib') return null;
  const bytes = Math.floor(Number(number) * MEMORY_UNITS[unit!.toLowerCase()]!);
  return Number.isSafeInteger(bytes) ? bytes : null;
}

/**
 * Checks what the types alone cannot: ranges, limits, paths, choices.
 * Throws ConfigError naming the key in `names` (TOML names for a file's
 * reader, Config field names for code) and the file when there is one.
 */
export function checkConfig(config: Config, names: 'toml' | 'field' = 'field', file?: string): void {
  // A file's names were checked as it was read (checkNames); code has only the types, and only in literals.
  if (names === 'field') checkFieldNames(config);
  const p = resolveProcessConfig(config);
  const n = (field: string) => (names === 'toml' ? withTomlNames(field) : field);
  const where = file ? ` in ${file}` : '';
  const fail = (field: string, message: string): never => {
    throw new ConfigError(message, file, n(field));
  };
  if (!Number.isSafeInteger(p.portRangeStart) || !Number.isSafeInteger(p.portRangeEnd) || p.portRangeStart < 1 || p.portRangeEnd > 65535 || p.portRangeStart > p.portRangeEnd)
    fail(
      'process.portRangeStart',
      `${n('process.portRangeStart')} and ${n('process.portRangeEnd')}${where} must give a range within 1-65535 ` +
        `(start <= end), got ${p.portRangeStart}-${p.portRangeEnd}`,
    );
  if (!Number.isSafeInteger(p.workerUidStart) || !Number.isSafeInteger(p.workerUidEnd) || p.workerUidStart < 1 || p.workerUidEnd >= 2 ** 32 - 1 || p.workerUidStart > p.workerUidEnd)
    fail(
      'process.workerUidStart',
      `${n('process.workerUidStart')} and ${n('process.workerUidEnd')}${where} must give a non-empty range of ` +
        `non-root UIDs (1 to 4294967294, start <= end), got ${p.workerUidStart}-${p.workerUidEnd}`,
    );
  // Group 0 is root's: files of root:root with group access would be a worker's.
  if (!Number.isSafeInteger(p.workerGid) || p.workerGid < 1 || p.workerGid >= 2 ** 32 - 1)
    fail('process.workerGid', `${n('process.workerGid')}${where} must be a group other than root's (1 to 4294967294), got ${String(p.workerGid)}`);
  for (const key of ['logLines', 'logBytes'] as const)
    if (!Number.isSafeInteger(p[key]) || p[key] < 1)
      fail(`process.${key}`, `${n(`process.${key}`)}${where} must be a positive integer, got ${String(p[key])}`);
  if (p.allocator !== 'host' && p.allocator !== 'memory')
    fail('process.allocator', `${n('process.allocator')}${where} must be "host" or "memory", got ${JSON.stringify(p.allocator)}`);
  if (typeof p.runtimeDir !== 'string' || !path.isAbsolute(p.runtimeDir))
    fail('process.runtimeDir', `${n('process.runtimeDir')}${where} must be an absolute path, got ${JSON.stringify(p.runtimeDir)}`);
  for (const key of ['deniedConnect', 'allowedConnect'] as const) {
    if (key === 'allowedConnect' && p[key] === undefined) continue;
    try {
      parseAddressRules(p[key], n(`process.${key}`));
    } catch (err) {
      // `process.denied_connect[2] "…" …`: the file goes after the name and index.
      const message = (err as Error).message;
      const head = /^\S+/.exec(message)![0];
      const rest = message.slice(head.length);
      fail(`process.${key}`, where ? `${head}${where}${head.endsWith(']') ? ':' : ''}${rest}` : message);
    }
  }
  checkWarmPool(p.warmPool, n, where, fail);
  const memory = config.server?.defaultMemoryLimit;
  if (memory !== undefined && (typeof memory !== 'string' || parseMemorySize(memory) === null))
    fail(
      'server.defaultMemoryLimit',
      `${n('server.defaultMemoryLimit')}${where} must be a size like "512k", "64m" or "2g" (binary units) or plain bytes, ` +
        `got ${JSON.stringify(memory)}`,
    );
  else if (memory !== undefined) {
    const floor = memoryFloorProblem(parseMemorySize(memory)!, `${n('server.defaultMemoryLimit')}${where}`, JSON.stringify(memory));
    if (floor) fail('server.defaultMemoryLimit', floor);
  }
  const cpu = config.server?.defaultCpuLimit;
  if (cpu !== undefined && !(typeof cpu === 'number' && Number.isFinite(cpu) && cpu >= 0 && cpu <= 4096))
    fail(
      'server.defaultCpuLimit',
      `${n('server.defaultCpuLimit')}${where} must be a number of CPUs from 0 to 4096 (0.5 = half a CPU), got ${String(cpu)}`,
    );
  const bundleWorkerPath = config.storage?.bundleWorkerPath;
  if (bundleWorkerPath !== undefined && (typeof bundleWorkerPath !== 'string' || !path.isAbsolute(bundleWorkerPath)))
    fail(
      'storage.bundleWorkerPath',
      `${n('storage.bundleWorkerPath')}${where} must be an absolute path, got ${JSON.stringify(bundleWorkerPath)}`,
    );
}

/** The fields of each section of a Config given in code. */
const CONFIG_FIELDS: Record<string, readonly string[]> = {
  process: Object.values(PROCESS_KEYS).map(([field]) => field),
  ...Object.fromEntries(Object.entries(SECTION_KEYS).map(([section, keys]) => [section, Object.values(keys).map(([field]) => field)])),
};

/**
 * Every section and field of a Config given in code must be known, as in a
 * file: a misspelled `seccompProfile` would otherwise run without a filter,
 * a misspelled `process` on the default ranges. The message names the nearest
 * valid name, also for a file's snake_case name used in code.
 */
function checkFieldNames(config: Config): void {
  if (config === null || typeof config !== 'object' || Array.isArray(config))
    throw new ConfigError(`the config must be an object ({ process?, server?, redis?, ... }), got ${describe(config)}`);
  const sections = Object.keys(CONFIG_FIELDS);
  for (const [section, value] of Object.entries(config)) {
    if (!sections.includes(section)) {
      const hint = closest(section, sections);
      throw new ConfigError(
        `unknown config section "${section}"` + (hint ? ` (did you mean "${hint}"?)` : `; valid: ${sections.join(', ')}`),
        undefined,
        section,
      );
    }
    if (value === undefined) continue;
    if (value === null || typeof value !== 'object' || Array.isArray(value))
      throw new ConfigError(`config.${section} must be an object, got ${describe(value)}`, undefined, section);
    const fields = CONFIG_FIELDS[section]!;
    for (const key of Object.keys(value)) {
      if (fields.includes(key)) continue;
      // A file's name (port_range_start, worker_uid_range_start) means its field.
      const fromToml = section === 'process' ? PROCESS_KEYS[key]?.[0] : SECTION_KEYS[section]?.[key]?.[0];
      const hint = fromToml ?? closest(key, [...fields]);
      throw new ConfigError(
        `unknown key "${key}" in config.${section}` + (hint ? ` (did you mean "${hint}"?)` : `; valid: ${fields.join(', ')}`),
        undefined,
        `${section}.${key}`,
      );
    }
  }
}

/** An R package name, as library() takes it. */
const R_PACKAGE = /^[A-Za-z][A-Za-z0-9.]*[A-Za-z0-9]$/;
/** A version as rig names them: 4.4.1, 4.4, release, devel, oldrel(-1). */
const R_VERSION = /^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$/;

function checkWarmPool(
  pool: unknown,
  n: (field: string) => string,
  where: string,
  fail: (field: string, message: string) => never,
): void {
  const name = n('process.warmPool');
  if (!Array.isArray(pool)) fail('process.warmPool', `${name}${where} must be an array of { size, preload?, rVersion? }, got ${describe(pool)}`);
  (pool as unknown[]).forEach((entry, i) => {
    const at = `${name}[${i}]`;
    if (entry === null || typeof entry !== 'object' || Array.isArray(entry))
      fail('process.warmPool', `${at}${where} must be { size, preload?, rVersion? }, got ${describe(entry)}`);
    const e = entry as Record<string, unknown>;
    for (const key of Object.keys(e))
      if (!['size', 'preload', 'rVersion'].includes(key))
        fail('process.warmPool', `${at}${where} has an unknown field "${key}" (size, preload, rVersion)`);
    if (!Number.isSafeInteger(e.size) || (e.size as number) < 0 || (e.size as number) > 64)
      fail('process.warmPool', `${at}.size${where} must be an integer 0-64, got ${describe(e.size)}`);
    if (e.preload !== undefined && !(Array.isArray(e.preload) && e.preload.every((p) => typeof p === 'string' && R_PACKAGE.test(p))))
      fail('process.warmPool', `${at}.preload${where} must be an array of R package names, got ${describe(e.preload)}`);
    if (e.rVersion !== undefined && !(typeof e.rVersion === 'string' && (e.rVersion === '' || R_VERSION.test(e.rVersion))))
      fail('process.warmPool', `${at}.rVersion${where} must be an R version such as "4.4.1" or "release", got ${describe(e.rVersion)}`);
  });
}

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
    case 'ports':
      return Array.isArray(value) && value.every((v) => Number.isInteger(v) && v >= 1 && v <= 65535);
    case 'strings':
      return Array.isArray(value) && value.every((v) => typeof v === 'string');
    case 'tables':
      return Array.isArray(value) && value.every((v) => v !== null && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date));
  }
}

const TYPE_NAMES: Record<FieldType, string> = {
  string: 'a string',
  integer: 'a non-negative integer',
  number: 'a number',
  boolean: 'true or false',
  ports: 'an array of TCP ports 1-65535 (absent = any port, [] = none)',
  strings: 'an array of strings',
  tables: 'an array of tables ([[...]])',
};

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Date) return 'a date';
  if (value !== null && typeof value === 'object') return 'a table';
  return `${typeof value} ${JSON.stringify(value)}`;
}

/**
 * The known name a typo most likely meant: within an edit distance of a
 * third of its length (at least 2), or one that extends it (`issuer` →
 * `issuer_url`).
 */
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
  let bestDistance = Math.max(2, Math.floor(key.length / 3)) + 1;
  for (const k of known) {
    const d = distance(key, k);
    if (d < bestDistance) [best, bestDistance] = [k, d];
  }
  return best ?? (key.length >= 3 ? known.find((k) => k.startsWith(key)) : undefined);
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

/** "unknown ..." with the nearest valid name, or the list of valid ones. */
function unknown(what: string, name: string, known: string[], file: string, key: string, show = (k: string) => `"${k}"`): never {
  const hint = closest(name, known);
  throw new ConfigError(
    `unknown ${what} ${key.includes('.') ? 'of' : 'in'} ${file}` + (hint ? ` (did you mean ${show(hint)}?)` : `; valid: ${known.map(show).join(', ')}`),
    file,
    key,
  );
}

/**
 * Every section and key must be known: procyard's own, or the hosting
 * server's (SERVER_KEYS). A typo anywhere is an error naming the nearest
 * valid name, never a setting silently left at its default: a misspelled
 * [process] section would otherwise run workers without their seccomp filter.
 */
function checkNames(doc: Record<string, unknown>, file: string): void {
  for (const [section, value] of Object.entries(doc)) {
    const isTable = value !== null && typeof value === 'object' && !Array.isArray(value) && !(value instanceof Date);
    if (!KNOWN_SECTIONS.includes(section)) {
      if (!isTable) {
        // A key above every section header: say which section it belongs in.
        const home = KNOWN_SECTIONS.find((s) => knownKeys(s).includes(section));
        throw new ConfigError(
          `key "${section}" in ${file} is outside any section` +
            (home ? `: put it under [${home}]` : `; keys belong in a section such as [process]`),
          file,
          section,
        );
      }
      unknown(`section [${section}]`, section, KNOWN_SECTIONS, file, section, (k) => `[${k}]`);
    }
    const t = table(doc, section, file);
    const known = knownKeys(section);
    for (const key of Object.keys(t ?? {}))
      if (!known.includes(key)) unknown(`key "${key}" in [${section}]`, key, known, file, `${section}.${key}`);
  }
}

/** [[process.warm_pool]] tables as WarmPoolEntry values: known keys of the right types only. */
function warmPoolFromToml(tables: Record<string, unknown>[], file: string): WarmPoolEntry[] {
  return tables.map((t, i) => {
    const section = `process.warm_pool[${i}]`;
    const entry: Record<string, unknown> = {};
    for (const key of Object.keys(t)) {
      const known = WARM_POOL_KEYS[key];
      if (!known) unknown(`key "${key}" in [[process.warm_pool]]`, key, Object.keys(WARM_POOL_KEYS), file, `${section}.${key}`);
      entry[known[0]] = field(t, section, key, known[1], file);
    }
    return entry as unknown as WarmPoolEntry;
  });
}

/**
 * Maps a parsed TOML document to a Config with every default applied.
 * Unknown sections and keys are errors (checkNames), and so are values
 * procyard cannot use (checkConfig, in TOML names).
 */
export function configFromToml(doc: Record<string, unknown>, file = '<config>'): Config {
  checkNames(doc, file);
  const config: Config = {};

  const proc = table(doc, 'process', file) ?? {};
  const processConfig: ProcessConfig = {};
  for (const [key, value] of Object.entries(proc)) {
    const spec = PROCESS_KEYS[key]!;
    const [name, type] = spec;
    (processConfig as Record<string, unknown>)[name] = field(proc, 'process', key, type, file) ?? value;
  }
  if (processConfig.warmPool) processConfig.warmPool = warmPoolFromToml(processConfig.warmPool as unknown as Record<string, unknown>[], file);
  const networkProblem = networkConfigProblem(processConfig.networkPolicy, processConfig.allowedConnectPorts, {
    policy: `process.network_policy in ${file}`,
    ports: `process.allowed_connect_ports in ${file}`,
  });
  if (networkProblem)
    throw new ConfigError(
      networkProblem,
      file,
      networkProblem.startsWith('process.network_policy') ? 'process.network_policy' : 'process.allowed_connect_ports',
    );
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
  checkConfig(config, 'toml', file);
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
