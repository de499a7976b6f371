// The floor: bench/floor.c, compiled here with gcc, spawning the same sandbox
// with the same clone child as the native spawn, from plain C. It runs as a
// long-lived process fed batch sizes on stdin, so the bench can interleave
// its batches with the Node paths' (the same machine state for both).
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { BWRAP, WORKER_GID, sandboxCommand, withTimeout } from './lib.js';

const SOURCE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'floor.c');

/** Compiles floor.c into dir; returns the binary's path. */
export async function buildFloor(dir) {
  const out = path.join(dir, 'floor');
  await promisify(execFile)('gcc', ['-O2', '-Wall', '-o', out, SOURCE], { timeout: 60000 });
  return out;
}

/** Starts the floor with residentMb touched; batch(k) runs k spawns and resolves with their times (ms). */
export async function startFloor(binary, { bundle, residentMb, peerUid, statusPort }) {
  const { args, envObject } = sandboxCommand(bundle, peerUid, statusPort);
  const child = spawn(binary, [String(residentMb), String(peerUid), String(WORKER_GID), BWRAP, ...args], {
    env: envObject,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let failure = null;
  const exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      failure ??= new Error(`bench: floor exited ${code ?? signal}`);
      resolve();
    }),
  );
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (what) => {
    const { value, done } = await withTimeout(
      Promise.race([lines.next(), exited.then(() => ({ done: true }))]),
      120000,
      what,
    );
    if (done) throw failure ?? new Error('bench: floor closed its output');
    return value;
  };
  if ((await next('floor start-up')) !== 'ready') throw new Error('bench: floor did not say ready');
  return {
    async batch(k) {
      child.stdin.write(`${k}\n`);
      const out = [];
      for (let i = 0; i < k; i++) out.push(Number(await next('floor batch')) / 1e6);
      return out;
    },
    async close() {
      child.stdin.end();
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      if (child.exitCode === null) child.kill('SIGKILL');
    },
  };
}
