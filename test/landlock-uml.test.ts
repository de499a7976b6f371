// The network policy on a kernel without Landlock, for real: Debian's 6.1
// User-Mode Linux kernel (see test/helpers/uml.ts). The script inside is
// test/fixtures/uml-landlock.mjs; each case below reads its verdict.
import path from 'node:path';
import { FIXTURES } from './helpers/backend.js';
import { describeUmlCases } from './helpers/uml.js';

describeUmlCases(
  'networkPolicy in User-Mode Linux (6.1, no Landlock)',
  [
    "no Landlock: 'auto' spawns and runs the worker, and preflight warns naming Landlock",
    "no Landlock: 'required' refuses spawn and build naming Landlock, and leaks nothing",
  ],
  { script: path.join(FIXTURES, 'uml-landlock.mjs'), timeoutMs: 150_000 },
);
