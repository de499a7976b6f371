// Real redis-server processes for tests: one server, or a 3-master cluster,
// on 127.0.0.1 in a temp dir, without automatic persistence.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const REDIS_SERVER = '/usr/bin/redis-server';
const REDIS_CLI = '/usr/bin/redis-cli';

export interface RedisServer {
  url: string;
  port: number;
  /** Data dir: a restart loads dump.rdb from here after `stop({ save: true })`. */
  dir: string;
  /**
   * Stops the server and removes its dir. With `save` it writes dump.rdb
   * first and keeps the dir, so restart() brings the data back.
   */
  stop(opts?: { save?: boolean }): Promise<void>;
  /** Starts it again on the same port and dir. */
  restart(): Promise<void>;
}

export interface RedisCluster {
  nodes: { host: string; port: number }[];
  stop(): Promise<void>;
}

// A test that dies before its afterAll must not leave servers holding the ports.
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of live) child.kill('SIGKILL');
});

/** Starts redis-server and resolves once it accepts connections; rejects with its output when it exits. */
function launch(args: string[], dir: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(REDIS_SERVER, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    child.once('exit', () => live.delete(child));
    let output = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`redis-server ${args.join(' ')} not ready after 10 s:\n${output}`));
    }, 10_000);
    const onData = (chunk: Buffer): void => {
      output += chunk.toString();
      if (output.includes('Ready to accept connections')) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        // Keep draining so a chatty server never blocks on a full pipe.
        child.stdout!.resume();
        resolve(child);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited (${code ?? signal}) before it was ready:\n${output}`));
    });
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

function baseArgs(port: number, dir: string): string[] {
  return ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--daemonize', 'no'];
}

export async function startRedis({ port, password }: { port: number; password?: string }): Promise<RedisServer> {
  const dir = mkdtempSync(path.join(tmpdir(), `procyard-redis-${port}-`));
  const args = [...baseArgs(port, dir), ...(password ? ['--requirepass', password] : [])];
  let child = await launch(args, dir);
  const auth = password ? ['-a', password, '--no-auth-warning'] : [];
  return {
    url: `redis://${password ? `:${encodeURIComponent(password)}@` : ''}127.0.0.1:${port}`,
    port,
    dir,
    async stop({ save = false } = {}) {
      if (save) {
        await run(REDIS_CLI, ['-p', String(port), ...auth, 'SHUTDOWN', 'SAVE']);
        await exited(child);
        return;
      }
      child.kill('SIGKILL');
      await exited(child);
      rmSync(dir, { recursive: true, force: true });
    },
    async restart() {
      mkdirSync(dir, { recursive: true });
      child = await launch(args, dir);
    },
  };
}

/** Three masters (no replicas) on `ports`; the cluster bus uses port + 10000. */
export async function startCluster(ports: number[]): Promise<RedisCluster> {
  const dir = mkdtempSync(path.join(tmpdir(), 'procyard-redis-cluster-'));
  const children: ChildProcess[] = [];
  const stop = async (): Promise<void> => {
    for (const child of children) child.kill('SIGKILL');
    await Promise.all(children.map(exited));
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const port of ports) {
      children.push(
        await launch(
          [
            ...baseArgs(port, dir),
            '--cluster-enabled', 'yes',
            '--cluster-config-file', `nodes-${port}.conf`,
            '--cluster-node-timeout', '2000',
          ],
          dir,
        ),
      );
    }
    await run(REDIS_CLI, ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    // `create` returns before every node has heard of every slot.
    const deadline = Date.now() + 15_000;
    for (const port of ports) {
      for (;;) {
        const { stdout } = await run(REDIS_CLI, ['-p', String(port), 'CLUSTER', 'INFO']);
        if (stdout.includes('cluster_state:ok')) break;
        if (Date.now() > deadline) throw new Error(`cluster node ${port} not ok after 15 s:\n${stdout}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  } catch (err) {
    await stop();
    throw err;
  }
  return { nodes: ports.map((port) => ({ host: '127.0.0.1', port })), stop };
}
