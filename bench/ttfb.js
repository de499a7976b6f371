// Section 9 (issue 22): what a user waits for on an R app's first request.
// Request to the first byte of examples/shiny's page, in one run and
// interleaved: bare `Rscript` on the app (no sandbox, the port given as
// options(shiny.port), as a host with an R profile runs it), procyard cold
// (ProcessBackend.spawn, no pool) and procyard warm (a pool of one, refilled
// between runs). "Request" is the spawn call (or the exec of Rscript); the
// first byte is the response's headers arriving for GET /, tried every 5 ms.
// Also: spawn() of a warm worker against a cold one, the memory a warm
// sandbox holds, and the event loop while a pool of 4 fills.
import { spawn as cpSpawn } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { ProcessBackend, resolveRBinary } from '../dist/index.js';
import { sampleTrees } from '../dist/native.js';
import { backendConfig, sleep, summary } from './lib.js';

const APP = fileURLToPath(new URL('../examples/shiny/', import.meta.url));
const MOUNT = '/tmp/app';

/** One GET /: resolves with performance.now() at its response's first byte, or null. */
function firstByte(port) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: '/', timeout: 5000 }, (res) => {
      const at = performance.now();
      res.resume();
      res.once('end', () => resolve(at));
      res.once('error', () => resolve(at));
    });
    req.once('error', () => resolve(null));
    req.once('timeout', () => req.destroy());
  });
}

async function untilFirstByte(port, deadlineMs, isDead) {
  const deadline = performance.now() + deadlineMs;
  while (performance.now() < deadline) {
    const at = await firstByte(port);
    if (at !== null) return at;
    if (isDead()) throw new Error(`the app on port ${port} exited before answering`);
    await sleep(5);
  }
  throw new Error(`the app on port ${port} did not answer within ${deadlineMs} ms`);
}

export async function runTtfb({ runs, ports, uids }) {
  const bareUid = uids[1];
  const rscript = path.join(path.dirname(resolveRBinary('', '/usr/bin/R').path), 'Rscript');
  const third = Math.floor((ports[1] - ports[0] + 1) / 3);
  const coldConfig = backendConfig([ports[0], ports[0] + third - 1], [uids[0], uids[0] + third - 1]);
  const warmConfig = backendConfig([ports[0] + third, ports[0] + 2 * third - 1], [uids[0] + third, uids[0] + 2 * third - 1], { warmPool: [{ size: 1 }] });
  const barePorts = [ports[0] + 2 * third, ports[1]];
  const cold = new ProcessBackend(coldConfig);
  const warm = new ProcessBackend(warmConfig);
  const poolReady = async () => {
    for (let i = 0; i < 1200 && warm.warmPoolStatus()[0].ready < 1; i++) await sleep(50);
    if (warm.warmPoolStatus()[0].ready < 1) throw new Error(`the warm pool did not fill: ${JSON.stringify(warm.warmPoolStatus())}`);
  };
  const exited = new Set();
  for (const b of [cold, warm]) b.on('exit', (e) => exited.add(e.workerId));
  let seq = 0;

  const viaBackend = (b) => async () => {
    const id = `ttfb-${seq++}`;
    const t0 = performance.now();
    await b.spawn({ appId: 'ttfb', workerId: id, bundlePath: APP, workerMount: MOUNT });
    const spawnMs = performance.now() - t0;
    const port = Number((await b.addr(id)).split(':')[1]);
    try {
      return { ttfb: (await untilFirstByte(port, 60_000, () => exited.has(id))) - t0, spawnMs };
    } finally {
      await b.stop(id);
    }
  };
  const bare = async (i) => {
    const port = barePorts[0] + (i % (barePorts[1] - barePorts[0] + 1));
    const code = `options(shiny.port = ${port}L, shiny.host = "127.0.0.1"); setwd(commandArgs(TRUE)[1]); source("app.R", print.eval = TRUE)`;
    const t0 = performance.now();
    const child = cpSpawn(rscript, ['-e', code, APP], {
      stdio: 'ignore',
      env: { PATH: '/usr/bin:/bin', HOME: '/tmp', LANG: 'C.UTF-8' },
      ...(process.getuid?.() === 0 ? { uid: bareUid, gid: 65534 } : {}),
    });
    let dead = false;
    child.once('exit', () => (dead = true));
    try {
      return { ttfb: (await untilFirstByte(port, 60_000, () => dead)) - t0 };
    } finally {
      child.kill('SIGTERM');
      if (!dead) await new Promise((resolve) => child.once('exit', resolve));
    }
  };

  try {
    await poolReady();
    // One of each first: R's files into the page cache, shiny's first compile.
    await bare(0);
    await viaBackend(cold)();
    await viaBackend(warm)();
    const samples = { bare: [], cold: [], warm: [], coldSpawn: [], warmSpawn: [] };
    for (let r = 0; r < runs; r++) {
      const order = [
        ['bare', () => bare(r + 1)],
        ['cold', viaBackend(cold)],
        ['warm', async () => (await poolReady(), viaBackend(warm)())],
      ];
      // Rotated each run, so no kind always goes first.
      for (let k = 0; k < 3; k++) {
        const [name, run] = order[(r + k) % 3];
        const result = await run();
        samples[name].push(result.ttfb);
        if (result.spawnMs !== undefined) samples[`${name}Spawn`].push(result.spawnMs);
      }
    }
    await poolReady();
    // The bench reads the pool's internals: RSS of the waiting sandbox's whole tree.
    const waiting = warm.pool.ready[0][0].sandbox;
    const [tree] = await sampleTrees([waiting.pid]);
    const held = tree.rssBytes;

    // The event loop while a pool of 4 fills, against the same window idle.
    const loop = async (ms) => {
      const h = monitorEventLoopDelay({ resolution: 1 });
      h.enable();
      await sleep(ms);
      h.disable();
      return h.max / 1e6;
    };
    const idleMaxMs = await loop(2000);
    // On the bare runs' ports (done by now) and UIDs of that third no one else uses.
    const filling = new ProcessBackend(backendConfig([barePorts[0], barePorts[0] + 3], [uids[0] + 2 * third, uids[0] + 2 * third + 3], { warmPool: [{ size: 4 }] }));
    const h = monitorEventLoopDelay({ resolution: 1 });
    h.enable();
    const t0 = performance.now();
    for (let i = 0; i < 1200 && filling.warmPoolStatus()[0].ready < 4; i++) await sleep(25);
    const fillMs = performance.now() - t0;
    h.disable();
    await filling.close();
    return {
      runs,
      bare: summary(samples.bare),
      cold: summary(samples.cold),
      warm: summary(samples.warm),
      coldSpawn: summary(samples.coldSpawn),
      warmSpawn: summary(samples.warmSpawn),
      warmHeldBytes: held,
      refill: { sandboxes: 4, fillMs, loopMaxMs: h.max / 1e6, idleMaxMs },
    };
  } finally {
    await Promise.all([cold.close(), warm.close()]);
  }
}
