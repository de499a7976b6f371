#!/usr/bin/env node
// Builds the native addon (node-gyp) when build/Release/procyard.node is
// missing or older than its sources: what `npm run demo`, `npm run bench`
// and `npm test` need from a fresh clone. Not an install script: the
// published package ships prebuilds/ and runs nothing at install.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const built = path.join(ROOT, 'build', 'Release', 'procyard.node');

function mtime(file) {
  try {
    return statSync(file).mtimeMs;
  } catch {
    return -1;
  }
}

const sources = [path.join(ROOT, 'binding.gyp'), ...readdirSync(path.join(ROOT, 'native')).map((f) => path.join(ROOT, 'native', f))];
const newest = Math.max(...sources.map(mtime));
if (mtime(built) >= newest) process.exit(0);
console.log(`[procyard] building the native addon (${mtime(built) < 0 ? 'not built yet' : 'its sources changed'})`);
const r = spawnSync('npm', ['run', '--silent', 'build:native'], { cwd: ROOT, stdio: 'inherit' });
process.exit(r.status ?? 1);
