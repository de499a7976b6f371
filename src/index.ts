// procyard: the package root. Every public name is exported here.
export type {
  Backend,
  BuildResult,
  BuildSpec,
  LogStream,
  Logger,
  ManagedResource,
  ManagedWorker,
  MountEntry,
  ResourceKind,
  WorkerExitEvent,
  WorkerResourceUsage,
  WorkerSpec,
} from './backend.js';
export { BackendClosedError, NotSupportedError, WorkerExistsError, WorkerNotFoundError } from './backend.js';
export { SpecError } from './process/validate.js';
export { WorkerNotReadyError } from './process/readiness.js';
export { ExhaustedError } from './process/allocators/types.js';
export type { Config, ProcessConfig, WarmPoolEntry } from './config.js';
export { PreflightReport } from './preflight/report.js';
export type { CheckResult, Severity } from './preflight/report.js';
export { runPreflight } from './preflight/index.js';
export { loadConfig, ConfigError } from './config.js';
export { RedisUnreachableError } from './process/allocators/redis.js';
export { ProcessBackend } from './process/process-backend.js';
export { CgroupError } from './process/cgroup.js';
export { NetworkPolicyError } from './process/network-policy.js';
export type { NetworkPolicyMode } from './process/network-policy.js';
export type { ProcessBackendEvents, ProcessBackendOptions } from './process/process-backend.js';
export { resolveRBinary, installedRVersions } from './process/rversion.js';
