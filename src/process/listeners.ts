// Who listens on a port: the TCP listeners that accept connections to
// 127.0.0.1:<port>, each with its owner UID and socket inode, from the
// kernel's sock_diag, or where that cannot answer, /proc/net/tcp and
// /proc/net/tcp6. Workers share the host's network namespace, so the
// server's view is theirs.
//
// sock_diag first: it walks the listening sockets only. /proc/net/tcp lists
// every socket of the host, and a tenant holding tens of thousands of
// connections made each health check cost the server ~0.5 s of CPU.
//
// A socket's UID is its creator's, whoever holds it now: a worker can be
// handed a socket made by an earlier holder of another tenant's UID, or by
// a worker of the same UID (all of them, without root). So a listener counts
// as a worker's only once a process of its sandbox is seen holding it.
import { readFile } from 'node:fs/promises';
import { loopbackListeners as sockDiagListeners, socketsHeldInTree, type Listener } from '../native.js';

/** /proc/net/tcp* state of a listening socket. */
const LISTEN = '0A';

/**
 * Local addresses (as /proc prints them: 32-bit words in host byte order,
 * little-endian here) whose listener receives a connect to 127.0.0.1: the
 * address itself, which the kernel looks up first, or else a wildcard one.
 */
const LOOPBACK_EXACT = new Set([
  '0100007F', // 127.0.0.1
  '0000000000000000FFFF00000100007F', // ::ffff:127.0.0.1
]);
const LOOPBACK_WILDCARD = new Set([
  '00000000', // 0.0.0.0
  '00000000000000000000000000000000', // :: (dual stack; /proc does not say whether IPV6_V6ONLY is set)
]);

/**
 * The LISTEN sockets on `port` in one /proc/net/tcp or tcp6 text that a
 * connect to 127.0.0.1:port could reach, each marked `exact` when bound to
 * 127.0.0.1 itself. Pure.
 */
export function parseListeners(text: string, port: number): (Listener & { exact: boolean })[] {
  const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
  const needle = `:${hexPort} `;
  const found: (Listener & { exact: boolean })[] = [];
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
    const address = f[1]?.slice(0, colon) ?? '';
    const exact = LOOPBACK_EXACT.has(address);
    if (f.length >= 10 && f[3] === LISTEN && f[1]!.slice(colon + 1) === hexPort && (exact || LOOPBACK_WILDCARD.has(address)))
      found.push({ uid: Number(f[7]), inode: Number(f[9]), exact });
    at = text.indexOf(needle, end);
  }
  return found;
}

async function readOrEmpty(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch {
    return ''; // no IPv6 on this host
  }
}

/**
 * sock_diag errors that mean it is not there at all (inet_diag neither built
 * in nor loadable): /proc from then on. Any other failure (out of memory or
 * fds for a moment) falls back for that one call.
 */
const NO_SOCK_DIAG = new Set(['ENOENT', 'EPROTONOSUPPORT', 'EAFNOSUPPORT', 'EOPNOTSUPP']);
let sockDiag = true;

/**
 * The listeners a connect to 127.0.0.1:port reaches (IPv4 and IPv6 sockets):
 * those bound to 127.0.0.1 itself where there are any, else the wildcard
 * ones. A neighbour's listener on [::]:port with IPV6_V6ONLY, or on 0.0.0.0
 * beside a worker's on 127.0.0.1, takes none of its connections.
 */
export async function loopbackListeners(port: number): Promise<Listener[]> {
  if (sockDiag) {
    try {
      return await sockDiagListeners(port);
    } catch (err) {
      if (NO_SOCK_DIAG.has((err as NodeJS.ErrnoException).code ?? '')) sockDiag = false;
    }
  }
  return procListeners(port);
}

/** The same from /proc/net/tcp and tcp6. */
export async function procListeners(port: number): Promise<Listener[]> {
  const [v4, v6] = await Promise.all([readOrEmpty('/proc/net/tcp'), readOrEmpty('/proc/net/tcp6')]);
  const all = [...parseListeners(v4, port), ...parseListeners(v6, port)];
  const exact = all.filter((l) => l.exact);
  return (exact.length > 0 ? exact : all).map(({ uid, inode }) => ({ uid, inode }));
}

/**
 * fd links read at most per search of a sandbox's fd tables. A listener is
 * normally among the app's first fds; a tenant that opens a million fds
 * makes its own check fail, not the server's loop slow (the search runs on
 * a pool thread, ~1 µs a link).
 */
const MAX_FDS_SEARCHED = 65536;

/** A worker's sandbox, as its listeners are checked against it. */
export interface ListenerOwner {
  /** The UID its processes run as. */
  uid: number;
  /** Host pid of the sandbox's monitor: every process of the sandbox descends from it (its pid namespace). */
  root: number;
  /** Listener inodes already seen held in the sandbox; kept by the caller across checks, pruned here. */
  held: Set<number>;
}

export type Ownership = 'own' | 'none' | 'elsewhere' | { foreign: number };

/**
 * 'own' when something listens on 127.0.0.1:port and every such listener
 * belongs to the owner's UID and is held by a process of its sandbox;
 * 'none' when nothing listens; the first foreign UID; or 'elsewhere' for a
 * listener of the right UID that no process of the sandbox holds (made by an
 * earlier holder of the UID, or passed in from another worker).
 */
export async function listenerOwnership(port: number, owner: ListenerOwner): Promise<Ownership> {
  const listeners = await loopbackListeners(port);
  if (listeners.length === 0) return 'none';
  const foreign = listeners.find((l) => l.uid !== owner.uid);
  if (foreign) return { foreign: foreign.uid };
  // Sockets seen held once are not searched for again: a healthy worker's
  // check stays one netlink dump. A socket inode is not reused while it exists.
  const current = new Set(listeners.map((l) => l.inode));
  for (const inode of owner.held) if (!current.has(inode)) owner.held.delete(inode);
  const unseen = [...current].filter((inode) => !owner.held.has(inode));
  if (unseen.length === 0) return 'own';
  for (const inode of await socketsHeldInTree(owner.root, unseen, MAX_FDS_SEARCHED)) owner.held.add(inode);
  return unseen.every((inode) => owner.held.has(inode)) ? 'own' : 'elsewhere';
}
