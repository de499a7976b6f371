// Is the worker's own listener up? Used by healthCheck and waitReady.
//
// A connect alone is not enough: workers share the host's network, so once
// the held placeholder listener is closed at spawn, another worker could bind
// the port first and answer for it. The listener must belong to the worker's
// UID and be held by a process of the worker's own sandbox (listeners.ts):
// a socket passed in from elsewhere does not count.
import net from 'node:net';
import type { ExitStatus } from '../native.js';
import { listenerOwnership, type ListenerOwner, type Ownership } from './listeners.js';

export type ListenerProbe =
  | { ready: true }
  | { ready: false; reason: 'none' | 'refused' | 'elsewhere' }
  | { ready: false; reason: 'foreign'; uid: number };

/** Resolves true when a TCP connect to 127.0.0.1:port succeeds within timeoutMs. */
export function canConnect(port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

function notReady(ownership: Exclude<Ownership, 'own'>): ListenerProbe {
  return typeof ownership === 'string' ? { ready: false, reason: ownership } : { ready: false, reason: 'foreign', uid: ownership.foreign };
}

/**
 * Ready when every listener on 127.0.0.1:port is the owner's, before and
 * after a connect that succeeds: the connect then reached one of them
 * (another UID cannot bind the port while one of them listens).
 */
export async function probeOwnListener(port: number, owner: ListenerOwner, timeoutMs: number): Promise<ListenerProbe> {
  const before = await listenerOwnership(port, owner);
  if (before !== 'own') return notReady(before);
  if (!(await canConnect(port, timeoutMs))) return { ready: false, reason: 'refused' };
  const after = await listenerOwnership(port, owner);
  return after === 'own' ? { ready: true } : notReady(after);
}

/** Why waitReady gave up: the worker exited first, or the time ran out. */
export class WorkerNotReadyError extends Error {
  override readonly name = 'WorkerNotReadyError';
  /** The worker's last lines of output (at most 20), oldest first. */
  readonly logTail: string[];
  /** How it exited (reason 'exited'); null when it has not, or died of a signal bwrap did not report as a code. */
  readonly exitCode: number | null;
  readonly signal: string | null;
  /** The kernel's OOM killer ended it. */
  readonly oomKilled: boolean;
  constructor(
    message: string,
    readonly workerId: string,
    readonly reason: 'exited' | 'timeout',
    /** The worker's exit, when reason is 'exited'. */
    readonly exit?: ExitStatus,
    details: { logTail?: string[]; oomKilled?: boolean } = {},
  ) {
    super(message);
    this.logTail = details.logTail ?? [];
    this.exitCode = exit?.code ?? null;
    this.signal = exit?.signal ?? null;
    this.oomKilled = details.oomKilled ?? false;
  }
}

export interface WaitTarget {
  workerId: string;
  port: number;
  owner: ListenerOwner;
  running(): boolean;
  /** Settles with the worker's exit status as soon as it has exited. */
  exited: Promise<ExitStatus>;
}

/**
 * Poll intervals: from 2 ms up to 10 ms for the first 5 s (an R app starts
 * in about one; a check is one netlink dump filtered by port, ~0.1 ms, so a
 * listener is seen within ~10 ms of its start), then at most every 100 ms.
 */
const FIRST_WAIT_MS = 2;
const FAST_WAIT_MS = 10;
const FAST_PHASE_MS = 5000;
const MAX_WAIT_MS = 100;

/**
 * Resolves once the worker's own listener accepts; rejects when it exits
 * first (WorkerNotReadyError 'exited'), after timeoutMs ('timeout'; Infinity
 * = none) or when signal aborts (its reason). The caller does not poll:
 * there is no event for "a socket started listening", so this asks
 * sock_diag with a short backoff, and wakes at once on exit or abort.
 */
export async function waitForListener(target: WaitTarget, timeoutMs: number, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  const deadline = performance.now() + timeoutMs;
  const addr = `127.0.0.1:${target.port}`;
  let wake: () => void = () => {};
  const onAbort = () => wake();
  signal?.addEventListener('abort', onAbort, { once: true });
  let exit: ExitStatus | undefined;
  void target.exited.then((status) => {
    exit = status;
    wake();
  });
  let last: ListenerProbe = { ready: false, reason: 'none' };
  try {
    const fastUntil = performance.now() + FAST_PHASE_MS;
    for (let wait = FIRST_WAIT_MS; ; wait = Math.min(wait * 2, performance.now() < fastUntil ? FAST_WAIT_MS : MAX_WAIT_MS)) {
      signal?.throwIfAborted();
      if (exit !== undefined || !target.running()) {
        // Not running, but the exit's callback may not have run yet: its status is there, a microtask away.
        exit ??= await target.exited;
        const how = exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
        throw new WorkerNotReadyError(
          `worker "${target.workerId}" exited (${how}) before listening on ${addr}; see its logs`,
          target.workerId,
          'exited',
          exit,
        );
      }
      const left = deadline - performance.now();
      if (left <= 0) {
        const why =
          last.reason === 'foreign'
            ? `port ${target.port} is held by uid ${last.uid}, not the worker's uid ${target.owner.uid}`
            : last.reason === 'elsewhere'
              ? "its listener is held by no process of the worker's sandbox"
              : last.reason === 'refused'
                ? 'connections are refused'
                : 'nothing listens there';
        throw new WorkerNotReadyError(
          `worker "${target.workerId}" is not listening on ${addr} after ${timeoutMs} ms (${why}); ` +
            'the app must listen on $SHINY_HOST:$SHINY_PORT',
          target.workerId,
          'timeout',
        );
      }
      last = await probeOwnListener(target.port, target.owner, Math.min(left, 2000));
      if (last.ready) return;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(wait, Math.max(0, deadline - performance.now())));
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  } finally {
    wake = () => {};
    signal?.removeEventListener('abort', onAbort);
  }
}
