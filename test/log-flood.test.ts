// Log flood: one worker writes log lines as fast as it can for 5 s while
// another is health-checked every 50 ms. Every check must answer, the
// server's memory must stay bounded by the ring, and the flooding worker must
// keep writing through procyard at a good part of its /dev/null rate:
// procyard's reader holds it back only past the loop share of log-budget.ts
// (a stalled reader would stop it at 64 KiB).
// The /dev/null rate is sampled by the same worker in slices interleaved with
// the flood, so load from other test files running alongside hits both alike.
//
// Then floods of empty and one-letter lines (`yes ''`, `yes x`) from a worker
// that barely uses any CPU itself: the server's loop, a neighbour's health
// checks and the flooder's own stop must not notice (log-budget.ts).
import { chmodSync, existsSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn as spawnChild, type ChildProcess } from 'node:child_process';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { WorkerExitEvent } from '../src/backend.js';
import { LogBudget, LOOP_SHARE, logBudget } from '../src/process/log-budget.js';
import { LineSplitter } from '../src/process/logs.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { NODE, appSpec, tempDir, testConfig } from './helpers/backend.js';
import { waitFor } from './helpers/proc.js';

// Ports 23400-23409 and UIDs 64400-64409 belong to this file.
const PORTS: [number, number] = [23400, 23409];
const UIDS: [number, number] = [64400, 64409];
const LOG_LINES = 1000;
const FLOOD_SECONDS = 5;

interface Rate {
  bytes: number;
  seconds: number;
  rate: number;
}

interface FloodReport {
  stdout: Rate;
  devnull: Rate;
  /** Number of the last line written to stdout. */
  lastStdoutLine: number;
  maxWriteMs: number;
}

let backend: ProcessBackend;
const transfer = tempDir('procyard-flood-');

beforeAll(() => {
  chmodSync(transfer.dir, 0o777);
  backend = new ProcessBackend(testConfig(PORTS, UIDS, { logLines: LOG_LINES }));
});

afterAll(async () => {
  await backend.close();
  transfer.cleanup();
});

function floodSpec(id: string, seconds: number) {
  return appSpec(id, 'serve', { cmd: [NODE, '/tmp/app/flood.mjs', String(seconds), id], transferDir: transfer.dir });
}

function readReport(id: string): FloodReport | null {
  const file = path.join(transfer.dir, `${id}.json`);
  return existsSync(file) ? (JSON.parse(readFileSync(file, 'utf8')) as FloodReport) : null;
}

/** Resolves on the worker's exit event (without reading its logs: that would load the loop). */
function waitExit(id: string): Promise<void> {
  return new Promise((resolve) => {
    const onExit = (e: WorkerExitEvent) => {
      if (e.workerId !== id) return;
      backend.off('exit', onExit);
      resolve();
    };
    backend.on('exit', onExit);
  });
}

/** A 10 ms timer's ticks and longest gap between them, until stop(): what a server's own timers would see. */
function timerGaps(): { stop(): { ticks: number; maxGap: number } } {
  let ticks = 0;
  let maxGap = 0;
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    ticks++;
  }, 10);
  return {
    stop() {
      clearInterval(timer);
      return { ticks, maxGap };
    },
  };
}

describe('log flood', () => {
  it(`keeps health checks answering, memory bounded and the writer unblocked during a ${FLOOD_SECONDS} s flood`, async () => {
    await backend.spawn(appSpec('steady'));
    expect(await waitFor(() => backend.healthCheck('steady', { timeoutMs: 500 }), 10000, 25)).toBe(true);

    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    const checks: { ok: boolean; ms: number }[] = [];
    const exited = waitExit('flood');
    await backend.spawn(floodSpec('flood', FLOOD_SECONDS));
    let done = false;
    void exited.then(() => (done = true));
    const deadline = performance.now() + (FLOOD_SECONDS + 15) * 1000;
    while (!done && performance.now() < deadline) {
      const started = performance.now();
      const ok = await backend.healthCheck('steady', { timeoutMs: 2000 });
      checks.push({ ok, ms: performance.now() - started });
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
      await new Promise((r) => setTimeout(r, 50));
    }
    if (!done) await backend.removeResource({ id: 'flood', kind: 'container', labels: {} });
    expect(done, 'the flooding worker never finished: blocked on a pipe nobody reads?').toBe(true);
    await exited;
    const flood = readReport('flood');
    expect(flood, 'flood report').not.toBeNull();

    // The ring holds the last LOG_LINES lines, the newest being the last one written to stdout.
    const lines: string[] = [];
    const stream = await backend.logs('flood');
    for await (const line of stream) lines.push(line);
    expect(lines.length).toBe(LOG_LINES);
    expect(lines.at(-1)).toMatch(new RegExp(`^${flood!.lastStdoutLine} 127\\.0\\.0\\.1 `));
    await backend.stop('flood');

    const failed = checks.filter((c) => !c.ok);
    const slowest = Math.max(...checks.map((c) => c.ms));
    const { stdout, devnull } = flood!;
    const ratio = stdout.rate / devnull.rate;
    const summary =
      `flood ${(stdout.rate / 1e6).toFixed(0)} MB/s through procyard vs ${(devnull.rate / 1e6).toFixed(0)} MB/s to /dev/null ` +
      `(ratio ${ratio.toFixed(2)}, longest write ${flood!.maxWriteMs.toFixed(1)} ms, ${(stdout.bytes / 1e6).toFixed(0)} MB); ` +
      `${checks.length} health checks, slowest ${slowest.toFixed(1)} ms; ` +
      `RSS growth ${((rssPeak - rssBefore) / 1e6).toFixed(0)} MB`;
    console.log(`log flood: ${summary}`);

    expect(failed, summary).toEqual([]);
    // About every 50 ms for 5 s, minus the time each check takes.
    expect(checks.length, summary).toBeGreaterThanOrEqual(40);
    expect(slowest, summary).toBeLessThan(1000);
    // How much gets written depends on the machine's load (other suites share
    // the cores), so no absolute floor here: the rate is judged against the
    // /dev/null peer below. The flood only has to overflow the ring, so that
    // what the server keeps is the ring and not the flood.
    const ringBytes = lines.reduce((sum, l) => sum + l.length, 0);
    expect(stdout.bytes, summary).toBeGreaterThan(4 * ringBytes);
    expect(devnull.seconds, summary).toBeGreaterThan(0.5);
    expect(rssPeak - rssBefore, summary).toBeLessThan(300e6);
    // A reader that stops holds the writer at one pipe buffer (64 KiB): a ratio
    // near 0. The pipe needs CPU for the writer and this process's reader, the
    // /dev/null peer only for the writer, and the reader takes at most its
    // share of the loop (log-budget.ts): 0.46 when idle (0.8 without the
    // budget), lower on a saturated host (0.48 was seen at load 15 on 2 cores
    // without the budget).
    expect(ratio, summary).toBeGreaterThanOrEqual(0.1);

    await backend.stop('steady');
    rmSync(path.join(transfer.dir, 'flood.json'), { force: true });
  }, 60_000);
});

// Ports 34200-34209 and UIDs 54200-54209 belong to the short-line floods.
const SHORT_PORTS: [number, number] = [34200, 34209];
const SHORT_UIDS: [number, number] = [54200, 54209];
const READER_PORTS: [number, number] = [34256, 34259];
const READER_UIDS: [number, number] = [54256, 54259];
const SHORT_RING = 2000;
const SHORT_FLOOD_MS = 3000;

describe('short-line flood', () => {
  let shorts: ProcessBackend;

  beforeAll(async () => {
    shorts = new ProcessBackend(testConfig(SHORT_PORTS, SHORT_UIDS, { logLines: SHORT_RING }));
    await shorts.spawn(appSpec('neighbour'));
    expect(await waitFor(() => shorts.healthCheck('neighbour', { timeoutMs: 500 }), 10000, 25)).toBe(true);
  });

  afterAll(async () => {
    await shorts.close();
  });

  // Unbudgeted, `yes ''` at 0.1 CPU kept the server's loop ~100% busy: a 10 ms
  // timer fired 5 times a second (gaps of 200-350 ms) and a neighbour's health
  // check took 3.4 s. Budgeted: gaps of ~20 ms, checks of ~10-30 ms.
  it.each([
    ['empty', ''],
    ['one-letter', 'x'],
  ])('keeps the loop, a neighbour and stop() prompt while a worker floods %s lines', async (name, line) => {
    const id = `yes-${name}`;
    const meteredBefore = logBudget.size;
    await shorts.spawn(appSpec(id, 'serve', { cmd: ['/usr/bin/yes', line], cpuLimit: 0.1 }));

    const delay = monitorEventLoopDelay({ resolution: 10 });
    const gaps = timerGaps();
    delay.enable();
    const checks: { ok: boolean; ms: number }[] = [];
    const started = performance.now();
    for (let i = 0; i < 100 && performance.now() - started < SHORT_FLOOD_MS; i++) {
      const t = performance.now();
      const ok = await shorts.healthCheck('neighbour', { timeoutMs: 2000 });
      checks.push({ ok, ms: performance.now() - t });
      await new Promise((r) => setTimeout(r, 100));
    }
    const seconds = (performance.now() - started) / 1000;
    const { ticks, maxGap } = gaps.stop();
    delay.disable();
    const slowest = Math.max(...checks.map((c) => c.ms));
    const summary =
      `${ticks} ticks of a 10 ms timer in ${seconds.toFixed(1)} s, longest gap ${maxGap.toFixed(0)} ms ` +
      `(loop delay max ${(delay.max / 1e6).toFixed(0)} ms, p99 ${(delay.percentile(99) / 1e6).toFixed(0)} ms); ` +
      `${checks.length} health checks, slowest ${slowest.toFixed(0)} ms`;
    console.log(`flood of ${name} lines: ${summary}`);

    expect(checks.filter((c) => !c.ok), summary).toEqual([]);
    expect(slowest, summary).toBeLessThan(1000);
    // About 100 ticks a second; unbudgeted, 5.
    expect(ticks / seconds, summary).toBeGreaterThan(30);
    expect(maxGap, summary).toBeLessThan(150);

    // Another tenant starts meanwhile and its first line comes through.
    const talkerStarted = performance.now();
    await shorts.spawn(appSpec(`talker-${name}`, 'inspect'));
    const talkerLog = await shorts.logs(`talker-${name}`);
    const talkerGiveUp = setTimeout(() => talkerLog.close(), 5000);
    let talkerLine = '';
    for await (const l of talkerLog) {
      talkerLine = l;
      break;
    }
    clearTimeout(talkerGiveUp);
    const talkerMs = performance.now() - talkerStarted;
    console.log(`flood of ${name} lines: another tenant spawned and logged its first line in ${talkerMs.toFixed(0)} ms`);
    await shorts.stop(`talker-${name}`);
    expect(talkerLine, "the other tenant's first line").toMatch(/^\{"env"/);
    expect(talkerMs, 'spawn and first line of another tenant').toBeLessThan(3000);

    // The flooder's lines are there: the ring is full of them, in order.
    const lines: string[] = [];
    const stream = await shorts.logs(id);
    const giveUp = setTimeout(() => stream.close(), 5000);
    for await (const l of stream) if (lines.push(l) >= SHORT_RING) break;
    clearTimeout(giveUp);
    expect(lines.length, "the flooder's ring never filled").toBe(SHORT_RING);
    expect(lines.every((l) => l === line), "a line other than the flood's").toBe(true);
    // Its pipes are metered while it runs, and not once it is gone.
    expect(logBudget.size).toBe(meteredBefore + 2);

    // Stopped while the budget pauses its pipe: the exit (which waits for EOF
    // on both pipes) comes promptly.
    const stopStarted = performance.now();
    if (name === 'empty') await shorts.stop(id);
    else await shorts.removeResource({ id, kind: 'container', labels: {} });
    const stopMs = performance.now() - stopStarted;
    expect(logBudget.size).toBe(meteredBefore);

    expect(stopMs, `stop took ${stopMs.toFixed(0)} ms`).toBeLessThan(2000);
  }, 30_000);
});

describe('a log reader that keeps up with a flood', () => {
  let server: ProcessBackend;
  beforeAll(async () => {
    server = new ProcessBackend(testConfig(READER_PORTS, READER_UIDS, { logLines: 10_000 }));
    await server.spawn(appSpec('neighbour'));
    expect(await waitFor(() => server.healthCheck('neighbour', { timeoutMs: 500 }), 10000, 25)).toBe(true);
  });
  afterAll(async () => {
    await server.close();
  });

  // A log forwarder: one JSON.stringify a line. Handed out in one run of
  // microtasks, the lines a flood keeps adding held the loop ~0.5 s at a time
  // (a neighbour's health check took ~1 s, found by a black-box attacker).
  // The slice is shared: 100 readers with one each held the loop ~0.2 s a turn.
  it.each([1, 100])('hands lines out in slices to %i reader(s): the loop, a neighbour and its own stop stay prompt', async (readers) => {
    await server.spawn(appSpec('yes', 'serve', { cmd: ['/usr/bin/yes', 'a'], cpuLimit: 0.5 }));
    let delivered = 0;
    const sink: string[] = [];
    const forwarding = Promise.all(
      Array.from({ length: readers }, async () => {
        for await (const line of await server.logs('yes')) {
          delivered++;
          sink.push(JSON.stringify({ t: Date.now(), worker: 'yes', line }));
          if (sink.length > 1000) sink.length = 0;
        }
      }),
    );
    await new Promise((r) => setTimeout(r, 500));
    const gaps = timerGaps();
    const checks: number[] = [];
    const started = performance.now();
    for (let i = 0; i < 20 && performance.now() - started < 2500; i++) {
      const t = performance.now();
      expect(await server.healthCheck('neighbour', { timeoutMs: 2000 })).toBe(true);
      checks.push(performance.now() - t);
      await new Promise((r) => setTimeout(r, 100));
    }
    const { ticks, maxGap } = gaps.stop();
    const seconds = (performance.now() - started) / 1000;
    const summary = `${delivered} lines forwarded to ${readers} reader(s); ${ticks} ticks of a 10 ms timer in ${seconds.toFixed(1)} s, longest gap ${maxGap.toFixed(0)} ms; slowest of ${checks.length} health checks ${Math.max(...checks).toFixed(0)} ms`;
    console.log(`forwarding reader: ${summary}`);
    expect(delivered, summary).toBeGreaterThan(10_000);
    expect(maxGap, summary).toBeLessThan(150);
    expect(Math.max(...checks), summary).toBeLessThan(500);
    const stopStarted = performance.now();
    await server.stop('yes');
    expect(performance.now() - stopStarted).toBeLessThan(3000);
    // The readers end once they have what the ring held.
    await forwarding;
  }, 30_000);
});

// The budget itself, on the pipes of plain processes: several floods at once
// take no more than the loop share together, each a fair part of it.
describe('log budget across workers', () => {
  it('holds four floods of newlines to the loop share together, fairly, and still sees their EOF', async () => {
    const budget = new LogBudget();
    const floods: { child: ChildProcess; ms: number; lines: number; closed: Promise<void> }[] = [];
    for (let i = 0; i < 4; i++) {
      const child = spawnChild('/usr/bin/yes', [''], { stdio: ['ignore', 'pipe', 'ignore'] });
      const flood = { child, ms: 0, lines: 0, closed: new Promise<void>((r) => child.stdout!.once('close', () => r())) };
      const splitter = new LineSplitter(() => flood.lines++);
      budget.attach(child.stdout!, (chunk) => {
        const t = performance.now();
        splitter.push(chunk);
        flood.ms += performance.now() - t;
      });
      floods.push(flood);
    }
    const gaps = timerGaps();
    const started = performance.now();
    await new Promise((r) => setTimeout(r, 2000));
    const wall = performance.now() - started;
    const { maxGap } = gaps.stop();
    const spent = floods.map((f) => f.ms);
    const total = spent.reduce((a, b) => a + b, 0);
    const summary = `spent ${spent.map((ms) => ms.toFixed(0)).join('+')} ms of ${wall.toFixed(0)} ms; ${floods.map((f) => f.lines).join(', ')} lines; longest gap ${maxGap.toFixed(0)} ms`;
    console.log(`four floods: ${summary}`);

    for (const f of floods) f.child.kill('SIGKILL');
    // EOF comes through even to a paused pipe (it resumes with the window).
    const closed = await Promise.race([Promise.all(floods.map((f) => f.closed)).then(() => true), new Promise((r) => setTimeout(() => r(false), 5000))]);
    expect(closed, "a flood's pipe never closed").toBe(true);
    expect(budget.size).toBe(0);

    // Measured inside the callbacks, as the budget does; some slack for the
    // chunk that overruns a window. Unbudgeted, this was ~100%.
    expect(total / wall, summary).toBeLessThan(LOOP_SHARE + 0.1);
    expect(total / wall, summary).toBeGreaterThan(LOOP_SHARE / 4);
    for (const ms of spent) expect(ms, summary).toBeGreaterThan(total / 4 / 3);
    expect(maxGap, summary).toBeLessThan(150);
  }, 20_000);
});
