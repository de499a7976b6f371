// The network policy (SPEC §8) as pure functions: what Landlock enforces for
// a worker or a build, decided from the kernel's ABI and the config. No I/O
// here, so every kernel and mode can be tested; landlock.ts probes and applies.
import type { NativeLandlockRules } from '../native.js';

export type NetworkPolicyMode = 'auto' | 'required' | 'off';
export const NETWORK_POLICY_MODES: readonly NetworkPolicyMode[] = Object.freeze(['auto', 'required', 'off']);

/** The parts of the policy, with the Landlock ABI (and mainline Linux release) that brought each. */
export const LANDLOCK_PARTS = Object.freeze({
  tcp: { abi: 4, linux: '6.7', what: 'TCP port rules' },
  scopes: { abi: 6, linux: '6.12', what: 'abstract-unix-socket and signal scopes' },
});
export type LandlockPart = keyof typeof LANDLOCK_PARTS;

/** The Landlock of a kernel: its ABI version, 0 when absent, with why. */
export interface LandlockSupport {
  abi: number;
  /** errno name when abi is 0: ENOSYS (not built in), EOPNOTSUPP (not enabled at boot). */
  code: string;
  kernel: string;
}

export interface NetworkPolicyDecision {
  mode: NetworkPolicyMode;
  support: LandlockSupport;
  /** What workers and builds get. All false under 'off'. */
  enforced: Record<LandlockPart, boolean>;
  /** Parts the kernel lacks (under 'off' too: preflight says what 'auto' would miss). */
  missing: LandlockPart[];
  /** Under 'required' with a part missing: the message spawn and build reject with. */
  error: string | null;
}

/** How this kernel's Landlock reads in a message. */
export function describeSupport(s: LandlockSupport): string {
  if (s.abi > 0) return `Landlock ABI ${s.abi} (kernel ${s.kernel})`;
  if (s.code === 'EOPNOTSUPP') return `Landlock built in but not enabled (kernel ${s.kernel}; "landlock" is missing from the lsm= boot parameter)`;
  return `no Landlock (kernel ${s.kernel}${s.code ? `, ${s.code}` : ''})`;
}

/** `TCP port rules (Landlock ABI 4, Linux 6.7) and the ...`. */
export function describeParts(parts: LandlockPart[]): string {
  return parts.map((p) => `${LANDLOCK_PARTS[p].what} (Landlock ABI ${LANDLOCK_PARTS[p].abi}, Linux ${LANDLOCK_PARTS[p].linux})`).join(' and the ');
}

/**
 * The policy for a mode on a kernel: pure, so every kernel can be tested.
 * 'auto' takes what the kernel has; 'required' takes everything or names
 * what is missing; 'off' takes nothing.
 */
export function decideNetworkPolicy(mode: NetworkPolicyMode, support: LandlockSupport): NetworkPolicyDecision {
  const parts = Object.keys(LANDLOCK_PARTS) as LandlockPart[];
  const missing = parts.filter((p) => support.abi < LANDLOCK_PARTS[p].abi);
  const enforced = Object.fromEntries(parts.map((p) => [p, mode !== 'off' && !missing.includes(p)])) as Record<LandlockPart, boolean>;
  const newest = Math.max(...parts.map((p) => LANDLOCK_PARTS[p].abi));
  const needed = parts.find((p) => LANDLOCK_PARTS[p].abi === newest)!;
  const error =
    mode === 'required' && missing.length > 0
      ? `networkPolicy 'required': this kernel has ${describeSupport(support)}, which lacks the ${describeParts(missing)}; ` +
        `the whole policy needs Landlock ABI ${newest} (Linux ${LANDLOCK_PARTS[needed].linux} or later, with landlock in the lsm= list). ` +
        `Fix: upgrade the kernel, or set process.networkPolicy (TOML network_policy) to 'auto' to run with what this kernel enforces`
      : null;
  return { mode, support, enforced, missing, error };
}

/**
 * The Landlock rules for one sandbox: a worker binds only its own port
 * (bindPort), a build or probe (bindPort undefined) binds nothing; connects
 * go only to allowedConnectPorts when given. Undefined: no Landlock domain.
 */
export function landlockRules(
  decision: NetworkPolicyDecision,
  bindPort: number | undefined,
  allowedConnectPorts: readonly number[] | undefined,
): NativeLandlockRules | undefined {
  const { tcp, scopes } = decision.enforced;
  if (!tcp && !scopes) return undefined;
  return {
    restrictBind: tcp,
    bindPorts: bindPort === undefined ? [] : [bindPort],
    restrictConnect: tcp && allowedConnectPorts !== undefined,
    connectPorts: allowedConnectPorts ? [...allowedConnectPorts] : [],
    scopeAbstractUnix: scopes,
    scopeSignals: scopes,
  };
}

/** Thrown by spawn and build under networkPolicy 'required' on a kernel without the whole policy. */
export class NetworkPolicyError extends Error {
  override readonly name = 'NetworkPolicyError';
}

/**
 * Checks networkPolicy and allowedConnectPorts; the message names the field
 * (as `names` spell it: the TOML keys or the ProcessConfig fields), or null.
 */
export function networkConfigProblem(
  networkPolicy: unknown,
  allowedConnectPorts: unknown,
  names = { policy: 'process.networkPolicy', ports: 'process.allowedConnectPorts' },
): string | null {
  if (networkPolicy !== undefined && !NETWORK_POLICY_MODES.includes(networkPolicy as NetworkPolicyMode))
    return `${names.policy} must be 'auto', 'required' or 'off', got ${JSON.stringify(networkPolicy)}`;
  if (allowedConnectPorts === undefined) return null;
  const fix = 'list TCP ports 1-65535 (absent = any port, [] = no TCP connect at all)';
  if (!Array.isArray(allowedConnectPorts)) return `${names.ports} must be an array of port numbers, got ${JSON.stringify(allowedConnectPorts)}: ${fix}`;
  if (allowedConnectPorts.length > 65535) return `${names.ports} holds ${allowedConnectPorts.length} entries: ${fix}`;
  for (const [i, port] of allowedConnectPorts.entries()) {
    if (!Number.isInteger(port) || (port as number) < 1 || (port as number) > 65535)
      return `${names.ports}[${i}] must be an integer 1-65535, got ${JSON.stringify(port) ?? String(port)}: ${fix}`;
  }
  return null;
}
