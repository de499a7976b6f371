// Worker logs: a line splitter that never stalls, and a ring with many readers.
import type { LogStream } from '../backend.js';

/** Longest line kept whole; longer ones are split into pieces of this size. */
export const MAX_LINE = 64 * 1024;

/**
 * Splits decoded text into lines. A line longer than MAX_LINE goes out in
 * MAX_LINE pieces as it arrives, so the pending buffer stays bounded and the
 * reader never has a reason to stop (a stopped reader blocks the worker on
 * its next write to a full pipe).
 */
export class LineSplitter {
  private pending = '';

  constructor(private readonly emit: (line: string) => void) {}

  push(text: string): void {
    let data = this.pending + text;
    let start = 0;
    for (let nl = data.indexOf('\n'); nl >= 0; nl = data.indexOf('\n', start)) {
      this.emitLine(data.slice(start, nl));
      start = nl + 1;
    }
    data = data.slice(start);
    while (data.length >= MAX_LINE) {
      this.emit(data.slice(0, MAX_LINE));
      data = data.slice(MAX_LINE);
    }
    this.pending = data;
  }

  /** Emits a final unterminated line, if any. */
  end(): void {
    if (this.pending.length > 0) this.emit(this.pending);
    this.pending = '';
  }

  private emitLine(line: string): void {
    const text = line.endsWith('\r') ? line.slice(0, -1) : line;
    for (let i = 0; i < text.length; i += MAX_LINE) this.emit(text.slice(i, i + MAX_LINE));
    if (text.length === 0) this.emit('');
  }
}

/** A fixed-size ring of lines with a follow-able end. */
export class LogRing {
  /** Grows to capacity (most workers never fill it), then wraps. */
  private readonly lines: string[] = [];
  /** Sequence number of the next line to be written. */
  private written = 0;
  private closed = false;
  private waiters: (() => void)[] = [];

  constructor(readonly capacity: number) {}

  push(line: string): void {
    if (this.closed) return;
    if (this.lines.length < this.capacity) this.lines.push(line);
    else this.lines[this.written % this.capacity] = line;
    this.written++;
    this.wake();
  }

  /** No more lines will come: readers finish once they have everything. */
  close(): void {
    this.closed = true;
    this.wake();
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Lines currently held, oldest first. */
  snapshot(): string[] {
    const out: string[] = [];
    for (let seq = this.oldest(); seq < this.written; seq++) out.push(this.lines[seq % this.capacity]);
    return out;
  }

  /** Replays what the ring holds, then follows until close() or the reader's close(). */
  reader(): LogStream {
    let cursor = this.oldest();
    let stopped = false;
    let wakeReader: (() => void) | null = null;
    const ring = this;
    const stream: LogStream = {
      close() {
        stopped = true;
        wakeReader?.();
      },
      async *[Symbol.asyncIterator]() {
        try {
          while (!stopped) {
            // A reader that fell behind the ring skips to what is still held.
            cursor = Math.max(cursor, ring.oldest());
            if (cursor < ring.written) {
              yield ring.lines[cursor++ % ring.capacity];
              continue;
            }
            if (ring.closed) return;
            await new Promise<void>((resolve) => {
              wakeReader = resolve;
              ring.waiters.push(resolve);
            });
            wakeReader = null;
          }
        } finally {
          stopped = true;
        }
      },
    };
    return stream;
  }

  private oldest(): number {
    return Math.max(0, this.written - this.capacity);
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}
