// The floors: bench/floor.c, compiled here with gcc, spawning from plain C
// (1) the bare sandbox with the same clone child as the native spawn and
// (2) the same sandbox a ProcessBackend starts with limits and the network
// policy on, doing the same work (data pipes, status pipe, Landlock
// ruleset, per-worker cgroups, credentials). It runs as a long-lived process
// fed batch commands on stdin, so the bench can interleave its batches with
// the Node paths' (the same machine state for both).
import { execFile, spawn } from 'node:child_process';
import { closeSync, existsSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { builtinSeccompFilter } from '../dist/native.js';
import { bwrapArgs, envArgs, workerEnv, workerMounts } from '../dist/process/bwrap.js';
import { inspectCgroups } from '../dist/process/cgroup.js';
import { hasHostCgroups, hostRunPlan } from '../dist/process/run-dir.js';
import { AS_ROOT, BWRAP, TMP_SIZE, WORKER_GID, sandboxCommand, sleep, withTimeout, workerSpec } from './lib.js';

const SOURCE = path.join(path.dirname(fileURLToPath(import.meta.url)), 'floor.c');

/** Compiles floor.c into dir; returns the binary's path. */
export async function buildFloor(dir) {
  const out = path.join(dir, 'floor');
  await promisify(execFile)('gcc', ['-O2', '-Wall', '-o', out, SOURCE], { timeout: 60000 });
  return out;
}

/** The v1 control file and value of each controller's limit, as CgroupManager writes them into a spare cgroup. */
function limitWrites(controller, limits) {
  if (controller === 'memory' && limits.memoryBytes > 0) return [['memory.limit_in_bytes', String(limits.memoryBytes)]];
  if (controller === 'cpu' && limits.cpuQuotaUs > 0) return [['cpu.cfs_quota_us', String(limits.cpuQuotaUs)]];
  if (controller === 'pids' && limits.pids > 0) return [['pids.max', String(limits.pids)]];
  return [];
}

/**
 * The floor's options for the same sandbox as workerSpec() in a backend with
 * seccompProfile 'builtin', networkPolicy 'auto' and resourceLimits 'auto':
 * files in dir for the argv, the --args data and the seccomp program, and
 * one `cgroup` option per hierarchy the backend uses (as inspectCgroups
 * reports them, in its order). Returns { args, notes }.
 */
async function sandboxOptions({ dir, bundle, peerUid, statusPort, limits, reuseCpu, cmd = ['/bin/true'] }) {
  const spec = workerSpec('x', bundle, cmd);
  const argv = [BWRAP, ...bwrapArgs({ uid: peerUid, gid: WORKER_GID, tmpSizeBytes: TMP_SIZE, mounts: workerMounts(spec), seccomp: true, cmd, run: hostRunPlan(), hideCgroups: hasHostCgroups() })];
  const files = { argv: path.join(dir, 'floor-argv'), args: path.join(dir, 'floor-args'), seccomp: path.join(dir, 'floor-seccomp.bpf') };
  writeFileSync(files.argv, argv.map((a) => `${a}\0`).join(''));
  writeFileSync(files.args, envArgs(workerEnv(spec, statusPort)));
  const filterFd = builtinSeccompFilter();
  try {
    writeFileSync(files.seccomp, readFileSync(`/proc/self/fd/${filterFd}`));
  } finally {
    closeSync(filterFd);
  }
  const args = ['sandbox-argv', files.argv, 'args-data', files.args, 'seccomp', files.seccomp, 'landlock-port', String(statusPort)];
  const notes = [];
  const support = AS_ROOT ? await inspectCgroups('') : null;
  if (!support) notes.push('not root: the floor makes no cgroups (nor does a backend without the right to)');
  else if (support.problem) notes.push(`no cgroups (${support.problem.message}): the floor makes none`);
  else if (support.version === 2) notes.push('cgroup v2: the floor skips the cgroup steps (a backend is born in its cgroup through clone3(CLONE_INTO_CGROUP), which the floor does not do)');
  else {
    // One directory per hierarchy: controllers sharing a parent share a hierarchy.
    const byParent = new Map();
    for (const { controller, parent } of support.controllers) byParent.set(parent, [...(byParent.get(parent) ?? []), controller]);
    for (const [parent, controllers] of byParent) {
      args.push('cgroup', parent);
      for (const c of controllers) for (const [file, value] of limitWrites(c, limits)) args.push('write', file, value);
      if (reuseCpu && controllers.length === 1 && controllers[0] === 'cpu') args.push('reuse');
    }
  }
  return { args, notes };
}

/** Removes what is left of the floor's cgroup directories (it removes them itself unless SIGKILLed). */
async function removeLeftCgroups(dirs) {
  const left = [];
  for (const dir of dirs) {
    if (!existsSync(dir)) continue;
    for (let attempt = 0; attempt < 50; attempt++) {
      try {
        for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) rmdirSync(path.join(dir, e.name));
        rmdirSync(dir);
        break;
      } catch (err) {
        if (err.code === 'ENOENT') break;
        if (err.code !== 'EBUSY' || attempt === 49) {
          left.push(`${dir} (${err.code})`);
          break;
        }
        await sleep(100);
      }
    }
  }
  return left;
}

/**
 * Starts the floor with residentMb touched; batch(k, kind) runs k spawns
 * ('bare' or 'sandbox') and resolves with their times (ms). With `sandbox`
 * ({ dir, limits: { memoryBytes, cpuQuotaUs, pids }, reuseCpu }) the
 * floor can also start the backend's sandbox; `notes` says how.
 */
export async function startFloor(binary, { bundle, residentMb, peerUid, statusPort, sandbox }) {
  const { args, envObject } = sandboxCommand(bundle, peerUid, statusPort);
  const options = sandbox ? await sandboxOptions({ ...sandbox, bundle, peerUid, statusPort }) : { args: [], notes: [] };
  const child = spawn(binary, [String(residentMb), String(peerUid), String(WORKER_GID), ...options.args, '--', BWRAP, ...args], {
    env: envObject,
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let failure = null;
  const exited = new Promise((resolve) =>
    child.once('exit', (code, signal) => {
      failure ??= new Error(`bench: floor exited ${code ?? signal}`);
      resolve();
    }),
  );
  child.stdin.on('error', () => {}); // EPIPE once it has exited: reported through `exited`
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async (what) => {
    const { value, done } = await withTimeout(
      Promise.race([lines.next(), exited.then(() => ({ done: true }))]),
      120000,
      what,
    );
    if (done) throw failure ?? new Error('bench: floor closed its output');
    return value;
  };
  const dirs = [];
  const notes = [...options.notes];
  const close = async () => {
    child.stdin.end();
    await Promise.race([exited, sleep(10000)]);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM'); // it removes its cgroups on SIGTERM
      await Promise.race([exited, sleep(10000)]);
    }
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await Promise.race([exited, sleep(5000)]);
    const left = await removeLeftCgroups(dirs);
    if (left.length > 0) throw new Error(`bench: the floor's cgroups could not be removed: ${left.join(', ')}`);
  };
  try {
    for (;;) {
      const line = await next('floor start-up');
      if (line === 'ready') break;
      if (line.startsWith('dir ')) dirs.push(line.slice(4));
      else if (line.startsWith('info ')) notes.push(line.slice(5));
      else throw new Error(`bench: floor said ${JSON.stringify(line)} before ready`);
    }
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }
  return {
    /** What the sandbox floor does here (Landlock, cgroups), for the report. */
    notes,
    async batch(k, kind = 'bare') {
      child.stdin.write(`${kind} ${k}\n`);
      const out = [];
      for (let i = 0; i < k; i++) out.push(Number(await next(`floor ${kind} batch`)) / 1e6);
      return out;
    },
    close,
  };
}
