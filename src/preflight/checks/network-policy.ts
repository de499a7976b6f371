// Preflight `network_policy` (SPEC §8): which Landlock network rules and
// scopes workers get on this kernel under the configured networkPolicy.
import { landlockSupport } from '../../process/landlock.js';
import {
  decideNetworkPolicy,
  describeParts,
  describeSupport,
  networkConfigProblem,
  type LandlockPart,
  type NetworkPolicyDecision,
  type NetworkPolicyMode,
} from '../../process/network-policy.js';
import type { PreflightContext, Verdict } from '../checks.js';

/** What a worker may connect to, in words. */
export function describeConnect(allowedConnectPorts: readonly number[] | undefined): string {
  if (allowedConnectPorts === undefined) return 'any TCP port (allowed_connect_ports is unset)';
  if (allowedConnectPorts.length === 0) return 'no TCP port at all (allowed_connect_ports = [])';
  const ports = [...new Set(allowedConnectPorts)].sort((a, b) => a - b);
  return `TCP port${ports.length > 1 ? 's' : ''} ${ports.join(', ')} only`;
}

/** What a worker can still do without each part. */
const WITHOUT: Record<LandlockPart, string> = {
  tcp: 'bind any TCP port (also on 0.0.0.0) and connect to any TCP port (allowed_connect_ports is not enforced)',
  scopes: "connect to the host's abstract unix sockets and signal processes outside their sandbox that run as their UID",
};

/** The verdict for a decision: pure, so every kernel and mode can be tested. */
export function judgeNetworkPolicy(decision: NetworkPolicyDecision, allowedConnectPorts: readonly number[] | undefined): Verdict {
  const kernel = describeSupport(decision.support);
  const hidden = "the host's /run is hidden in every sandbox";
  if (decision.mode === 'off') {
    const would = decision.missing.length === 0 ? 'enforce the whole policy' : `lack the ${describeParts(decision.missing)}`;
    return {
      severity: 'info',
      message:
        `network_policy = "off": no Landlock rules, so workers bind any TCP port, connect anywhere and reach the host's ` +
        `abstract unix sockets (the original behaviour); ${hidden}. This kernel has ${kernel}: "auto" would ${would}. ` +
        `Fix, to confine workers: set [process] network_policy = "auto"`,
    };
  }
  if (decision.error) return { severity: 'error', message: decision.error };
  const enforced: string[] = [];
  if (decision.enforced.tcp)
    enforced.push(
      `workers bind TCP only on their own port and connect to ${describeConnect(allowedConnectPorts)}; builds bind no TCP port; ` +
        'MPTCP sockets, TCP Fast Open sends, vsock sockets and io_uring rings, which would get past those rules, are refused',
    );
  if (decision.enforced.scopes) enforced.push('no worker reaches an abstract unix socket or signals a process outside its sandbox');
  if (decision.missing.length === 0)
    return { severity: 'ok', message: `${kernel}: ${enforced.join('; ')}; ${hidden}` };
  return {
    severity: 'warning',
    message:
      `${kernel} lacks the ${describeParts(decision.missing)}, so under network_policy = "auto" workers can ` +
      `${decision.missing.map((p) => WITHOUT[p]).join(', and ')}. Enforced: ${enforced.length ? enforced.join('; ') : 'no Landlock rule'}; ${hidden}. ` +
      `Fix: run Linux 6.12 or later with landlock in the lsm= boot list, close the TCP part with the iptables owner-match ` +
      `recipe (docs/security.md), or set network_policy = "required" so that workers never start without it`,
  };
}

export function checkNetworkPolicy(ctx: PreflightContext): Verdict {
  const { networkPolicy, allowedConnectPorts } = ctx.proc;
  const problem = networkConfigProblem(networkPolicy, allowedConnectPorts, {
    policy: '[process] network_policy',
    ports: '[process] allowed_connect_ports',
  });
  if (problem) return { severity: 'error', message: problem };
  return judgeNetworkPolicy(decideNetworkPolicy(networkPolicy as NetworkPolicyMode, landlockSupport()), allowedConnectPorts);
}
