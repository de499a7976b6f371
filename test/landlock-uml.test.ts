// The network policy on a kernel without Landlock, for real: Debian's 6.1
// User-Mode Linux kernel (see test/helpers/uml.ts). The script inside is
// test/fixtures/uml-landlock.mjs; each case below reads its verdict.
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES } from './helpers/backend.js';
import { runInUml, umlUnavailable, type UmlRun } from './helpers/uml.js';

interface Result {
  facts: Record<string, unknown>;
  cases: Record<string, { ok: boolean; detail: unknown }>;
}

const CASES = [
  "no Landlock: 'auto' spawns and runs the worker, and preflight warns naming Landlock",
  "no Landlock: 'required' refuses spawn and build naming Landlock, and leaks nothing",
];

const unavailable = umlUnavailable();
let run: UmlRun<Result> | undefined;

beforeAll(async () => {
  if (unavailable) return;
  run = await runInUml<Result>({ script: path.join(FIXTURES, 'uml-landlock.mjs'), timeoutMs: 150_000 });
  console.log(`UML: ${Math.round(run.ms)} ms, ${JSON.stringify(run.result?.facts)}`);
}, 160_000);

describe.skipIf(unavailable)(`networkPolicy in User-Mode Linux (6.1, no Landlock)${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
  it('boots, runs the script to its end and reports', () => {
    const diagnosis = `exit ${run?.exitCode}, timed out ${run?.timedOut}\nstderr: ${run?.stderr.slice(-3000)}\nconsole: ${run?.console.slice(-1500)}`;
    expect(run?.result, diagnosis).not.toBeNull();
    expect(run?.exitCode, diagnosis).toBe(0);
    expect(Object.keys(run!.result!.cases).sort()).toEqual([...CASES].sort());
  });

  it.each(CASES)('%s', (name) => {
    const verdict = run?.result?.cases[name];
    expect(verdict, `no verdict; stderr: ${run?.stderr.slice(-2000)}`).toBeDefined();
    expect(verdict!.ok, String(verdict!.detail)).toBe(true);
  });
});
