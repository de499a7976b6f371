#!/usr/bin/env node
// The procyard command: preflight a host, or run one sandboxed worker.
import { randomBytes } from 'node:crypto';
import { constants as fsConstants, lstatSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import type { WorkerExitEvent } from './backend.js';
import { printable } from './process/logs.js';
import { loadConfig, ConfigError, DEFAULT_BUNDLE_WORKER_PATH, withTomlNames, type Config } from './config.js';
import type { CheckResult, PreflightReport, Severity } from './preflight/report.js';

function readConfig(file: string | undefined): Config {
  return file ? loadConfig(file) : {};
}

/** Prints the message (config fields in their TOML names: that is what CLI users write) and exits. */
function fail(message: string, code = 2): never {
  process.stderr.write(`procyard: ${withTomlNames(message)}\n`);
  process.exit(code);
}

/** The exit status of a command that cannot start, as in a shell. */
const CANNOT_START = 127;

function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

// ---------------------------------------------------------------- preflight

const COLORS: Record<Severity, string> = { ok: '32', info: '36', warning: '33', error: '31' };

/** A plain table: severity, name, message (the message is never cut: it holds the fix). */
function formatReport(report: PreflightReport, color = false): string {
  const sev = (s: Severity) => {
    const text = s.toUpperCase().padEnd(8);
    return color ? `\x1b[${COLORS[s]}m${text}\x1b[0m` : text;
  };
  const nameWidth = Math.max(5, ...report.results.map((r: CheckResult) => r.name.length));
  const lines = [
    // 'SEVERITY' is one wider than WARNING: the rows pad to the same 8.
    `${'SEVERITY'.padEnd(8)}  ${'CHECK'.padEnd(nameWidth)}  MESSAGE`,
    ...report.results.map((r) => `${sev(r.severity)}  ${r.name.padEnd(nameWidth)}  ${r.message}`),
  ];
  const { errors, warnings, info, ok } = report.summary;
  lines.push(
    '',
    `${report.results.length} checks: ${errors} error${errors === 1 ? '' : 's'}, ${warnings} warning${warnings === 1 ? '' : 's'}, ${info} info, ${ok} ok`,
  );
  return lines.join('\n') + '\n';
}

async function preflightCommand(opts: { config?: string; json?: boolean }): Promise<void> {
  const config = readConfig(opts.config);
  const { runPreflight } = await import('./preflight/index.js');
  const report = await runPreflight(config);
  process.stdout.write(
    opts.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report, process.stdout.isTTY === true),
  );
  process.exit(report.hasErrors() ? 1 : 0);
}

// ---------------------------------------------------------------- run

interface RunOptions {
  config?: string;
  portFile?: string;
  bundle?: string;
  mount?: string;
  id?: string;
  transfer?: string;
  env?: Record<string, string>;
}

function collectEnv(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`expected KEY=VALUE, got "${value}"`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

/**
 * The port file's directory, opened once at start: every later write, rename
 * and removal goes through this handle (/proc/self/fd/N/name), so a worker
 * that can write a directory on the path (its --transfer directory) cannot
 * swap a part of it for a link and take root's writes elsewhere. Symlinks
 * on the path are followed at start only when root (or this user) owns them.
 */
function pinPortFile(file: string): string {
  const full = path.resolve(file);
  const dir = path.dirname(full);
  const parts = dir.split('/').filter(Boolean);
  for (let i = 1; i <= parts.length; i++) {
    const here = `/${parts.slice(0, i).join('/')}`;
    let st;
    try {
      st = lstatSync(here);
    } catch (err) {
      fail(`--port-file ${file}: ${here}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 2);
    }
    if (st.isSymbolicLink() && st.uid !== 0 && st.uid !== process.geteuid?.())
      fail(`--port-file ${file}: ${here} is a symlink owned by uid ${st.uid}; give a path without links that others own`, 2);
  }
  let fd: number;
  try {
    fd = openSync(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  } catch (err) {
    fail(`--port-file ${file}: cannot open ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, 2);
  }
  return `/proc/self/fd/${fd}/${path.basename(full)}`;
}

/**
 * Written whole or not at all: a reader polling for the file never sees half
 * a port. The directory may be one the worker writes, so the temporary name
 * is unguessable and made new (O_EXCL, which follows no symlink): a planted
 * link never takes root's write elsewhere. The rename replaces whatever is at
 * the final name, links included. `pinned` is pinPortFile's path.
 */
function writePortFile(pinned: string, port: string): void {
  const tmp = `${pinned}.${randomBytes(8).toString('hex')}.tmp`;
  writeFileSync(tmp, `${port}\n`, { flag: 'wx', mode: 0o644 });
  renameSync(tmp, pinned);
}

async function runCommand(cmd: string[], opts: RunOptions): Promise<void> {
  const config = readConfig(opts.config);
  const mount = opts.mount ?? config.storage?.bundleWorkerPath ?? DEFAULT_BUNDLE_WORKER_PATH;
  const bundlePath = path.resolve(opts.bundle ?? process.cwd());
  const transferDir = opts.transfer ? path.resolve(opts.transfer) : undefined;

  // A command the sandbox cannot exec is an error before anything starts.
  const { commandProblem } = await import('./process/command.js');
  const problem = commandProblem(cmd[0]!, {
    bundlePath,
    workerMount: mount,
    mounts: transferDir ? [{ source: transferDir, target: '/transfer' }] : [],
    ...(opts.env?.PATH !== undefined ? { searchPath: opts.env.PATH } : {}),
  });
  if (problem) fail(`cannot start the worker: ${problem}`, CANNOT_START);

  const { ProcessBackend } = await import('./process/process-backend.js');
  let backend: InstanceType<typeof ProcessBackend>;
  try {
    backend = new ProcessBackend(config);
  } catch (err) {
    fail((err as Error).message, err instanceof ConfigError ? 2 : 1);
  }
  const workerId = opts.id ?? `procyard-run-${process.pid}`;

  // The port file names a live, listening worker: gone whenever we exit.
  const portFile = opts.portFile ? pinPortFile(opts.portFile) : null;
  let portFileWritten = false;
  process.on('exit', () => {
    try {
      if (portFileWritten && portFile) rmSync(portFile, { force: true });
    } catch {
      // the worker put a directory there: it is the worker's to keep
    }
  });

  let stopping = false;
  let execFailed = false;
  const exited = new Promise<WorkerExitEvent>((resolve) => {
    backend.on('exit', (event) => {
      if (event.workerId === workerId) resolve(event);
    });
  });

  let markStarted: (ok: boolean) => void = () => {};
  const started = new Promise<boolean>((resolve) => (markStarted = resolve));
  const onSignal = (signal: NodeJS.Signals | 'stdout closed') => {
    if (stopping) {
      if (signal === 'stdout closed') return;
      // A second Ctrl-C: no more grace.
      process.stderr.write(`procyard: ${signal} again, killing the worker\n`);
      void backend.removeResource({ id: workerId, kind: 'container', labels: {} }).finally(() => process.exit(130));
      return;
    }
    stopping = true;
    process.stderr.write(`procyard: ${signal}: stopping worker ${workerId} (SIGTERM to the app, then SIGKILL after the grace period)\n`);
    // A signal during spawn is acted on once the worker exists.
    void started.then((ok) => (ok ? backend.stop(workerId) : undefined)).catch((err: unknown) =>
      process.stderr.write(`procyard: stop failed: ${(err as Error).message}\n`),
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // The terminal closing: as for Ctrl-C, not an exit that leaves the port file behind.
  process.on('SIGHUP', onSignal);
  // The reader of our output gone (`procyard run ... | head`): as for Ctrl-C,
  // and nothing more is written there. The write error was uncaught: the CLI
  // died without stopping the worker gracefully.
  let stdoutOpen = true;
  const out = (text: string) => {
    if (stdoutOpen) process.stdout.write(text);
  };
  process.stdout.on('error', () => {
    stdoutOpen = false;
    onSignal('stdout closed');
  });

  try {
    await backend.spawn({
      appId: 'procyard-run',
      workerId,
      bundlePath,
      workerMount: mount,
      cmd,
      env: opts.env ?? {},
      ...(transferDir ? { transferDir } : {}),
    });
  } catch (err) {
    markStarted(false);
    await backend.close();
    fail(`could not start the worker: ${(err as Error).message}`, 1);
  }
  markStarted(true);

  const logs = await backend.logs(workerId);
  const drained = (async () => {
    let first = true;
    for await (const line of logs) {
      // bwrap's own report that the exec inside the sandbox failed (its first line, before the app runs).
      if (first && line.startsWith('bwrap: execvp ')) execFailed = true;
      first = false;
      out(`${printable(line)}\n`);
    }
  })();

  // Announced (and the port file written) once the worker's own listener
  // accepts; a worker that exits first was never started as a server.
  const addr = await backend.addr(workerId);
  try {
    await backend.waitReady(workerId, { timeoutMs: Infinity });
    const port = addr.slice(addr.lastIndexOf(':') + 1);
    // On stderr, like every line of procyard's own: the app's output, both
    // its streams, goes to stdout, so nothing it prints can pass for this.
    process.stderr.write(`procyard: worker ${workerId} started; address ${addr} (bundle ${bundlePath} at ${mount})\n`);
    if (portFile) {
      writePortFile(portFile, port);
      portFileWritten = true;
    }
  } catch {
    // It exited before listening: the exit handler says how.
  }

  const event = await exited;
  await drained;
  logs.close();
  await backend.close();
  if (execFailed) fail(`cannot start the worker: bwrap could not exec ${JSON.stringify(cmd[0])} in the sandbox`, CANNOT_START);
  if (stopping) process.exit(0);
  process.stderr.write(
    `procyard: worker ${workerId} exited on its own (${event.signal ? `signal ${event.signal}` : `code ${event.code}`})\n`,
  );
  process.exit(event.code ?? 1);
}

// ---------------------------------------------------------------- program

function buildProgram(): Command {
  const program = new Command('procyard')
    .description('Run app workers (R/Shiny or any command) sandboxed by bubblewrap')
    .version(packageVersion(), '-V, --version', 'print the procyard version')
    .enablePositionalOptions()
    .showHelpAfterError();

  program
    .command('preflight')
    .description('check this host for everything procyard needs; exits 1 when a check reports an error')
    .option('-c, --config <file>', 'TOML config file (the server\'s: [process], [server], [redis], ...)')
    .option('--json', 'print the report as JSON')
    .action(preflightCommand);

  program
    .command('run')
    .description('run one sandboxed worker in the foreground, streaming its logs; Ctrl-C stops it gracefully')
    .argument('<cmd...>', 'the command to run inside the sandbox (put it after --)')
    .option('-c, --config <file>', 'TOML config file')
    .option('--port-file <file>', 'write the worker\'s port (SHINY_PORT) to this file once it listens; removed at exit')
    .option('--bundle <dir>', 'host directory mounted read-only at --mount (default: the current directory)')
    .option('--mount <path>', 'where the bundle appears inside the sandbox (default: [storage] bundle_worker_path, else /app)')
    .option('--id <workerId>', 'worker id (default: procyard-run-<pid>)')
    .option('--transfer <dir>', 'host directory mounted read-write at /transfer (the worker UID must be able to write it)')
    .option('-e, --env <KEY=VALUE>', 'extra environment for the worker (repeatable)', collectEnv)
    .passThroughOptions()
    .action(runCommand);

  program.addHelpText(
    'after',
    `
Examples:
  procyard preflight --config /etc/blockyard/server.toml
  procyard preflight --json
  procyard run --bundle ./myapp -- Rscript /app/app.R
  procyard run --port-file /tmp/port -- node -e "require('http').createServer((q, s) => s.end('hi')).listen(process.env.SHINY_PORT, '127.0.0.1')"`,
  );
  return program;
}

try {
  await buildProgram().parseAsync(process.argv);
} catch (err) {
  if (err instanceof ConfigError) fail(err.message);
  throw err;
}
