// Section 4: spawn to ready. From the spawn call to the first accepted TCP
// connection on the worker's port, for a minimal node server inside the
// sandbox (backend.spawn) and for the same server started without one
// (child_process.spawn): the difference is what the sandbox costs an app.
import { spawn as cpSpawn } from 'node:child_process';
import net from 'node:net';
import { ProcessBackend } from '../dist/index.js';
import { backendConfig, exitWaiter, sleep, summary, withTimeout, workerSpec } from './lib.js';

// Accepts and drops; the client closes first, so no TIME_WAIT lands on the server's port.
export const SERVER =
  "require('net').createServer((s) => s.on('error', () => {})).listen(Number(process.env.SHINY_PORT), '127.0.0.1')";

function tryConnect(port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/** Connects every 1 ms until accepted; the time of the first accepted connection (performance.now()). */
export async function firstAccept(port, deadlineMs, isDead) {
  const deadline = performance.now() + deadlineMs;
  while (performance.now() < deadline) {
    if (await tryConnect(port)) return performance.now();
    if (isDead()) throw new Error(`server on port ${port} exited before accepting`);
    await sleep(1);
  }
  throw new Error(`server on port ${port} did not accept within ${deadlineMs} ms`);
}

export async function runReady({ bundle, runs, ports, uids, plainPorts }) {
  const backend = new ProcessBackend(backendConfig(ports, uids));
  const waiter = exitWaiter(backend);
  const plainChildren = new Set();
  let seq = 0;

  const sandboxed = async () => {
    const id = `ready-${seq++}`;
    let dead = false;
    waiter.expect(id).then(() => (dead = true));
    const t0 = performance.now();
    await backend.spawn(workerSpec(id, bundle, [process.execPath, '-e', SERVER]));
    const port = Number((await backend.addr(id)).split(':')[1]);
    try {
      return (await firstAccept(port, 15000, () => dead)) - t0;
    } finally {
      await backend.stop(id);
    }
  };
  const plain = async (i) => {
    const port = plainPorts[0] + (i % (plainPorts[1] - plainPorts[0] + 1));
    const t0 = performance.now();
    const child = cpSpawn(process.execPath, ['-e', SERVER], {
      env: { PATH: '/usr/bin:/bin', SHINY_PORT: String(port) },
      stdio: 'ignore',
    });
    plainChildren.add(child);
    let dead = false;
    const exited = new Promise((resolve) => child.once('exit', () => resolve((dead = true))));
    try {
      return (await firstAccept(port, 15000, () => dead)) - t0;
    } finally {
      child.kill('SIGKILL');
      await withTimeout(exited, 10000, 'plain server exit');
      plainChildren.delete(child);
    }
  };

  try {
    await backend.cleanupOrphanResources();
    await sandboxed();
    await plain(0);
    const samples = { sandboxed: [], plain: [] };
    for (let i = 0; i < runs; i++) {
      samples.sandboxed.push(await sandboxed());
      samples.plain.push(await plain(i + 1));
    }
    return {
      sandboxed: { ...summary(samples.sandboxed), samples: samples.sandboxed },
      plain: { ...summary(samples.plain), samples: samples.plain },
    };
  } finally {
    for (const child of plainChildren) child.kill('SIGKILL');
    waiter.dispose();
    await backend.close();
  }
}
