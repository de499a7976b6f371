// Shiny apps as people write them (SPEC §12, issue 22 item 1), with real R:
// an app.R ending in shinyApp(), one calling runApp(), one reading
// SHINY_PORT itself, a ui.R + server.R directory, the spec's own R profile,
// and `Rscript <app directory>`. None of the bundles knows about procyard.
// Ports 24600-24619 and UIDs 65600-65619 belong to this file.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { WorkerExitEvent, WorkerSpec } from '../src/backend.js';
import { bwrapArgs, workerEnv } from '../src/process/bwrap.js';
import { ProcessBackend } from '../src/process/process-backend.js';
import { isRCommand, R_FILES, R_PROFILE_TARGET, rAppDir, USER_PROFILE_ENV } from '../src/process/r-app.js';
import { bundles, HAS_SHINY, testConfig } from './helpers/backend.js';
import { linesUntil } from './helpers/net.js';

const made = bundles('procyard-rapps-');
const bundle = made.make;

const UI = (title: string) => `shiny::fluidPage(shiny::titlePanel("${title}"))`;
const NOOP_SERVER = 'function(input, output, session) {}';
/** What the app's own code sees, printed to its log: one line. */
const REPORT =
  'cat("seen:", "inShinyServer", shiny:::inShinyServer(), "port", Sys.getenv("SHINY_PORT"), "host", Sys.getenv("SHINY_HOST"), ' +
  '"option", getOption("shiny.port"), "cwd", getwd(), "profileVar", Sys.getenv("PROCYARD_R_PROFILE_USER", "unset"), "\\n")';

describe.runIf(HAS_SHINY)('R apps as written', () => {
  const backend = new ProcessBackend(testConfig([24600, 24619], [65600, 65619], { stopGraceMs: 1000 }));
  const exits: WorkerExitEvent[] = [];
  backend.on('exit', (e: WorkerExitEvent) => exits.push(e));
  const spec = (workerId: string, bundlePath: string, extra: Partial<WorkerSpec> = {}): WorkerSpec => ({
    appId: 'rapps',
    workerId,
    bundlePath,
    workerMount: '/tmp/app',
    ...extra,
  });

  const apps = {
    plain: bundle('plain', {
      'app.R': `library(shiny)\ntitle <- readLines("title.txt")\nui <- fluidPage(titlePanel(title))\nserver <- ${NOOP_SERVER}\n${REPORT}\nshinyApp(ui, server)\n`,
      'title.txt': 'plain app, read from a relative path\n',
    }),
    runApp: bundle('runapp', { 'app.R': `shiny::runApp(shiny::shinyApp(${UI('via runApp')}, ${NOOP_SERVER}))\n` }),
    readsPort: bundle('readsport', {
      'app.R':
        `library(shiny)\n${REPORT}\n` +
        `runApp(shinyApp(${UI('reads SHINY_PORT')}, ${NOOP_SERVER}), port = as.integer(Sys.getenv("SHINY_PORT", "3838")), host = Sys.getenv("SHINY_HOST", "0.0.0.0"))\n`,
    }),
    twoFiles: bundle('twofiles', { 'ui.R': `${UI('ui.R and server.R')}\n`, 'server.R': `${NOOP_SERVER}\n` }),
    profile: bundle('profile', {
      'profile.R': 'cat("the spec\'s profile ran\\n")\noptions(procyard.test = "set by the spec\'s profile")\n',
      'app.R': `library(shiny)\n${REPORT}\ncat("option:", getOption("procyard.test"), "\\n")\nshinyApp(${UI('with a profile')}, ${NOOP_SERVER})\n`,
    }),
    empty: bundle('empty', { 'README.md': 'no app here\n' }),
  };

  beforeAll(async () => {
    // All at once: R's start-up is most of each case.
    await Promise.all([
      backend.spawn(spec('plain', apps.plain)),
      backend.spawn(spec('runapp', apps.runApp)),
      backend.spawn(spec('readsport', apps.readsPort)),
      backend.spawn(spec('twofiles', apps.twoFiles)),
      backend.spawn(spec('profile', apps.profile, { rProfilePath: '/tmp/app/profile.R' })),
      backend.spawn(spec('dircmd', apps.twoFiles, { cmd: ['Rscript', '/tmp/app'] })),
      backend.spawn(spec('empty', apps.empty)),
    ]);
  }, 60_000);

  afterAll(async () => {
    await backend.close();
    made.cleanup();
  });

  async function page(id: string): Promise<string> {
    await backend.waitReady(id, { timeoutMs: 45_000 });
    return (await fetch(`http://${await backend.addr(id)}/`)).text();
  }

  it('an app.R that ends in shinyApp() listens on the worker port, in its own directory, and shiny does not take it for Shiny Server', async () => {
    expect(await page('plain')).toContain('<title>plain app, read from a relative path</title>');
    const port = (await backend.addr('plain')).split(':')[1];
    const lines = await linesUntil(backend, 'plain', (l) => l.startsWith('Listening on'));
    // The app's own code still reads SHINY_PORT and SHINY_HOST; shiny itself sees neither.
    expect(lines).toContain(`seen: inShinyServer FALSE port ${port} host 127.0.0.1 option ${port} cwd /tmp/app profileVar unset `);
    expect(lines.at(-1)).toBe(`Listening on http://127.0.0.1:${port}`);
    expect(lines.join('\n')).not.toMatch(/Shiny Server|Warning/);
  });

  it('an app.R that calls runApp() without a port', async () => {
    expect(await page('runapp')).toContain('<title>via runApp</title>');
  });

  it('an app.R that reads SHINY_PORT and SHINY_HOST itself, with defaults that would be refused', async () => {
    expect(await page('readsport')).toContain('<title>reads SHINY_PORT</title>');
    const port = (await backend.addr('readsport')).split(':')[1];
    const lines = await linesUntil(backend, 'readsport', (l) => l.startsWith('Listening on'));
    expect(lines).toContain(`seen: inShinyServer FALSE port ${port} host 127.0.0.1 option ${port} cwd /tmp/app profileVar unset `);
    expect(lines.join('\n')).not.toContain('Shiny Server');
  });

  it('a ui.R + server.R directory, by the default command and by `Rscript <directory>`', async () => {
    expect(await page('twofiles')).toContain('<title>ui.R and server.R</title>');
    expect(await page('dircmd')).toContain('<title>ui.R and server.R</title>');
  });

  it("the spec's rProfilePath runs as well, before the app", async () => {
    expect(await page('profile')).toContain('<title>with a profile</title>');
    const lines = await linesUntil(backend, 'profile', (l) => l.startsWith('Listening on'));
    const ran = lines.indexOf("the spec's profile ran");
    expect(ran).toBeGreaterThanOrEqual(0);
    expect(lines.indexOf("option: set by the spec's profile ")).toBeGreaterThan(ran);
    // The profile's path was handed over and then removed from the environment.
    expect(lines.some((l) => l.startsWith('seen: inShinyServer FALSE') && l.endsWith('profileVar unset '))).toBe(true);
  });

  it('a bundle with no app exits 1 saying so', async () => {
    const deadline = Date.now() + 30_000;
    while (!exits.some((e) => e.workerId === 'empty') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(exits.find((e) => e.workerId === 'empty')).toMatchObject({ code: 1 });
    const lines = await linesUntil(backend, 'empty', () => false, 500);
    expect(lines).toContain('Error: procyard: no app.R, and no ui.R + server.R, in /tmp/app');
  });
});

describe('which commands run as an R app (pure)', () => {
  const host = mkdtempSync(path.join(os.tmpdir(), 'procyard-rapp-dir-'));
  mkdirSync(path.join(host, 'sub'));
  const view = { bundlePath: host, workerMount: '/tmp/app' };
  afterAll(() => rmSync(host, { recursive: true, force: true }));

  it('the default, R/Rscript on an app.R or an app directory; nothing else', () => {
    expect(rAppDir(undefined, '/app', view)).toBe('/app');
    expect(rAppDir(['Rscript', '/tmp/app/app.R'], '/tmp/app', view)).toBe('/tmp/app');
    expect(rAppDir(['R', '/srv/x/../y/app.R'], '/tmp/app', view)).toBe('/srv/y');
    expect(rAppDir(['Rscript', '/tmp/app/sub'], '/tmp/app', view)).toBe('/tmp/app/sub');
    expect(rAppDir(['Rscript', '/tmp/app/missing'], '/tmp/app', view)).toBeNull();
    expect(rAppDir(['Rscript', 'app.R'], '/tmp/app', view)).toBeNull();
    expect(rAppDir(['Rscript', '-e', 'shiny::runApp()'], '/tmp/app', view)).toBeNull();
    expect(rAppDir(['/usr/bin/python3', '/tmp/app/app.R'], '/tmp/app', view)).toBeNull();
    expect(isRCommand(['Rscript', 'x'])).toBe(true);
    expect(isRCommand(['/usr/bin/Rscript', 'x'])).toBe(false);
  });

  it("an R worker's environment points R at procyard's profile and hands it the spec's; others keep rProfilePath", () => {
    const r = workerEnv({ rProfilePath: '/tmp/app/p.R', env: { A: '1' } }, 4242, true);
    expect(r).toContain(`R_PROFILE_USER=${R_PROFILE_TARGET}`);
    expect(r).toContain(`${USER_PROFILE_ENV}=/tmp/app/p.R`);
    expect(r.slice(-2)).toEqual(['SHINY_PORT=4242', 'SHINY_HOST=127.0.0.1']);
    const other = workerEnv({ rProfilePath: '/tmp/app/p.R' }, 4242);
    expect(other).toContain('R_PROFILE_USER=/tmp/app/p.R');
    expect(other.some((e) => e.startsWith(USER_PROFILE_ENV))).toBe(false);
  });

  it('the files go in read-only, after the mounts, one fd each', () => {
    const args = bwrapArgs({ uid: 1, gid: 1, tmpSizeBytes: 0, seccomp: false, cmd: ['Rscript'], mounts: [{ source: '/b', target: '/tmp/app', readOnly: true }], files: R_FILES.map((f) => f.target) });
    const at = args.indexOf('--ro-bind-data');
    expect(args.slice(at - 2, at + 7)).toEqual(['--perms', '0444', '--ro-bind-data', '6', R_PROFILE_TARGET, '--perms', '0444', '--ro-bind-data', '7']);
    expect(at).toBeGreaterThan(args.indexOf('/tmp/app'));
  });
});
