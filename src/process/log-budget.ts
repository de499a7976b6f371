// The share of the server's event loop that workers' output may take. Every
// output chunk is split into lines and kept on the loop; a worker flooding
// short lines could keep the loop busy reading its pipe. Past its budget, a
// worker's pipe is not read until the next window: the pipe fills and the
// worker's own writes block (backpressure). Nothing is dropped: the lines wait
// in the worker's pipe, and reading (and so EOF) resumes with the window.

/** What the budget pauses: a readable socket (net.Socket). */
export interface Pausable {
  pause(): unknown;
  resume(): unknown;
  /** Bytes read but not yet handed out: non-zero means it was paused with more to give. */
  readonly readableLength: number;
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  once(event: 'close', listener: () => void): unknown;
}

/**
 * Window over which the time is counted, in ms. Short enough that the longest
 * burst of output processing (the share of one window, 12.5 ms) stays well
 * under what a timer or a health check notices; long enough that the window's
 * timer is a negligible cost.
 */
export const WINDOW_MS = 50;
/**
 * Fraction of wall time all workers' output together may take: 25%. The loop
 * keeps at least three quarters for requests, health checks and spawns
 * however many workers flood, and one worker alone still gets tens of MB/s
 * of real log lines through (a 64 KiB chunk of access-log lines takes ~0.2 ms).
 */
export const LOOP_SHARE = 0.25;

interface Meter {
  readonly stream: Pausable;
  /** Window in which spent was counted (spent is stale in any other). */
  window: number;
  spent: number;
  paused: boolean;
  /** Paused for its own share (not only because the total ran out). */
  overShare: boolean;
  /** Window at whose start it resumed from a pause. */
  resumed: number;
}

/**
 * Meters the time spent on workers' output, per window: in total against
 * LOOP_SHARE of the window, and per worker against a fair part of that (the
 * total over the number of workers that wanted more in the last window). A
 * worker over its part is paused until the window ends; when the total runs
 * out every worker with output lately is paused, so that no further chunk is
 * read in this turn of the loop. At the window's end the paused ones resume,
 * those that got least first.
 */
export class LogBudget {
  private readonly meters = new Set<Meter>();
  private readonly paused: Meter[] = [];
  private window = 0;
  private windowStart = -Infinity;
  private spent = 0;
  /** Workers that wanted more than they got in the last window (at least 1). */
  private hungry = 1;
  private timer: NodeJS.Timeout | null = null;
  private readonly budgetMs: number;

  constructor(
    private readonly windowMs = WINDOW_MS,
    share = LOOP_SHARE,
  ) {
    this.budgetMs = windowMs * share;
  }

  /**
   * Feeds stream's chunks to consume, metered; stops metering on its close.
   * The normal path costs two performance.now() calls a chunk.
   */
  attach(stream: Pausable, consume: (chunk: Buffer) => void): void {
    const meter: Meter = { stream, window: -1, spent: 0, paused: false, overShare: false, resumed: -1 };
    this.meters.add(meter);
    stream.on('data', (chunk: Buffer) => {
      const started = performance.now();
      try {
        consume(chunk);
      } finally {
        const now = performance.now();
        this.charge(meter, now - started, now);
      }
    });
    stream.once('close', () => {
      this.meters.delete(meter);
      const at = this.paused.indexOf(meter);
      if (at >= 0) this.paused.splice(at, 1);
      if (this.paused.length === 0) this.stopTimer();
    });
  }

  /** Output streams metered now (for tests: none may be left once workers are gone). */
  get size(): number {
    return this.meters.size;
  }

  private charge(meter: Meter, ms: number, now: number): void {
    if (now - this.windowStart >= this.windowMs && this.paused.length === 0) this.nextWindow(now);
    if (meter.window !== this.window) {
      meter.window = this.window;
      meter.spent = 0;
    }
    meter.spent += ms;
    this.spent += ms;
    if (this.spent >= this.budgetMs) {
      // Every worker that may have output ready, so that no other chunk is
      // read in this turn of the loop: those read from in this window, and
      // those just resumed from a pause. A quiet worker is left reading (its
      // few lines cost little), so a thousand of them cost no pause each.
      for (const m of this.meters) if (m.window === this.window || m.resumed === this.window) this.pause(m, m === meter);
    } else if (meter.spent >= this.budgetMs / this.hungry) {
      this.pause(meter, true);
    }
  }

  private pause(meter: Meter, overShare: boolean): void {
    meter.overShare ||= overShare;
    if (meter.paused) return;
    meter.paused = true;
    meter.stream.pause();
    this.paused.push(meter);
    this.timer ??= setTimeout(() => this.endWindow(), Math.max(1, this.windowStart + this.windowMs - performance.now()));
  }

  /** The window's end while some are paused: a new window, and they resume. */
  private endWindow(): void {
    this.timer = null;
    const paused = this.paused.splice(0);
    let hungry = 0;
    for (const m of paused) if (m.overShare || m.stream.readableLength > 0) hungry++;
    // Least served first: they get the first reads of the new window.
    paused.sort((a, b) => (a.window === this.window ? a.spent : 0) - (b.window === this.window ? b.spent : 0));
    this.nextWindow(performance.now());
    this.hungry = Math.max(1, hungry);
    for (const m of paused) {
      m.paused = false;
      m.overShare = false;
      m.resumed = this.window;
      m.stream.resume();
    }
  }

  private nextWindow(now: number): void {
    this.window++;
    this.windowStart = now;
    this.spent = 0;
    this.hungry = 1;
  }

  private stopTimer(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
  }
}

/** One budget per process: all workers' output shares the one event loop. */
export const logBudget = new LogBudget();
