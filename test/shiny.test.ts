// A real Shiny app in the sandbox, started the way a hosting server does it:
// the default command `Rscript <workerMount>/app.R`.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import type { WorkerExitEvent } from '../src/backend.js';
import { landlockSupport, type NetworkPolicy } from '../src/process/landlock.js';
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
    // The live session over its websocket, under the default network policy
    // (Landlock on this kernel: the app binds only its port): R renders the plot.
    const { decision } = (backend as unknown as { network: NetworkPolicy }).network;
    expect(decision.enforced).toEqual({ tcp: landlockSupport().abi >= 4, scopes: landlockSupport().abi >= 6 });
    const inputs = { n: 50, '.clientdata_output_hist_width': 400, '.clientdata_output_hist_height': 300, '.clientdata_output_hist_hidden': false, '.clientdata_pixelratio': 1 };
    const messages = await shinySession(addr, inputs, (m) => m.includes('"hist":{"src":'));
    expect(messages[0]).toMatch(/^\{"config":\{"workerId":"[^"]*","sessionId":"[0-9a-f]+"/);
    expect(messages.at(-1)).toMatch(/"hist":\{"src":"data:image\/png;base64,/);
    const usage = await backend.workerResourceUsage('shiny-1');
    // R with shiny loaded is well over 50 MB.
    expect(usage!.memoryUsageBytes).toBeGreaterThan(50 * 1024 * 1024);
    const lines: string[] = [];
    const stream = await backend.logs('shiny-1');
    for await (const line of stream) {
      lines.push(line);
      if (line.startsWith('Listening on')) break;
    }
    // Any UID of the range: they go out least recently used, not lowest first.
    expect(lines[0]).toMatch(new RegExp(`^app\\.R: R \\d+\\.\\d+\\.\\d+ as uid ${isRoot ? '6120\\d' : '0'}$`));
    expect(lines.at(-1)).toBe(`Listening on http://${addr}`);
    const exits: WorkerExitEvent[] = [];
    backend.on('exit', (e: WorkerExitEvent) => exits.push(e));
    await backend.stop('shiny-1');
    // R died of the SIGTERM itself: the sandbox was not SIGKILLed at the end of the grace.
    // 128 + SIGTERM, as bwrap reports its child's death; the grace's SIGKILL would show as 137 or signal SIGKILL.
    expect(exits).toEqual([{ workerId: 'shiny-1', code: 143, signal: null, oomKilled: false, reason: 'stopped' }]);
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

/**
 * Opens a Shiny session over its websocket (as the browser does: GET
 * /websocket/ with an upgrade, then an `init` message with the inputs) and
 * collects server messages until `until` matches one; bounded by 20 s.
 */
function shinySession(addr: string, inputs: Record<string, unknown>, until: (message: string) => boolean): Promise<string[]> {
  const [host, port] = addr.split(':');
  return new Promise((resolve, reject) => {
    const messages: string[] = [];
    let socket: Socket | undefined;
    const timer = setTimeout(() => finish(new Error(`no matching message in 20 s; got: ${messages.join(' | ').slice(0, 2000)}`)), 20000);
    const finish = (err?: Error) => {
      clearTimeout(timer);
      socket?.destroy();
      if (err) reject(err);
      else resolve(messages);
    };
    const req = http.request({
      host,
      port: Number(port),
      path: '/websocket/',
      headers: { Connection: 'Upgrade', Upgrade: 'websocket', 'Sec-WebSocket-Key': randomBytes(16).toString('base64'), 'Sec-WebSocket-Version': '13' },
    });
    req.on('response', (res) => finish(new Error(`no websocket upgrade: HTTP ${res.statusCode}`)));
    req.on('error', (err) => finish(err));
    // head: what the server sent right behind its 101, in the same read (the
    // config frame, under load): it never comes as 'data'.
    req.on('upgrade', (_res, s: Socket, head: Buffer) => {
      socket = s;
      // A client frame: FIN + text, masked, 16-bit length.
      const payload = Buffer.from(JSON.stringify({ method: 'init', data: inputs }));
      const mask = randomBytes(4);
      const header = Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
      s.write(Buffer.concat([header, mask, payload.map((b, i) => b ^ mask[i % 4]!)]));
      let buffered = Buffer.from(head);
      const consume = (): void => {
        // Server frames are unmasked: opcode, 7/16/64-bit length, payload.
        for (;;) {
          if (buffered.length < 2) return;
          let length = buffered[1]! & 0x7f;
          let offset = 2;
          if (length === 126) {
            if (buffered.length < 4) return;
            length = buffered.readUInt16BE(2);
            offset = 4;
          } else if (length === 127) {
            if (buffered.length < 10) return;
            length = Number(buffered.readBigUInt64BE(2));
            offset = 10;
          }
          if (buffered.length < offset + length) return;
          const opcode = buffered[0]! & 0x0f;
          const text = buffered.subarray(offset, offset + length).toString('utf8');
          buffered = buffered.subarray(offset + length);
          if (opcode === 0x8) return finish(new Error(`websocket closed by the server; got: ${messages.join(' | ')}`));
          if (opcode !== 0x1) continue;
          messages.push(text);
          if (until(text)) return finish();
        }
      };
      s.on('data', (chunk: Buffer) => {
        buffered = Buffer.concat([buffered, chunk]);
        consume();
      });
      consume();
      s.on('error', (err) => finish(err));
    });
    req.end();
  });
}
