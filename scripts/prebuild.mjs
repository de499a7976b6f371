#!/usr/bin/env node
// npm run build:prebuilds (also run by prepack): builds the addon into
// prebuilds/<platform>-<arch>/procyard.node for this host and for every cross
// target whose compiler is installed, so an installed package loads a binary
// and never compiles (npm 12 runs no install scripts).
//
// Each target builds in its own directory under build/prebuild/, so the
// developer's build/Release is left alone, and make recompiles only what
// changed since the last run. The output directory is emptied first: what it
// holds afterwards is exactly what this run built, never a stale binary.
//
//   --arch=x64,arm64  only these targets (default: this host's, then every
//                     cross target whose compiler is installed)
//   --out=DIR         write DIR/linux-<arch>/procyard.node (default prebuilds/)
//   --strict          fail when a cross target is skipped (use it for a release)
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const opts = { arch: '', out: path.join(ROOT, 'prebuilds'), strict: false };
for (const a of process.argv.slice(2)) {
  if (a.startsWith('--arch=')) opts.arch = a.slice(7);
  else if (a.startsWith('--out=')) opts.out = path.resolve(a.slice(6));
  else if (a === '--strict') opts.strict = true;
  else fail(`unknown option ${a} (known: --arch=x64,arm64, --out=DIR, --strict)`);
}

// e_machine in the ELF header tells a binary's architecture without any tool.
const TARGETS = [
  { arch: 'x64', triple: 'x86_64-linux-gnu', elfMachine: 62 },
  { arch: 'arm64', triple: 'aarch64-linux-gnu', elfMachine: 183 },
];

function fail(message) {
  console.error(`prebuild: ${message}`);
  process.exit(1);
}

function onPath(cmd) {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

if (process.platform !== 'linux') fail(`procyard builds only for Linux, not ${process.platform}`);
const host = TARGETS.find((t) => t.arch === process.arch);
if (!host) fail(`no prebuild target for arch ${process.arch} (known: ${TARGETS.map((t) => t.arch).join(', ')})`);

// Node's headers: those shipped beside the node running this (Debian's /usr, an
// official tarball, the npm registry's node-linux-*), else node-gyp's default
// (a download, which this offline machine cannot do). N-API makes any recent
// Node's headers right for every Node version.
const nodeDir = path.resolve(path.dirname(process.execPath), '..');
const nodeDirArgs =
  process.env.npm_config_nodedir || !existsSync(path.join(nodeDir, 'include', 'node', 'node_api.h')) ? [] : [`--nodedir=${nodeDir}`];
const nodeGyp = path.join(ROOT, 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
if (!existsSync(nodeGyp)) fail('node-gyp is missing: run `npm ci` first');

function build(target) {
  const name = `linux-${target.arch}`;
  const stage = path.join(ROOT, 'build', 'prebuild', name);
  mkdirSync(stage, { recursive: true });
  // binding.gyp names its sources relative to itself: give the stage the same view.
  if (!existsSync(path.join(stage, 'native'))) symlinkSync(path.relative(stage, path.join(ROOT, 'native')), path.join(stage, 'native'));
  const gyp = readFileSync(path.join(ROOT, 'binding.gyp'));
  const staged = path.join(stage, 'binding.gyp');
  const configured = existsSync(path.join(stage, 'build', 'Makefile')) && existsSync(staged) && readFileSync(staged).equals(gyp);
  const env = { ...process.env };
  if (target !== host) {
    env.CC = `${target.triple}-gcc`;
    env.CXX = `${target.triple}-g++`;
    env.LINK = `${target.triple}-g++`;
    env.AR = `${target.triple}-ar`;
  }
  const run = (...gypArgs) =>
    execFileSync(process.execPath, [nodeGyp, ...gypArgs, `--arch=${target.arch}`, '--loglevel=warn', ...nodeDirArgs], { cwd: stage, env, stdio: ['ignore', 'ignore', 'inherit'] });
  if (!configured) {
    rmSync(path.join(stage, 'build'), { recursive: true, force: true });
    writeFileSync(staged, gyp);
    run('configure');
  }
  run('build', '--jobs=max');

  const built = path.join(stage, 'build', 'Release', 'procyard.node');
  const bytes = readFileSync(built);
  const machine = bytes.readUInt16LE(18);
  if (bytes.readUInt32BE(0) !== 0x7f454c46 || machine !== target.elfMachine)
    fail(`${built} is not an ELF binary for ${name} (e_machine ${machine}, expected ${target.elfMachine})`);
  const out = path.join(opts.out, name, 'procyard.node');
  mkdirSync(path.dirname(out), { recursive: true });
  copyFileSync(built, out);
  // The newest glibc symbol version it links against is the oldest glibc it loads on.
  const glibc = [...bytes.toString('latin1').matchAll(/GLIBC_2\.(\d+)/g)].map((m) => Number(m[1])).reduce((a, b) => Math.max(a, b), 0);
  if (target === host) {
    // It must load here, in a fresh process, before it is shipped.
    execFileSync(process.execPath, ['-e', `require(${JSON.stringify(out)}).kernelRelease()`], { stdio: 'inherit' });
  }
  console.log(`prebuild: ${path.relative(process.cwd(), out)} (${Math.round(statSync(out).size / 1024)} KiB, glibc >= 2.${glibc})`);
}

const wanted = opts.arch ? opts.arch.split(',') : TARGETS.map((t) => t.arch);
for (const arch of wanted) if (!TARGETS.some((t) => t.arch === arch)) fail(`unknown arch ${arch} in --arch (known: ${TARGETS.map((t) => t.arch).join(', ')})`);
rmSync(opts.out, { recursive: true, force: true });
// The host first: it is the one target that must always build.
for (const target of [host, ...TARGETS.filter((t) => t !== host)]) {
  if (!wanted.includes(target.arch)) continue;
  if (target !== host && !onPath(`${target.triple}-g++`)) {
    const msg = `skipped linux-${target.arch}: no ${target.triple}-g++ (apt-get install g++-${target.triple})`;
    if (opts.strict || opts.arch) fail(msg);
    console.log(`prebuild: ${msg}`);
    continue;
  }
  build(target);
}
