// Worker logs: a line splitter that never stalls, and a ring bounded in lines
// and in the bytes the server really holds, with many readers.
import type { LogStream } from '../backend.js';

/** Longest line kept whole, in UTF-8 bytes; longer ones are split into pieces of at most this. */
export const MAX_LINE = 64 * 1024;

/** What a held line costs beyond its characters: V8's string header and the ring's slot. */
const LINE_OVERHEAD = 32;
/** Anything V8 cannot keep one byte per character (it then keeps two). */
const NOT_ASCII = /[^\x00-\x7f]/;

/**
 * Bytes of server heap a line costs: one per character for ASCII, two for
 * anything else (an upper bound: V8 stores Latin-1 in one byte too). bytes is
 * the line's UTF-8 length when known: equal to its length means ASCII unless
 * invalid bytes were replaced (U+FFFD).
 */
export function retainedBytes(line: string, utf8Bytes = -1): number {
  const oneByte = utf8Bytes === line.length ? !NOT_ASCII.test(line) : utf8Bytes < 0 && !NOT_ASCII.test(line);
  return (oneByte ? line.length : 2 * line.length) + LINE_OVERHEAD;
}

/** Largest cut <= max at the start of a UTF-8 sequence (a cut never splits a character). */
function utf8Cut(buf: Buffer, start: number, max: number): number {
  let cut = start + max;
  for (let back = 0; back < 3 && cut > start + 1 && (buf[cut]! & 0xc0) === 0x80; back++) cut--;
  return cut;
}

/**
 * Splits a byte stream into lines. Works on bytes: a newline is one byte in
 * UTF-8 and never inside a character. Each line is decoded from its own bytes
 * into a fresh string, so a kept line never pins the chunk it came from (a
 * substring of a 64 KiB chunk would). A line longer than MAX_LINE goes out in
 * pieces as it arrives, so the pending buffer stays bounded and the reader
 * never has a reason to stop (a stopped reader blocks the worker on its next
 * write to a full pipe).
 */
export class LineSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  constructor(private readonly emit: (line: string, utf8Bytes: number) => void) {}

  push(chunk: Buffer | string): void {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    let start = 0;
    for (let nl = buf.indexOf(10, start); nl >= 0; nl = buf.indexOf(10, start)) {
      this.emitLine(this.takePending(buf, start, nl));
      start = nl + 1;
    }
    if (start < buf.length) {
      // Copied: keeping a view would pin the whole chunk.
      this.pending.push(Buffer.from(buf.subarray(start)));
      this.pendingBytes += buf.length - start;
    }
    if (this.pendingBytes >= MAX_LINE) {
      const data = this.takePending(buf, 0, 0);
      let at = 0;
      while (data.length - at >= MAX_LINE) {
        const cut = utf8Cut(data, at, MAX_LINE);
        this.emitPiece(data, at, cut);
        at = cut;
      }
      if (at < data.length) {
        this.pending.push(Buffer.from(data.subarray(at)));
        this.pendingBytes = data.length - at;
      }
    }
  }

  /** Emits a final unterminated line, if any. */
  end(): void {
    if (this.pendingBytes > 0) {
      const data = this.takePending(Buffer.alloc(0), 0, 0);
      this.emitPiece(data, 0, data.length);
    }
  }

  /** The pending bytes followed by buf[start, end), as one buffer; pending is emptied. */
  private takePending(buf: Buffer, start: number, end: number): Buffer {
    if (this.pendingBytes === 0) return buf.subarray(start, end);
    const parts = [...this.pending, buf.subarray(start, end)];
    this.pending = [];
    this.pendingBytes = 0;
    return Buffer.concat(parts);
  }

  private emitLine(line: Buffer): void {
    let end = line.length;
    if (end > 0 && line[end - 1] === 13) end--;
    if (end === 0) {
      this.emit('', 0);
      return;
    }
    for (let at = 0; at < end; ) {
      const cut = end - at > MAX_LINE ? utf8Cut(line, at, MAX_LINE) : end;
      this.emitPiece(line, at, cut);
      at = cut;
    }
  }

  private emitPiece(buf: Buffer, start: number, end: number): void {
    this.emit(buf.toString('utf8', start, end), end - start);
  }
}

/**
 * The last lines of a worker, bounded both in count (maxLines) and in the
 * server memory they take (maxBytes, counted by retainedBytes): a worker that
 * floods wide characters cannot grow the server's heap past maxBytes. The
 * newest line is always kept, so the bound is maxBytes or one line, whichever
 * is larger.
 */
export class LogRing {
  /** A circular buffer that grows up to maxLines (most workers never fill it). */
  private slots: string[] = [];
  private costs: number[] = [];
  private head = 0;
  private count = 0;
  private bytes = 0;
  /** Sequence number of the next line to be written. */
  private written = 0;
  private closed = false;
  private waiters: (() => void)[] = [];

  constructor(
    readonly maxLines: number,
    readonly maxBytes = Number.POSITIVE_INFINITY,
  ) {}

  /** Bytes of server memory the held lines take (see retainedBytes). */
  get retained(): number {
    return this.bytes;
  }

  push(line: string, utf8Bytes = -1): void {
    if (this.closed) return;
    const cost = retainedBytes(line, utf8Bytes);
    while (this.count > 0 && (this.count >= this.maxLines || this.bytes + cost > this.maxBytes)) this.evict();
    if (this.count === this.slots.length) this.grow();
    const i = (this.head + this.count) % this.slots.length;
    this.slots[i] = line;
    this.costs[i] = cost;
    this.count++;
    this.bytes += cost;
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
    for (let seq = this.oldest(); seq < this.written; seq++) out.push(this.at(seq));
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
              yield ring.at(cursor++);
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
    return this.written - this.count;
  }

  private at(seq: number): string {
    return this.slots[(this.head + (seq - this.oldest())) % this.slots.length]!;
  }

  private evict(): void {
    this.slots[this.head] = '';
    this.bytes -= this.costs[this.head]!;
    this.head = (this.head + 1) % this.slots.length;
    this.count--;
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Doubles the slots (up to maxLines), oldest line first. */
  private grow(): void {
    const size = Math.min(Math.max(16, this.slots.length * 2), this.maxLines);
    const slots: string[] = new Array<string>(size);
    const costs: number[] = new Array<number>(size);
    for (let k = 0; k < this.count; k++) {
      const i = (this.head + k) % this.slots.length;
      slots[k] = this.slots[i]!;
      costs[k] = this.costs[i]!;
    }
    this.slots = slots;
    this.costs = costs;
    this.head = 0;
  }
}

/**
 * A worker's line made safe for the operator's terminal: the app controls its
 * output, and an escape sequence (ESC, CSI, OSC...) could rewrite the screen
 * or the window title, or worse on some terminals. Control characters other
 * than tab are shown as \xNN.
 */
export function printable(line: string): string {
  return line.replace(/[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}
