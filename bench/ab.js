// A/B of ProcessBackend.spawn between this checkout and another build of
// procyard (a checkout with its dist/ and build/ made), in one process, the
// two taking turns spawn by spawn (which goes first alternates), so drift on
// a shared machine hits both alike. Prints p50/p90 of each and their ratio.
//
//   node bench/ab.js OTHER_CHECKOUT [PAIRS=200] [JSON process config for both]
//
// Example, the cost of a change with the newer features off in both:
//   node bench/ab.js ../procyard-old 200 '{"allocator":"memory","resourceLimits":"off","networkPolicy":"off"}'
// (an older build ignores keys it does not know only if it predates strict
// config checks; pass what both accept). Uses ports 31800-31899 and worker
// UIDs 51800-51899.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { WORKER_MOUNT, percentile, withTimeout } from './lib.js';

const [other, pairsArg, extraArg] = process.argv.slice(2);
if (!other) {
  console.error('usage: node bench/ab.js OTHER_CHECKOUT [PAIRS] [JSON process config]');
  process.exit(2);
}
const PAIRS = Number(pairsArg ?? 200);
const extra = extraArg ? JSON.parse(extraArg) : {};
const here = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const bundle = path.join(here, 'test', 'fixtures');

async function backend(dir, ports, uids) {
  const { ProcessBackend } = await import(path.join(path.resolve(dir), 'dist', 'index.js'));
  const b = new ProcessBackend({
    process: { portRangeStart: ports[0], portRangeEnd: ports[1], workerUidStart: uids[0], workerUidEnd: uids[1], stopGraceMs: 1000, ...extra },
    storage: { bundleWorkerPath: WORKER_MOUNT },
  });
  b.setMaxListeners(0);
  return b;
}

const builds = {
  this: await backend(here, [31800, 31849], [51800, 51849]),
  other: await backend(other, [31850, 31899], [51850, 51899]),
};
const times = { this: [], other: [] };
let seq = 0;

async function once(name, record) {
  const b = builds[name];
  const id = `ab-${seq++}`;
  const exited = new Promise((resolve) =>
    b.on('exit', function onExit(e) {
      if (e.workerId !== id) return;
      b.off('exit', onExit);
      resolve();
    }),
  );
  const t = performance.now();
  await b.spawn({ appId: 'ab', workerId: id, bundlePath: bundle, workerMount: WORKER_MOUNT, cmd: ['/bin/true'] });
  if (record) times[name].push(performance.now() - t);
  await withTimeout(exited, 30000, 'sandbox exit');
  await b.removeResource({ id, kind: 'container', labels: {} });
}

try {
  for (let i = 0; i < 10; i++) for (const name of ['this', 'other']) await once(name, false);
  for (let i = 0; i < PAIRS; i++) for (const name of i % 2 ? ['this', 'other'] : ['other', 'this']) await once(name, true);
  const row = (name) => `${name.padEnd(6)} p50 ${percentile(times[name], 50).toFixed(3)} ms  p90 ${percentile(times[name], 90).toFixed(3)} ms  (${times[name].length} spawns)`;
  console.log(row('this'));
  console.log(row('other'));
  console.log(`this / other, p50: ${(percentile(times.this, 50) / percentile(times.other, 50)).toFixed(3)}`);
} finally {
  await Promise.all(Object.values(builds).map((b) => b.close()));
}
