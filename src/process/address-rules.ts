// Destinations of deniedConnect and allowedConnect (SPEC §11) as rules the
// socket hooks can match: parsed once, into bytes and prefix lengths. Pure;
// the server's own services are found here too, but resolving a hostname is
// the caller's business.
import type { Config } from '../config.js';

export interface AddressRule {
  /** 'local': any address of this host (127.0.0.0/8, 0.0.0.0, ::1, ::, and the host's interface addresses); 'prefix': the network below. */
  kind: 'local' | 'prefix';
  /** 4 or 6 (for 'local' rules: 4, unused). v4-mapped IPv6 (::ffff:a.b.c.d[/n>=96]) is turned into IPv4 (prefix n-96). */
  family: 4 | 6;
  /** The network's bytes, 4 (IPv4) or 16 (IPv6), host bits zeroed; empty for 'local'. */
  address: Uint8Array;
  /** 0-32 or 0-128. */
  prefixLength: number;
  /** Inclusive port range, or null for every port. */
  ports: readonly [number, number] | null;
  /** The text it came from (for messages). */
  text: string;
}

/** Entries one list may hold: each becomes a few instructions of every connect and send program. */
const MAX_RULES = 4096;

/** Longer than any accepted form (`[ffff:…:255.255.255.255/128]:65535-65535` is 63). */
const MAX_TEXT = 100;

const FORMS =
  'give "ip", "ip:port", "cidr", "cidr:port", "[v6]:port" or "[v6/len]:port", ' +
  'e.g. "10.0.0.0/8:5432" or "[fd00::/8]:443"; a port is 1-65535 or a range like 8000-8999';

/** The text as messages quote it: never more than the start of an overlong one. */
function quote(text: string): string {
  return JSON.stringify(text.length > MAX_TEXT ? `${text.slice(0, 40)}…` : text);
}

function fail(text: string, problem: string, forms = true): never {
  throw new RangeError(`${quote(text)} ${problem}${forms ? ` (${FORMS})` : ''}`);
}

/** Dotted-quad IPv4, decimal octets without leading zeros (which some parsers read as octal). */
function parseIPv4(text: string): Uint8Array | null {
  const parts = text.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255)) return null;
  return Uint8Array.from(parts, Number);
}

/** IPv6 with at most one `::` and an optional trailing dotted IPv4; no zone id. */
function parseIPv6(text: string): Uint8Array | null {
  const halves = text.split('::');
  if (halves.length > 2) return null;
  // An embedded IPv4 may only be the address's last 32 bits.
  const groups = (half: string, last: boolean): number[] | null => {
    if (half === '') return [];
    const out: number[] = [];
    const parts = half.split(':');
    for (const [i, part] of parts.entries()) {
      if (last && i === parts.length - 1 && part.includes('.')) {
        const v4 = parseIPv4(part);
        if (!v4) return null;
        out.push((v4[0]! << 8) | v4[1]!, (v4[2]! << 8) | v4[3]!);
      } else if (/^[0-9a-f]{1,4}$/i.test(part)) out.push(parseInt(part, 16));
      else return null;
    }
    return out;
  };
  const head = groups(halves[0]!, halves.length === 1);
  const tail = halves.length === 2 ? groups(halves[1]!, true) : [];
  if (!head || !tail) return null;
  const given = head.length + tail.length;
  if (halves.length === 1 ? given !== 8 : given > 7) return null;
  const all = [...head, ...Array<number>(8 - given).fill(0), ...tail];
  const bytes = new Uint8Array(16);
  all.forEach((g, i) => {
    bytes[2 * i] = g >> 8;
    bytes[2 * i + 1] = g & 0xff;
  });
  return bytes;
}

function parseIp(text: string): Uint8Array | null {
  return text.includes(':') ? parseIPv6(text) : parseIPv4(text);
}

function isV4Mapped(bytes: Uint8Array): boolean {
  return bytes.length === 16 && bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
}

/** A copy with every bit past the prefix cleared. */
function network(bytes: Uint8Array, prefixLength: number): Uint8Array {
  return bytes.map((b, i) => {
    const kept = Math.min(8, Math.max(0, prefixLength - 8 * i));
    return b & (0xff << (8 - kept));
  });
}

/** The usual text of an address: IPv6 compressed (RFC 5952), v4-mapped as ::ffff:a.b.c.d. */
function formatAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join('.');
  if (isV4Mapped(bytes)) return `::ffff:${bytes.subarray(12).join('.')}`;
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i]! << 8) | bytes[2 * i + 1]!);
  // The longest run of two or more zero groups (the first of equals) becomes ::.
  let [start, length] = [-1, 1];
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > length) [start, length] = [i, j - i];
    i = j === i ? i + 1 : j;
  }
  const hex = (gs: number[]) => gs.map((g) => g.toString(16)).join(':');
  return start < 0 ? hex(groups) : `${hex(groups.slice(0, start))}::${hex(groups.slice(start + length))}`;
}

function parsePorts(text: string, port: string): readonly [number, number] {
  const m = /^(\d{1,6})(?:-(\d{1,6}))?$/.exec(port);
  if (!m) fail(text, `has port ${JSON.stringify(port)}, which is not a number or a range a-b`);
  const [low, high] = [Number(m[1]), Number(m[2] ?? m[1])];
  for (const [digits, value] of [[m[1]!, low], [m[2] ?? m[1]!, high]] as const)
    if (digits !== String(value)) fail(text, `has port ${digits}: write it without leading zeros`);
    else if (value < 1 || value > 65535) fail(text, `has port ${digits}, outside 1-65535`);
  if (low > high) fail(text, `has the reversed port range ${port}: write ${high}-${low}`, false);
  return Object.freeze([low, high] as const);
}

function localRule(ports: readonly [number, number] | null, text: string): AddressRule {
  return Object.freeze({ kind: 'local', family: 4, address: new Uint8Array(0), prefixLength: 0, ports, text });
}

/** A prefix rule from an address's bytes, v4-mapped IPv6 turned into IPv4. */
function prefixRule(bytes: Uint8Array, prefixLength: number, ports: readonly [number, number] | null, text: string): AddressRule {
  if (isV4Mapped(bytes) && prefixLength >= 96) [bytes, prefixLength] = [bytes.slice(12), prefixLength - 96];
  return Object.freeze({ kind: 'prefix', family: bytes.length === 4 ? 4 : 6, address: bytes, prefixLength, ports, text });
}

/**
 * One destination: "ip", "ip:port", "cidr", "cidr:port", "[v6]:port" or
 * "[v6/len]:port", a port being 1-65535 or a range a-b. Throws RangeError
 * quoting the text.
 */
export function parseAddressRule(text: string): AddressRule {
  if (typeof text !== 'string') throw new RangeError(`an address rule must be a string, got ${typeof text} (${FORMS})`);
  if (text === '') fail(text, 'is empty');
  if (text.length > MAX_TEXT) fail(text, 'is too long to be an address rule');
  if (text.includes('%')) fail(text, 'has a zone id (%…), which a rule cannot carry: give the address alone');

  let host: string;
  let port: string | undefined;
  const colons = text.split(':').length - 1;
  if (text.startsWith('[')) {
    const m = /^\[([^\]]*)\](?::(.*))?$/.exec(text);
    if (!m) fail(text, 'has unbalanced brackets or text after them');
    if (m[2] === undefined) fail(text, `has brackets but no port: write ${m[1]} alone, or [${m[1]}]:port`);
    [host, port] = [m[1]!, m[2]];
    if (!host.includes(':')) fail(text, `has brackets, which are for IPv6 only: write ${host}:${port}`);
  } else if (colons === 1) {
    // No IPv6 address has a single colon.
    [host, port] = text.split(':') as [string, string];
  } else host = text;

  const slash = host.split('/');
  if (slash.length > 2) fail(text, 'has more than one /');
  const [addressText, lengthText] = slash as [string, string | undefined];
  // "fd00::/8:443" or "1:2:3:4:5:6:7:8:443": an IPv6 port goes after brackets.
  const withPort = /^(.*):(\d+(?:-\d+)?)$/.exec(text);
  if (withPort && colons > 1 && port === undefined && (lengthText?.includes(':') || (!parseIp(text) && parseIp(withPort[1]!))))
    fail(text, `is IPv6 with a port, which needs brackets: write [${withPort[1]}]:${withPort[2]}`, false);
  const bytes = parseIp(addressText);
  if (!bytes) {
    if (/^[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?$/i.test(addressText) && /[a-z_-]/i.test(addressText))
      fail(text, 'names a host, and hostnames are not accepted here: give an IP address or a CIDR network');
    fail(text, 'is not an IP address or network');
  }
  const bits = bytes.length * 8;
  let prefixLength = bits;
  if (lengthText !== undefined) {
    if (!/^(0|[1-9]\d{0,2})$/.test(lengthText) || Number(lengthText) > bits)
      fail(text, `has the prefix length /${lengthText}; an IPv${bits === 32 ? 4 : 6} one is 0-${bits}`);
    prefixLength = Number(lengthText);
  }
  const net = network(bytes, prefixLength);
  if (!net.every((b, i) => b === bytes[i]))
    fail(text, `has host bits set past /${prefixLength}: the network is ${formatAddress(net)}/${prefixLength}`, false);
  return prefixRule(net, prefixLength, port === undefined ? null : parsePorts(text, port), text);
}

/**
 * A config list of destinations: an array of at most 4096 strings. Errors
 * start with `name` and the entry's index (`process.deniedConnect[2] "…" …`).
 */
export function parseAddressRules(value: unknown, name: string): AddressRule[] {
  if (!Array.isArray(value))
    throw new RangeError(`${name} must be an array of strings, got ${value === null ? 'null' : typeof value} (${FORMS})`);
  if (value.length > MAX_RULES) throw new RangeError(`${name} holds ${value.length} entries, more than the ${MAX_RULES} allowed`);
  // By index, not map: map skips the holes of a sparse array.
  const rules: AddressRule[] = [];
  for (let i = 0; i < value.length; i++) {
    const entry: unknown = value[i];
    if (typeof entry !== 'string')
      throw new RangeError(`${name}[${i}] must be a string, got ${entry === null ? 'null' : Array.isArray(entry) ? 'an array' : typeof entry} (${FORMS})`);
    try {
      rules.push(parseAddressRule(entry));
    } catch (err) {
      throw new RangeError(`${name}[${i}] ${(err as Error).message}`);
    }
  }
  return rules;
}

/**
 * For deny rules: loopback and the wildcard addresses become "any local
 * address", because a service reached on 127.0.0.1 that listens on 0.0.0.0
 * answers on every address of the host.
 */
export function localized(rule: AddressRule): AddressRule {
  if (rule.kind !== 'prefix') return rule;
  const [a, n] = [rule.address, rule.prefixLength];
  const local =
    rule.family === 4
      ? (a[0] === 127 && n >= 8) || (n === 32 && a.every((b) => b === 0))
      : n === 128 && a.subarray(0, 15).every((b) => b === 0) && (a[15] === 0 || a[15] === 1);
  return local ? localRule(rule.ports, rule.text) : rule;
}

/** Cloud metadata services (AWS and others on 169.254.169.254, AWS's IPv6 one), always denied. */
export const METADATA_RULES: readonly AddressRule[] = Object.freeze(
  ['169.254.169.254/32', 'fd00:ec2::254/128'].map(parseAddressRule),
);

/** URL scheme → default port, per configured service. */
const REDIS_PORTS: Record<string, number> = { 'redis:': 6379, 'rediss:': 6379 };
const HTTP_PORTS: Record<string, number> = { 'http:': 80, 'https:': 443 };
const DATABASE_PORTS: Record<string, number> = { 'postgres:': 5432, 'postgresql:': 5432, 'mysql:': 3306 };

/**
 * Host and port of the server's own services (Redis, OpenBao, the database)
 * as configured, so workers can be denied them. Only host and port are kept:
 * a URL's credentials go nowhere. URLs that do not parse, or name a unix
 * socket, are skipped: config validation owns them.
 */
export function serviceTargets(config: Config): { what: string; host: string; port: number }[] {
  const found: { what: string; host: string; port: number }[] = [];
  const add = (what: string, url: unknown, defaults: Record<string, number>) => {
    if (typeof url !== 'string') return;
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      return;
    }
    const fallback = defaults[parsed.protocol];
    const host = parsed.hostname.replace(/^\[(.*)\]$/, '$1').toLowerCase();
    // A URL's port is '' when absent, and also when it is the scheme's default.
    const port = parsed.port === '' ? fallback : Number(parsed.port);
    if (fallback === undefined || port === undefined || host === '' || port < 1 || port > 65535) return;
    found.push({ what, host, port });
  };
  add('redis.url', config.redis?.url, REDIS_PORTS);
  add('openbao.address', config.openbao?.address, HTTP_PORTS);
  add('vault.address', config.vault?.address, HTTP_PORTS);
  add('database.url', config.database?.url, DATABASE_PORTS);
  return found;
}

/**
 * The deny rule for one service: an IP literal gives its /32 or /128 (local
 * when loopback), localhost gives "any local address", on that port. Null for
 * any other hostname, which the caller resolves.
 */
export function ruleForTarget(host: string, port: number, what: string): AddressRule | null {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`${what}: port must be 1-65535, got ${port}`);
  const bare = host.replace(/^\[(.*)\]$/, '$1');
  const text = `${what} (${bare.includes(':') ? `[${bare}]` : bare}:${port})`;
  const ports = Object.freeze([port, port] as const);
  const bytes = bare.includes('%') ? null : parseIp(bare);
  if (bytes) return localized(prefixRule(bytes, bytes.length * 8, ports, text));
  const name = bare.toLowerCase().replace(/\.$/, '');
  if (name === 'localhost' || name.endsWith('.localhost')) return localRule(ports, text);
  return null;
}

/** A rule as messages show it: `10.0.0.0/8 port 5432`, `any local address port 6379`, `fd00:ec2::254/128 any port`. */
export function describeRule(rule: AddressRule): string {
  const where = rule.kind === 'local' ? 'any local address' : `${formatAddress(rule.address)}/${rule.prefixLength}`;
  const ports = !rule.ports ? 'any port' : rule.ports[0] === rule.ports[1] ? `port ${rule.ports[0]}` : `ports ${rule.ports[0]}-${rule.ports[1]}`;
  return `${where} ${ports}`;
}
