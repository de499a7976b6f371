// The preflight checks, one function each. A check returns a verdict (severity
// and message); index.ts gives it its name and category and runs them all.
// Every message says what is wrong and how to fix it.
import { execFile } from 'node:child_process';
import { fstatSync } from 'node:fs';
import { access, readFile, stat } from 'node:fs/promises';
import { constants as fsConstants } from 'node:fs';
import { lookup } from 'node:dns/promises';
import net from 'node:net';
import path from 'node:path';
import { openbaoAddress, DEFAULT_BUNDLE_WORKER_PATH, type Config, type ResolvedProcessConfig } from '../config.js';
import {
  builtinSeccompFilter,
  closeFd,
  kernelRelease,
  probePidfd,
  probeUserNamespace,
  type NativeLandlockRules,
  type ProbeResult,
} from '../native.js';
import { BASE_ENV, MOUNT_TARGETS } from '../process/bwrap.js';
import { NetworkPolicy } from '../process/landlock.js';
import { installedRVersions } from '../process/rversion.js';
import { startSandbox, type Sandbox, type SandboxOptions } from '../process/sandbox.js';
import { SocketHooks, socketHooksConfig } from '../process/socket-hooks.js';
import { quietLogger } from '../backend.js';
import { resourceLimitsVerdict } from './checks/resource-limits.js';
import type { Severity } from './report.js';

export interface Verdict {
  severity: Severity;
  message: string;
}

export interface PreflightContext {
  config: Config;
  proc: ResolvedProcessConfig;
  /** The server runs as root: workers get their own host UIDs. */
  isRoot: boolean;
  /** Where the sysctls live; tests point it at fixtures. Default '/proc/sys'. */
  procSysRoot: string;
}

const CONNECT_TIMEOUT_MS = 2000;
const SANDBOX_TIMEOUT_MS = 10_000;

const ok = (message: string): Verdict => ({ severity: 'ok', message });
const info = (message: string): Verdict => ({ severity: 'info', message });
const warning = (message: string): Verdict => ({ severity: 'warning', message });
const error = (message: string): Verdict => ({ severity: 'error', message });

function errText(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e?.code && !String(e.message).includes(e.code) ? `${e.code}: ${e.message}` : String(e?.message ?? err);
}

async function isExecutableFile(file: string): Promise<string | null> {
  try {
    const st = await stat(file);
    if (!st.isFile()) return 'not a regular file';
    await access(file, fsConstants.X_OK);
    return null;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return 'does not exist';
    if (code === 'EACCES') return 'is not executable';
    return errText(err);
  }
}

// ---------------------------------------------------------------- sandbox

export async function checkBwrapAvailable(ctx: PreflightContext): Promise<Verdict> {
  const bwrap = ctx.proc.bwrapPath;
  const problem = await isExecutableFile(bwrap);
  if (problem)
    return error(
      `bwrap at "${bwrap}" ${problem}: install bubblewrap (apt-get install bubblewrap / dnf install bubblewrap) ` +
        `or set [process] bwrap_path to its location`,
    );
  return new Promise((resolve) => {
    execFile(bwrap, ['--version'], { timeout: 5000, env: { ...BASE_ENV } }, (err, stdout, stderr) => {
      if (err)
        resolve(
          error(
            `"${bwrap} --version" failed (${errText(err)}${stderr ? `: ${stderr.trim()}` : ''}): ` +
              `reinstall bubblewrap or point [process] bwrap_path at a working bwrap`,
          ),
        );
      else resolve(ok(`${stdout.trim() || 'bwrap'} at ${bwrap}`));
    });
  });
}

// ---------------------------------------------------------------- runtime

export async function checkRBinary(ctx: PreflightContext): Promise<Verdict> {
  const r = ctx.proc.rPath;
  const problem = await isExecutableFile(r);
  if (problem)
    return error(
      `R at "${r}" ${problem}: install R (apt-get install r-base-core, or rig) ` +
        `or set [process] r_path to an executable R`,
    );
  return ok(`R binary at ${r} is executable`);
}

export async function checkRigVersions(ctx: PreflightContext): Promise<Verdict> {
  const base = ctx.proc.rigBase;
  const versions = installedRVersions(base);
  if (versions.length === 0)
    return info(
      `no rig-managed R versions under ${base}: bundles pinned to an R version fall back to ${ctx.proc.rPath}; ` +
        `install versions with rig (rig add 4.4) or set [process] rig_base if they live elsewhere`,
    );
  return ok(`rig-managed R versions under ${base}: ${versions.join(', ')}`);
}

// ---------------------------------------------------------------- user namespaces

export interface UsernsSysctls {
  /** user.max_user_namespaces (0 denies every user namespace). */
  maxUserNamespaces?: number;
  /** kernel.unprivileged_userns_clone (Debian/Ubuntu patch; absent elsewhere). */
  unprivilegedUsernsClone?: number;
  /** kernel.apparmor_restrict_unprivileged_userns (Ubuntu 23.10+). */
  apparmorRestrict?: number;
}

async function readSysctl(file: string): Promise<number | undefined> {
  try {
    const n = Number.parseInt((await readFile(file, 'utf8')).trim(), 10);
    return Number.isNaN(n) ? undefined : n;
  } catch {
    return undefined;
  }
}

/** Reads the sysctls that gate user namespaces; absent ones stay undefined. */
export async function readUsernsSysctls(procSysRoot = '/proc/sys'): Promise<UsernsSysctls> {
  const [maxUserNamespaces, unprivilegedUsernsClone, apparmorRestrict] = await Promise.all([
    readSysctl(path.join(procSysRoot, 'user', 'max_user_namespaces')),
    readSysctl(path.join(procSysRoot, 'kernel', 'unprivileged_userns_clone')),
    readSysctl(path.join(procSysRoot, 'kernel', 'apparmor_restrict_unprivileged_userns')),
  ]);
  const out: UsernsSysctls = {};
  if (maxUserNamespaces !== undefined) out.maxUserNamespaces = maxUserNamespaces;
  if (unprivilegedUsernsClone !== undefined) out.unprivilegedUsernsClone = unprivilegedUsernsClone;
  if (apparmorRestrict !== undefined) out.apparmorRestrict = apparmorRestrict;
  return out;
}

function describeSysctls(s: UsernsSysctls): string {
  const parts = [
    `user.max_user_namespaces=${s.maxUserNamespaces ?? 'absent'}`,
    `kernel.unprivileged_userns_clone=${s.unprivilegedUsernsClone ?? 'absent'}`,
    `kernel.apparmor_restrict_unprivileged_userns=${s.apparmorRestrict ?? 'absent'}`,
  ];
  return parts.join(', ');
}

/**
 * Judges the real clone probe together with the sysctls. The probe decides;
 * the sysctls name the cause and the fix when it failed.
 */
export function judgeUserNamespaces(probe: ProbeResult, sysctls: UsernsSysctls, probedAs: string): Verdict {
  const seen = describeSysctls(sysctls);
  if (probe.ok) return ok(`a user namespace can be created ${probedAs} (${seen})`);
  const failure = `cannot create a user namespace ${probedAs} (${probe.detail ?? probe.code})`;
  const persist = 'and persist it in /etc/sysctl.d/99-procyard.conf';
  if (sysctls.maxUserNamespaces === 0)
    return error(
      `${failure}: user.max_user_namespaces is 0, which denies every user namespace. ` +
        `Fix: sysctl -w user.max_user_namespaces=15000 ${persist}`,
    );
  if (sysctls.unprivilegedUsernsClone === 0)
    return error(
      `${failure}: kernel.unprivileged_userns_clone is 0, so unprivileged processes (bwrap runs as the worker UID) ` +
        `cannot create user namespaces. Fix: sysctl -w kernel.unprivileged_userns_clone=1 ${persist}`,
    );
  if (sysctls.apparmorRestrict === 1)
    return error(
      `${failure}: kernel.apparmor_restrict_unprivileged_userns is 1, so AppArmor strips the capabilities of ` +
        `user namespaces made by unconfined processes and bwrap's mounts fail. Fix: sysctl -w ` +
        `kernel.apparmor_restrict_unprivileged_userns=0 ${persist}, or give bwrap an AppArmor profile ` +
        `with the "userns" permission (then bwrap_host_uid_mapping shows whether bwrap itself works)`,
    );
  return error(
    `${failure}, although the sysctls allow it (${seen}): something else denies the clone, typically a ` +
      `container's seccomp profile (Docker's default blocks unshare(CLONE_NEWUSER)), an LSM policy, or systemd's ` +
      `RestrictNamespaces=. Fix: run the server with a seccomp profile that allows user namespaces ` +
      `(e.g. docker run --security-opt seccomp=<profile allowing clone/unshare>) or lift the restriction`,
  );
}

export async function checkUserNamespaces(ctx: PreflightContext): Promise<Verdict> {
  // As root bwrap runs as the worker UID, so that is the identity to probe with.
  const creds = ctx.isRoot ? { uid: ctx.proc.workerUidStart, gid: ctx.proc.workerGid } : undefined;
  const [probe, sysctls] = await Promise.all([
    creds ? probeUserNamespace(creds) : probeUserNamespace(),
    readUsernsSysctls(ctx.procSysRoot),
  ]);
  const as = creds ? `as worker uid ${creds.uid} gid ${creds.gid}` : `as uid ${process.getuid?.() ?? '?'}`;
  return judgeUserNamespaces(probe, sysctls, as);
}

// ---------------------------------------------------------------- config

/**
 * The ports of start..end the kernel may hand out by itself (its ephemeral
 * range, net.ipv4.ip_local_port_range, less ip_local_reserved_ports), as a
 * count and the first few spans. Pure: the two sysctls' texts.
 */
export function ephemeralOverlap(start: number, end: number, localRange: string, reserved: string): { count: number; spans: string[]; range: string } {
  const [lo, hi] = localRange.trim().split(/\s+/).map(Number);
  if (!Number.isInteger(lo) || !Number.isInteger(hi)) return { count: 0, spans: [], range: localRange.trim() };
  const held = reserved
    .trim()
    .split(',')
    .filter(Boolean)
    .map((part) => part.split('-').map(Number))
    .map(([a, b]) => [a!, b ?? a!] as const);
  let count = 0;
  const spans: string[] = [];
  let open = -1;
  for (let port = Math.max(start, lo!); port <= Math.min(end, hi!) + 1; port++) {
    const free = port <= Math.min(end, hi!) && !held.some(([a, b]) => port >= a && port <= b);
    if (free) count++;
    if (free && open < 0) open = port;
    if (!free && open >= 0) {
      spans.push(open === port - 1 ? String(open) : `${open}-${port - 1}`);
      open = -1;
    }
  }
  return { count, spans, range: `${lo}-${hi}` };
}

export async function checkPortRange(ctx: PreflightContext): Promise<Verdict> {
  const { portRangeStart: start, portRangeEnd: end } = ctx.proc;
  if (start < 1 || end > 65535 || start > end)
    return error(
      `port range ${start}-${end} is not a range within 1-65535: set [process] port_range_start <= port_range_end`,
    );
  const count = end - start + 1;
  const read = (name: string) => readFile(path.join(ctx.procSysRoot, 'net', 'ipv4', name), 'utf8').catch(() => '');
  const [localRange, reserved] = await Promise.all([read('ip_local_port_range'), read('ip_local_reserved_ports')]);
  const overlap = ephemeralOverlap(start, end, localRange, reserved);
  if (overlap.count > 0)
    return warning(
      `${overlap.count} port${overlap.count === 1 ? '' : 's'} of the range ${start}-${end} (${overlap.spans.slice(0, 3).join(', ')}` +
        `${overlap.spans.length > 3 ? ', ...' : ''}) lie in the kernel's ephemeral range (net.ipv4.ip_local_port_range ${overlap.range}) ` +
        `and are not reserved, so the kernel hands them out itself: a worker's listen() without bind() can take the port ` +
        `the server gives another worker, and hold many of them. Fix: move [process] port_range_start/port_range_end out of ` +
        `${overlap.range} (the default 10000-10999 is), or reserve them: sysctl -w net.ipv4.ip_local_reserved_ports=${start}-${end}`,
    );
  if (count < 10)
    return warning(
      `port range ${start}-${end} holds only ${count} port${count === 1 ? '' : 's'}, so at most ${count} ` +
        `worker${count === 1 ? '' : 's'} can run at once: widen [process] port_range_start/port_range_end`,
    );
  return ok(`port range ${start}-${end}: ${count} ports, none in the kernel's ephemeral range (${overlap.range || 'unknown'})`);
}

/** How per-worker limits are enforced here (cgroups): see checks/resource-limits.ts. */
export function checkResourceLimits(ctx: PreflightContext): Promise<Verdict> {
  return resourceLimitsVerdict(ctx);
}

export async function checkSeccompProfile(ctx: PreflightContext): Promise<Verdict> {
  const profile = ctx.proc.seccompProfile;
  if (profile === '') return ok('none: no seccomp profile configured (optional; set [process] seccomp_profile = "builtin" for procyard\'s filter)');
  if (profile === 'builtin') {
    let fd = -1;
    try {
      fd = builtinSeccompFilter();
      const size = fstatSync(fd).size;
      if (size === 0 || size % 8 !== 0)
        return error(`the built-in seccomp filter is malformed (${size} bytes): rebuild procyard's native addon (npm run build:native)`);
      return ok(
        `builtin: procyard's built-in seccomp filter, ${size / 8} BPF instructions (denies mounts, ptrace, ` +
          `bpf/perf/kexec, kernel keyrings, module loading, new namespaces and TIOCSTI), passed to bwrap --seccomp`,
      );
    } catch (err) {
      return error(
        `the built-in seccomp filter is not available (${errText(err)}): rebuild procyard's native addon ` +
          `(npm run build:native), or set [process] seccomp_profile to a compiled BPF file or ''`,
      );
    } finally {
      if (fd >= 0) closeFd(fd);
    }
  }
  const fix = `point [process] seccomp_profile at a compiled BPF program, use "builtin", or set it to '' for none`;
  let st;
  try {
    st = await stat(profile);
  } catch (err) {
    return error(`seccomp profile "${profile}" cannot be read (${errText(err)}): ${fix}`);
  }
  if (!st.isFile()) return error(`seccomp profile "${profile}" is not a regular file: ${fix}`);
  if (st.size === 0) return error(`seccomp profile "${profile}" is empty: ${fix}`);
  try {
    await access(profile, fsConstants.R_OK);
  } catch (err) {
    return error(`seccomp profile "${profile}" is not readable (${errText(err)}): make it readable by the server, or ${fix}`);
  }
  // bwrap reads the file as an array of 8-byte sock_filter instructions.
  if (st.size % 8 !== 0)
    return warning(
      `seccomp profile "${profile}" is ${st.size} bytes, not a whole number of 8-byte BPF instructions, ` +
        `so bwrap will likely reject it at spawn: ${fix}`,
    );
  return ok(`seccomp profile ${profile}: ${st.size / 8} BPF instruction${st.size === 8 ? '' : 's'}`);
}

// ---------------------------------------------------------------- probe sandboxes

/** Runs a sandbox like a worker's until it exits or the timeout kills it; returns its output lines. */
async function withProbeSandbox<T>(
  ctx: PreflightContext,
  cmd: string[],
  use: (sandbox: Sandbox, lines: string[]) => Promise<T>,
  { landlock, limits }: { landlock?: NativeLandlockRules; limits?: SandboxOptions['limits'] } = {},
): Promise<T> {
  const lines: string[] = [];
  const sandbox = await startSandbox({
    bwrapPath: ctx.proc.bwrapPath,
    plan: {
      uid: ctx.proc.workerUidStart,
      gid: ctx.proc.workerGid,
      tmpSizeBytes: ctx.proc.tmpSizeBytes,
      mounts: [],
      cmd,
    },
    // No seccomp: a broken profile is seccomp_profile's finding, and a filter
    // does not change which addresses a connect() reaches.
    seccompProfile: '',
    env: Object.entries(BASE_ENV).map(([k, v]) => `${k}=${v}`),
    hostCredentials: ctx.isRoot,
    ...(landlock ? { landlock } : {}),
    ...(limits ? { limits } : {}),
    onLine: (line) => {
      if (lines.length < 200) lines.push(line);
    },
  });
  // kill(), not a signal to the monitor: that would orphan a sandbox still in set-up.
  const killer = setTimeout(() => void sandbox.kill(), SANDBOX_TIMEOUT_MS);
  try {
    return await use(sandbox, lines);
  } finally {
    await sandbox.kill();
    await sandbox.exited;
    clearTimeout(killer);
  }
}

function outputTail(lines: string[]): string {
  const tail = lines.slice(-5).join(' | ');
  return tail ? `; sandbox output: ${tail}` : '';
}

function statusIds(status: string, field: 'Uid' | 'Gid'): number[] | null {
  const line = status.split('\n').find((l) => l.startsWith(`${field}:`));
  return line ? line.split(/\s+/).slice(1).filter(Boolean).map(Number) : null;
}

export async function checkBwrapHostUidMapping(ctx: PreflightContext): Promise<Verdict> {
  const { workerUidStart: uid, workerGid: gid } = ctx.proc;
  if (!ctx.isRoot)
    return info(
      `the server does not run as root, so workers run as its own uid ${process.getuid?.()} on the host ` +
        `(per-worker host UIDs need root to setuid before exec of bwrap); firewall owner-match rules then ` +
        `cannot tell workers from the server. Fix, if you need per-worker egress rules: run the server as root`,
    );
  // Under the workers' network policy: its no_new_privs would stop a set-uid bwrap from gaining root.
  let landlock: NativeLandlockRules | undefined;
  try {
    landlock = new NetworkPolicy(ctx.proc.networkPolicy, ctx.proc.allowedConnectPorts).forBuild();
  } catch {
    landlock = undefined; // an invalid policy is network_policy's finding
  }
  return withProbeSandbox(ctx, ['/bin/sleep', '5'], async (sandbox, lines) => {
    const appPid = await Promise.race([
      sandbox.appPid,
      sandbox.exited.then(() => null),
    ]);
    if (appPid === null)
      return error(
        `the probe sandbox (bwrap --uid ${uid} --gid ${gid} -- /bin/sleep 5) did not start its command` +
          `${outputTail(lines)}: fix bwrap_available and user_namespaces first`,
      );
    let status: string;
    try {
      status = await readFile(`/proc/${appPid}/status`, 'utf8');
    } catch (err) {
      return error(`could not read /proc/${appPid}/status of the probe (${errText(err)})${outputTail(lines)}`);
    }
    const uids = statusIds(status, 'Uid');
    const gids = statusIds(status, 'Gid');
    const hostUid = uids?.[0];
    const hostGid = gids?.[0];
    if (hostUid === uid && hostGid === gid && uids!.every((u) => u === uid) && gids!.every((g) => g === gid))
      return ok(`a sandboxed process runs as uid ${uid} gid ${gid} on the host, so owner-match firewall rules apply to workers`);
    return error(
      `the sandboxed probe runs as uid ${uids?.join('/')} gid ${gids?.join('/')} on the host instead of ${uid}/${gid}: ` +
        `firewall owner-match rules would not match workers. Fix: make sure bwrap is not set-uid (see bwrap_setuid) ` +
        `and that the server runs as root with worker_uid_range_start/worker_gid set to unused ids`,
    );
  }, { landlock });
}

// ---------------------------------------------------------------- network

interface HostPort {
  host: string;
  port: number;
}

/** `host:port` or `[v6]:port`. */
export function parseHostPort(addr: string): HostPort | null {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(addr) ?? /^([^:\s]+):(\d+)$/.exec(addr);
  if (!m) return null;
  const port = Number(m[2]);
  return port > 0 && port < 65536 ? { host: m[1]!, port } : null;
}

function urlHostPort(raw: string, defaults: Record<string, number>): HostPort | null {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return null;
  }
  const scheme = url.protocol.replace(/:$/, '');
  const port = url.port ? Number(url.port) : defaults[scheme];
  if (!url.hostname || !port) return null;
  return { host: url.hostname.replace(/^\[|\]$/g, ''), port };
}

/** The Postgres host:port from a URL or a `host=... port=...` DSN; null for unix sockets. */
export function postgresHostPort(raw: string): HostPort | null {
  if (/^postgres(ql)?:\/\//.test(raw)) {
    const hp = urlHostPort(raw, { postgres: 5432, postgresql: 5432 });
    return hp && !hp.host.startsWith('/') && !hp.host.startsWith('%2F') ? hp : null;
  }
  const kv = Object.fromEntries([...raw.matchAll(/(\w+)\s*=\s*(\S+)/g)].map((m) => [m[1], m[2]]));
  if (!kv.host || kv.host.startsWith('/')) return null;
  return { host: kv.host, port: Number(kv.port ?? 5432) };
}

function showAddr({ host, port }: HostPort): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

type ConnectOutcome = { reachable: true } | { reachable: false; reason: string };

/** One TCP connect with a timeout; nothing is sent. */
export function tcpConnect({ host, port }: HostPort, timeoutMs = CONNECT_TIMEOUT_MS): Promise<ConnectOutcome> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    const done = (outcome: ConnectOutcome) => {
      socket.destroy();
      resolve(outcome);
    };
    socket.setTimeout(timeoutMs, () => done({ reachable: false, reason: `no answer within ${timeoutMs / 1000} s` }));
    socket.once('connect', () => done({ reachable: true }));
    socket.once('error', (err: NodeJS.ErrnoException) => done({ reachable: false, reason: err.code ?? err.message }));
  });
}

/** Sends `PING` without credentials and returns the first reply line. */
function redisPing({ host, port }: HostPort, timeoutMs = CONNECT_TIMEOUT_MS): Promise<{ reply: string } | { failure: string }> {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    let text = '';
    const done = (outcome: { reply: string } | { failure: string }) => {
      socket.destroy();
      resolve(outcome);
    };
    socket.setEncoding('utf8');
    socket.setTimeout(timeoutMs, () => done({ failure: `no reply within ${timeoutMs / 1000} s` }));
    socket.once('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk: string) => {
      text += chunk;
      const end = text.indexOf('\r\n');
      if (end >= 0) done({ reply: text.slice(0, end) });
      else if (text.length > 4096) done({ reply: text.slice(0, 200) });
    });
    socket.once('error', (err: NodeJS.ErrnoException) => done({ failure: err.code ?? err.message }));
    socket.once('end', () => done(text ? { reply: text.trim() } : { failure: 'connection closed without a reply' }));
  });
}

function metadataTarget(ctx: PreflightContext): HostPort | null {
  return parseHostPort(ctx.proc.metadataAddr);
}

export async function checkCloudMetadata(ctx: PreflightContext): Promise<Verdict> {
  const addr = ctx.proc.metadataAddr;
  if (ctx.proc.skipMetadataCheck)
    return info(`skipped: [process] skip_metadata_check is set, so ${addr} is not probed (here or in worker_egress)`);
  const target = metadataTarget(ctx);
  if (!target) return error(`[process] metadata_addr "${addr}" is not host:port: set it to e.g. 169.254.169.254:80`);
  const outcome = await tcpConnect(target);
  if (outcome.reachable)
    return error(
      `cloud metadata endpoint ${addr} is reachable from this host, and workers share the host network: ` +
        `an app could read the instance's credentials. Fix: block it for workers ` +
        `(iptables -A OUTPUT -m owner --gid-owner ${ctx.proc.workerGid} -d ${target.host} -j REJECT; ` +
        `worker_egress confirms from inside a sandbox) or for the whole host, or disable the metadata service; ` +
        `on a host with no such service, set [process] skip_metadata_check = true`,
    );
  return ok(`cloud metadata endpoint ${addr} is not reachable from this host (${outcome.reason})`);
}

export async function checkRedisAuth(ctx: PreflightContext): Promise<Verdict> {
  const url = ctx.config.redis?.url;
  if (!url) return ok('no Redis configured');
  if (url.startsWith('rediss://'))
    return info(`Redis uses TLS (rediss://), so the unauthenticated PING probe was not run: make sure it requires a password`);
  const target = urlHostPort(url, { redis: 6379, valkey: 6379 });
  if (!target || !/^(redis|valkey):/.test(url))
    return info(`[redis] url is not a redis://host:port URL, so the unauthenticated PING probe was not run: make sure Redis requires a password`);
  const where = showAddr(target);
  const outcome = await redisPing(target);
  if ('failure' in outcome)
    return info(
      `could not reach Redis at ${where} (${outcome.failure}), so whether it requires a password is unknown: ` +
        `start Redis or fix [redis] url, then rerun preflight`,
    );
  if (outcome.reply.startsWith('+PONG'))
    return error(
      `Redis at ${where} answers PING without a password: workers share the host network, so any app could read ` +
        `and rewrite procyard's port and UID claims. Fix: set requirepass (or an ACL user) in redis.conf and put the ` +
        `password in [redis] url (redis://:PASSWORD@${where})`,
    );
  if (outcome.reply.startsWith('-NOAUTH'))
    return ok(`Redis at ${where} requires authentication`);
  return info(`Redis at ${where} answered an unauthenticated PING with "${outcome.reply.slice(0, 120)}": check that it requires a password`);
}

interface EgressTarget extends HostPort {
  label: string;
  /** Reachable is an error (else a warning). */
  critical: boolean;
}

/** What a worker must not reach: metadata, then Redis, OpenBao and Postgres. */
export function egressTargets(ctx: PreflightContext): EgressTarget[] {
  const targets: EgressTarget[] = [];
  if (!ctx.proc.skipMetadataCheck) {
    const hp = metadataTarget(ctx);
    if (hp) targets.push({ ...hp, label: 'cloud metadata', critical: true });
  }
  const redisUrl = ctx.config.redis?.url;
  const redis = redisUrl ? urlHostPort(redisUrl, { redis: 6379, rediss: 6379, valkey: 6379, valkeys: 6379 }) : null;
  if (redis) targets.push({ ...redis, label: 'Redis', critical: false });
  const bao = openbaoAddress(ctx.config);
  const baoHp = bao ? urlHostPort(bao, { http: 80, https: 443 }) ?? parseHostPort(bao) : null;
  if (baoHp) targets.push({ ...baoHp, label: 'OpenBao', critical: false });
  const db = ctx.config.database;
  const pg = db?.driver === 'postgres' && db.url ? postgresHostPort(db.url) : null;
  if (pg) targets.push({ ...pg, label: 'Postgres', critical: false });
  return targets;
}

/** Inside the sandbox: connect to each target, print one JSON line. Runs in the worker's identity. */
const EGRESS_PROBE = `
const net = require('net');
const targets = JSON.parse(process.argv[1]);
Promise.all(targets.map((t) => new Promise((resolve) => {
  const s = net.connect({ host: t.ip, port: t.port });
  let settled = false;
  const done = (reachable, reason) => { if (!settled) { settled = true; s.destroy(); resolve({ reachable, reason }); } };
  s.setTimeout(${CONNECT_TIMEOUT_MS}, () => done(false, 'no answer within ${CONNECT_TIMEOUT_MS / 1000} s'));
  s.once('connect', () => done(true, 'connected'));
  s.once('error', (e) => done(false, e.code || e.message));
}))).then((r) => console.log('PROCYARD_EGRESS ' + JSON.stringify(r)));
`;

function rejectRecipe(gid: number, ip: string, port: number): string {
  // On loopback a blanket rule would also drop the worker's replies to the proxy.
  const isLoopback = net.isIP(ip) !== 0 && (ip.startsWith('127.') || ip === '::1');
  const cmd = net.isIPv6(ip) ? 'ip6tables' : 'iptables';
  return isLoopback
    ? `${cmd} -A OUTPUT -m owner --gid-owner ${gid} -d ${ip} -p tcp --dport ${port} -j REJECT`
    : `${cmd} -A OUTPUT -m owner --gid-owner ${gid} -d ${ip} -j REJECT`;
}

/**
 * A listener on a port of the workers' range, standing in for another
 * worker: the probe must not reach it. When the port is taken, whatever holds
 * it stands in (a running server's worker, most likely).
 */
const NEIGHBOUR = "another worker's port";

async function neighbourListener(port: number): Promise<{ close(): void }> {
  const server = net.createServer((socket) => socket.destroy());
  const listening = await new Promise<boolean>((resolve) => {
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => resolve(true));
  });
  return { close: () => listening && server.close() };
}

export async function checkWorkerEgress(ctx: PreflightContext): Promise<Verdict> {
  const neighbourPort = ctx.proc.portRangeEnd;
  const targets: EgressTarget[] = [
    { host: '127.0.0.1', port: neighbourPort, label: NEIGHBOUR, critical: false },
    ...egressTargets(ctx),
  ];
  const resolved = await Promise.all(
    targets.map(async (t) => {
      try {
        return { ...t, ip: net.isIP(t.host) ? t.host : (await lookup(t.host)).address };
      } catch (err) {
        return { ...t, ip: null, reason: errText(err) };
      }
    }),
  );
  const probed = resolved.filter((t): t is typeof t & { ip: string } => t.ip !== null);
  const unresolved = resolved.filter((t) => t.ip === null).map((t) => `${t.label} ${showAddr(t)} (not resolvable)`);

  // Under the workers' own network policy and socket hooks, so it finds what a worker really reaches.
  let policy: NetworkPolicy;
  let hooks: SocketHooks;
  try {
    policy = new NetworkPolicy(ctx.proc.networkPolicy, ctx.proc.allowedConnectPorts);
    hooks = new SocketHooks(socketHooksConfig(ctx.config, ctx.proc), quietLogger);
  } catch (err) {
    return error(`not probed: ${errText(err)}`);
  }
  const gid = ctx.proc.workerGid;
  const uid = ctx.proc.workerUidStart;
  const neighbour = await neighbourListener(neighbourPort);
  let results: { reachable: boolean; reason: string }[];
  let hooksHeld = false;
  try {
    if (policy.decision.error) return info(`not probed: workers cannot start under this network policy (see network_policy)`);
    let limits: SandboxOptions['limits'];
    try {
      limits = await hooks.place(uid, undefined, {}, null);
    } catch {
      return info(`not probed: under network_policy = "required" workers cannot start without the socket hooks (see network_policy)`);
    }
    hooksHeld = limits.cgroupDir !== undefined;
    const payload = JSON.stringify(probed.map((t) => ({ ip: t.ip, port: t.port })));
    results = await withProbeSandbox(ctx, [process.execPath, '-e', EGRESS_PROBE, payload], async (sandbox, lines) => {
      await sandbox.exited;
      const line = lines.find((l) => l.startsWith('PROCYARD_EGRESS '));
      if (!line)
        throw new Error(
          `the in-sandbox probe (${process.execPath}) printed no result${outputTail(lines)}; ` +
            `the worker uid ${uid} must be able to execute it`,
        );
      return JSON.parse(line.slice('PROCYARD_EGRESS '.length)) as { reachable: boolean; reason: string }[];
    }, { landlock: policy.forBuild(), limits });
  } catch (err) {
    return error(`could not run the egress probe in a worker sandbox: ${errText(err)}`);
  } finally {
    neighbour.close();
    hooks.release(uid);
    await hooks.close();
  }

  const reachable = probed.filter((_, i) => results[i]?.reachable);
  // "Blocked" only where a policy said no: a refused connect may just be a service that is not running.
  const why = (reason: string) =>
    reason === 'ECONNREFUSED'
      ? 'ECONNREFUSED: nothing listens there, or a firewall rejects it'
      : reason === 'EACCES'
        ? 'EACCES: refused by the network policy, allowed_connect_ports (or a firewall)'
        : reason === 'EPERM'
          ? 'EPERM: refused by the socket hooks, or a firewall'
          : reason;
  const unreachable = probed
    .map((t, i) => ({ t, r: results[i] }))
    .filter(({ r }) => r && !r.reachable)
    .map(({ t, r }) => `${t.label} ${showAddr(t)} (${why(r!.reason)})`);
  const identity = ctx.isRoot ? `uid ${uid} gid ${gid}` : `the server's own uid (not root)`;
  const rest = [
    unreachable.length ? `not reachable: ${unreachable.join(', ')}` : '',
    unresolved.length ? `not probed: ${unresolved.join(', ')}` : '',
  ].filter(Boolean);
  if (reachable.length === 0)
    return ok(`a worker sandbox (${identity}) reaches none of the targets; ${rest.join('; ')}`);

  const { portRangeStart: first, portRangeEnd: last } = ctx.proc;
  const fixes = reachable.map((t) =>
    t.label === NEIGHBOUR
      ? `${NEIGHBOUR}: ${hooksHeld ? 'report this: the socket hooks should refuse it' : 'run the server as root on a host with a cgroup2 mount, so that the socket hooks hold (see network_policy)'}, ` +
        `or reject it by the worker GID: iptables -A OUTPUT -m owner --gid-owner ${gid} -d 127.0.0.0/8 -p tcp --dport ${first}:${last} -j REJECT`
      : `${t.label} ${showAddr(t)}: ${hooksHeld ? `add "${showAddr({ host: t.ip, port: t.port })}" to [process] denied_connect, or ` : ''}${rejectRecipe(gid, t.ip, t.port)}`,
  );
  const rootNote = ctx.isRoot
    ? ''
    : ' Note: the server does not run as root, so workers share its uid/gid and such a rule would block the server too; run it as root first.';
  const message =
    `a worker sandbox (${identity}) can reach ${reachable.map((t) => `${t.label} ${showAddr(t)}`).join(', ')}` +
    `${reachable.some((t) => t.label === NEIGHBOUR) ? ', so tenants can reach each other past the proxy' : ''}. ` +
    `Fix: ${fixes.join('; ')}.` +
    (policy.decision.enforced.tcp
      ? ' Or list only the TCP ports workers need in [process] allowed_connect_ports (Landlock: by port, for every address).'
      : '') +
    rootNote +
    (rest.length ? ` (${rest.join('; ')})` : '');
  return reachable.some((t) => t.critical) ? error(message) : warning(message);
}

// ---------------------------------------------------------------- extra checks

/** `5.15.0-91-generic` → [5, 15]. */
export function kernelVersion(release: string): [number, number] | null {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return m ? [Number(m[1]), Number(m[2])] : null;
}

export function checkPidfdSupport(): Verdict {
  const release = kernelRelease();
  const version = kernelVersion(release);
  const probe = probePidfd();
  const newEnough = version !== null && (version[0] > 5 || (version[0] === 5 && version[1] >= 4));
  if (!newEnough)
    return error(
      `kernel ${release} is older than 5.4: procyard watches and signals workers by pidfd (pidfd_open, waitid(P_PIDFD)), ` +
        `so it needs Linux >= 5.4. Fix: upgrade the kernel`,
    );
  if (!probe.ok)
    return error(
      `pidfd_open/pidfd_send_signal fail on kernel ${release} (${probe.code}): a container seccomp profile likely ` +
        `blocks them. Fix: allow pidfd_open and pidfd_send_signal in the server's seccomp profile`,
    );
  return ok(`pidfds work on kernel ${release}`);
}

export async function checkBwrapSetuid(ctx: PreflightContext): Promise<Verdict> {
  const bwrap = ctx.proc.bwrapPath;
  let mode: number;
  try {
    mode = (await stat(bwrap)).mode;
  } catch (err) {
    return info(`not checked: bwrap at "${bwrap}" cannot be read (${errText(err)}); see bwrap_available`);
  }
  const bits = [mode & 0o4000 ? 'set-uid' : '', mode & 0o2000 ? 'set-gid' : ''].filter(Boolean);
  if (bits.length)
    return warning(
      `bwrap at ${bwrap} is installed ${bits.join(' and ')}: exec of such a binary clears the parent-death signal, ` +
        `so workers would outlive a crashed server. Fix: chmod u-s,g-s ${bwrap} (procyard only needs user ` +
        `namespaces, see user_namespaces)`,
    );
  return ok(`bwrap at ${bwrap} is not set-uid, so workers die with the server`);
}

async function targetProblem(p: string, field: string): Promise<string | null> {
  if (p === '/tmp' || p.startsWith('/tmp/')) return null; // each sandbox gets its own tmpfs there
  try {
    const st = await stat(p);
    return st.isDirectory()
      ? null
      : `${field} ${p} exists and is not a directory (bwrap cannot bind a directory onto it): remove or rename it`;
  } catch {
    // missing: can the backend create it?
  }
  let parent = path.dirname(p);
  for (;;) {
    try {
      await stat(parent);
      break;
    } catch {
      parent = path.dirname(parent);
    }
  }
  try {
    await access(parent, fsConstants.W_OK);
    return null; // ProcessBackend creates it at startup
  } catch (err) {
    return (
      `${field} ${p} does not exist and cannot be created (${(err as NodeJS.ErrnoException).code ?? errText(err)} ` +
      `on ${parent}); bwrap cannot mkdir it on the read-only root bind. Fix: as root, mkdir -p ${p}`
    );
  }
}

export async function checkMountTargets(ctx: PreflightContext): Promise<Verdict> {
  const bundle = ctx.config.storage?.bundleWorkerPath ?? DEFAULT_BUNDLE_WORKER_PATH;
  if (!bundle || !path.isAbsolute(bundle))
    return error(
      `[storage] bundle_worker_path ${JSON.stringify(bundle)} is not an absolute path, so the backend refuses to start: ` +
        `set it to e.g. "/app"`,
    );
  const entries: [string, string][] = [
    ...Object.values(MOUNT_TARGETS).map((t): [string, string] => [t, 'mount target']),
    [bundle, '[storage] bundle_worker_path'],
  ];
  const problems = (await Promise.all(entries.map(([p, field]) => targetProblem(p, field)))).filter(
    (m): m is string => m !== null,
  );
  if (problems.length) return warning(problems.join('; '));
  return ok(`mount targets exist or can be created: ${entries.map(([p]) => p).join(', ')}`);
}
