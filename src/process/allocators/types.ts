// One allocator interface for ports and UIDs, in memory or in Redis.

/** A reserved port. Its listener (when held) is closed inside the spawn call. */
export interface PortLease {
  port: number;
  /** fd of the 127.0.0.1 listener that keeps the port ours until the clone; -1 when not held. */
  listenerFd: number;
}

export interface PortAllocator {
  /** Claims a free port whose 127.0.0.1 bind succeeds; rejects when none is left. */
  reserve(): Promise<PortLease>;
  /** Returns the port to the pool (closes the listener if still held). */
  release(lease: PortLease): Promise<void>;
  /** Ports currently claimed by this allocator. */
  inUse(): number;
}

export interface UidAllocator {
  /** Claims a free UID; rejects when none is left. */
  alloc(): Promise<number>;
  release(uid: number): Promise<void>;
  inUse(): number;
}

export interface Allocators {
  ports: PortAllocator;
  uids: UidAllocator;
  /** Frees claims whose owner is gone (Redis); nothing to do in memory. */
  cleanupOrphans(): Promise<void>;
  /** Releases everything this instance holds. */
  close(): Promise<void>;
}

/** Thrown when a range is exhausted. */
export class ExhaustedError extends Error {
  constructor(what: 'port' | 'uid', start: number, end: number) {
    super(
      what === 'port'
        ? `no free port in ${start}-${end}: every port is claimed or bound by another program; widen process.portRangeStart/process.portRangeEnd or stop workers`
        : `no free worker UID in ${start}-${end}: widen process.workerUidStart/process.workerUidEnd or stop workers`,
    );
    this.name = 'ExhaustedError';
  }
}
