// In-memory allocators over the native bitset: the default for one server.
import { randomInt } from 'node:crypto';
import { Bitset, closeFd, reservePort, type NativeBitset } from '../../native.js';
import { ExhaustedError, type Allocators, type PortAllocator, type PortLease, type UidAllocator } from './types.js';

/** Closes a held listener once; safe when the spawn call already closed it. */
export function closeListener(lease: PortLease): void {
  if (lease.listenerFd >= 0) {
    closeFd(lease.listenerFd);
    lease.listenerFd = -1;
  }
}

/**
 * Binds 127.0.0.1:port and returns the listener fd, or -1 when another
 * program has the port. Other errors propagate.
 */
export function tryBindPort(port: number): number {
  try {
    return reservePort(port);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE') return -1;
    throw err;
  }
}

export class MemoryPortAllocator implements PortAllocator {
  private readonly bits: NativeBitset;

  constructor(
    private readonly start: number,
    private readonly end: number,
  ) {
    this.bits = new Bitset(end - start + 1);
  }

  async reserve(): Promise<PortLease> {
    // From a random start, wrapping: a worker cannot tell which port the next
    // worker gets. A port bound by another program is skipped: held while we
    // look further, then handed back, so the next reserve tries it again.
    const skipped: number[] = [];
    const from = randomInt(this.bits.size);
    let wrapped = false;
    // Every free index >= from is held by the time the scan wraps, so after
    // wrapping alloc() only finds those below from.
    const next = (index: number): number => {
      const found = this.bits.alloc(index);
      if (found >= 0 || wrapped) return found;
      wrapped = true;
      return this.bits.alloc(0);
    };
    try {
      for (let index = next(from); index >= 0; index = next(index + 1)) {
        const listenerFd = tryBindPort(this.start + index);
        if (listenerFd >= 0) return { port: this.start + index, listenerFd };
        skipped.push(index);
      }
      throw new ExhaustedError('port', this.start, this.end);
    } finally {
      for (const index of skipped) this.bits.release(index);
    }
  }

  async release(lease: PortLease): Promise<void> {
    closeListener(lease);
    this.bits.release(lease.port - this.start);
  }

  inUse(): number {
    return this.bits.inUse;
  }
}

/**
 * UIDs least recently used first: a queue of free UIDs; a released one goes
 * to the back, so the next worker never gets the UID of the one that just
 * ended (and what it left behind) while another UID is free.
 */
export class MemoryUidAllocator implements UidAllocator {
  /** Free indexes, a ring: `count` of them from `head`. */
  private readonly queue: Int32Array;
  private head = 0;
  private count: number;
  private readonly bits: NativeBitset;

  constructor(
    private readonly start: number,
    private readonly end: number,
  ) {
    const size = end - start + 1;
    this.bits = new Bitset(size);
    // From a random point: a restarted server does not start over on the UIDs its predecessor used.
    const first = randomInt(size);
    this.queue = Int32Array.from({ length: size }, (_, i) => (first + i) % size);
    this.count = size;
  }

  async alloc(): Promise<number> {
    if (this.count === 0) throw new ExhaustedError('uid', this.start, this.end);
    const index = this.queue[this.head]!;
    this.head = (this.head + 1) % this.queue.length;
    this.count--;
    this.bits.claim(index);
    return this.start + index;
  }

  async release(uid: number): Promise<void> {
    const index = uid - this.start;
    if (index < 0 || index >= this.queue.length || !this.bits.release(index)) return;
    this.queue[(this.head + this.count) % this.queue.length] = index;
    this.count++;
  }

  inUse(): number {
    return this.bits.inUse;
  }
}

export function memoryAllocators(ports: [number, number], uids: [number, number]): Allocators {
  return {
    ports: new MemoryPortAllocator(ports[0], ports[1]),
    uids: new MemoryUidAllocator(uids[0], uids[1]),
    cleanupOrphans: async () => {},
    close: async () => {},
  };
}
