// Preflight `network_policy` (SPEC §8, §11): which layers hold here under the
// configured networkPolicy: Landlock's network rules and scopes, and the cgroup
// socket hooks that keep tenants from each other and from the server's services.
import { describeRule, localized, METADATA_RULES } from '../../process/address-rules.js';
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
import { SocketHooks, socketHooksConfig, type SocketHooksConfig, type SocketHooksStatus } from '../../process/socket-hooks.js';
import { quietLogger } from '../../backend.js';
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
        `network_policy = "off": no Landlock rules and no socket hooks, so workers bind any TCP port and address, connect ` +
        `anywhere (each other's ports and the server's services included) and reach the host's ` +
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

/** The verdict on the socket hooks for a status: pure, so every host can be tested. */
export function judgeSocketHooks(config: SocketHooksConfig, status: SocketHooksStatus): Verdict {
  const [first, last] = config.workerPorts;
  if (!status.held) {
    const { problem, fix } = status.problem;
    if (config.mode === 'required')
      return {
        severity: 'error',
        message: `no cgroup socket hooks: ${problem}. Under network_policy = "required" no worker or build starts. Fix: ${fix}`,
      };
    return {
      severity: 'warning',
      message:
        `no cgroup socket hooks: ${problem}, so tenants can reach each other: a worker connects to other workers' ports ` +
        `(${first}-${last}) on loopback, past the proxy, and to the server's services and the metadata address unless a ` +
        `firewall stops it. Fix: ${fix}; or, without cgroup2, the iptables owner-match recipe of docs/security.md`,
    };
  }
  const denied = [
    ...METADATA_RULES.map((r) => r.text.replace(/\/\d+$/, '')),
    ...status.services.map((r) => (r.kind === 'local' ? `${r.text}, on ${describeRule(r)}` : r.text)),
    ...config.denied.map((r) => describeRule(localized(r))),
  ];
  const allowed = config.allowed
    ? `; otherwise only ${config.allowed.length ? config.allowed.map((r) => r.text).join(', ') : 'nothing'} (allowed_connect)`
    : '';
  const message =
    `cgroup socket hooks (cgroup2 at ${status.cgroup2}): workers connect and send to no port of ${first}-${last} on a local ` +
    `address but their own, so not to each other, nor to ${denied.join(', ')}${allowed}; ` +
    `they bind only 127.0.0.1 and ::1 on their own port, builds bind nothing, and IP sockets are TCP or UDP only`;
  if (status.unresolved.length === 0) return { severity: 'ok', message };
  return {
    severity: 'warning',
    message:
      `${message}. But ${status.unresolved.join(', ')} did not resolve, so workers are not kept from ${status.unresolved.length > 1 ? 'them' : 'it'}. ` +
      `Fix: use an address the server can resolve, or an IP`,
  };
}

const RANK = { info: 0, ok: 1, warning: 2, error: 3 } as const;

/** Both layers in one verdict: the worse severity, both messages. */
export function combineLayers(landlock: Verdict, hooks: Verdict | null): Verdict {
  if (!hooks) return landlock;
  const severity = RANK[hooks.severity] > RANK[landlock.severity] ? hooks.severity : landlock.severity;
  return { severity, message: `[Landlock] ${landlock.message}. [socket hooks] ${hooks.message}` };
}

export async function checkNetworkPolicy(ctx: PreflightContext): Promise<Verdict> {
  const { networkPolicy, allowedConnectPorts } = ctx.proc;
  const problem = networkConfigProblem(networkPolicy, allowedConnectPorts, {
    policy: '[process] network_policy',
    ports: '[process] allowed_connect_ports',
  });
  if (problem) return { severity: 'error', message: problem };
  const landlock = judgeNetworkPolicy(decideNetworkPolicy(networkPolicy as NetworkPolicyMode, landlockSupport()), allowedConnectPorts);
  if (networkPolicy === 'off') return landlock;
  let config: SocketHooksConfig;
  try {
    config = socketHooksConfig(ctx.config, ctx.proc);
  } catch (err) {
    return { severity: 'error', message: (err as Error).message };
  }
  const hooks = new SocketHooks(config, quietLogger);
  try {
    return combineLayers(landlock, judgeSocketHooks(config, await hooks.status()));
  } finally {
    await hooks.close();
  }
}
