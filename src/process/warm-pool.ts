// The warm pool (SPEC §12): sandboxes started ahead, each exactly as a cold
// worker's (its own UID, port, cgroup, Landlock domain, seccomp filter and
// socket hooks), running R with packages loaded and waiting for an app. A
// spawn that can use one takes it (process-backend.ts hands the app over);
// the pool starts another in the background, one at a time, so a refill
// never competes with itself for the CPUs.
//
// This file keeps the count: which sandboxes are ready, which are starting,
// and when to start more. Starting one and handing an app to it are the
// backend's (it owns the allocators, cgroups and policies a sandbox needs).
import type { Logger } from '../backend.js';
import type { WarmPoolEntry } from '../config.js';
import type { PortLease } from './allocators/types.js';
import type { WorkerCgroup } from './cgroup.js';
import type { ExitStatus } from '../native.js';
import type { Sandbox } from './sandbox.js';

/** A started sandbox waiting for an app. */
export interface WarmSandbox {
  /** Index of its WarmPoolEntry. */
  entry: number;
  sandbox: Sandbox;
  /** The sandboxed command's pid (R), whose mount namespace takes the app's mounts. */
  appPid: number;
  uid: number;
  lease: PortLease;
  cgroup: WorkerCgroup | null;
  /** Write end of R's stdin: the handoff goes here, then it is closed. */
  handoff: number;
  /** The namespaces R has loaded: an app library holding one of them starts cold. */
  loaded: readonly string[];
  /** Sends its output from now on to `to` (until the handoff it goes nowhere; then to the worker's log ring). */
  redirect(to: (line: string, utf8Bytes: number) => void): void;
  /** The sandbox's end, once nothing of it runs. */
  ended: Promise<ExitStatus>;
  /**
   * Settles once the sandbox has ended and, unless a worker took it over,
   * what it held (port, UID, cgroup) is given back.
   */
  released: Promise<void>;
  /** From now on its worker gives back what it holds. */
  takeOver(): void;
}

/** Starts one sandbox of an entry, resolved once it waits for its app; rejects when it cannot, or once `signal` aborts. */
export type StartWarm = (entry: number, signal: AbortSignal) => Promise<WarmSandbox>;

/** A failed start waits this long before the next try (doubling to the maximum). */
const RETRY_MS = 1000;
const RETRY_MAX_MS = 60_000;

export interface WarmPoolStatus {
  entry: WarmPoolEntry;
  ready: number;
  starting: boolean;
  /** Why the last start failed, while it keeps failing. */
  failing?: string;
}

export class WarmPool {
  private readonly ready: WarmSandbox[][];
  private readonly failing: (string | undefined)[];
  private readonly backoff: number[];
  /** The one start in flight (entry index), if any, and its end. */
  private starting: number | null = null;
  private inflight: Promise<void> = Promise.resolve();
  private readonly abort = new AbortController();
  private timer?: NodeJS.Timeout;
  private closed = false;

  constructor(
    readonly entries: readonly WarmPoolEntry[],
    private readonly start: StartWarm,
    private readonly log: Logger,
  ) {
    this.ready = entries.map(() => []);
    this.failing = entries.map(() => undefined);
    this.backoff = entries.map(() => RETRY_MS);
  }

  /** Starts what is missing, one sandbox at a time, in the background. */
  fill(): void {
    if (this.closed || this.starting !== null || this.timer) return;
    const entry = this.entries.findIndex((e, i) => this.ready[i]!.length < e.size && this.failing[i] === undefined);
    const retry = entry < 0 ? this.entries.findIndex((e, i) => this.ready[i]!.length < e.size) : entry;
    if (retry < 0) return;
    if (entry < 0) {
      // Only failing entries are short: try again after their backoff.
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.failing[retry] = undefined;
        this.fill();
      }, this.backoff[retry]);
      this.timer.unref();
      return;
    }
    this.starting = entry;
    this.inflight = this.start(entry, this.abort.signal).then(
      (warm) => {
        this.starting = null;
        this.backoff[entry] = RETRY_MS;
        if (this.closed) {
          void this.discard(warm);
          return;
        }
        this.ready[entry]!.push(warm);
        // Gone before anyone took it (killed, crashed): out of the pool, and replaced.
        void warm.released.then(() => {
          const list = this.ready[entry]!;
          const at = list.indexOf(warm);
          if (at >= 0) {
            list.splice(at, 1);
            this.log.warn({ entry, pid: warm.sandbox.pid }, 'procyard: a warm sandbox ended before it was used');
            this.fill();
          }
        });
        this.fill();
      },
      (err: unknown) => {
        this.starting = null;
        if (this.closed) return;
        const reason = err instanceof Error ? err.message : String(err);
        if (this.failing[entry] === undefined) this.log.warn({ entry, err }, 'procyard: a warm sandbox could not start');
        this.failing[entry] = reason;
        this.backoff[entry] = Math.min(this.backoff[entry]! * 2, RETRY_MAX_MS);
        this.fill();
      },
    );
  }

  /**
   * A ready sandbox that `fits`, taken out of the pool (it is the caller's
   * now), or undefined. The pool starts a replacement.
   */
  take(fits: (entry: WarmPoolEntry, warm: WarmSandbox) => boolean): WarmSandbox | undefined {
    for (const [i, list] of this.ready.entries()) {
      const at = list.findIndex((warm) => warm.sandbox.running && fits(this.entries[i]!, warm));
      if (at < 0) continue;
      const [warm] = list.splice(at, 1);
      this.fill();
      return warm;
    }
    return undefined;
  }

  status(): WarmPoolStatus[] {
    return this.entries.map((entry, i) => ({
      entry,
      ready: this.ready[i]!.length,
      starting: this.starting === i,
      ...(this.failing[i] !== undefined ? { failing: this.failing[i] } : {}),
    }));
  }

  /** Stops filling and ends every sandbox not handed off, waiting until they are gone. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    this.abort.abort();
    const all = this.ready.flatMap((list) => list.splice(0));
    await Promise.all([...all.map((warm) => this.discard(warm)), this.inflight]);
  }

  /** Kills a sandbox that will never serve, and waits until what it held is given back. */
  private async discard(warm: WarmSandbox): Promise<void> {
    await warm.sandbox.kill();
    await warm.released;
  }
}
