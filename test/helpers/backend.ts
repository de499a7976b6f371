// Shared set-up for tests that drive a real ProcessBackend.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { WorkerSpec } from '../../src/backend.js';
import type { Config } from '../../src/config.js';

export const FIXTURES = fileURLToPath(new URL('../fixtures/', import.meta.url));
export const NODE = process.execPath;

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
