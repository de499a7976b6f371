// Shared set-up for tests that drive a real ProcessBackend.
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { WorkerSpec } from '../../src/backend.js';
import type { Config } from '../../src/config.js';

export const FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url));
export const NODE = process.execPath;
/** The host's R loads shiny: the tests of R apps can run. */
export const HAS_SHINY = spawnSync('/usr/bin/Rscript', ['-e', 'library(shiny)'], { stdio: 'ignore' }).status === 0;

/**
 * Bundles made by a test: `make(name, files)` writes a directory of them
 * under a temp root, all readable by the worker UIDs (0755/0644).
 */
export function bundles(prefix: string): { root: string; make(name: string, files: Record<string, string>): string; cleanup(): void } {
  const root = mkdtempSync(path.join(tmpdir(), prefix));
  chmodSync(root, 0o755);
  return {
    root,
    make(name, files) {
      const dir = path.join(root, name);
      mkdirSync(dir, { mode: 0o755 });
      for (const [file, text] of Object.entries(files)) writeFileSync(path.join(dir, file), text, { mode: 0o644 });
      return dir;
    },
    cleanup: () => rmSync(root, { recursive: true, force: true }),
  };
}

/** A config whose ranges belong to one test file (so files can run side by side). */
export function testConfig(ports: [number, number], uids: [number, number], extra: Config['process'] = {}): Config {
  return {
    process: {
      portRangeStart: ports[0],
      portRangeEnd: ports[1],
      workerUidStart: uids[0],
      workerUidEnd: uids[1],
      stopGraceMs: 3000,
      ...extra,
    },
    storage: { bundleWorkerPath: '/tmp/app' },
  };
}

/** A worker running test/fixtures/app.mjs in `mode`. */
export function appSpec(workerId: string, mode = 'serve', extra: Partial<WorkerSpec> = {}): WorkerSpec {
  return {
    appId: 'test-app',
    workerId,
    bundlePath: FIXTURES,
    workerMount: '/tmp/app',
    cmd: [NODE, '/tmp/app/app.mjs', mode],
    ...extra,
  };
}

/** A temp dir removed by the returned cleanup. Mode 0777 so a worker UID can write it. */
export function tempDir(prefix = 'procyard-test-'): { dir: string; cleanup(): void } {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export async function httpGet(addr: string): Promise<string> {
  const res = await fetch(`http://${addr}/`);
  return res.text();
}
