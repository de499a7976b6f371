// The warm pool (SPEC §12, issue 22 items 2-5), with real R, real bwrap and
// real mounts: sandboxes started ahead serve R apps; a warm worker is the
// cold one (same identity, environment, mounts, privileges, policy and
// limits); the spec's values arrive byte for byte; a warm sandbox serves
// once; specs it cannot serve start cold; close() leaves nothing.
// Ports 24630-24659 and UIDs 65630-65659 belong to this file.
import { spawn } from 'node:child_process';
import diagnosticsChannel from 'node:diagnostics_channel';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerExitEvent, WorkerSpec } from '../src/backend.js';
import { kernelRelease } from '../src/native.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { SPAWN_CHANNEL, type SpawnStepMessage } from '../src/process/trace.js';
import { warmPoolProblem } from '../src/process/warm-handoff.js';
import { bundles, FIXTURES, HAS_SHINY, testConfig } from './helpers/backend.js';
import { linesUntil } from './helpers/net.js';
import { isRoot, procState, procStatus, waitFor } from './helpers/proc.js';

const usable = HAS_SHINY && warmPoolProblem(isRoot, kernelRelease()) === null;
if (!usable) console.log(`warm-pool: skipped (${HAS_SHINY ? warmPoolProblem(isRoot, kernelRelease()) : 'no R with shiny'})`);

const shinyBundle = fileURLToPath(new URL('../examples/shiny/', import.meta.url));
const made = bundles('procyard-warm-');
const bundle = made.make;

/** Spawns traced on the diagnostics channel: workerId → served warm or not. */
const served = new Map<string, boolean>();
diagnosticsChannel.subscribe(SPAWN_CHANNEL, (m) => {
  const message = m as SpawnStepMessage;
  if (message.step === 'registered' && message.warm !== undefined) served.set(message.workerId, message.warm);
});

/** Live host processes running as one of the UIDs. */
function processesOf(uids: [number, number]): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const status = procStatus(Number(name));
      const uid = Number(status.Uid?.split(/\s+/)[0]);
      if (uid >= uids[0] && uid <= uids[1] && !/^[ZX]/.test(status.State ?? '')) found.push(Number(name));
    } catch {
      // gone
    }
  }
  return found;
}

/**
 * What an app sees and is, one `name=value` line each (R): identity,
 * environment, mounts with their options, privileges, Landlock (a bind to
 * another port) and which host paths it can read. The port is printed as
 * PORT so that two workers compare.
 */
const REPORT_APP = String.raw`
port <- getOption("shiny.port")
out <- function(name, value) cat(name, "=", gsub(as.character(port), "PORT", paste(value, collapse = " "), fixed = TRUE), "\n", sep = "")
out("id", system("id", intern = TRUE))
env <- Sys.getenv()
for (n in sort(names(env))) if (!n %in% c("PWD")) out(paste0("env.", n), env[[n]])
out("env.SHINY_PORT.app", Sys.getenv("SHINY_PORT"))
for (line in readLines("/proc/self/mountinfo")) {
  f <- strsplit(line, " ")[[1]]
  dash <- which(f == "-")
  out(paste0("mount.", f[5]), paste(f[6], f[dash + 1], f[dash + 3]))
}
status <- readLines("/proc/self/status")
for (key in c("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters"))
  out(paste0("status.", key), sub("^[^:]+:\\s*", "", grep(paste0("^", key, ":"), status, value = TRUE)))
for (p in c("/etc/passwd", "/etc/shadow", "/root", "/proc/1/environ", "/tmp/app/app.R", "/blockyard-lib", "/run", "/sys/fs/cgroup", "/var/run/blockyard/token"))
  out(paste0("read.", p), file.access(p, 4))
out("write./tmp/app", file.access("/tmp/app", 2))
other <- port + 1L
bound <- tryCatch({ s <- serverSocket(other); close(s); "bound" }, error = function(e) conditionMessage(e))
out("bindOther", if (identical(bound, "bound")) "bound" else "refused")
out("wd", getwd())
out("search", search())
cat("REPORT-DONE\n")
shiny::shinyApp(shiny::fluidPage("report"), function(input, output) {})
`;

describe.runIf(usable)('the warm pool', () => {
  const data = bundle('data', { 'hello.txt': 'from the data mount\n' });
  const token = bundle('token', { token: 'a token\n' });
  const report = bundle('report', { 'app.R': REPORT_APP });
  const bytes = bundle('bytes', {
    'app.R':
      'for (n in c("MULTI", "QUOTES", "DOLLAR", "BACKSLASH", "UTF8", "EMPTY")) cat("hex", n, paste(as.character(charToRaw(Sys.getenv(n))), collapse = ""), "\\n")\n' +
      'cat("data:", readLines("/srv/data/hello.txt"), "\\n")\n' +
      'shiny::shinyApp(shiny::fluidPage("bytes"), function(input, output) {})\n',
  });
  const ENV = {
    MULTI: 'line one\nline two\n',
    QUOTES: `it's "quoted" and 'single'`,
    DOLLAR: '$HOME ${PATH} $(id) `id`',
    BACKSLASH: 'C:\\path\\n\\0 \\\\',
    UTF8: 'héllo wörld ✓ 日本 🚀',
    EMPTY: '',
  };
  const exits: WorkerExitEvent[] = [];
  const backend = new ProcessBackend(
    {
      ...testConfig([24630, 24639], [65630, 65639], { stopGraceMs: 1000, warmPool: [{ size: 2 }] }),
      server: { defaultMemoryLimit: '1g', defaultCpuLimit: 2 },
    },
  );
  backend.on('exit', (e: WorkerExitEvent) => exits.push(e));
  const cold = new ProcessBackend({
    ...testConfig([24650, 24659], [65650, 65659], { stopGraceMs: 1000 }),
    server: { defaultMemoryLimit: '1g', defaultCpuLimit: 2 },
  });
  const spec = (workerId: string, bundlePath: string, extra: Partial<WorkerSpec> = {}): WorkerSpec => ({
    appId: 'warm',
    workerId,
    bundlePath,
    workerMount: '/tmp/app',
    ...extra,
  });
  const poolReady = (n: number) => waitFor(() => backend.warmPoolStatus()[0]!.ready >= n, 60_000, 100);

  beforeAll(async () => {
    expect(await poolReady(2)).toBe(true);
  }, 70_000);

  afterAll(async () => {
    await Promise.all([backend.close(), cold.close()]);
    made.cleanup();
  });

  it('serves a standard Shiny app from a warm sandbox: ready at once, logs from the handoff, stop and exit as cold', async () => {
    const before = backend.inUse;
    expect(before).toEqual({ ports: 2, uids: 2 }); // the pool's sandboxes hold theirs
    const t = performance.now();
    await backend.spawn(spec('demo', shinyBundle));
    const spawnMs = performance.now() - t;
    expect(served.get('demo')).toBe(true);
    await backend.waitReady('demo', { timeoutMs: 10_000 });
    const readyMs = performance.now() - t;
    const page = await (await fetch(`http://${await backend.addr('demo')}/`)).text();
    expect(page).toContain('<title>Hello from procyard</title>');
    console.log(`warm: spawn ${spawnMs.toFixed(1)} ms, ready ${readyMs.toFixed(1)} ms`);
    // Usage counts from the handoff: the warm-up's seconds of CPU are not the app's (they would read as >1000%).
    expect((await backend.workerResourceUsage('demo'))!.cpuPercent).toBeLessThan(150);
    const lines = await linesUntil(backend, 'demo', (l) => l.startsWith('Listening on'));
    expect(lines[0]).toMatch(/^app\.R: R \d+\.\d+\.\d+ as uid 656[34]\d$/);
    expect(lines.join('\n')).not.toContain('procyard-warm');
    // The pool's sandboxes are nobody's workers.
    expect((await backend.listManaged()).map((r) => r.id)).toEqual(['demo']);
    await backend.stop('demo');
    expect(exits.find((e) => e.workerId === 'demo')).toEqual({ workerId: 'demo', code: 143, signal: null, oomKilled: false, reason: 'stopped' });
  }, 30_000);

  it('a warm sandbox serves one app once; the pool refills', async () => {
    expect(await poolReady(2)).toBe(true);
    const pids = new Set<number>();
    for (const id of ['once-1', 'once-2']) {
      await backend.spawn(spec(id, shinyBundle));
      expect(served.get(id)).toBe(true);
      pids.add((backend as unknown as { workers: Map<string, { sandbox: { pid: number } }> }).workers.get(id)!.sandbox.pid);
    }
    expect(pids.size).toBe(2);
    // Both taken: the next one starts cold while the pool refills.
    await backend.spawn(spec('once-3', shinyBundle));
    expect(served.get('once-3')).toBe(false);
    await Promise.all(['once-1', 'once-2', 'once-3'].map((id) => backend.stop(id)));
    expect(await poolReady(2)).toBe(true);
  }, 90_000);

  it("the spec's environment arrives byte for byte, and its data mount read-only, warm as cold", async () => {
    expect(await poolReady(1)).toBe(true);
    const extra: Partial<WorkerSpec> = { env: ENV, dataMounts: [{ source: data, target: '/srv/data', readOnly: true }] };
    await Promise.all([backend.spawn(spec('bytes-warm', bytes, extra)), cold.spawn(spec('bytes-cold', bytes, extra))]);
    expect(served.get('bytes-warm')).toBe(true);
    for (const [b, id] of [[backend, 'bytes-warm'], [cold, 'bytes-cold']] as const) {
      const lines = await linesUntil(b, id, (l) => l.startsWith('data:'));
      for (const [name, value] of Object.entries(ENV))
        expect(lines, `${id} ${name}`).toContain(`hex ${name} ${Buffer.from(value, 'utf8').toString('hex')} `);
      expect(lines).toContain('data: from the data mount ');
      await b.stop(id);
    }
  }, 60_000);

  it('a warm worker is the cold one: identity, environment, mounts and options, privileges, Landlock, limits, readable paths', async () => {
    expect(await poolReady(1)).toBe(true);
    const extra: Partial<WorkerSpec> = {
      memoryLimit: '512m',
      cpuLimit: 0.5,
      env: { APP_MODE: 'prod' },
      tokenDir: token,
      dataMounts: [{ source: data, target: '/srv/data', readOnly: true }],
    };
    await Promise.all([backend.spawn(spec('report-warm', report, extra)), cold.spawn(spec('report-cold', report, extra))]);
    expect(served.get('report-warm')).toBe(true);
    const seen = async (b: ProcessBackend, id: string) => {
      const lines = await linesUntil(b, id, (l) => l === 'REPORT-DONE');
      expect(lines.at(-1)).toBe('REPORT-DONE');
      return lines.filter((l) => /^[\w./-]+=/.test(l)).map((l) => l.replace(/\b656[3-5]\d\b/g, 'UID').replace(/Rtmp\w+/g, 'RtmpX'));
    };
    const [warm, coldSeen] = await Promise.all([seen(backend, 'report-warm'), seen(cold, 'report-cold')]);
    // Compared as sets: the order of mounts and of output lines may differ.
    expect({ onlyWarm: warm.filter((l) => !coldSeen.includes(l)), onlyCold: coldSeen.filter((l) => !warm.includes(l)) }).toEqual({ onlyWarm: [], onlyCold: [] });
    // And it did look: the worker's identity, its policy and its mounts are in there.
    expect(warm).toContain('bindOther=refused');
    expect(warm).toContain('status.NoNewPrivs=1');
    expect(warm).toContain('env.APP_MODE=prod');
    expect(warm).toContain('env.SHINY_PORT.app=PORT');
    expect(warm.some((l) => l.startsWith('mount./srv/data=ro,nosuid,nodev'))).toBe(true);
    expect(warm.some((l) => l.startsWith('mount./tmp/app=ro,nosuid,nodev'))).toBe(true);
    // Under the read-only /run, where a warm sandbox cannot make a mount point after its start.
    expect(warm.some((l) => l.startsWith('mount./run/blockyard=ro,nosuid,nodev'))).toBe(true);
    const [uw, uc] = await Promise.all([backend.workerResourceUsage('report-warm'), cold.workerResourceUsage('report-cold')]);
    expect(uw!.memoryLimitBytes).toBe(512 * 2 ** 20);
    expect(uw!.memoryLimitBytes).toBe(uc!.memoryLimitBytes);
    await Promise.all([backend.stop('report-warm'), cold.stop('report-cold')]);
  }, 60_000);

  it('starts cold what a warm sandbox cannot serve as a cold start would', async () => {
    expect(await poolReady(2)).toBe(true);
    await backend.spawn(spec('lang', shinyBundle, { env: { LANG: 'en_US.UTF-8' } }));
    await backend.spawn(spec('node', shinyBundle, { cmd: ['/usr/bin/true'] }));
    // The profile's own variable: a cold worker runs the file it names, so it starts cold.
    await backend.spawn(spec('profilevar', shinyBundle, { env: { PROCYARD_R_PROFILE_USER: '/tmp/app/app.R' } }));
    // Its library holds its own shiny: the warm R has another loaded.
    const library = bundle('library', {});
    mkdirSync(path.join(library, 'shiny'));
    await backend.spawn(spec('library', shinyBundle, { libDir: library }));
    // Less memory than the warm R holds already (about 100 MiB).
    await backend.spawn(spec('small', shinyBundle, { memoryLimit: '64m' }));
    const ids = ['lang', 'node', 'profilevar', 'library', 'small'];
    for (const id of ids) expect(served.get(id), id).toBe(false);
    await Promise.all(ids.map((id) => backend.stop(id)));
    // Read by the loader, glibc or BLAS as R starts (an attacker found LD_PRELOAD and
    // GLIBC_TUNABLES went warm, where the running R never applied them).
    const startup = { LD_PRELOAD: 'preload', GLIBC_TUNABLES: 'tunables', MALLOC_ARENA_MAX: 'malloc', OPENBLAS_NUM_THREADS: 'blas' };
    for (const [name, id] of Object.entries(startup)) await backend.spawn(spec(id, shinyBundle, { env: { [name]: name === 'LD_PRELOAD' ? '' : '1' } }));
    for (const id of Object.values(startup)) expect(served.get(id), id).toBe(false);
    expect(backend.warmPoolStatus()[0]!.ready).toBe(2);
    await Promise.all(Object.values(startup).map((id) => backend.stop(id)));
  }, 30_000);

  it('close() ends the pool: no process of its UIDs, no port or UID held, no cgroup left', async () => {
    const b = new ProcessBackend(testConfig([24640, 24642], [65640, 65642], { warmPool: [{ size: 2 }] }));
    expect(await waitFor(() => b.warmPoolStatus()[0]!.ready >= 2, 60_000, 100)).toBe(true);
    expect(processesOf([65640, 65642]).length).toBeGreaterThan(0);
    const dirs = (b as unknown as { cgroups: { instanceDirs: string[] } }).cgroups.instanceDirs;
    await b.close();
    expect(processesOf([65640, 65642])).toEqual([]);
    expect(b.inUse).toEqual({ ports: 0, uids: 0 });
    for (const dir of dirs) expect(existsSync(dir)).toBe(false);
  }, 90_000);
});

describe.runIf(usable)('the warm pool when its server is killed', () => {
  it('every warm sandbox dies with it, and the next backend removes its cgroups and reuses its ports and UIDs', async () => {
    const child = spawn(process.execPath, [path.join(FIXTURES, 'warm-crash-server.mjs'), '24643', '24645', '65643', '65645', '3'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      const line = await Promise.race([
        new Promise<string>((resolve) => createInterface({ input: child.stdout }).once('line', resolve)),
        new Promise<string>((_, reject) => child.once('exit', () => reject(new Error(`server exited: ${stderr}`)))),
        new Promise<string>((_, reject) => setTimeout(() => reject(new Error(`server not ready: ${stderr}`)), 70_000).unref()),
      ]);
      const { pids, cgroups, inUse } = JSON.parse(line) as { pids: number[]; cgroups: string[]; inUse: { ports: number; uids: number } };
      expect(inUse).toEqual({ ports: 3, uids: 3 });
      expect(processesOf([65643, 65645]).length).toBeGreaterThanOrEqual(3);
      child.kill('SIGKILL');
      expect(await waitFor(() => pids.every((pid) => procState(pid) === null || /^[ZX]/.test(procState(pid)!)), 15_000, 10)).toBe(true);
      expect(await waitFor(() => processesOf([65643, 65645]).length === 0, 5000, 10)).toBe(true);
      const next = new ProcessBackend(testConfig([24643, 24645], [65643, 65645]));
      try {
        expect(await waitFor(() => cgroups.every((dir) => !existsSync(dir)), 5000), `left: ${cgroups.filter(existsSync)}`).toBe(true);
        await Promise.all(['a', 'b', 'c'].map((id) => next.spawn({ appId: 'x', workerId: id, bundlePath: FIXTURES, workerMount: '/tmp/app', cmd: ['/bin/sleep', '30'] })));
        expect(next.inUse).toEqual({ ports: 3, uids: 3 });
      } finally {
        await next.close();
      }
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    }
  }, 100_000);
});

describe('the warm pool where it cannot work', () => {
  it('names why: not root, or a kernel before 5.12', () => {
    expect(warmPoolProblem(false, '6.18.0')).toMatch(/needs root/);
    expect(warmPoolProblem(true, '5.10.0-28-amd64')).toMatch(/Linux 5\.12 or later .* 5\.10\.0-28-amd64/);
    expect(warmPoolProblem(true, '5.12.0')).toBeNull();
  });
});
