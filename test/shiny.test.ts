// A real Shiny app in the sandbox, started the way a hosting server does it:
// the default command `Rscript <workerMount>/app.R`.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { WorkerExitEvent } from '../src/backend.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { testConfig } from './helpers/backend.js';
import { isRoot, waitFor } from './helpers/proc.js';

// Ports 20200-20209 and UIDs 61200-61209 belong to this file.
const hasShiny = spawnSync('/usr/bin/Rscript', ['-e', 'library(shiny)'], { stdio: 'ignore' }).status === 0;
const bundlePath = fileURLToPath(new URL('../examples/shiny/', import.meta.url));

describe.runIf(hasShiny)('Shiny in the sandbox', () => {
  const backend = new ProcessBackend(testConfig([20200, 20209], [61200, 61209]));
  afterAll(() => backend.close());

  it('serves the app as the worker UID, reports usage, and stops gracefully', async () => {
    await backend.spawn({ appId: 'shiny', workerId: 'shiny-1', bundlePath, workerMount: '/tmp/app', rVersion: '' });
    expect(await waitFor(() => backend.healthCheck('shiny-1', { timeoutMs: 500 }), 30000, 100)).toBe(true);
    const addr = await backend.addr('shiny-1');
    const page = await (await fetch(`http://${addr}/`)).text();
    expect(page).toContain('<title>Hello from procyard</title>');
    expect(page).toContain('shiny');
    const usage = await backend.workerResourceUsage('shiny-1');
    // R with shiny loaded is well over 50 MB.
    expect(usage!.memoryUsageBytes).toBeGreaterThan(50 * 1024 * 1024);
    const lines: string[] = [];
    const stream = await backend.logs('shiny-1');
    for await (const line of stream) {
      lines.push(line);
      if (line.startsWith('Listening on')) break;
    }
    expect(lines[0]).toMatch(new RegExp(`^app\\.R: R \\d+\\.\\d+\\.\\d+ as uid ${isRoot ? 61200 : 0}$`));
    expect(lines.at(-1)).toBe(`Listening on http://${addr}`);
    const exits: WorkerExitEvent[] = [];
    backend.on('exit', (e: WorkerExitEvent) => exits.push(e));
    await backend.stop('shiny-1');
    // R died of the SIGTERM itself: the sandbox was not SIGKILLed at the end of the grace.
    // 128 + SIGTERM, as bwrap reports its child's death; the grace's SIGKILL would show as 137 or signal SIGKILL.
    expect(exits).toEqual([{ workerId: 'shiny-1', code: 143, signal: null }]);
    expect(await backend.healthCheck('shiny-1')).toBe(false);
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  });

  it('rejects a pinned R version that is no longer installed, leaking nothing', async () => {
    await expect(
      backend.spawn({ appId: 'shiny', workerId: 'shiny-2', bundlePath, workerMount: '/tmp/app', rVersion: '3.0.1' }),
    ).rejects.toThrow('R 3.0.1 was available at deploy time but is no longer installed');
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
  });
});
