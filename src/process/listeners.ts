// Who listens on a port: the owner UIDs of the LISTEN sockets that accept
// connections to 127.0.0.1:<port>, from the kernel's sock_diag, or where that
// cannot answer, /proc/net/tcp and /proc/net/tcp6. Workers share the host's
// network namespace, so the server's view is theirs.
//
// sock_diag first: it walks the listening sockets only. /proc/net/tcp lists
// every socket of the host, and a tenant holding tens of thousands of
// connections made each health check cost the server ~0.5 s of CPU.
import { readFile } from 'node:fs/promises';
import { loopbackListenerUids as sockDiagListenerUids } from '../native.js';

/** /proc/net/tcp* state of a listening socket. */
const LISTEN = '0A';

/**
 * Local addresses (as /proc prints them: 32-bit words in host byte order,
 * little-endian here) whose listener receives a connect to 127.0.0.1.
 */
const LOOPBACK_REACHABLE = new Set([
  '0100007F', // 127.0.0.1
  '00000000', // 0.0.0.0
  '00000000000000000000000000000000', // :: (dual stack)
  '0000000000000000FFFF00000100007F', // ::ffff:127.0.0.1
]);

/**
 * Owner UIDs of the LISTEN sockets on `port` in one /proc/net/tcp or tcp6
 * text that a connect to 127.0.0.1:port could reach. Pure.
 */
export function listenerUids(text: string, port: number): number[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const needle = `:${hexPort} `;
  const uids: number[] = [];
  // Only the lines that mention the port are split: with thousands of
  // sockets on the host, splitting every line on every health check would
  // dominate its cost.
  for (let at = text.indexOf(needle); at >= 0; ) {
    const start = text.lastIndexOf('\n', at) + 1;
    const lineEnd = text.indexOf('\n', at);
    const end = lineEnd < 0 ? text.length : lineEnd;
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    const f = text.slice(start, end).trim().split(/\s+/);
    const colon = f[1]?.lastIndexOf(':') ?? -1;
    if (f.length >= 8 && f[3] === LISTEN && f[1]!.slice(colon + 1) === hexPort && LOOPBACK_REACHABLE.has(f[1]!.slice(0, colon)))
      uids.push(Number(f[7]));
    at = text.indexOf(needle, end);
  }
  return uids;
}

async function readOrEmpty(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch {
    return ''; // no IPv6 on this host
  }
}

let sockDiag = true;

/** Owner UIDs of every listener on 127.0.0.1:port (IPv4 and IPv6 sockets). */
export async function loopbackListenerUids(port: number): Promise<number[]> {
  if (sockDiag) {
    try {
      return await sockDiagListenerUids(port);
    } catch {
      sockDiag = false; // no sock_diag for TCP here (inet_diag not built or loaded): /proc from now on
    }
  }
  return procListenerUids(port);
}

/** The same from /proc/net/tcp and tcp6. */
export async function procListenerUids(port: number): Promise<number[]> {
  const [v4, v6] = await Promise.all([readOrEmpty('/proc/net/tcp'), readOrEmpty('/proc/net/tcp6')]);
  return [...listenerUids(v4, port), ...listenerUids(v6, port)];
}

/**
 * 'own' when something listens on 127.0.0.1:port and every such listener
 * belongs to uid; 'none' when nothing listens; else the first foreign uid.
 */
export async function listenerOwnership(port: number, uid: number): Promise<'own' | 'none' | { foreign: number }> {
  const uids = await loopbackListenerUids(port);
  if (uids.length === 0) return 'none';
  const foreign = uids.find((u) => u !== uid);
  return foreign === undefined ? 'own' : { foreign };
}
