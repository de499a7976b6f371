// In-memory allocators over the native bitset: the default for one server.
import { closeSync } from 'node:fs';
import { Bitset, reservePort, type NativeBitset } from '../../native.js';
import { ExhaustedError, type Allocators, type PortAllocator, type PortLease, type UidAllocator } from './types.js';

/** Closes a held listener once; safe when the spawn call already closed it. */
export function closeListener(lease: PortLease): void {
  if (lease.listenerFd >= 0) {
    closeSync(lease.listenerFd);
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
    // A port bound by another program is skipped: held while we look further,
    // then handed back, so the next reserve tries it again.
    const skipped: number[] = [];
    try {
      for (let index = this.bits.alloc(); index >= 0; index = this.bits.alloc(index + 1)) {
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

export class MemoryUidAllocator implements UidAllocator {
  private readonly bits: NativeBitset;

  constructor(
    private readonly start: number,
    private readonly end: number,
  ) {
    this.bits = new Bitset(end - start + 1);
  }

  async alloc(): Promise<number> {
    const index = this.bits.alloc();
    if (index < 0) throw new ExhaustedError('uid', this.start, this.end);
    return this.start + index;
  }

  async release(uid: number): Promise<void> {
    this.bits.release(uid - this.start);
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
