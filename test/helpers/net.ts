// Network probes for the network-policy tests: test/fixtures/net-probe.py in a
// worker, test/fixtures/unix-peer.py and TCP listeners on the host.
import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import type { WorkerSpec } from '../../src/backend.js';
import type { ProcessBackend } from '../../src/process/process-backend.js';
import { FIXTURES, appSpec } from './backend.js';

export const PYTHON = '/usr/bin/python3';

/**
 * Runs net-probe.py with `items` (`name:kind:arg`) in a fresh worker and
 * returns each item's result. With a `x:serve:-` item the worker keeps
 * serving afterwards: the caller removes it.
 */
export async function probeWorker(
  b: ProcessBackend,
  id: string,
  items: string[],
  extra: Partial<WorkerSpec> = {},
  probeDir = '/tmp/app',
): Promise<Record<string, string>> {
  await b.spawn(appSpec(id, 'serve', { cmd: [PYTHON, path.posix.join(probeDir, 'net-probe.py'), ...items], ...extra }));
  return parseProbe(await linesUntilDone(b, id));
}

/** A worker's log lines, replayed and followed, up to the first that `until` accepts (or the end, or timeoutMs). */
export async function linesUntil(b: ProcessBackend, id: string, until: (line: string) => boolean, timeoutMs = 20000): Promise<string[]> {
  const lines: string[] = [];
  const stream = await b.logs(id);
  const timer = setTimeout(() => stream.close(), timeoutMs);
  try {
    for await (const line of stream) {
      lines.push(line);
      if (until(line)) break;
    }
  } finally {
    clearTimeout(timer);
    stream.close();
  }
  return lines;
}

/** A probe worker's log lines up to its `done` (throws when it never comes). */
export async function linesUntilDone(b: ProcessBackend, id: string, timeoutMs = 20000): Promise<string[]> {
  const lines = await linesUntil(b, id, (line) => line === 'done', timeoutMs);
  if (lines.at(-1) !== 'done') throw new Error(`probe ${id} did not finish:\n${lines.join('\n')}`);
  return lines;
}

export function parseProbe(lines: string[]): Record<string, string> {
  return Object.fromEntries(
    lines.filter((l) => /^[\w-]+=/.test(l)).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
  );
}

/** A TCP listener on 127.0.0.1:port that counts what it receives. */
export async function tcpListener(port: number): Promise<{ received: string[]; close(): Promise<void> }> {
  const received: string[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    let text = '';
    s.setEncoding('utf8');
    s.on('data', (d: string) => (text += d));
    s.on('error', () => {});
    s.on('close', () => {
      sockets.delete(s);
      received.push(text);
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

export interface UnixPeer {
  /** `received:<bytes>` lines so far (abstract mode). */
  lines: string[];
  stop(): Promise<void>;
}

/** Starts test/fixtures/unix-peer.py on the host and waits (bounded) for it to listen. */
export async function unixPeer(args: string[]): Promise<UnixPeer> {
  const child: ChildProcess = spawn(PYTHON, [path.join(FIXTURES, 'unix-peer.py'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const lines: string[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let buffered = '';
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`unix-peer ${args.join(' ')} not ready in 10 s: ${stderr}`)), 10000);
    child.stdout!.on('data', (d: Buffer) => {
      buffered += d.toString();
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        if (line === 'ready') {
          clearTimeout(timer);
          resolve();
        } else lines.push(line);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`unix-peer ${args.join(' ')} exited ${code}: ${stderr}`));
    });
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async () => {
    child.kill('SIGKILL');
    await exited;
  };
  try {
    await ready;
  } catch (err) {
    await stop();
    throw err;
  }
  return { lines, stop };
}
