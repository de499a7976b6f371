// Section 3: what ProcessBackend adds over the sandbox itself. Spawn-to-exit
// of the /bin/true sandbox through backend.spawn() (to its 'exit' event)
// against the bare bwrap round trip through the native spawn (to the pidfd
// reporting the exit). Also the main thread's own CPU time per round trip,
// the cost that turns into event-loop delay when many workers start at once.
import { closeSync, openSync, readFileSync } from 'node:fs';
import { ProcessBackend } from '../dist/index.js';
import { PidWatcherNative } from '../dist/native.js';
import { AS_ROOT, WORKER_GID, backendConfig, exitWaiter, sandboxCommand, spawnPeer, summary, withTimeout, workerSpec } from './lib.js';

/** CPU time (ms) this process's main thread has run: schedstat of the thread whose tid is the pid. */
export function mainThreadCpuMs() {
  return Number(readFileSync(`/proc/self/task/${process.pid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
}

export async function runOverhead({ bundle, rounds, ports, uids, peerUid, statusPort }) {
  const backend = new ProcessBackend(backendConfig(ports, uids));
  const waiter = exitWaiter(backend);
  const peer = sandboxCommand(bundle, peerUid, statusPort);
  const statusSink = openSync('/dev/null', 'w');
  const credentials = AS_ROOT ? { uid: peerUid, gid: WORKER_GID } : {};
  let seq = 0;

  const viaBackend = async () => {
    const id = `rt-${seq++}`;
    const exited = waiter.expect(id);
    const t0 = performance.now();
    await backend.spawn(workerSpec(id, bundle));
    const event = await withTimeout(exited, 30000, 'backend round trip');
    const ms = performance.now() - t0;
    await backend.removeResource({ id, kind: 'container', labels: {} });
    if (event.code !== 0) throw new Error(`backend sandbox exited ${JSON.stringify(event)}`);
    return ms;
  };
  const bare = async () => {
    const t0 = performance.now();
    const child = await spawnPeer(peer, credentials, statusSink);
    closeSync(child.stdout);
    closeSync(child.stderr);
    const status = await withTimeout(
      new Promise((resolve) => new PidWatcherNative(child.pidfd, resolve, true)),
      30000,
      'bare round trip',
    );
    const ms = performance.now() - t0;
    closeSync(child.pidfd);
    if (status.code !== 0) throw new Error(`bare sandbox exited ${JSON.stringify(status)}`);
    return ms;
  };

  try {
    // Settles the backend's start-up /proc scan for orphans before timing anything.
    await backend.cleanupOrphanResources();
    for (let i = 0; i < 10; i++) {
      await viaBackend();
      await bare();
    }
    const samples = { backend: [], bare: [] };
    const cpu = { backend: 0, bare: 0 };
    for (let r = 0; r < rounds; r++) {
      for (const [name, run] of [['backend', viaBackend], ['bare', bare]]) {
        const c0 = mainThreadCpuMs();
        for (let i = 0; i < 10; i++) samples[name].push(await run());
        cpu[name] += mainThreadCpuMs() - c0;
      }
    }
    return {
      backend: { ...summary(samples.backend), mainCpuMsPerRoundTrip: cpu.backend / samples.backend.length, samples: samples.backend },
      bare: { ...summary(samples.bare), mainCpuMsPerRoundTrip: cpu.bare / samples.bare.length, samples: samples.bare },
    };
  } finally {
    waiter.dispose();
    await backend.close();
    closeSync(statusSink);
  }
}
