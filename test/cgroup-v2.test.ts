// cgroup v2 on a second kernel: the per-worker limits of cgroup.test.ts
// again, inside Debian's User-Mode Linux (cgroup v2 with memory, cpu and
// pids), booted once for the whole file. The script that runs inside is
// test/fixtures/uml-cgroup.mjs; each case below reads its verdict.
import path from 'node:path';
import { FIXTURES } from './helpers/backend.js';
import { describeUmlCases } from './helpers/uml.js';

const CASES = [
  'no cgroups: required refuses spawn and build, naming the problem',
  'no cgroups: auto runs unlimited and never fails for it',
  "no cgroup2: networkPolicy 'required' refuses spawn and build, naming cgroup2",
  'v2: preflight says where, and the server moves into a leaf to hand controllers down',
  'v2: a memory limit kills the hog, and the exit event says oomKilled',
  'v2: updateResources raises the limit live, and the same allocation then succeeds',
  'v2: socket buffers count against memory.max (no separate counter to cap, unlike v1)',
  'v2: a fork bomb stays at or under pidsLimit',
  "v2: killing a worker's cgroup resolves once its processes have ended",
  "v2: the socket hooks on the instance directory: no worker reaches another, the server reaches them; under 'off' it does",
  "v2: no cgroup is left after stop, SIGKILL, exit and close; a dead server's are removed",
];

// Booted without cgroup2: the script mounts it after the no-cgroup cases.
describeUmlCases('cgroup v2 in User-Mode Linux', CASES, {
  script: path.join(FIXTURES, 'uml-cgroup.mjs'),
  cgroup2: false,
  timeoutMs: 240_000,
});
