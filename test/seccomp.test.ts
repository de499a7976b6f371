// The built-in seccomp filter (native/seccomp.cc), judged inside real bwrap
// sandboxes: a compiled probe makes the raw calls with and without the filter.
import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdtempSync, readFileSync, rmSync, writeSync, openSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MountEntry } from '../src/backend.js';
import { builtinSeccompFilter, builtinSeccompRules, type ExitStatus } from '../src/native.js';
import { startSandbox, type Sandbox } from '../src/process/sandbox.js';

const BWRAP = '/usr/bin/bwrap';
const UID = 63100;
const GID = 65534;
const ENV = ['PATH=/usr/bin:/bin', 'HOME=/tmp', 'LANG=C.UTF-8'];
const PROBE_DIR = '/tmp/procyard-seccomp-probe';
const NODE_PORT = 22150;
const SHINY_PORT = 22151;
const x64 = process.arch === 'x64';
// Each app prints its Seccomp line first: mode 2 means a filter is on it.
const FILTERED = 'Seccomp:\t2';
const SECCOMP_MODE_SH = 'grep "^Seccomp:" /proc/self/status';
const SECCOMP_MODE_R = 'writeLines(grep("^Seccomp:", readLines("/proc/self/status"), value = TRUE))';

interface Run {
  lines: string[];
  status: ExitStatus;
}

async function start(cmd: string[], seccompProfile: string, onLine: (line: string) => void,
                     mounts: MountEntry[] = []): Promise<Sandbox> {
  return startSandbox({
    bwrapPath: BWRAP,
    plan: { uid: UID, gid: GID, tmpSizeBytes: 0, mounts, cmd },
    seccompProfile,
    env: ENV,
    hostCredentials: process.getuid?.() === 0,
    onLine,
  });
}

async function run(cmd: string[], seccompProfile: string, mounts: MountEntry[] = []): Promise<Run> {
  const lines: string[] = [];
  const sandbox = await start(cmd, seccompProfile, (line) => lines.push(line), mounts);
  return { lines, status: await sandbox.exited };
}

/** `name=RESULT` lines of the probe: `ok`, an errno name, or the killing signal. */
function parseProbe(run: Run): Map<string, string> {
  expect(run.lines.at(-1), run.lines.join('\n')).toBe('done');
  expect(run.status).toEqual({ code: 0, signal: null });
  const results = new Map<string, string>();
  for (const line of run.lines) {
    const m = /^([\w]+)=(\S+)$/.exec(line);
    if (m) results.set(m[1]!, m[2]!);
  }
  return results;
}

async function waitForHttp(url: string, until: number): Promise<string> {
  for (;;) {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      return await res.text();
    } catch (err) {
      if (Date.now() > until) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

// Probe name for each rule builtinSeccompRules() reports, and the errno the filter gives.
const RULE_PROBES: Record<string, { probe: string; errno: string }> = {
  'ioctl(TIOCSTI)': { probe: 'ioctl_tiocsti', errno: 'EPERM' },
  'ioctl(TIOCLINUX)': { probe: 'ioctl_tioclinux', errno: 'EPERM' },
  'unshare(CLONE_NEW*)': { probe: 'unshare_newuser', errno: 'EPERM' },
  'clone(CLONE_NEW*)': { probe: 'clone_newuser', errno: 'EPERM' },
  clone3: { probe: 'clone3', errno: 'ENOSYS' },
  'socket(AF_NETLINK)': { probe: 'socket_netlink', errno: 'EPERM' },
  'setsockopt(SO_TIMESTAMPING)': { probe: 'setsockopt_timestamping', errno: 'EPERM' },
  'setsockopt(SO_TIMESTAMPING_NEW)': { probe: 'setsockopt_timestamping_new', errno: 'EPERM' },
  'setsockopt(TCP_MD5SIG)': { probe: 'setsockopt_tcp_md5sig', errno: 'EPERM' },
  'setsockopt(TCP_MD5SIG_EXT)': { probe: 'setsockopt_tcp_md5sig_ext', errno: 'EPERM' },
  'setsockopt(TCP_AO_ADD_KEY)': { probe: 'setsockopt_tcp_ao_add_key', errno: 'EPERM' },
};

// Without the filter the kernel answers these with something other than EPERM
// on any 6.x kernel (a bad argument or missing path is seen before privileges),
// so EPERM under the filter is the filter's doing.
const UNFILTERED: Record<string, string> = {
  ptrace: 'ok',
  process_vm_readv: 'ok',
  process_vm_writev: 'ok',
  pidfd_getfd: 'EBADF',
  process_madvise: 'EBADF',
  keyctl: 'ok',
  add_key: 'ok',
  socket_netlink: 'ok',
  setsockopt_timestamping: 'ok',
  setsockopt_timestamping_new: 'ok',
  io_uring_setup: 'EFAULT',
  io_setup: 'ok',
  setsockopt_tcp_md5sig: 'ok',
  setsockopt_tcp_md5sig_ext: 'ok',
  setsockopt_tcp_ao_add_key: 'EINVAL',
  request_key: 'ENOKEY',
  mount: 'ENOENT',
  fsconfig: 'EINVAL',
  open_tree: 'ENOENT',
  chroot: 'ENOENT',
  quotactl: 'EINVAL',
  quotactl_fd: 'EBADF',
  ioctl_tiocsti: 'ENOTTY',
  ioctl_tiocsti_high: 'ENOTTY',
  ioctl_tioclinux: 'ENOTTY',
  // bwrap --disable-userns leaves no room for another user namespace.
  unshare_newuser: 'ENOSPC',
  clone_newuser: 'ENOSPC',
  clone_newuser_high: 'ENOSPC',
  unshare_newns_bad: 'EINVAL',
  unshare_newtime_bad: 'EINVAL',
  clone3: 'EINVAL',
};

describe('built-in seccomp filter', () => {
  let dir = '';
  let filtered = new Map<string, string>();
  let unfiltered = new Map<string, string>();
  const probeMount = (): MountEntry[] => [{ source: dir, target: PROBE_DIR, readOnly: true }];

  beforeAll(async () => {
    // The sandbox user (not root) must reach the probe.
    dir = mkdtempSync(path.join(os.tmpdir(), 'procyard-seccomp-'));
    chmodSync(dir, 0o755);
    const source = fileURLToPath(new URL('./fixtures/seccomp-probe.c', import.meta.url));
    execFileSync('gcc', ['-O1', '-Wall', '-o', path.join(dir, 'probe'), source]);
    const probe = [`${PROBE_DIR}/probe`];
    [filtered, unfiltered] = (
      await Promise.all([run(probe, 'builtin', probeMount()), run(probe, '', probeMount())])
    ).map(parseProbe);
  });

  afterAll(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('writes a sealed memfd of sock_filter records that starts by loading the arch', () => {
    const fd = builtinSeccompFilter();
    try {
      const program = readFileSync(`/proc/self/fd/${fd}`);
      expect(program.length).toBeGreaterThan(8);
      expect(program.length % 8).toBe(0);
      // struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
      expect(program.readUInt16LE(0)).toBe(0x20); // BPF_LD | BPF_W | BPF_ABS
      expect(program.readUInt32LE(4)).toBe(4); // offsetof(struct seccomp_data, arch)
      const auditArch = x64 ? 0xc000003e : 0xc00000b7; // AUDIT_ARCH_X86_64, AUDIT_ARCH_AARCH64
      expect(program.readUInt16LE(8)).toBe(0x15); // BPF_JMP | BPF_JEQ | BPF_K
      expect(program.readUInt32LE(12)).toBe(auditArch);
      // Last: return SECCOMP_RET_ALLOW.
      expect(program.readUInt16LE(program.length - 8)).toBe(0x06);
      expect(program.readUInt32LE(program.length - 4)).toBe(0x7fff0000);
      // F_SEAL_WRITE: nobody can change the program later.
      const rw = openSync(`/proc/self/fd/${fd}`, 'r+');
      try {
        expect(() => writeSync(rw, 'x')).toThrow(expect.objectContaining({ code: 'EPERM' }));
      } finally {
        closeSync(rw);
      }
    } finally {
      closeSync(fd);
    }
  });

  it('lists its rules', () => {
    const rules = builtinSeccompRules();
    for (const name of ['mount', 'ptrace', 'keyctl', 'perf_event_open', 'bpf', 'ioctl(TIOCSTI)', 'clone3'])
      expect(rules).toContain(name);
  });

  it('denies every listed rule inside the sandbox', () => {
    const misses: string[] = [];
    for (const rule of builtinSeccompRules()) {
      const { probe, errno } = RULE_PROBES[rule] ?? { probe: rule, errno: 'EPERM' };
      if (filtered.get(probe) !== errno) misses.push(`${rule}: ${filtered.get(probe) ?? 'no probe'}`);
    }
    expect(misses).toEqual([]);
  });

  // UNFILTERED holds what this machine's kernel answers. Another build may lack
  // a call (ENOSYS) or refuse it before the arguments are looked at (EPERM,
  // EACCES): that door is then closed by the kernel itself, and the filter is
  // judged only on the calls the kernel would have run.
  it('owes those EPERMs to the filter: without it the kernel answers otherwise', () => {
    const ranByKernel: string[] = [];
    for (const [probe, here] of Object.entries(UNFILTERED)) {
      expect({ probe, result: filtered.get(probe) }).toEqual({ probe, result: probe === 'clone3' ? 'ENOSYS' : 'EPERM' });
      const bare = unfiltered.get(probe);
      expect(bare, `${probe}: the unfiltered probe gave no result (${here} on a full 6.x kernel)`).toMatch(/^(ok|E[A-Z0-9]+)$/);
      if (!['ENOSYS', 'EPERM', 'EACCES'].includes(bare!)) ranByKernel.push(probe);
    }
    // Most of them reach the kernel's code on any kernel of this kind: an unfiltered run that is refused everything is broken.
    expect(ranByKernel.length).toBeGreaterThan(Object.keys(UNFILTERED).length / 2);
  });

  it('ptrace(PTRACE_TRACEME), keyctl and perf_event_open: EPERM with the filter, not without', () => {
    for (const probe of ['ptrace', 'keyctl', 'perf_event_open']) {
      expect({ probe, result: filtered.get(probe) }).toEqual({ probe, result: 'EPERM' });
      expect(unfiltered.get(probe)).toBeDefined();
      expect({ probe, result: unfiltered.get(probe) }).not.toEqual({ probe, result: 'EPERM' });
    }
  });

  it('refuses new namespaces through unshare and clone, and lets other flags through', () => {
    for (const probe of ['unshare_newuser', 'unshare_newns', 'clone_newuser', 'clone_newns', 'clone_newuser_high'])
      expect({ probe, result: filtered.get(probe) }).toEqual({ probe, result: 'EPERM' });
    expect(filtered.get('unshare_fs')).toBe('ok');
    expect(filtered.get('clone_plain')).toBe('ok');
    expect(filtered.get('clone3')).toBe('ENOSYS');
  });

  it('refuses TCP signature keys by level and option, and leaves those option numbers open at other levels', () => {
    for (const probe of ['setsockopt_tcp_md5sig', 'setsockopt_tcp_md5sig_ext', 'setsockopt_tcp_ao_add_key'])
      expect({ probe, result: filtered.get(probe) }).toEqual({ probe, result: 'EPERM' });
    for (const probe of ['setsockopt_ip_multicast_if', 'setsockopt_so_bsdcompat']) {
      expect({ probe, result: filtered.get(probe) }).toEqual({ probe, result: 'ok' });
      expect({ probe, result: unfiltered.get(probe) }).toEqual({ probe, result: 'ok' });
    }
  });

  it('refuses mount and ioctl(TIOCSTI), also with junk in the high word of the request', () => {
    expect(filtered.get('mount')).toBe('EPERM');
    expect(filtered.get('ioctl_tiocsti')).toBe('EPERM');
    expect(filtered.get('ioctl_tiocsti_high')).toBe('EPERM');
    expect(filtered.get('ioctl_fionread')).toBe('ok');
  });

  // A door is closed when the call is refused, by the filter or by the kernel:
  // a kernel built without IA32 emulation (or booted with it off) answers
  // int 0x80 with SIGSEGV before seccomp sees it. What the filter adds is
  // asserted only where the unfiltered kernel would have run the call.
  it.skipIf(!x64)('closes the x32 and i386 doors on x86_64', () => {
    expect(filtered.get('x32_getpid')).toBe('EPERM');
    expect(unfiltered.get('x32_getpid')).not.toBe('EPERM');
    const i386 = unfiltered.get('int80_ptrace');
    expect(i386, 'the probe reports int 0x80 either way').toBeDefined();
    const kernelRunsI386 = i386 !== 'SIGSEGV';
    if (kernelRunsI386) {
      // i386 ptrace through int 0x80: another ABI's numbers, so the filter kills.
      expect(i386).toMatch(/^(ok|E[A-Z]+)$/);
      expect(filtered.get('int80_ptrace')).toBe('SIGSYS');
    } else {
      expect(filtered.get('int80_ptrace')).toMatch(/^(SIGSYS|SIGSEGV)$/);
    }
  });

  it('runs sh and ls under the filter', async () => {
    const { lines, status } = await run(['/bin/sh', '-c', `${SECCOMP_MODE_SH}; ls -d /usr/bin && echo sh-ok`], 'builtin');
    expect(lines).toEqual([FILTERED, '/usr/bin', 'sh-ok']);
    expect(status).toEqual({ code: 0, signal: null });
  });

  it('runs a Node HTTP server under the filter', async () => {
    const app = `
      const fs = require('node:fs');
      console.log(fs.readFileSync('/proc/self/status', 'utf8').match(/^Seccomp:.*$/m)[0]);
      const http = require('node:http');
      const server = http.createServer((req, res) => {
        res.setHeader('connection', 'close');
        res.end('node-under-seccomp', () => server.close());
      });
      server.listen(${NODE_PORT}, '127.0.0.1', () => console.log('listening'));`;
    const lines: string[] = [];
    const sandbox = await start([process.execPath, '-e', app], 'builtin', (line) => lines.push(line));
    try {
      expect(await waitForHttp(`http://127.0.0.1:${NODE_PORT}/`, Date.now() + 10_000)).toBe('node-under-seccomp');
      expect(await sandbox.exited).toEqual({ code: 0, signal: null });
      expect(lines).toEqual([FILTERED, 'listening']);
    } finally {
      sandbox.signal('SIGKILL');
    }
  });

  it('runs R under the filter', async () => {
    const { lines, status } = await run(['/usr/bin/Rscript', '-e', `${SECCOMP_MODE_R}; cat(1+1, "\\n")`], 'builtin');
    expect(lines.map((l) => l.trim())).toEqual([FILTERED, '2']);
    expect(status).toEqual({ code: 0, signal: null });
  });

  const hasShiny =
    existsSync('/usr/bin/Rscript') &&
    (() => {
      try {
        return execFileSync('/usr/bin/Rscript', ['-e', 'cat(requireNamespace("shiny", quietly = TRUE))']).toString() === 'TRUE';
      } catch {
        return false;
      }
    })();

  it.skipIf(!hasShiny)('runs a Shiny app under the filter', async () => {
    const app =
      `${SECCOMP_MODE_R}; shiny::runApp(shiny::shinyApp(shiny::fluidPage("shiny-under-seccomp"), function(input, output) {}),` +
      ` port = ${SHINY_PORT}, host = "127.0.0.1", launch.browser = FALSE)`;
    const lines: string[] = [];
    const sandbox = await start(['/usr/bin/Rscript', '-e', app], 'builtin', (line) => lines.push(line));
    try {
      const page = await waitForHttp(`http://127.0.0.1:${SHINY_PORT}/`, Date.now() + 20_000).catch((err: unknown) => {
        throw new Error(`Shiny did not answer: ${String(err)}\n${lines.join('\n')}`);
      });
      expect(page).toContain('shiny-under-seccomp');
      expect(lines).toContain(FILTERED);
    } finally {
      sandbox.signal('SIGKILL');
      await sandbox.exited;
    }
  });
});
