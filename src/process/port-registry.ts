// The workers' port ranges of every backend on this host that shares a
// runtime directory: each lists its own in `<runtimeDir>/port-ranges`, one
// file named like an instance directory (cgroup.ts instanceName) holding
// "<start> <end>". A backend's socket hooks refuse its own range on local
// addresses; from this list they refuse the others' too, so the workers of
// two servers with different ranges cannot reach each other. A backend
// watches the directory, so a new server's range is refused within
// milliseconds of its listing, before it has a worker.
import { watch, type FSWatcher } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { deadInstances, instanceName, liveInstances } from './cgroup.js';

const KIND = 'ports-';

export class PortRangeRegistry {
  private own?: string;
  private watcher?: FSWatcher;

  constructor(
    /** `<runtimeDir>/port-ranges`. */
    readonly dir: string,
    private readonly range: readonly [number, number],
  ) {}

  /** Lists this backend's range (once), and calls onChange whenever the directory changes, until close(). */
  async register(onChange: () => void): Promise<void> {
    if (this.own) return;
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    const file = path.join(this.dir, await instanceName(KIND));
    await writeFile(file, `${this.range[0]} ${this.range[1]}\n`, { mode: 0o600, flag: 'wx' });
    this.own = file;
    try {
      this.watcher = watch(this.dir, { persistent: false }, onChange);
      this.watcher.on('error', () => this.watcher?.close());
    } catch {
      // No inotify: the ranges are read again on each spawn (at most once a second).
    }
  }

  /** The other live backends' ranges (a malformed entry is skipped). */
  async others(): Promise<[number, number][]> {
    const ranges: [number, number][] = [];
    // Another backend of this very process counts as another server.
    for (const file of await liveInstances(this.dir, KIND, this.own)) {
      const text = await readFile(file, 'utf8').catch(() => '');
      const [start, end] = text.trim().split(/\s+/).map(Number);
      if (Number.isInteger(start) && Number.isInteger(end) && start! >= 1 && end! <= 65535 && start! <= end!) ranges.push([start!, end!]);
    }
    return ranges;
  }

  /** Removes the entries of servers that are gone (in this pid namespace). */
  async sweep(): Promise<string[]> {
    const dead = await deadInstances(this.dir, KIND);
    await Promise.all(dead.map((file) => rm(file, { force: true })));
    return dead;
  }

  async close(): Promise<void> {
    this.watcher?.close();
    if (this.own) await rm(this.own, { force: true });
    this.own = undefined;
  }
}

/** The ports of `ranges` outside `own`: what a backend's hooks refuse besides their own range. */
export function portsOutside(ranges: readonly (readonly [number, number])[], own: readonly [number, number]): Set<number> {
  const ports = new Set<number>();
  for (const [start, end] of ranges)
    for (let port = start; port <= end; port++) if (port < own[0] || port > own[1]) ports.add(port);
  return ports;
}
