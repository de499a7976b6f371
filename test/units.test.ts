// The pure parts: bwrap argv, the worker environment, line splitting and the
// ring, R version resolution, /proc/net/tcp parsing, command lookup. No
// sandbox needed.
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { bwrapArgs, buildEnv, envArgs, workerEnv, workerMounts } from '../src/process/bwrap.js';
import { commandProblem, hostPathOf } from '../src/process/command.js';
import { loopbackListeners as sockDiagListeners, socketsHeldInTree } from '../src/native.js';
import { listenerOwnership, parseListeners, procListeners } from '../src/process/listeners.js';
import { LineSplitter, LogRing, MAX_LINE, printable, retainedBytes } from '../src/process/logs.js';
import { checkRVersion, compareVersions, installedRVersions, resolveRBinary } from '../src/process/rversion.js';
import { parseAddressRule, parseAddressRules, ruleForTarget } from '../src/process/address-rules.js';
import { hookRules, hostAddressKeys, loadProblem, portSpans, type SocketHooksConfig } from '../src/process/socket-hooks.js';
import { portsOutside } from '../src/process/port-registry.js';
import { tempDir } from './helpers/backend.js';

describe('bwrapArgs', () => {
  const plan = { uid: 60001, gid: 65534, tmpSizeBytes: 1024, mounts: [], seccomp: false, cmd: ['Rscript', '/app/app.R'] };

  it('isolates pid, user, uts and ipc, forbids nested user namespaces and caps /tmp', () => {
    const args = bwrapArgs(plan);
    for (const flag of ['--unshare-pid', '--unshare-user', '--disable-userns', '--unshare-uts', '--unshare-ipc', '--die-with-parent', '--new-session'])
      expect(args).toContain(flag);
    expect(args).not.toContain('--unshare-net');
    expect(args.join(' ')).toContain('--uid 60001 --gid 65534');
    expect(args.join(' ')).toContain('--ro-bind / / --size 1024 --tmpfs /tmp --proc /proc --tmpfs /dev ');
    expect(args.join(' ')).toContain('--size 1024 --tmpfs /dev/shm --remount-ro /dev --chdir /tmp');
    // Devices by hand: no devpts, so no /dev/ptmx.
    expect(args).not.toContain('--dev');
    expect(args.join(' ')).toContain('--dev-bind /dev/null /dev/null');
    expect(args.join(' ')).not.toContain('pts');
    expect(args.join(' ')).toContain('--cap-drop ALL --args 5');
    expect(args.slice(-5)).toEqual(['--json-status-fd', '3', '--', 'Rscript', '/app/app.R']);
  });

  it('leaves out --size when uncapped and adds --seccomp when asked', () => {
    const args = bwrapArgs({ ...plan, tmpSizeBytes: 0, seccomp: true });
    expect(args).not.toContain('--size');
    expect(args.join(' ')).toContain('--seccomp 4 --json-status-fd 3');
  });

  it('binds the bundle read-only first, then libraries, token, transfer and data mounts', () => {
    const mounts = workerMounts({
      bundlePath: '/srv/b',
      workerMount: '/app',
      libraryPath: '/srv/lib',
      libDir: '/srv/store',
      tokenDir: '/srv/tok',
      transferDir: '/srv/xfer',
      dataMounts: [{ source: '/data', target: '/data' }, { source: '/ro', target: '/ro', readOnly: true }],
    });
    const args = bwrapArgs({ ...plan, mounts }).join(' ');
    expect(args).toContain(
      '--ro-bind /srv/b /app --ro-bind /srv/lib /blockyard-lib --ro-bind /srv/store /blockyard-lib-store ' +
        '--ro-bind /srv/tok /var/run/blockyard --bind /srv/xfer /transfer --bind /data /data --ro-bind /ro /ro --cap-drop ALL',
    );
  });
});

describe('envArgs', () => {
  it('clears bwrap\'s environment and sets the app\'s, NUL-separated, values kept whole', () => {
    const data = envArgs(['A=1', 'B=x=y', 'C=']).toString('utf8');
    expect(data.split('\0')).toEqual(['--clearenv', '--setenv', 'A', '1', '--setenv', 'B', 'x=y', '--setenv', 'C', '', '']);
  });

  it('refuses an entry that could smuggle in a bwrap option', () => {
    expect(() => envArgs(['A=1\0--bind\0/\0/x'])).toThrow(/not KEY=VALUE/);
    expect(() => envArgs(['=x'])).toThrow(/not KEY=VALUE/);
    expect(() => envArgs(['NOEQUALS'])).toThrow(/not KEY=VALUE/);
  });
});

describe('environment', () => {
  it('is the minimal set, the spec env, then SHINY_* which a spec cannot override', () => {
    const env = workerEnv({ env: { FOO: 'bar', SHINY_HOST: '0.0.0.0' }, rProfilePath: '/app/.Rprofile' }, 10001);
    expect(env).toEqual([
      'PATH=/usr/bin:/usr/local/bin:/bin',
      'HOME=/tmp',
      'TMPDIR=/tmp',
      'LANG=C.UTF-8',
      'R_PROFILE_USER=/app/.Rprofile',
      'FOO=bar',
      'SHINY_HOST=127.0.0.1',
      'SHINY_PORT=10001',
    ]);
  });

  it('sets R_LIBS only to a library that is mounted: libDir, else libraryPath, else none', () => {
    expect(workerEnv({ libDir: '/x' }, 1)).toContain('R_LIBS=/blockyard-lib-store');
    expect(workerEnv({ libDir: '/x', libraryPath: '/y' }, 1)).toContain('R_LIBS=/blockyard-lib-store');
    expect(workerEnv({ libraryPath: '/y' }, 1)).toContain('R_LIBS=/blockyard-lib');
    expect(workerEnv({}, 1).some((e) => e.startsWith('R_LIBS='))).toBe(false);
  });

  it('gives builds the minimal set plus their KEY=VALUE entries', () => {
    expect(buildEnv(['A=1'])).toEqual(['PATH=/usr/bin:/usr/local/bin:/bin', 'HOME=/tmp', 'TMPDIR=/tmp', 'LANG=C.UTF-8', 'A=1']);
  });
});

describe('LineSplitter', () => {
  function split(chunks: string[]): string[] {
    const out: string[] = [];
    const s = new LineSplitter((l) => out.push(l));
    for (const c of chunks) s.push(c);
    s.end();
    return out;
  }

  it('joins lines across chunks, drops CR before LF, keeps a final partial line', () => {
    expect(split(['a', 'b\nc\r\n', '\nd'])).toEqual(['ab', 'c', '', 'd']);
  });

  it('splits an over-long line into MAX_LINE pieces as it arrives', () => {
    const out: string[] = [];
    const s = new LineSplitter((l) => out.push(l));
    s.push('x'.repeat(MAX_LINE + 10));
    // The first piece is out before any newline arrives: the buffer stays bounded.
    expect(out.map((l) => l.length)).toEqual([MAX_LINE]);
    s.push('y\n');
    expect(out.map((l) => l.length)).toEqual([MAX_LINE, 11]);
  });
});

describe('LineSplitter on floods of short lines', () => {
  it('gives the same lines and byte counts as a plain split, whatever the chunking', () => {
    // Short, repeated, CRLF, non-ASCII, invalid UTF-8, 32/33-byte and long lines, back to back.
    const parts = ['', '', 'y', 'y', 'y\r', 'x', '', '\u00e9\u00e9', '\u00e9\u00e9', 'a'.repeat(32), 'a'.repeat(33), 'a'.repeat(32), 'b'.repeat(500), 'y', 'y'];
    const text = Buffer.concat([...parts.map((p) => Buffer.from(p + '\n')), Buffer.from([0xff, 0x0a, 0xfe, 0x0a, 0xfe, 0x0a])]);
    const expected = [...parts.map((p) => p.replace(/\r$/, '')), '\uFFFD', '\uFFFD', '\uFFFD'];
    for (const size of [1, 2, 3, 7, 33, 64, text.length]) {
      const out: [string, number][] = [];
      const s = new LineSplitter((l, n) => out.push([l, n]));
      for (let at = 0; at < text.length; at += size) s.push(text.subarray(at, at + size));
      s.end();
      expect(out.map(([l]) => l), `chunks of ${size}`).toEqual(expected);
      expect(out.map(([, n]) => n), `chunks of ${size}`).toEqual(expected.map((l) => (l === '\uFFFD' ? 1 : Buffer.byteLength(l))));
    }
  });

  it('emits every line of a 64 KiB chunk of newlines, the newest kept in a ring bounded as before', () => {
    const ring = new LogRing(1000, 16 * 1024);
    let emitted = 0;
    const s = new LineSplitter((l, n) => {
      emitted++;
      ring.push(l, n);
    });
    s.push(Buffer.alloc(65536, 10));
    s.push('last\n');
    expect(emitted).toBe(65537);
    const held = ring.snapshot();
    expect(held.length).toBe(1 + Math.floor((16 * 1024 - retainedBytes('last', 4)) / retainedBytes('', 0)));
    expect(held.at(-1)).toBe('last');
    expect(held.slice(0, -1).every((l) => l === '')).toBe(true);
    expect(ring.retained).toBeLessThanOrEqual(16 * 1024);
  });
});

describe('LineSplitter on bytes', () => {
  it('never cuts a UTF-8 character when it splits an over-long line, and reports each piece\'s bytes', () => {
    const out: [string, number][] = [];
    const s = new LineSplitter((l, n) => out.push([l, n]));
    // 3 ASCII bytes then four-byte characters: MAX_LINE falls inside one of them.
    const text = 'abc' + '\u{1F600}'.repeat(MAX_LINE / 4 + 10);
    const bytes = Buffer.from(text + '\n');
    // Arrives in awkward chunks, one split inside a character.
    s.push(bytes.subarray(0, 1001));
    s.push(bytes.subarray(1001, 70001));
    s.push(bytes.subarray(70001));
    s.end();
    expect(out.map(([l]) => l).join('')).toBe(text);
    for (const [line, n] of out) {
      expect(n).toBe(Buffer.byteLength(line));
      expect(n).toBeLessThanOrEqual(MAX_LINE);
      expect(line).not.toContain('\uFFFD');
    }
    expect(out).toHaveLength(2);
  });

  it('never cuts a character split by the chunk that fills the buffer to MAX_LINE exactly', () => {
    // As a pipe hands it over: MAX_LINE - 1 bytes and a character's first byte,
    // then its other two bytes. The piece went out at MAX_LINE bytes, the
    // character in three invalid pieces.
    const bytes = Buffer.concat([Buffer.alloc(MAX_LINE - 1, 'a'), Buffer.from('\u20ac' + 'b'.repeat(10) + '\n')]);
    for (const at of [MAX_LINE, MAX_LINE + 1]) {
      const out: string[] = [];
      const s = new LineSplitter((l) => out.push(l));
      s.push(bytes.subarray(0, at));
      s.push(bytes.subarray(at));
      s.end();
      expect(out.join(''), `split at ${at}`).toBe('a'.repeat(MAX_LINE - 1) + '\u20ac' + 'b'.repeat(10));
      expect(out.every((l) => Buffer.byteLength(l) <= MAX_LINE)).toBe(true);
    }
  });
});

describe('printable', () => {
  it('shows a worker\'s control characters as \\xNN so they cannot drive the terminal, and keeps tabs and text', () => {
    expect(printable('\x1b]0;pwned\x07red \x1b[31mtext\x1b[0m\tok \u00e9\u{1F600}')).toBe(
      '\\x1b]0;pwned\\x07red \\x1b[31mtext\\x1b[0m\tok \u00e9\u{1F600}',
    );
    expect(printable('\x9b31m')).toBe('\\x9b31m');
  });
});

describe('LogRing bounded in bytes', () => {
  it('counts two bytes a character for non-ASCII text, one for ASCII, plus a per-line overhead', () => {
    expect(retainedBytes('abcd', 4) - retainedBytes('', 0)).toBe(4);
    expect(retainedBytes('\u00e9\u00e9', 4) - retainedBytes('', 0)).toBe(4);
    // Invalid UTF-8 decodes to U+FFFD one for one: same length, still two bytes each.
    expect(retainedBytes('\uFFFD\uFFFD', 2) - retainedBytes('', 0)).toBe(4);
    expect(retainedBytes('ab') - retainedBytes('')).toBe(2);
  });

  it('drops the oldest lines to stay within maxBytes, always keeping the newest', async () => {
    const wide = '\u4e00'.repeat(1000); // 2000 bytes held each
    const ring = new LogRing(1000, 10_000);
    for (let i = 0; i < 50; i++) ring.push(`${wide}${i}`);
    expect(ring.retained).toBeLessThanOrEqual(10_000);
    const held = ring.snapshot();
    expect(held.length).toBe(4);
    expect(held.at(-1)).toBe(`${wide}49`);
    ring.push('x'.repeat(20_000));
    expect(ring.snapshot()).toEqual(['x'.repeat(20_000)]);
    ring.close();
    const got: string[] = [];
    for await (const l of ring.reader()) got.push(l);
    expect(got).toEqual(['x'.repeat(20_000)]);
  });
});

describe('LogRing', () => {
  it('keeps the last capacity lines and replays them to a new reader', async () => {
    const ring = new LogRing(3);
    for (const l of ['1', '2', '3', '4']) ring.push(l);
    ring.close();
    const got: string[] = [];
    for await (const l of ring.reader()) got.push(l);
    expect(got).toEqual(['2', '3', '4']);
    expect(ring.snapshot()).toEqual(['2', '3', '4']);
  });

  it('follows new lines and ends on close(); a reader can stop itself', async () => {
    const ring = new LogRing(10);
    ring.push('a');
    const reader = ring.reader();
    const got: string[] = [];
    const done = (async () => {
      for await (const l of reader) got.push(l);
    })();
    await new Promise((r) => setTimeout(r, 5));
    ring.push('b');
    ring.close();
    await done;
    expect(got).toEqual(['a', 'b']);

    const open = new LogRing(10);
    const stopped = open.reader();
    const iteration = (async () => {
      const seen: string[] = [];
      for await (const l of stopped) seen.push(l);
      return seen;
    })();
    open.push('x');
    await new Promise((r) => setTimeout(r, 5));
    stopped.close();
    expect(await iteration).toEqual(['x']);
  });

  it('lets a slow reader skip what the ring no longer holds', async () => {
    const ring = new LogRing(2);
    const reader = ring.reader()[Symbol.asyncIterator]();
    ring.push('1');
    expect((await reader.next()).value).toBe('1');
    for (const l of ['2', '3', '4']) ring.push(l);
    ring.close();
    expect((await reader.next()).value).toBe('3');
    expect((await reader.next()).value).toBe('4');
    expect((await reader.next()).done).toBe(true);
  });
});

describe('R versions', () => {
  const rig = tempDir('procyard-rig-');
  afterAll(() => rig.cleanup());
  for (const v of ['4.4.9', '4.4.10', '4.3.1', '4.2', 'junk']) {
    const bin = path.join(rig.dir, v, 'bin');
    mkdirSync(bin, { recursive: true });
    if (v !== 'junk') {
      writeFileSync(path.join(bin, 'R'), '#!/bin/sh\n');
      chmodSync(path.join(bin, 'R'), 0o755);
    }
  }
  const R = (v: string) => path.join(rig.dir, v, 'bin', 'R');

  it('compares versions numerically', () => {
    expect(compareVersions('4.4.10', '4.4.9')).toBeGreaterThan(0);
    expect(compareVersions('4.10.0', '4.9.9')).toBeGreaterThan(0);
    expect(compareVersions('4.4', '4.4.0')).toBeLessThan(0);
  });

  it('lists installs with an executable bin/R in numeric order', () => {
    expect(installedRVersions(rig.dir)).toEqual(['4.2', '4.3.1', '4.4.9', '4.4.10']);
    expect(installedRVersions('/nonexistent')).toEqual([]);
  });

  it('resolves exact, then highest patch, then bare major.minor, else falls back', () => {
    expect(resolveRBinary('', '/usr/bin/R', rig.dir)).toEqual({ path: '/usr/bin/R', fellBack: false });
    expect(resolveRBinary('4.3.1', '/usr/bin/R', rig.dir)).toEqual({ path: R('4.3.1'), fellBack: false });
    expect(resolveRBinary('4.4.2', '/usr/bin/R', rig.dir)).toEqual({ path: R('4.4.10'), fellBack: false });
    expect(resolveRBinary('4.2.3', '/usr/bin/R', rig.dir)).toEqual({ path: R('4.2'), fellBack: false });
    expect(resolveRBinary('3.6.3', '/usr/bin/R', rig.dir)).toEqual({ path: '/usr/bin/R', fellBack: true });
  });

  it('never resolves a version to a path out of rigBase', () => {
    // An install outside rigBase, next to it, that '../<name>' would reach.
    const outside = `${path.basename(rig.dir)}-outside`;
    const bin = path.join(path.dirname(rig.dir), outside, 'bin');
    mkdirSync(bin, { recursive: true });
    writeFileSync(path.join(bin, 'R'), '#!/bin/sh\n', { mode: 0o755 });
    try {
      for (const v of [`../${outside}`, '..', '.', '4.3.1/../4.2'])
        expect(resolveRBinary(v, '/usr/bin/R', rig.dir)).toEqual({ path: '/usr/bin/R', fellBack: true });
    } finally {
      rmSync(path.dirname(bin), { recursive: true, force: true });
    }
  });

  it('checks a bundle version with messages a user can act on', () => {
    expect(() => checkRVersion('', rig.dir)).not.toThrow();
    expect(() => checkRVersion('4.4.1', rig.dir)).not.toThrow();
    expect(() => checkRVersion('4.1.0', rig.dir)).toThrow(
      'bundle requires R 4.1 which is not installed; available: 4.2, 4.3.1, 4.4.9, 4.4.10',
    );
    expect(() => checkRVersion('4.1.0', '/nonexistent')).toThrow(
      'bundle requires R 4.1 which is not installed but no R versions are installed',
    );
    // A bundle's version cannot drive the operator's terminal through the message.
    expect(() => checkRVersion('\x1b[2J.1', rig.dir)).toThrow(/^bundle requires R \\x1b\[2J\.1 which is not installed/);
  });
});

describe('parseListeners (/proc/net/tcp)', () => {
  const v4 = [
    '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 0100007F:2710 00000000:0000 0A 00000000:00000000 00:00000000 00000000 61000        0 1681 1 0 100 0 0 10 0',
    '   1: 00000000:2710 00000000:0000 0A 00000000:00000000 00:00000000 00000000 61001        0 1682 1 0 100 0 0 10 0',
    // Established, not listening: the client side of a connection to the port.
    '   2: 0100007F:2710 0100007F:B0F2 01 00000000:00000000 00:00000000 00000000 61002        0 1683 1 0 100 0 0 10 0',
    // 127.0.0.2 does not receive a connect to 127.0.0.1.
    '   3: 0200007F:2710 00000000:0000 0A 00000000:00000000 00:00000000 00000000 61003        0 1684 1 0 100 0 0 10 0',
    // Another port.
    '   4: 0100007F:2711 00000000:0000 0A 00000000:00000000 00:00000000 00000000 61004        0 1685 1 0 100 0 0 10 0',
  ].join('\n');
  const v6 = [
    '  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
    '   0: 00000000000000000000000000000000:2710 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 61005        0 1 1 0',
    '   1: 0000000000000000FFFF00000100007F:2710 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 61006        0 2 1 0',
    // ::1 does not receive a connect to 127.0.0.1.
    '   2: 00000000000000000000000001000000:2710 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000 61007        0 3 1 0',
  ].join('\n');

  it('gives the owners and inodes of LISTEN sockets on the port that a connect to 127.0.0.1 reaches', () => {
    expect(parseListeners(v4, 10000)).toEqual([
      { uid: 61000, inode: 1681, exact: true },
      { uid: 61001, inode: 1682, exact: false },
    ]);
    expect(parseListeners(v6, 10000)).toEqual([
      { uid: 61005, inode: 1, exact: false },
      { uid: 61006, inode: 2, exact: true },
    ]);
    expect(parseListeners(v4, 10001)).toEqual([{ uid: 61004, inode: 1685, exact: true }]);
    expect(parseListeners(v4, 10002)).toEqual([]);
    expect(parseListeners('', 10000)).toEqual([]);
  });
});

describe('listeners from sock_diag, and who holds them', () => {
  // Ports 34250-34254: real listeners on each kind of address.
  const listen = (port: number, host: string) =>
    new Promise<net.Server | null>((resolve) => {
      const server = net.createServer((c) => c.destroy());
      server.once('error', () => resolve(null)); // no IPv6 here
      server.listen({ port, host, ipv6Only: host === '::' ? false : undefined }, () => resolve(server));
    });

  it('agree with /proc/net/tcp: the loopback-reachable listeners only, not clients nor other addresses', async () => {
    const uid = process.getuid!();
    const cases: [number, string, number[]][] = [
      [34250, '127.0.0.1', [uid]],
      [34251, '0.0.0.0', [uid]],
      [34252, '::', [uid]],
      [34253, '127.0.0.2', []],
      [34254, '::1', []],
    ];
    const servers = await Promise.all(cases.map(([port, host]) => listen(port, host)));
    // An established connection to 34250: its client side is not a listener.
    const client = net.connect({ port: 34250, host: '127.0.0.1' });
    await new Promise((resolve) => client.once('connect', resolve).once('error', resolve));
    try {
      for (const [i, [port, host, want]] of cases.entries()) {
        if (!servers[i]) continue;
        const fromDiag = await sockDiagListeners(port);
        expect(fromDiag.map((l) => l.uid), `${host}:${port}`).toEqual(want);
        expect(fromDiag, `${host}:${port}`).toEqual(await procListeners(port));
      }
      expect(await sockDiagListeners(34249)).toEqual([]);
    } finally {
      client.destroy();
      await Promise.all(servers.map((s) => new Promise((resolve) => (s ? s.close(resolve) : resolve(null)))));
    }
  });
  it('are those on 127.0.0.1 itself where there are any (the kernel looks them up first), and never a v6-only one on ::', async () => {
    // Ports 29950-29952, below the kernel's ephemeral range (clients' TIME_WAIT sockets there refuse a bind, whatever
    // SO_REUSEADDR says), each with listeners of this uid sharing it through SO_REUSEPORT.
    const script =
      'import socket, sys, time\n' +
      'def listen(family, host, port, v6only=None):\n' +
      '    s = socket.socket(family, socket.SOCK_STREAM)\n' +
      // SO_REUSEADDR as libuv sets it: the server side's own TIME_WAIT sockets must not refuse the bind.
      '    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n' +
      '    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n' +
      '    if v6only is not None: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)\n' +
      '    s.bind((host, port)); s.listen(); return s\n' +
      'keep = [listen(socket.AF_INET6, "::", 29950, 1), listen(socket.AF_INET, "0.0.0.0", 29951), listen(socket.AF_INET, "127.0.0.1", 29951),\n' +
      '        listen(socket.AF_INET6, "::", 29952, 0), listen(socket.AF_INET, "127.0.0.1", 29952)]\n' +
      'print(" ".join(str(s.fileno()) for s in keep), flush=True)\n' +
      'time.sleep(30)\n';
    const child = spawn('/usr/bin/python3', ['-c', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    try {
      // Up, or gone with its error (a port taken): never a silent wait.
      const up = await new Promise<boolean>((resolve) => {
        child.stdout.once('data', () => resolve(true));
        child.once('exit', () => resolve(false));
      });
      expect(up, stderr).toBe(true);
      const uid = process.getuid!();
      // v6-only on :: takes no connect to 127.0.0.1.
      expect(await sockDiagListeners(29950)).toEqual([]);
      // 0.0.0.0 and 127.0.0.1, or :: and 127.0.0.1: only 127.0.0.1's is reached.
      for (const port of [29951, 29952]) {
        const found = await sockDiagListeners(port);
        expect(found.map((l) => l.uid), String(port)).toEqual([uid]);
        expect(await procListeners(port), String(port)).toEqual(found);
      }
    } finally {
      child.kill('SIGKILL');
    }
  });

  it("are found in the fd tables of the tree that holds them, and only there", async () => {
    // Port 34255: a listener of a child process (python3), which the test process's tree holds.
    const child = spawn('/usr/bin/python3', ['-c', 'import socket,time\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(("127.0.0.1",34255))\ns.listen()\nprint("up",flush=True)\ntime.sleep(30)']);
    try {
      await new Promise((resolve, reject) => child.stdout.once('data', resolve).once('error', reject));
      const [listener] = await sockDiagListeners(34255);
      expect(listener).toBeDefined();
      const { inode } = listener!;
      expect(await socketsHeldInTree(process.pid, [inode, 1], 65536)).toEqual([inode]);
      expect(await socketsHeldInTree(child.pid!, [inode], 65536)).toEqual([inode]);
      // A tree that does not hold it: a sibling with no sockets.
      const other = spawn('/bin/sleep', ['30']);
      try {
        expect(await socketsHeldInTree(other.pid!, [inode], 65536)).toEqual([]);
      } finally {
        other.kill('SIGKILL');
      }
      // The search is bounded: with no fd link to read, nothing is found.
      expect(await socketsHeldInTree(child.pid!, [inode], 1)).toEqual([]); // its fd 0, not its socket (fd 3)
      // Ownership as readiness asks it: right UID, held by the tree.
      const uid = process.getuid!();
      const held = new Set<number>();
      expect(await listenerOwnership(34255, { uid, root: child.pid!, held })).toBe('own');
      expect([...held]).toEqual([inode]);
      expect(await listenerOwnership(34255, { uid, root: other.pid!, held: new Set() })).toBe('elsewhere');
      expect(await listenerOwnership(34255, { uid: uid + 1, root: child.pid!, held: new Set() })).toEqual({ foreign: uid });
      expect(await listenerOwnership(34249, { uid, root: child.pid!, held })).toBe('none');
    } finally {
      child.kill('SIGKILL');
    }
  });
});

describe('commandProblem (can the sandbox exec it?)', () => {
  const view = { bundlePath: fileURLToPath(new URL('./fixtures/', import.meta.url)), workerMount: '/tmp/app' };

  it('finds programs on the worker PATH and in the bundle, as the sandbox sees them', () => {
    expect(commandProblem('sh', view)).toBeNull();
    expect(commandProblem('/bin/sh', view)).toBeNull();
    expect(commandProblem(process.execPath, view)).toBeNull();
    // R and Rscript resolve through process.rPath and rig, not PATH.
    expect(commandProblem('Rscript', view)).toBeNull();
    // The sandbox's own /proc and /tmp: the host cannot tell, so no verdict.
    expect(commandProblem('/proc/self/exe', view)).toBeNull();
  });

  it('names what is missing', () => {
    expect(commandProblem('no-such-program', view)).toContain("not found in the sandbox's PATH (/usr/bin:/usr/local/bin:/bin)");
    expect(commandProblem('no-such-program', { ...view, searchPath: '/opt/x' })).toContain('(/opt/x)');
    // In the bundle on the host, but not executable.
    expect(commandProblem('/tmp/app/app.mjs', view)).toMatch(/host path .*fixtures\/app\.mjs\) is not an executable file/);
    expect(commandProblem('/tmp/app/nothing', view)).toContain('is not an executable file');
    expect(commandProblem('./app.mjs', view)).toContain('give an absolute path');
  });

  it('maps sandbox paths to host paths through the binds, deepest first', () => {
    const v = { bundlePath: '/srv/b', workerMount: '/app', mounts: [{ source: '/srv/x', target: '/transfer' }, { source: '/srv/d', target: '/app/data' }] };
    expect(hostPathOf('/app/run', v)).toBe('/srv/b/run');
    expect(hostPathOf('/app/data/f', v)).toBe('/srv/d/f');
    expect(hostPathOf('/transfer/t', v)).toBe('/srv/x/t');
    expect(hostPathOf('/usr/bin/env', v)).toBe('/usr/bin/env');
    expect(hostPathOf('/application', v)).toBe('/application');
    expect(hostPathOf('/tmp/x', v)).toBeNull();
  });
});

describe('socket hook rules (the table the programs are built from)', () => {
  const config = (extra: Partial<SocketHooksConfig> = {}): SocketHooksConfig => ({
    mode: 'auto',
    workerPorts: [10000, 10999],
    uids: [60000, 60999],
    denied: [],
    services: [],
    ...extra,
  });

  it('always denies the metadata addresses; a loopback entry becomes every local address', () => {
    const rules = hookRules(config({ denied: parseAddressRules(['127.0.0.1:5432', '10.0.0.0/8'], 'd') }), []);
    expect(rules.workerPorts).toEqual([10000, 10999]);
    expect(rules.deny).toEqual([
      { local: false, family: 4, address: new Uint8Array([169, 254, 169, 254]), prefix: 32 },
      { local: false, family: 6, address: parseAddressRule('fd00:ec2::254').address, prefix: 128 },
      { local: true, ports: [5432, 5432] },
      { local: false, family: 4, address: new Uint8Array([10, 0, 0, 0]), prefix: 8 },
    ]);
    expect(rules.allow).toBeUndefined();
    expect(rules.tcpPorts).toBeUndefined();
    expect(rules.uidEntries).toBe(1000);
  });

  it('adds the services, the allow list and the TCP ports as spans', () => {
    const redis = ruleForTarget('127.0.0.1', 6379, 'redis.url')!;
    const rules = hookRules(config({ allowed: parseAddressRules(['[::1]:53'], 'a'), allowedConnectPorts: [443, 80, 81, 82, 443] }), [redis]);
    expect(rules.deny.at(-1)).toEqual({ local: true, ports: [6379, 6379] });
    expect(rules.allow).toEqual([{ local: false, family: 6, address: parseAddressRule('::1').address, prefix: 128, ports: [53, 53] }]);
    expect(rules.tcpPorts).toEqual([
      [80, 82],
      [443, 443],
    ]);
    expect(portSpans([])).toEqual([]);
  });

  it('keys the host addresses as the programs look them up (IPv4 as ::ffff:a.b.c.d), with the subnets\' broadcast addresses; loopback is left to the programs', () => {
    const info = (address: string, family: 'IPv4' | 'IPv6', cidr: string | null = null) => ({ address, family, netmask: '', mac: '', internal: false, cidr, scopeid: 0 }) as never;
    const keys = hostAddressKeys({ eth0: [info('10.1.2.3', 'IPv4'), info('fe80::1%eth0', 'IPv6'), info('2001:db8::5', 'IPv6')], lo: [info('127.0.0.1', 'IPv4'), info('::1', 'IPv6')] });
    expect([...keys.keys()].sort()).toEqual(['00000000000000000000ffff0a010203', '20010db8000000000000000000000005', 'fe800000000000000000000000000001'].sort());
    const withSubnets = hostAddressKeys({
      eth0: [info('10.1.2.3', 'IPv4', '10.1.2.3/24'), info('2001:db8::5', 'IPv6', '2001:db8::5/64')],
      eth1: [info('172.16.5.9', 'IPv4', '172.16.5.9/12'), info('192.0.2.7', 'IPv4', '192.0.2.7/31')],
    });
    expect([...withSubnets.keys()].sort()).toEqual(
      [
        '00000000000000000000ffff0a010203',
        '00000000000000000000ffff0a0102ff', // 10.1.2.255
        '20010db8000000000000000000000005',
        '00000000000000000000ffffac100509',
        '00000000000000000000ffffac1fffff', // 172.31.255.255
        '00000000000000000000ffffc0000207', // a /31 has no broadcast address
      ].sort(),
    );
  });

  it('says what is missing when programs cannot be loaded', () => {
    const eperm = Object.assign(new Error('bpf(BPF_MAP_CREATE uid ports): EPERM'), { code: 'EPERM', syscall: 'bpf(BPF_MAP_CREATE uid ports)' });
    expect(loadProblem(eperm).message).toMatch(/not allowed to this server .* it needs root, or CAP_BPF and CAP_NET_ADMIN\).*run the server as root/);
    const refused = Object.assign(new Error('bpf(BPF_PROG_LOAD connect4): EACCES'), { code: 'EACCES', verifierLog: 'line 1\nR0 invalid mem access\n' });
    expect(loadProblem(refused).message).toMatch(/refused the socket hooks \(bpf\(BPF_PROG_LOAD connect4\): EACCES\); the verifier said: line 1 \| R0 invalid mem access/);
  });
});

describe('portsOutside (other servers\' ranges, less the own)', () => {
  it('gives the ports of the ranges that the own range does not hold', () => {
    expect([...portsOutside([[10, 14], [20, 21]], [12, 20])].sort((a, b) => a - b)).toEqual([10, 11, 21]);
    expect([...portsOutside([[12, 20]], [12, 20])]).toEqual([]);
    expect([...portsOutside([], [1, 65535])]).toEqual([]);
  });
});
