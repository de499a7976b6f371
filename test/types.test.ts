// The published types as a consumer sees them: test/types/consumer.ts is
// compiled with tsc against dist/index.d.ts (built by the global setup).
// Typed events and exported error classes (issue 14).
import { execFile } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TYPES = path.join(ROOT, 'test', 'types');
const TSC = path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

function tsc(project: string): Promise<{ code: number; out: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [TSC, '-p', project], { cwd: ROOT, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

describe('the package types', () => {
  const source = readFileSync(path.join(TYPES, 'consumer.ts'), 'utf8').split('\n');
  const stripped = path.join(TYPES, `.stripped-${process.pid}.ts`);
  const project = path.join(TYPES, `.tsconfig-${process.pid}.json`);
  let asIs: { code: number; out: string };
  let withoutMarkers: { code: number; out: string };

  // Both compilations at once: tsc start-up dominates.
  beforeAll(async () => {
    writeFileSync(stripped, source.map((l) => l.replace('// @ts-expect-error', '// (was: expect error)')).join('\n'));
    const config = JSON.parse(readFileSync(path.join(TYPES, 'tsconfig.json'), 'utf8')) as { files: string[] };
    writeFileSync(project, JSON.stringify({ ...config, files: [path.basename(stripped)] }));
    [asIs, withoutMarkers] = await Promise.all([tsc(path.join(TYPES, 'tsconfig.json')), tsc(project)]);
  }, 60_000);

  afterAll(() => {
    rmSync(stripped, { force: true });
    rmSync(project, { force: true });
  });

  it('compile for a consumer, with every @ts-expect-error line an error', () => {
    // An unused @ts-expect-error is itself an error (TS2578): code 0 means each one caught something.
    expect(asIs.out).toBe('');
    expect(asIs.code).toBe(0);
  });

  it('report exactly those lines as errors once the markers are gone (wrong event name, field, listener, payload, option)', () => {
    const expected = source.flatMap((line, i) => (line.includes('// @ts-expect-error') ? [i + 2] : []));
    expect(expected.length).toBe(5);
    expect(withoutMarkers.code).not.toBe(0);
    const lines = [...withoutMarkers.out.matchAll(/\.stripped-\d+\.ts\((\d+),\d+\): error (TS\d+)/g)].map((m) => Number(m[1]));
    expect(lines).toEqual(expected);
    expect(withoutMarkers.out).toContain("'\"exited\"' is not assignable to parameter of type '\"exit\"'");
    expect(withoutMarkers.out).toContain("Property 'wrkerId' does not exist on type 'WorkerExitEvent'");
  });
});
