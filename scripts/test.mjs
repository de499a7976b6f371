#!/usr/bin/env node
// npm test: the suite under each Node version users run, then one closing line
// `N passed, N failed, N skipped` that sums every run; non-zero exit on any failure.
//
//   Node 24 (active LTS)   every test file
//   Node 22 (maintenance)  the native, backend and pack suites
//   this machine's node    the same files, when it is another major (Node 20 here)
//
// Node 22 and 24 are the official x64 binaries from the npm registry, installed
// into test/nodes/ (its own project and lockfile: as a dependency of the main
// one their `node` bin would land in node_modules/.bin, and every npm script
// would then run under it instead of the machine's node). vitest runs under
// each Node, and the tests use process.execPath as the node inside sandboxes,
// so workers run under it too.
//
// Arguments are passed to every vitest run (`npm test -- test/native.test.ts`).
// PROCYARD_TEST_NODES=machine runs only the machine's node (the whole suite).
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, linkSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const NODES = path.join(ROOT, 'test', 'nodes');
const SUBSET = ['test/native.test.ts', 'test/backend.test.ts', 'test/pack.test.ts'];
const VITEST = path.join(ROOT, 'node_modules', 'vitest', 'vitest.mjs');
const filters = process.argv.slice(2);

function say(line) {
  console.log(`\n[npm test] ${line}`);
}

function nodeVersion(node) {
  const r = spawnSync(node, ['-p', 'process.versions.node'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

/** The registry's Node binaries, installed from test/nodes/package-lock.json when missing. */
function registryNodes() {
  if (process.env.PROCYARD_TEST_NODES === 'machine') {
    say('PROCYARD_TEST_NODES=machine: only the machine\'s node runs the suite');
    return null;
  }
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    say(`skipping Node 22 and 24: test/nodes has the linux-x64 binaries only, this host is ${process.platform}-${process.arch}; the machine's node runs the whole suite`);
    return null;
  }
  const bins = { 24: path.join(NODES, 'node_modules', 'node24', 'bin', 'node'), 22: path.join(NODES, 'node_modules', 'node22', 'bin', 'node') };
  const lock = JSON.parse(readFileSync(path.join(NODES, 'package-lock.json'), 'utf8'));
  const wanted = (alias) => lock.packages[`node_modules/${alias}`].version;
  // npm 12 too: the pack test installs the tarball with it.
  const npm12 = path.join(NODES, 'node_modules', 'npm12', 'package.json');
  const current = () =>
    Object.entries(bins).every(([m, bin]) => existsSync(bin) && nodeVersion(bin) === wanted(`node${m}`)) &&
    existsSync(npm12) && JSON.parse(readFileSync(npm12, 'utf8')).version === wanted('npm12');
  if (!current()) {
    say(`installing Node ${wanted('node24')} and ${wanted('node22')}, and npm ${wanted('npm12')}, into test/nodes (npm ci, from the npm registry)`);
    const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund'], { cwd: NODES, stdio: 'inherit' });
    if (r.status !== 0 || !current()) {
      say('could not install Node 22 and 24 (see above); fix that, or run PROCYARD_TEST_NODES=machine npm test');
      process.exit(1);
    }
  }
  return { 24: sandboxVisible(bins[24]), 22: sandboxVisible(bins[22]) };
}

/**
 * Every worker sandbox mounts its own tmpfs over /tmp, so a node binary under
 * /tmp (a checkout there) would not exist inside it: give it a copy elsewhere.
 */
function sandboxVisible(bin) {
  const real = realpathSync(bin);
  if (!real.startsWith('/tmp/')) return real;
  const version = nodeVersion(real);
  const copy = path.join('/var/tmp', `procyard-test-node-v${version}`, 'node');
  if (!existsSync(copy) || statSync(copy).size !== statSync(real).size) {
    mkdirSync(path.dirname(copy), { recursive: true, mode: 0o755 });
    rmSync(copy, { force: true });
    try {
      linkSync(real, copy);
    } catch {
      copyFileSync(real, copy);
    }
  }
  say(`${real} is under /tmp, which sandboxes hide: using ${copy}`);
  return copy;
}

function runVitest(label, node, files) {
  const out = mkdtempSync(path.join(tmpdir(), 'procyard-vitest-'));
  const json = path.join(out, 'results.json');
  const version = nodeVersion(node);
  say(`Node ${version}: ${label}`);
  const started = Date.now();
  // Every node child of the run (npm, npx, #!/usr/bin/env node) is this Node too.
  const env = { ...process.env, PATH: `${path.dirname(node)}:${process.env.PATH ?? ''}` };
  const r = spawnSync(node, [VITEST, 'run', '--reporter=default', '--reporter=json', `--outputFile.json=${json}`, ...files, ...filters], {
    cwd: ROOT,
    env,
    stdio: 'inherit',
  });
  const seconds = Math.round((Date.now() - started) / 1000);
  const counts = { passed: 0, failed: 0, skipped: 0 };
  let note = '';
  if (existsSync(json)) {
    const report = JSON.parse(readFileSync(json, 'utf8'));
    counts.passed = report.numPassedTests;
    counts.failed = report.numFailedTests;
    counts.skipped = report.numPendingTests + report.numTodoTests;
    // A file that failed outside any test (an import error, a failed beforeAll) counts once.
    const broken = report.testResults.filter((f) => f.status === 'failed' && !f.assertionResults.some((a) => a.status === 'failed'));
    counts.failed += broken.length;
    if (broken.length) note = `; ${broken.length} file(s) failed outside a test`;
  }
  if (r.status !== 0 && counts.failed === 0) {
    counts.failed = 1;
    note += `; vitest exited ${r.status ?? r.signal} without a failed test`;
  }
  rmSync(out, { recursive: true, force: true });
  say(`Node ${version}, ${label}: ${counts.passed} passed / ${counts.failed} failed / ${counts.skipped} skipped in ${seconds} s${note}`);
  return counts;
}

const registry = registryNodes();
const machine = process.execPath;
const runs = [];
if (!registry) runs.push(['the whole suite', machine, []]);
else {
  runs.push(['the whole suite', registry[24], []], ['native, backend and pack suites', registry[22], SUBSET]);
  const own = nodeVersion(machine)?.split('.')[0];
  if (own !== '24' && own !== '22') runs.push(['native, backend and pack suites (the machine\'s node)', machine, SUBSET]);
}
const total = { passed: 0, failed: 0, skipped: 0 };
for (const [label, node, files] of runs) {
  // A filter names its own files: a run whose files it excludes would find none.
  const named = filters.some((f) => f.startsWith('test/'));
  const counts = runVitest(named ? `${filters.join(' ')} (asked for)` : label, node, named ? [] : files);
  for (const k of Object.keys(total)) total[k] += counts[k];
}
console.log(`\n${total.passed} passed, ${total.failed} failed, ${total.skipped} skipped`);
process.exit(total.failed > 0 ? 1 : 0);
