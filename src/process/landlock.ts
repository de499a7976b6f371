// Landlock for the sandboxes a backend starts: the kernel probed once, the
// policy decided once (network-policy.ts), rules handed to the native spawn,
// which builds the ruleset before the clone; the clone child only enters it.
import { kernelRelease, landlockAbi, type NativeLandlockRules } from '../native.js';
import {
  decideNetworkPolicy,
  landlockRules,
  networkConfigProblem,
  NetworkPolicyError,
  type LandlockSupport,
  type NetworkPolicyDecision,
  type NetworkPolicyMode,
} from './network-policy.js';

let probed: LandlockSupport | undefined;

/** Probed once per process: the kernel does not change under us. */
export function landlockSupport(): LandlockSupport {
  probed ??= { ...landlockAbi(), kernel: kernelRelease() };
  return probed;
}

/** A backend's network policy: decided once, applied to each sandbox it starts. */
export class NetworkPolicy {
  readonly decision: NetworkPolicyDecision;
  private readonly connectPorts: readonly number[] | undefined;
  private readonly buildRules: NativeLandlockRules | undefined;

  /** Throws NetworkPolicyError naming the field when the config is invalid. */
  constructor(mode: NetworkPolicyMode, allowedConnectPorts: readonly number[] | undefined, support = landlockSupport()) {
    const problem = networkConfigProblem(mode, allowedConnectPorts);
    if (problem) throw new NetworkPolicyError(problem);
    this.connectPorts = allowedConnectPorts ? Object.freeze([...new Set(allowedConnectPorts)]) : undefined;
    this.decision = decideNetworkPolicy(mode, support);
    this.buildRules = landlockRules(this.decision, undefined, this.connectPorts);
  }

  /** Under 'required' on a kernel without the whole policy: throws, before anything is allocated. */
  assertUsable(): void {
    if (this.decision.error) throw new NetworkPolicyError(this.decision.error);
  }

  /** A worker: TCP bind only on its own port. */
  forWorker(port: number): NativeLandlockRules | undefined {
    return this.buildRules && { ...this.buildRules, bindPorts: [port] };
  }

  /** A build (or a preflight probe): no TCP bind at all; connect as configured. */
  forBuild(): NativeLandlockRules | undefined {
    return this.buildRules;
  }
}
