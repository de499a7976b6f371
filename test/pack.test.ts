// The package as a user gets it: `npm pack`, then installed into a fresh
// project with install scripts off (what npm 12 does), then used: the library
// spawns a real sandboxed worker, `npx procyard preflight` runs, and a
// TypeScript consumer type-checks against the shipped .d.ts. No compiler runs
// at install: the addon must come from the tarball's prebuilds/.
//
// Ports 24000-24009 and UIDs 65000-65009 belong to this file.
import { execFile, spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TARGET = `linux-${process.arch}`;
const PORTS = [24000, 24009];
const UIDS = [65000, 65009];

// Every child runs under the Node running this file (npx and the CLI's
// `#!/usr/bin/env node` too), so each Node the suite runs under is tested.
const env = { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH ?? ''}` };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], cwd: string, timeout = 90_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd, env, timeout, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

async function ok(file: string, args: string[], cwd: string): Promise<string> {
  const r = await run(file, args, cwd);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}:\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

let work = '';
let project = '';
let prebuildOutput = '';
let tarball = '';
const timings: Record<string, number> = {};

async function timed<T>(name: string, fn: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await fn();
  } finally {
    timings[name] = Math.round(performance.now() - started);
  }
}

beforeAll(async () => {
  // 0755 all the way: the worker (its own UID when root) reads its bundle from here.
  work = mkdtempSync(path.join(tmpdir(), 'procyard-pack-'));
  chmodSync(work, 0o755);
  project = path.join(work, 'consumer');
  mkdirSync(project, { mode: 0o755 });

  // dist/ is current (the global setup built it); the prebuild is made from the
  // current native sources. Scripts off for pack too, so packing does not
  // rebuild dist/ under the other test files' feet.
  prebuildOutput = await timed('prebuild', () => ok(process.execPath, ['scripts/prebuild.mjs', `--arch=${process.arch}`], ROOT));
  const packed = await timed('pack', () => ok('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], ROOT));
  tarball = path.join(work, (JSON.parse(packed) as { filename: string }[])[0].filename);

  writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
  await timed('install', () =>
    ok('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', '--prefer-offline', tarball], project),
  );
}, 180_000);

afterAll(() => {
  console.log(`pack test steps (ms): ${JSON.stringify(timings)}`);
  if (work) rmSync(work, { recursive: true, force: true });
});

describe('npm pack', () => {
  it('ships dist (JS and types), the prebuilt addon, the docs and examples the README links, README and LICENSE, and nothing else', async () => {
    const files = (await ok('tar', ['tzf', tarball], work)).trim().split('\n').map((f) => f.replace(/^package\//, ''));
    const allowed = [
      /^(README\.md|LICENSE|package\.json)$/,
      /^dist\/.+\.(js|d\.ts)$/,
      /^prebuilds\/linux-(x64|arm64)\/procyard\.node$/,
      /^docs\/[\w.-]+\.md$/,
      /^examples\/(shiny\/app\.R|demo\.js)$/,
      /^src\/config\.ts$/,
    ];
    expect(files.filter((f) => !allowed.some((re) => re.test(f)))).toEqual([]);
    for (const f of ['README.md', 'LICENSE', 'package.json', 'dist/index.js', 'dist/index.d.ts', 'dist/cli.js', `prebuilds/${TARGET}/procyard.node`, 'docs/security.md', 'examples/shiny/app.R'])
      expect(files).toContain(f);
  });

  it('installs with scripts off and never needed a compiler: no build/, no binding.gyp', () => {
    const installed = path.join(project, 'node_modules', 'procyard');
    expect(readdirSync(installed).sort()).toEqual(['LICENSE', 'README.md', 'dist', 'docs', 'examples', 'package.json', 'prebuilds', 'src']);
    expect(existsSync(path.join(installed, 'build'))).toBe(false);
  });

  it("has no lifecycle script for npm to warn about or block (npm 11, and npm 12 where it is installed)", async () => {
    const manifest = JSON.parse(readFileSync(path.join(project, 'node_modules', 'procyard', 'package.json'), 'utf8')) as { scripts: Record<string, string> };
    for (const script of ['preinstall', 'install', 'postinstall', 'prepare']) expect(manifest.scripts[script], script).toBeUndefined();
    const npm12 = path.join(ROOT, 'test', 'nodes', 'node_modules', 'npm12', 'bin', 'npm-cli.js');
    const node24 = path.join(ROOT, 'test', 'nodes', 'node_modules', 'node24', 'bin', 'node');
    const installers: [string, string, string[]][] = [['npm 11', 'npm', []]];
    if (existsSync(npm12) && existsSync(node24)) installers.push(['npm 12', node24, [npm12]]);
    for (const [name, file, pre] of installers) {
      const fresh = mkdtempSync(path.join(work, 'fresh-'));
      writeFileSync(path.join(fresh, 'package.json'), JSON.stringify({ name: 'fresh', private: true, type: 'module' }));
      // Scripts on, as a user installs: nothing may run or be flagged.
      const r = await run(file, [...pre, 'install', '--no-audit', '--no-fund', '--prefer-offline', tarball], fresh);
      expect(r.code, `${name}: ${r.stderr}`).toBe(0);
      expect(r.stdout + r.stderr, name).not.toMatch(/install-scripts|prepare|lifecycle|allow-scripts/i);
      const loaded = await run(process.execPath, ['--input-type=module', '-e', "const p = await import('procyard'); console.log(typeof p.ProcessBackend)"], fresh);
      expect(loaded.stdout.trim(), `${name}: ${loaded.stderr}`).toBe('function');
    }
  });
});

describe('the package as documented', () => {
  const installed = () => path.join(project, 'node_modules', 'procyard');

  it('loads with require() too', async () => {
    const r = await run(process.execPath, ['-e', "const { ProcessBackend, ConfigError } = require('procyard'); console.log(typeof ProcessBackend, typeof ConfigError)"], project);
    expect(r.stdout.trim(), r.stderr).toBe('function function');
  });

  it("every relative link of the README resolves inside the package, and every #anchor to one of its headings", () => {
    const readme = readFileSync(path.join(installed(), 'README.md'), 'utf8');
    const slug = (heading: string) => heading.trim().toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-');
    const anchors = new Set([...readme.matchAll(/^#+ (.+)$/gm)].map((m) => slug(m[1]!)));
    const links = [...readme.matchAll(/\]\(([^)\s]+)\)/g)].map((m) => m[1]!).filter((l) => !/^[a-z]+:/.test(l));
    expect(links.length).toBeGreaterThan(10);
    for (const link of links) {
      const [file, anchor] = link.split('#') as [string, string | undefined];
      if (file === '') expect(anchors.has(anchor!), `#${anchor}`).toBe(true);
      else expect(existsSync(path.join(installed(), file)), link).toBe(true);
    }
  });

  it("says the glibc the prebuilt addon needs, as the build measured it", () => {
    const glibc = /glibc >= (2\.\d+)/.exec(prebuildOutput)?.[1];
    expect(glibc, prebuildOutput).toBeDefined();
    expect(readFileSync(path.join(installed(), 'README.md'), 'utf8')).toContain(`glibc >= ${glibc} (`);
  });

  it.runIf(spawnSync('Rscript', ['-e', 'library(shiny)'], { stdio: 'ignore' }).status === 0)(
    "runs the README's user quick start: the example app's URL serves it, and Ctrl-C stops it",
    async () => {
      const readme = readFileSync(path.join(installed(), 'README.md'), 'utf8');
      const quickStart = readme.slice(readme.indexOf('## Quick start'));
      const code = /```js\n([\s\S]*?)```/.exec(quickStart)![1]!;
      writeFileSync(path.join(project, 'first-app.mjs'), code);
      const child = spawn(process.execPath, ['first-app.mjs'], { cwd: project, env: { ...env, METADATA_ADDR: '127.0.0.1:1' }, stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
      try {
        for (let i = 0; i < 600 && !/open http:\/\//.test(out); i++) await new Promise((r) => setTimeout(r, 100));
        const url = /open (http:\/\/127\.0\.0\.1:\d+\/)/.exec(out)?.[1];
        expect(url, out).toBeDefined();
        expect(await (await fetch(url!)).text()).toContain('<title>Hello from procyard</title>');
        child.kill('SIGINT');
        expect(await Promise.race([exited, new Promise((r) => setTimeout(() => r('hung'), 20_000))])).toBe(0);
        expect(out).toContain('stopped');
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
      }
    },
    90_000,
  );
});

describe('the installed package', () => {
  it('spawns a real sandboxed worker that answers HTTP, and stops it', async () => {
    const bundle = path.join(work, 'bundle');
    mkdirSync(bundle, { mode: 0o755 });
    writeFileSync(
      path.join(bundle, 'server.mjs'),
      "import http from 'node:http';\n" +
        "http.createServer((_, res) => res.end(`packed ${process.getuid()}`)).listen(Number(process.env.SHINY_PORT), process.env.SHINY_HOST);\n",
    );
    const script = `
      import { ProcessBackend } from 'procyard';
      const backend = new ProcessBackend({
        process: { portRangeStart: ${PORTS[0]}, portRangeEnd: ${PORTS[1]}, workerUidStart: ${UIDS[0]}, workerUidEnd: ${UIDS[1]}, stopGraceMs: 3000 },
        storage: { bundleWorkerPath: '/tmp/app' },
      });
      try {
        await backend.spawn({ appId: 'packed', workerId: 'packed-1', bundlePath: ${JSON.stringify(bundle)}, workerMount: '/tmp/app',
          cmd: [process.execPath, '/tmp/app/server.mjs'] });
        const addr = await backend.addr('packed-1');
        let body = '';
        for (let i = 0; i < 200 && !body; i++) {
          body = await fetch('http://' + addr + '/').then((r) => r.text(), () => '');
          if (!body) await new Promise((r) => setTimeout(r, 50));
        }
        await backend.stop('packed-1');
        console.log(JSON.stringify({ addr, body, healthyAfterStop: await backend.healthCheck('packed-1') }));
      } finally {
        await backend.close();
      }`;
    writeFileSync(path.join(project, 'use.mjs'), script);
    const out = JSON.parse(await ok(process.execPath, ['use.mjs'], project)) as { addr: string; body: string; healthyAfterStop: boolean };
    expect(out.addr).toMatch(/^127\.0\.0\.1:2400\d$/);
    // As root, any UID of the range (least recently used first); else the server's own.
    const uid = Number(out.body.split(' ')[1]);
    if (process.getuid?.() === 0) {
      expect(uid).toBeGreaterThanOrEqual(UIDS[0]);
      expect(uid).toBeLessThanOrEqual(UIDS[1]);
    } else {
      expect(uid).toBe(process.getuid?.());
    }
    expect(out.body).toBe(`packed ${uid}`);
    expect(out.healthyAfterStop).toBe(false);
  });

  it('runs `npx procyard preflight --json`', async () => {
    const config = path.join(project, 'server.toml');
    // Port 1 on loopback: nothing listens there, and no traffic leaves the machine.
    writeFileSync(
      config,
      `[process]\nmetadata_addr = "127.0.0.1:1"\nport_range_start = ${PORTS[0]}\nport_range_end = ${PORTS[1]}\n` +
        `worker_uid_range_start = ${UIDS[0]}\nworker_uid_range_end = ${UIDS[1]}\n[storage]\nbundle_worker_path = "/tmp/app"\n`,
    );
    const r = await run('npx', ['--no-install', 'procyard', 'preflight', '--json', '--config', config], project);
    expect(r.stderr).toBe('');
    const report = JSON.parse(r.stdout) as { results: { name: string; severity: string }[]; summary: { errors: number } };
    const severity = (name: string) => report.results.find((x) => x.name === name)?.severity;
    expect(severity('bwrap_available')).toBe('ok');
    expect(severity('pidfd_support')).toBe('ok');
    expect(severity('cloud_metadata')).toBe('ok');
    expect(report.summary.errors).toBe(0);
    expect(r.code).toBe(0);
  });

  it('type-checks a TypeScript consumer against the shipped .d.ts', async () => {
    writeFileSync(
      path.join(project, 'consumer.ts'),
      `import { ProcessBackend, ConfigError, type WorkerSpec, type WorkerResourceUsage } from 'procyard';
const spec: WorkerSpec = { appId: 'a', workerId: 'w', bundlePath: '/srv/a', workerMount: '/app', env: { MODE: 'x' } };
const backend = new ProcessBackend({ process: { portRangeStart: 10000, portRangeEnd: 10099 } });
export async function main(): Promise<WorkerResourceUsage | null> {
  await backend.spawn(spec);
  const addr: string = await backend.addr(spec.workerId);
  void addr;
  return backend.workerResourceUsage(spec.workerId);
}
export const isConfigError = (e: unknown): boolean => e instanceof ConfigError;
// The types are real, not any: a wrong field type must be refused.
// @ts-expect-error portRangeStart is a number
new ProcessBackend({ process: { portRangeStart: '10000' } });
`,
    );
    writeFileSync(
      path.join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true, noEmit: true,
          // The shipped .d.ts are checked too, not skipped.
          skipLibCheck: false,
          types: ['node'], typeRoots: [path.join(ROOT, 'node_modules', '@types')],
        },
        files: ['consumer.ts'],
      }),
    );
    const r = await run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], project);
    expect(r.stdout + r.stderr).toBe('');
    expect(r.code).toBe(0);
  });

  it('without a loadable binary, fails naming the platform and how to build', async () => {
    const prebuilt = path.join(project, 'node_modules', 'procyard', 'prebuilds', TARGET, 'procyard.node');
    writeFileSync(prebuilt, 'not an ELF file');
    const broken = await run(process.execPath, ['-e', "import('procyard')"], project);
    expect(broken.code).not.toBe(0);
    expect(broken.stderr).toContain('NativeAddonError');
    expect(broken.stderr).toContain(`platform linux, arch ${process.arch}, libc glibc`);
    expect(broken.stderr).toMatch(/Tried: .*procyard\.node: .*(invalid ELF header|file too short)/);
    expect(broken.stderr).toContain('npm run build:native');
    expect(broken.stderr).toContain('python3, make and g++');

    rmSync(path.join(project, 'node_modules', 'procyard', 'prebuilds'), { recursive: true });
    const none = await run(process.execPath, ['-e', "import('procyard')"], project);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toContain(`no native addon that loads on this host (platform linux, arch ${process.arch}`);
    expect(none.stderr).toContain('for no platform in this copy');
    expect(none.stderr).not.toContain('Cannot find module');
  });
});
