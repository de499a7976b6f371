#!/usr/bin/env node
// The procyard command: preflight a host, or run one sandboxed worker.
import { renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { loadConfig, ConfigError, type Config } from './config.js';
import type { CheckResult, PreflightReport, Severity } from './preflight/report.js';

function readConfig(file: string | undefined): Config {
  return file ? loadConfig(file) : {};
}

function fail(message: string, code = 2): never {
  process.stderr.write(`procyard: ${message}\n`);
  process.exit(code);
}

// ---------------------------------------------------------------- preflight

const COLORS: Record<Severity, string> = { ok: '32', info: '36', warning: '33', error: '31' };

/** A plain table: severity, name, message (the message is never cut: it holds the fix). */
function formatReport(report: PreflightReport, color = false): string {
  const sev = (s: Severity) => {
    const text = s.toUpperCase().padEnd(7);
    return color ? `\x1b[${COLORS[s]}m${text}\x1b[0m` : text;
  };
  const nameWidth = Math.max(5, ...report.results.map((r: CheckResult) => r.name.length));
  const lines = [
    `${'SEVERITY'.padEnd(7)}  ${'CHECK'.padEnd(nameWidth)}  MESSAGE`,
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
  mount: string;
  id?: string;
  transfer?: string;
  env?: Record<string, string>;
}

function collectEnv(value: string, previous: Record<string, string> | undefined): Record<string, string> {
  const eq = value.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`expected KEY=VALUE, got "${value}"`);
  return { ...previous, [value.slice(0, eq)]: value.slice(eq + 1) };
}

/** Written whole or not at all: a reader polling for the file never sees half a port. */
function writePortFile(file: string, port: string): void {
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, `${port}\n`);
  renameSync(tmp, file);
}

async function runCommand(cmd: string[], opts: RunOptions): Promise<void> {
  const config = readConfig(opts.config);
  const { ProcessBackend } = await import('./process/process-backend.js');
  let backend: InstanceType<typeof ProcessBackend>;
  try {
    backend = new ProcessBackend(config);
  } catch (err) {
    fail((err as Error).message, 1);
  }
  const workerId = opts.id ?? `procyard-run-${process.pid}`;
  const bundlePath = path.resolve(opts.bundle ?? process.cwd());

  let stopping = false;
  let exitCode = 0;
  const exited = new Promise<void>((resolve) => {
    backend.on('exit', (event: { workerId: string; code: number | null; signal: string | null }) => {
      if (event.workerId !== workerId) return;
      if (!stopping) {
        process.stderr.write(
          `procyard: worker ${workerId} exited on its own (${event.signal ? `signal ${event.signal}` : `code ${event.code}`})\n`,
        );
        exitCode = event.code ?? 1;
      }
      resolve();
    });
  });

  let markStarted: (ok: boolean) => void = () => {};
  const started = new Promise<boolean>((resolve) => (markStarted = resolve));
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
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

  try {
    await backend.spawn({
      appId: 'procyard-run',
      workerId,
      bundlePath,
      workerMount: opts.mount,
      cmd,
      env: opts.env ?? {},
      ...(opts.transfer ? { transferDir: path.resolve(opts.transfer) } : {}),
    });
  } catch (err) {
    markStarted(false);
    await backend.close();
    fail(`could not start the worker: ${(err as Error).message}`, 1);
  }
  markStarted(true);

  const logs = await backend.logs(workerId);
  const drained = (async () => {
    for await (const line of logs) process.stdout.write(`${line}\n`);
  })();

  const addr = await backend.addr(workerId);
  const port = addr.slice(addr.lastIndexOf(':') + 1);
  process.stdout.write(`procyard: worker ${workerId} started; address ${addr} (bundle ${bundlePath} at ${opts.mount})\n`);
  if (opts.portFile) writePortFile(opts.portFile, port);

  await exited;
  await drained;
  logs.close();
  await backend.close();
  process.exit(exitCode);
}

// ---------------------------------------------------------------- program

function buildProgram(): Command {
  const program = new Command('procyard')
    .description('Run app workers (R/Shiny or any command) sandboxed by bubblewrap')
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
    .option('--port-file <file>', 'write the worker\'s port (SHINY_PORT) to this file once it has started')
    .option('--bundle <dir>', 'host directory mounted read-only at --mount (default: the current directory)')
    .option('--mount <path>', 'where the bundle appears inside the sandbox', '/app')
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
