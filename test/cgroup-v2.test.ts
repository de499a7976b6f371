// cgroup v2 on a second kernel: the per-worker limits of cgroup.test.ts
// again, inside Debian's User-Mode Linux (cgroup v2 with memory, cpu and
// pids), booted once for the whole file. The script that runs inside is
// test/fixtures/uml-cgroup.mjs; each case below reads its verdict.
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { FIXTURES } from './helpers/backend.js';
import { runInUml, umlUnavailable, type UmlRun } from './helpers/uml.js';

interface Result {
  facts: Record<string, unknown>;
  cases: Record<string, { ok: boolean; detail: unknown; ms: number }>;
}

const CASES = [
  'no cgroups: required refuses spawn and build, naming the problem',
  'no cgroups: auto runs unlimited and never fails for it',
  'v2: preflight says where, and the server moves into a leaf to hand controllers down',
  'v2: a memory limit kills the hog, and the exit event says oomKilled',
  'v2: updateResources raises the limit live, and the same allocation then succeeds',
  'v2: a fork bomb stays at or under pidsLimit',
  "v2: no cgroup is left after stop, SIGKILL, exit and close; a dead server's are removed",
];

const unavailable = umlUnavailable();
let run: UmlRun<Result> | undefined;

beforeAll(async () => {
  if (unavailable) return;
  // Booted without cgroup2: the script mounts it after the no-cgroup cases.
  run = await runInUml<Result>({ script: path.join(FIXTURES, 'uml-cgroup.mjs'), cgroup2: false, timeoutMs: 240_000 });
  console.log(`UML: ${Math.round(run.ms)} ms, ${JSON.stringify(run.result?.facts)}`);
}, 250_000);

describe.skipIf(unavailable)(`cgroup v2 in User-Mode Linux${unavailable ? ` (skipped: ${unavailable})` : ''}`, () => {
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
