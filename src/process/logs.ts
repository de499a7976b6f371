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
  if (line.length === 0) return LINE_OVERHEAD;
  const oneByte = utf8Bytes === line.length ? !NOT_ASCII.test(line) : utf8Bytes < 0 && !NOT_ASCII.test(line);
  return (oneByte ? line.length : 2 * line.length) + LINE_OVERHEAD;
}

/**
 * Largest cut <= start + max at the start of a UTF-8 sequence (a cut never
 * splits a character), always past start. At the end of buf the last
 * character may be incomplete (the rest is still in the pipe): the cut is
 * then before it.
 */
function utf8Cut(buf: Buffer, start: number, max: number): number {
  let cut = Math.min(start + max, buf.length);
  if (cut === buf.length) {
    let lead = cut - 1;
    for (let back = 0; back < 3 && lead > start && (buf[lead]! & 0xc0) === 0x80; back++) lead--;
    const byte = buf[lead]!;
    const length = byte >= 0xf0 ? 4 : byte >= 0xe0 ? 3 : byte >= 0xc0 ? 2 : 1;
    return lead > start && cut - lead < length ? lead : cut;
  }
  for (let back = 0; back < 3 && cut > start + 1 && (buf[cut]! & 0xc0) === 0x80; back++) cut--;
  return cut;
}

/** Lines up to this many bytes are found and compared in JS (see emitShort). */
const SHORT_LINE = 32;

/**
 * Index of the next newline in buf from start, or -1. With scanFirst the first
 * SHORT_LINE bytes are scanned in JS, then (as always otherwise) indexOf (memchr).
 */
function nextNewline(buf: Buffer, start: number, scanFirst: boolean): number {
  if (!scanFirst) return buf.indexOf(10, start);
  const stop = Math.min(buf.length, start + SHORT_LINE + 1);
  for (let i = start; i < stop; i++) if (buf[i] === 10) return i;
  return stop < buf.length ? buf.indexOf(10, stop) : -1;
}

/**
 * Splits a byte stream into lines. Works on bytes: a newline is one byte in
 * UTF-8 and never inside a character. Each line is decoded from its own bytes
 * into a fresh string, so a kept line never pins the chunk it came from (a
 * substring of a 64 KiB chunk would). A line longer than MAX_LINE goes out in
 * pieces as it arrives, so the pending buffer stays bounded and the reader
 * never has to stop for a long line (it stops only past its share of the
 * event loop: log-budget.ts).
 */
export class LineSplitter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** The last short line, as string and bytes (see emitShort). */
  private lastShort = '';
  private readonly lastShortBytes = Buffer.alloc(SHORT_LINE);
  private lastShortLength = -1;

  constructor(private readonly emit: (line: string, utf8Bytes: number) => void) {}

  push(chunk: Buffer | string): void {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk, 'utf8') : chunk;
    let start = 0;
    // After a short line the next newline is looked for in JS first: for the
    // short lines of a flood a native indexOf call costs more than the line.
    let short = false;
    for (let nl = nextNewline(buf, start, short); nl >= 0; nl = nextNewline(buf, start, short)) {
      short = this.pendingBytes === 0 && nl - start <= SHORT_LINE;
      if (short) this.emitShort(buf, start, nl);
      else this.emitLine(this.takePending(buf, start, nl));
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

  /**
   * A short line, the stuff of floods ("\n", "y\n"): equal to the previous
   * short line, it is emitted as the same string (no decoding, no new string).
   */
  private emitShort(buf: Buffer, start: number, end: number): void {
    if (end > start && buf[end - 1] === 13) end--;
    const len = end - start;
    if (len === 0) {
      this.emit('', 0);
      return;
    }
    const last = this.lastShortBytes;
    let same = len === this.lastShortLength;
    for (let i = 0; same && i < len; i++) same = buf[start + i] === last[i];
    if (!same) {
      buf.copy(last, 0, start, end);
      this.lastShortLength = len;
      this.lastShort = buf.toString('utf8', start, end);
    }
    this.emit(this.lastShort, len);
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

/** How long log readers, all together, hand out lines before they let the event loop turn. */
const READER_SLICE_MS = 2;

/** When the readers' current run of handing out began (-1: none yet in this turn of the loop). */
let sliceStart = -1;

/** Time spent handing out lines in this turn of the loop, by every reader. */
function sliceSpent(): number {
  const now = performance.now();
  if (sliceStart < 0) {
    sliceStart = now;
    setImmediate(() => (sliceStart = -1));
  }
  return now - sliceStart;
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

  /** The last n lines held, oldest first. */
  tail(n: number): string[] {
    const out: string[] = [];
    for (let seq = Math.max(this.oldest(), this.written - n); seq < this.written; seq++) out.push(this.at(seq));
    return out;
  }

  /**
   * Replays what the ring holds (its last `tail` lines only, when given),
   * then follows until close() or the reader's close(); with follow false it
   * ends once it has handed out what was held when it was made.
   */
  reader(opts: { tail?: number; follow?: boolean } = {}): LogStream {
    let cursor = opts.tail === undefined ? this.oldest() : Math.max(this.oldest(), this.written - opts.tail);
    const end = opts.follow === false ? this.written : Number.POSITIVE_INFINITY;
    let stopped = false;
    let wakeReader: (() => void) | null = null;
    const ring = this;
    const stream: LogStream = {
      close() {
        stopped = true;
        wakeReader?.();
      },
      async *[Symbol.asyncIterator]() {
        // Lines held are handed out in one run of microtasks, which nothing
        // else on the loop can interrupt: a reader keeping up with a flood
        // (the ring refilled as fast as it is read) held the loop for ~0.5 s.
        // So once the readers together have spent READER_SLICE_MS in this
        // turn of the loop, each lets the loop turn before it goes on.
        let handed = 0;
        try {
          while (!stopped) {
            // A reader that fell behind the ring skips to what is still held.
            cursor = Math.max(cursor, ring.oldest());
            if (cursor >= end) return;
            if (cursor < ring.written) {
              if (++handed % 16 === 0 && sliceSpent() > READER_SLICE_MS) {
                await new Promise((resolve) => setImmediate(resolve));
                continue;
              }
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
    // Called for every line: no allocation when nobody waits (the usual case in a flood).
    if (this.waiters.length === 0) return;
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
