// R installs managed by rig (`<rigBase>/<version>/bin/R`): lookup and checks.
import { accessSync, constants, readdirSync } from 'node:fs';
import path from 'node:path';
import { PROCESS_DEFAULTS } from '../config.js';
import { printable } from './logs.js';

/** Numeric version order: 4.4.10 sorts after 4.4.9 (string order would not). */
export function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/);
  const pb = b.split(/[.-]/);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const x = pa[i] ?? '';
    const y = pb[i] ?? '';
    const nx = Number(x);
    const ny = Number(y);
    const diff = Number.isInteger(nx) && Number.isInteger(ny) && x !== '' && y !== '' ? nx - ny : x.localeCompare(y);
    if (diff !== 0) return diff;
  }
  return 0;
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Names of the `<rigBase>/*` dirs holding an executable bin/R, in numeric order. */
export function installedRVersions(rigBase: string = PROCESS_DEFAULTS.rigBase): string[] {
  let names: string[];
  try {
    names = readdirSync(rigBase);
  } catch {
    return [];
  }
  return names.filter((n) => isExecutable(path.join(rigBase, n, 'bin', 'R'))).sort(compareVersions);
}

/**
 * The R binary for a version: '' is the fallback (not a miss); then the exact
 * version, the highest patch of its major.minor, a bare major.minor install,
 * and else the fallback with fellBack set.
 */
export function resolveRBinary(
  version: string,
  fallback: string,
  rigBase: string = PROCESS_DEFAULTS.rigBase,
): { path: string; fellBack: boolean } {
  if (!version) return { path: fallback, fellBack: false };
  // A version names a directory of rigBase, never a path out of it.
  if (version.includes('/') || version === '.' || version === '..') return { path: fallback, fellBack: true };
  const binary = (v: string) => path.join(rigBase, v, 'bin', 'R');
  if (isExecutable(binary(version))) return { path: binary(version), fellBack: false };
  const minor = majorMinor(version);
  const installed = installedRVersions(rigBase);
  const patches = installed.filter((v) => v.startsWith(`${minor}.`));
  if (patches.length > 0) return { path: binary(patches[patches.length - 1]), fellBack: false };
  if (installed.includes(minor)) return { path: binary(minor), fellBack: false };
  return { path: fallback, fellBack: true };
}

function majorMinor(version: string): string {
  return version.split('.').slice(0, 2).join('.');
}

/** Throws a user-facing Error when no install serves the version's major.minor. */
export function checkRVersion(version: string, rigBase: string = PROCESS_DEFAULTS.rigBase): void {
  if (!version) return;
  const installed = installedRVersions(rigBase);
  if (installed.some((v) => v === majorMinor(version) || v.startsWith(`${majorMinor(version)}.`))) return;
  // Shown to an operator: the version comes from a bundle, so its control characters are escaped.
  const minor = printable(majorMinor(version));
  throw new Error(
    installed.length > 0
      ? `bundle requires R ${minor} which is not installed; available: ${installed.join(', ')}`
      : `bundle requires R ${minor} which is not installed but no R versions are installed`,
  );
}

/** The message for a pinned version whose install is gone. */
export function rVersionGoneMessage(version: string): string {
  return `R ${version} was available at deploy time but is no longer installed`;
}
