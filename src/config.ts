// Configuration types and every default, in one place.

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
