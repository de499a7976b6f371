// npm run demo: preflight, then a real sandboxed Shiny app (or a Node app when
// R/shiny are missing): its URL, health, usage, logs and a graceful stop; then
// the same app started cold and from the warm pool, side by side.
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { ProcessBackend, runPreflight } from 'procyard';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));
const config = {
  process: {
    portRangeStart: 10000,
    portRangeEnd: 10099,
    // A closed loopback port: the demo never sends traffic off this machine.
    metadataAddr: '127.0.0.1:1',
    stopGraceMs: 5000,
  },
  // Under /tmp the mount point lives in the sandbox's own tmpfs: no host dir needed.
  storage: { bundleWorkerPath: '/tmp/app' },
};

function step(title) {
  console.log(`\n== ${title}`);
}

function portIsFree(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

step('preflight');
const report = await runPreflight(config);
for (const r of report.results) console.log(`${r.severity.padEnd(8)} ${r.name.padEnd(24)} ${r.message.split('\n')[0]}`);
console.log(`summary: ${JSON.stringify(report.summary)}`);

const hasShiny = spawnSync('Rscript', ['-e', 'library(shiny)'], { stdio: 'ignore' }).status === 0;
const spec = hasShiny
  ? { appId: 'demo', workerId: 'demo-shiny', bundlePath: here('./shiny'), workerMount: '/tmp/app' }
  : {
      appId: 'demo',
      workerId: 'demo-node',
      bundlePath: here('./node-app'),
      workerMount: '/tmp/app',
      cmd: [process.execPath, '/tmp/app/server.mjs'],
    };

const backend = new ProcessBackend(config);
let failed = false;
try {
  step(hasShiny ? 'spawn a Shiny app (Rscript app.R) in bwrap' : 'R/shiny not found: spawn a Node web app in bwrap');
  const started = performance.now();
  await backend.spawn(spec);
  console.log(`spawn() resolved in ${(performance.now() - started).toFixed(1)} ms`);
  const addr = await backend.addr(spec.workerId);
  console.log(`URL: http://${addr}/`);

  step('ready and healthy');
  // Resolves once the app's own listener (its UID's) accepts; rejects if it exits first or after 60 s.
  await backend.waitReady(spec.workerId, { timeoutMs: 60000 });
  console.log(`ready after ${((performance.now() - started) / 1000).toFixed(2)} s; healthCheck: ${await backend.healthCheck(spec.workerId)}`);
  const page = await (await fetch(`http://${addr}/`)).text();
  console.log(`GET / -> ${page.length} bytes, title: ${/<title>([^<]*)<\/title>/.exec(page)?.[1] ?? '(none)'}`);

  step('resource usage (whole sandbox tree)');
  await backend.workerResourceUsage(spec.workerId);
  await new Promise((r) => setTimeout(r, 500));
  const usage = await backend.workerResourceUsage(spec.workerId);
  console.log(`rss: ${(usage.memoryUsageBytes / 2 ** 20).toFixed(1)} MiB, cpu: ${usage.cpuPercent.toFixed(1)} %`);
  console.log(`held: ${JSON.stringify(backend.inUse)}`);
} catch (err) {
  failed = true;
  console.error(`demo failed: ${err.message}`);
} finally {
  step('last log lines');
  const stream = await backend.logs(spec.workerId).catch(() => null);
  if (stream) {
    const lines = [];
    const reading = (async () => {
      for await (const line of stream) lines.push(line);
    })();
    await new Promise((r) => setTimeout(r, 100));
    stream.close();
    await reading;
    for (const line of lines.slice(-8)) console.log(`  | ${line}`);

    step('graceful stop (SIGTERM to the app, SIGKILL after stopGraceMs)');
    const port = Number((await backend.addr(spec.workerId)).split(':')[1]);
    const stopStarted = performance.now();
    await backend.stop(spec.workerId);
    console.log(`stopped in ${(performance.now() - stopStarted).toFixed(0)} ms`);
    console.log(`port ${port} free again: ${await portIsFree(port)}; held: ${JSON.stringify(backend.inUse)}`);
  }
  await backend.close();
}

/** From the spawn call to the first byte of the app's page (GET / tried every 5 ms), then a stop. */
async function firstByteMs(b, workerSpec) {
  const started = performance.now();
  await b.spawn(workerSpec);
  const url = `http://${await b.addr(workerSpec.workerId)}/`;
  for (let i = 0; i < 12000; i++) {
    const answered = await fetch(url).then(() => true, () => false);
    if (answered) break;
    await new Promise((r) => setTimeout(r, 5));
  }
  const ms = performance.now() - started;
  await b.stop(workerSpec.workerId);
  return ms;
}

if (hasShiny && !failed) {
  step('cold and warm side by side: spawn to the first byte of the page');
  // The warm pool keeps a sandbox started ahead with shiny loaded (README: "The warm pool").
  const pooled = new ProcessBackend({ ...config, process: { ...config.process, warmPool: [{ size: 1 }] } });
  try {
    const status = () => pooled.warmPoolStatus()[0];
    for (let i = 0; i < 600 && status()?.ready !== 1 && status()?.failing === undefined; i++) await new Promise((r) => setTimeout(r, 50));
    if (status()?.ready !== 1) {
      console.log(`no warm sandbox here (${status()?.failing ?? 'the warm pool needs root and Linux 5.12+'}): cold only`);
      console.log(`cold: ${(await firstByteMs(pooled, { ...spec, workerId: 'demo-cold' })).toFixed(0)} ms`);
    } else {
      const warm = await firstByteMs(pooled, { ...spec, workerId: 'demo-warm' });
      const cold = await firstByteMs(pooled, { ...spec, workerId: 'demo-cold' });
      console.log(`cold (R starts, loads shiny, then serves): ${cold.toFixed(0)} ms`);
      console.log(`warm (a pool sandbox takes the app):     ${warm.toFixed(0)} ms`);
    }
  } catch (err) {
    failed = true;
    console.error(`demo failed: ${err.message}`);
  } finally {
    await pooled.close();
  }
}
process.exitCode = failed ? 1 : 0;
