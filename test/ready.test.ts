// waitReady: the caller waits for the worker's own listener without writing
// a polling loop (issue 14). Real sandboxes, a real Shiny app where R is
// installed. Ports 24350-24359 and UIDs 65350-65359 belong to this file.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { WorkerNotFoundError } from '../src/backend.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { WorkerNotReadyError } from '../src/process/readiness.js';
import { NODE, appSpec, testConfig } from './helpers/backend.js';

const hasShiny = spawnSync('/usr/bin/Rscript', ['-e', 'library(shiny)'], { stdio: 'ignore' }).status === 0;
const shinyBundle = fileURLToPath(new URL('../examples/shiny/', import.meta.url));
const backend = new ProcessBackend(testConfig([24350, 24359], [65350, 65359], { stopGraceMs: 1000 }));
afterAll(() => backend.close());

/** A Node app that listens on its port after `delayMs`. */
function lateListener(id: string, delayMs: number) {
  const code = `setTimeout(() => require('http').createServer((q, s) => s.end('late\\n')).listen(+process.env.SHINY_PORT, process.env.SHINY_HOST), ${delayMs})`;
  return appSpec(id, 'serve', { cmd: [NODE, '-e', code] });
}

describe('waitReady', () => {
  it.runIf(hasShiny)('resolves once a real Shiny app accepts: the next request is answered, no retry needed', async () => {
    await backend.spawn({ appId: 'shiny', workerId: 'ready-shiny', bundlePath: shinyBundle, workerMount: '/tmp/app' });
    try {
      const t = performance.now();
      await backend.waitReady('ready-shiny', { timeoutMs: 30_000 });
      const readyAfterMs = performance.now() - t;
      // At once, not "false now, true 100 ms later".
      expect(await backend.healthCheck('ready-shiny')).toBe(true);
      const page = await (await fetch(`http://${await backend.addr('ready-shiny')}/`)).text();
      expect(page).toContain('<title>Hello from procyard</title>');
      // R takes a second or more to load shiny: the wait was real.
      expect(readyAfterMs).toBeGreaterThan(200);
    } finally {
      await backend.stop('ready-shiny');
    }
  }, 40_000);

  it('waits for an app that listens late, and resolves soon after it does', async () => {
    await backend.spawn(lateListener('late', 700));
    try {
      const t = performance.now();
      await backend.waitReady('late', { timeoutMs: 10_000 });
      const elapsed = performance.now() - t;
      expect(elapsed).toBeGreaterThan(600);
      // The backoff tops out at 100 ms between looks.
      expect(elapsed).toBeLessThan(700 + 1500);
      expect(await (await fetch(`http://${await backend.addr('late')}/`)).text()).toBe('late\n');
    } finally {
      await backend.stop('late');
    }
  });

  it('rejects as soon as the worker exits before listening, with its exit status', async () => {
    await backend.spawn(appSpec('dies', 'serve', { cmd: ['/bin/sh', '-c', 'sleep 0.3; echo giving up >&2; exit 3'] }));
    const t = performance.now();
    const err = (await backend.waitReady('dies', { timeoutMs: 20_000 }).catch((e: unknown) => e)) as WorkerNotReadyError;
    expect(err).toBeInstanceOf(WorkerNotReadyError);
    expect(err.reason).toBe('exited');
    expect(err.exit).toEqual({ code: 3, signal: null });
    expect(err.message).toMatch(/^worker "dies" exited \(code 3\) before listening on 127\.0\.0\.1:243\d\d; its last output: giving up$/);
    expect(err).toMatchObject({ exitCode: 3, signal: null, oomKilled: false, logTail: ['giving up'] });
    // Woken by the exit, not by the 20 s deadline.
    expect(performance.now() - t).toBeLessThan(3000);
    // An exited worker never becomes ready.
    await expect(backend.waitReady('dies')).rejects.toMatchObject({ reason: 'exited' });
    await backend.removeResource({ id: 'dies', kind: 'container', labels: {} });
  });

  it('has the exit status at once, while what the app left behind is still ending', async () => {
    // The app exits while a child holding 1 GiB (and its stderr) is still
    // alive: the sandbox ends ~0.1-0.2 s after the app, as the kernel frees it.
    const cmd = ['/bin/sh', '-c', 'python3 /tmp/app/slow-exit.py 1024 >/dev/null & sleep 1; exit 3'];
    await backend.spawn(appSpec('leaves', 'serve', { cmd }));
    const err = (await backend.waitReady('leaves', { timeoutMs: 20_000 }).catch((e: unknown) => e)) as WorkerNotReadyError;
    expect(err.reason).toBe('exited');
    expect(err.exit).toEqual({ code: 3, signal: null });
    await backend.removeResource({ id: 'leaves', kind: 'container', labels: {} });
  });

  it('rejects after timeoutMs, and when the signal aborts, with the worker left running', async () => {
    await backend.spawn(appSpec('silent', 'serve', { cmd: ['/bin/sleep', '30'] }));
    try {
      let t = performance.now();
      await expect(backend.waitReady('silent', { timeoutMs: 300 })).rejects.toThrow(
        /^worker "silent" is not listening on 127\.0\.0\.1:\d+ after 300 ms \(nothing listens there\)/,
      );
      expect(performance.now() - t).toBeLessThan(1500);

      const controller = new AbortController();
      t = performance.now();
      setTimeout(() => controller.abort(new Error('caller gave up')), 200);
      await expect(backend.waitReady('silent', { signal: controller.signal })).rejects.toThrow('caller gave up');
      expect(performance.now() - t).toBeLessThan(1500);
      await expect(backend.waitReady('silent', { signal: AbortSignal.abort() })).rejects.toMatchObject({ name: 'AbortError' });
      expect((await backend.listManaged()).map((r) => r.id)).toContain('silent');
      expect(await backend.healthCheck('silent')).toBe(false);
    } finally {
      await backend.stop('silent');
    }
  });

  it('rejects an unknown id with WorkerNotFoundError and a bad timeout with a RangeError', async () => {
    await expect(backend.waitReady('nobody')).rejects.toBeInstanceOf(WorkerNotFoundError);
    await backend.spawn(appSpec('bad-timeout', 'serve', { cmd: ['/bin/sleep', '30'] }));
    try {
      for (const timeoutMs of [-1, Number.NaN, '100' as unknown as number])
        await expect(backend.waitReady('bad-timeout', { timeoutMs })).rejects.toBeInstanceOf(RangeError);
    } finally {
      await backend.stop('bad-timeout');
    }
  });

});
