// Host-side views of processes, for assertions: /proc is the judge.
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

/** The state letter of /proc/<pid>/stat, or null when the pid is gone. */
export function procState(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0];
  } catch {
    return null;
  }
}

/** Gone or a zombie: PID 1 here does not reap orphans, so kill(pid, 0) is no test. */
export function isDead(pid: number): boolean {
  const state = procState(pid);
  return state === null || state === 'Z' || state === 'X';
}

/** Fields of /proc/<pid>/status. */
export function procStatus(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

export function procEnviron(pid: number): string[] {
  return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter(Boolean);
}

export function openFds(pid: number | 'self' = 'self'): number[] {
  return readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b);
}

export function fdTarget(pid: number, fd: number): string {
  return readlinkSync(`/proc/${pid}/fd/${fd}`);
}

/** Direct children of pid (all threads). */
export function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
    if (text) out.push(...text.split(' ').map(Number));
  }
  return out;
}

/** pid and every descendant. */
export function treeOf(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length && i < 10000; i++) {
    try {
      out.push(...childrenOf(out[i]));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

/** Polls cond every `everyMs` until it holds or timeoutMs passes; returns whether it held. */
export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, everyMs = 20): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

export const isRoot = process.getuid?.() === 0;

/**
 * Whether `p` settles before a timer of `ms` started now. A bar for "within
 * the timeout" that load cannot break: a busy host delays this timer as much
 * as the code's own timer, which starts just after it.
 */
export async function settlesBefore(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const peer = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true, () => true), peer]);
  } finally {
    clearTimeout(timer);
  }
}
