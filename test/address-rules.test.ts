// deniedConnect/allowedConnect rules (SPEC §11): parsing into bytes, prefix
// and ports, loopback turned "local", and the server's own services. Pure.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  describeRule,
  localized,
  METADATA_RULES,
  parseAddressRule,
  parseAddressRules,
  ruleForTarget,
  serviceTargets,
  type AddressRule,
} from '../src/process/address-rules.js';

/** The parts a test compares: bytes as a plain array. */
function parts(rule: AddressRule) {
  return { kind: rule.kind, family: rule.family, address: [...rule.address], prefixLength: rule.prefixLength, ports: rule.ports };
}

function rangeError(fn: () => unknown): RangeError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(RangeError);
    return err as RangeError;
  }
  throw new Error('expected a RangeError');
}

const v6 = (...groups: number[]) => groups.flatMap((g) => [g >> 8, g & 0xff]);

describe('parseAddressRule', () => {
  it.each([
    ['10.0.0.5', 4, [10, 0, 0, 5], 32, null],
    ['10.0.0.5:5432', 4, [10, 0, 0, 5], 32, [5432, 5432]],
    ['10.0.0.0/8', 4, [10, 0, 0, 0], 8, null],
    ['10.0.0.0/8:5432', 4, [10, 0, 0, 0], 8, [5432, 5432]],
    ['10.0.0.0/8:8000-8999', 4, [10, 0, 0, 0], 8, [8000, 8999]],
    ['0.0.0.0/0', 4, [0, 0, 0, 0], 0, null],
    ['255.255.255.255:65535', 4, [255, 255, 255, 255], 32, [65535, 65535]],
    ['192.168.1.1:1-65535', 4, [192, 168, 1, 1], 32, [1, 65535]],
    ['fd00::/8', 6, v6(0xfd00, 0, 0, 0, 0, 0, 0, 0), 8, null],
    ['::1', 6, v6(0, 0, 0, 0, 0, 0, 0, 1), 128, null],
    ['::', 6, v6(0, 0, 0, 0, 0, 0, 0, 0), 128, null],
    ['[::1]:6379', 6, v6(0, 0, 0, 0, 0, 0, 0, 1), 128, [6379, 6379]],
    ['[fd00::/8]:443', 6, v6(0xfd00, 0, 0, 0, 0, 0, 0, 0), 8, [443, 443]],
    ['[2001:db8::/32]:8000-8080', 6, v6(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32, [8000, 8080]],
    ['2001:DB8:0:0:1:2:3:4', 6, v6(0x2001, 0xdb8, 0, 0, 1, 2, 3, 4), 128, null],
    ['fe80::', 6, v6(0xfe80, 0, 0, 0, 0, 0, 0, 0), 128, null],
    ['1:2:3:4:5:6:7::', 6, v6(1, 2, 3, 4, 5, 6, 7, 0), 128, null],
    ['64:ff9b::1.2.3.4', 6, v6(0x64, 0xff9b, 0, 0, 0, 0, 0x102, 0x304), 128, null],
    ['fd00:ec2::254', 6, v6(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), 128, null],
  ])('reads %s', (text, family, address, prefixLength, ports) => {
    const rule = parseAddressRule(text);
    expect(parts(rule)).toEqual({ kind: 'prefix', family, address, prefixLength, ports });
    expect(rule.text).toBe(text);
  });

  it.each([
    ['::ffff:1.2.3.4', [1, 2, 3, 4], 32, null],
    ['::ffff:10.0.0.0/104', [10, 0, 0, 0], 8, null],
    ['[::ffff:127.0.0.1]:80', [127, 0, 0, 1], 32, [80, 80]],
    ['::ffff:0:0/96', [0, 0, 0, 0], 0, null],
    ['::FFFF:a00:1', [10, 0, 0, 1], 32, null],
  ])('turns v4-mapped %s into IPv4', (text, address, prefixLength, ports) => {
    expect(parts(parseAddressRule(text))).toEqual({ kind: 'prefix', family: 4, address, prefixLength, ports });
  });

  it('keeps a prefix shorter than /96 as IPv6 (its host bits hold the ffff)', () => {
    expect(parts(parseAddressRule('::/80'))).toMatchObject({ family: 6, prefixLength: 80 });
    expect(rangeError(() => parseAddressRule('::ffff:0:0/80')).message).toContain('the network is ::/80');
  });

  it.each([
    ['10.0.0.1/8', '10.0.0.0/8'],
    ['10.0.0.1/8:5432', '10.0.0.0/8'],
    ['192.168.1.129/25', '192.168.1.128/25'],
    ['fd00::1/8', 'fd00::/8'],
    ['[2001:db8::1/32]:443', '2001:db8::/32'],
    ['::ffff:10.0.0.1/104', '::ffff:10.0.0.0/104'],
  ])('rejects host bits in %s, naming %s', (text, networkText) => {
    const err = rangeError(() => parseAddressRule(text));
    expect(err.message).toContain(JSON.stringify(text));
    expect(err.message).toContain(`the network is ${networkText}`);
  });

  it.each([
    ['10.0.0.1:0', 'outside 1-65535'],
    ['10.0.0.1:65536', 'outside 1-65535'],
    ['[::1]:0', 'outside 1-65535'],
    ['10.0.0.1:9000-8000', 'write 8000-9000'],
    ['10.0.0.1:080', 'leading zeros'],
    ['10.0.0.1:', 'not a number'],
    ['10.0.0.1:http', 'not a number'],
    ['10.0.0.1:1-2-3', 'not a number'],
    ['10.0.0.1:-5', 'not a number'],
  ])('rejects the port of %s', (text, expected) => {
    const err = rangeError(() => parseAddressRule(text));
    expect(err.message).toContain(JSON.stringify(text));
    expect(err.message).toContain(expected);
  });

  it.each([
    ['example.com', 'hostnames are not accepted'],
    ['localhost', 'hostnames are not accepted'],
    ['db.internal:5432', 'hostnames are not accepted'],
    ['fe80::1%eth0', 'zone id'],
    ['[fe80::1%eth0]:80', 'zone id'],
    ['', 'is empty'],
    ['fd00::/8:443', 'write [fd00::/8]:443'],
    ['1:2:3:4:5:6:7:8:443', 'write [1:2:3:4:5:6:7:8]:443'],
    ['[::1]', 'no port'],
    ['[10.0.0.1]:80', 'IPv6 only'],
    ['[::1', 'brackets'],
    ['10.0.0.0/33', '0-32'],
    ['fd00::/129', '0-128'],
    ['10.0.0.0/08', 'prefix length'],
    ['10.0.0.0/', 'prefix length'],
    ['10.0.0.0/8/8', 'more than one /'],
    ['010.0.0.1', 'not an IP address'],
    ['256.0.0.1', 'not an IP address'],
    ['10.0.0', 'not an IP address'],
    [' 10.0.0.1', 'not an IP address'],
    ['1::2::3', 'not an IP address'],
    ['1:2:3:4:5:6:7:8:9', 'write [1:2:3:4:5:6:7:8]:9'],
    ['1:2:3:4:5:6:7:8:9:10', 'not an IP address'],
    ['1.2.3.4::', 'not an IP address'],
    ['::12345', 'not an IP address'],
    ['x'.repeat(500), 'too long'],
  ])('rejects %j', (text, expected) => {
    const err = rangeError(() => parseAddressRule(text));
    expect(err.message).toContain(expected);
    expect(err.message).toContain(text.length > 100 ? JSON.stringify(text.slice(0, 40)).slice(0, -1) : JSON.stringify(text));
    // Never the whole of an overlong text.
    expect(err.message.length).toBeLessThan(400);
  });

  it('lists the accepted forms when the text is no rule at all', () => {
    expect(rangeError(() => parseAddressRule('nonsense!')).message).toContain('"[v6/len]:port"');
  });

  it('rejects a non-string', () => {
    expect(rangeError(() => parseAddressRule(42 as unknown as string)).message).toContain('must be a string');
  });

  it('round-trips any IPv4 network a.b.c.d/n with host bits zeroed', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }), fc.integer({ min: 0, max: 32 }), (bytes, n) => {
        const value = bytes.reduce((v, b) => v * 256 + b, 0);
        const net = n === 0 ? 0 : Math.floor(value / 2 ** (32 - n)) * 2 ** (32 - n);
        const address = [24, 16, 8, 0].map((shift) => Math.floor(net / 2 ** shift) % 256);
        const rule = parseAddressRule(`${address.join('.')}/${n}`);
        expect(parts(rule)).toEqual({ kind: 'prefix', family: 4, address, prefixLength: n, ports: null });
      }),
    );
  });
});

describe('parseAddressRules', () => {
  it('reads a list', () => {
    expect(parseAddressRules(['10.0.0.0/8', '[::1]:6379'], 'process.deniedConnect').map(describeRule)).toEqual([
      '10.0.0.0/8 any port',
      '::1/128 port 6379',
    ]);
    expect(parseAddressRules([], 'process.deniedConnect')).toEqual([]);
  });

  it('names the list and the index of a bad entry', () => {
    const err = rangeError(() => parseAddressRules(['10.0.0.0/8', '::1', '10.0.0.1/8'], 'process.deniedConnect'));
    expect(err.message).toMatch(/^process\.deniedConnect\[2\] "10\.0\.0\.1\/8" /);
    expect(err.message).toContain('10.0.0.0/8');
  });

  it.each([
    ['10.0.0.0/8', 'process.allowedConnect must be an array of strings, got string'],
    [null, 'process.allowedConnect must be an array of strings, got null'],
    [{ 0: '10.0.0.1' }, 'process.allowedConnect must be an array of strings, got object'],
    [['10.0.0.1', 5], 'process.allowedConnect[1] must be a string, got number'],
    [[['10.0.0.1']], 'process.allowedConnect[0] must be a string, got an array'],
    // A hole, which map would skip.
    [[, '10.0.0.1'], 'process.allowedConnect[0] must be a string, got undefined'],
    [Array(4097).fill('10.0.0.1'), 'process.allowedConnect holds 4097 entries'],
  ])('rejects %j', (value, expected) => {
    expect(rangeError(() => parseAddressRules(value, 'process.allowedConnect')).message).toContain(expected);
  });

  it('takes 4096 entries', () => {
    expect(parseAddressRules(Array(4096).fill('10.0.0.1'), 'x')).toHaveLength(4096);
  });
});

describe('localized', () => {
  it.each([
    ['127.0.0.1:5432', [5432, 5432]],
    ['127.0.0.0/8', null],
    ['127.1.2.0/24:80-90', [80, 90]],
    ['0.0.0.0', null],
    ['::1', null],
    ['[::]:443', [443, 443]],
    ['::ffff:127.0.0.1', null],
  ])('makes %s any local address', (text, ports) => {
    const rule = localized(parseAddressRule(text));
    expect(parts(rule)).toEqual({ kind: 'local', family: 4, address: [], prefixLength: 0, ports });
    expect(rule.text).toBe(text);
  });

  it.each(['10.0.0.1', '126.0.0.0/7', '0.0.0.0/0', '0.0.0.0/8', '::/0', '::2', 'fd00::/8'])('leaves %s as it is', (text) => {
    const rule = parseAddressRule(text);
    expect(localized(rule)).toBe(rule);
  });
});

describe('METADATA_RULES', () => {
  it('holds the cloud metadata addresses, every port', () => {
    expect(METADATA_RULES.map(describeRule)).toEqual(['169.254.169.254/32 any port', 'fd00:ec2::254/128 any port']);
  });
});

describe('serviceTargets', () => {
  it('finds redis without ever keeping its password', () => {
    const targets = serviceTargets({ redis: { url: 'redis://user:s3cr3t-pw@10.1.2.3:16400/0' } });
    expect(targets).toEqual([{ what: 'redis.url', host: '10.1.2.3', port: 16400 }]);
    expect(JSON.stringify(targets)).not.toContain('s3cr3t');
    expect(JSON.stringify(targets)).not.toContain('user');
    const rule = ruleForTarget(targets[0]!.host, targets[0]!.port, targets[0]!.what)!;
    expect(`${rule.text} ${describeRule(rule)}`).not.toContain('s3cr3t');
  });

  it.each([
    [{ redis: { url: 'rediss://:pw@cache.example' } }, [{ what: 'redis.url', host: 'cache.example', port: 6379 }]],
    [{ redis: { url: 'redis://[::1]' } }, [{ what: 'redis.url', host: '::1', port: 6379 }]],
    [{ vault: { address: 'https://Vault.Example:8200' } }, [{ what: 'vault.address', host: 'vault.example', port: 8200 }]],
    [{ vault: { address: 'https://vault.example' } }, [{ what: 'vault.address', host: 'vault.example', port: 443 }]],
    [{ openbao: { address: 'http://127.0.0.1' } }, [{ what: 'openbao.address', host: '127.0.0.1', port: 80 }]],
    [{ database: { driver: 'postgres', url: 'postgres://by:pw@db.example/by' } }, [{ what: 'database.url', host: 'db.example', port: 5432 }]],
    [{ database: { driver: 'postgres', url: 'postgresql://by:pw@[fd00::7]:6432/by' } }, [{ what: 'database.url', host: 'fd00::7', port: 6432 }]],
  ] as const)('finds %j', (config, expected) => {
    expect(serviceTargets(config)).toEqual(expected);
  });

  it('skips what is absent, malformed or not a network service', () => {
    expect(serviceTargets({})).toEqual([]);
    expect(
      serviceTargets({
        redis: { url: 'not a url' },
        openbao: { address: 'ftp://bao.example' },
        database: { driver: 'sqlite', path: '/var/lib/by.db' },
      }),
    ).toEqual([]);
    expect(serviceTargets({ database: { driver: 'postgres', url: 'postgres:///by?host=/run/postgresql' } })).toEqual([]);
    expect(serviceTargets({ redis: { url: 'redis://h:0' } })).toEqual([]);
  });

  it('lists every configured service', () => {
    expect(
      serviceTargets({
        redis: { url: 'redis://127.0.0.1:6379' },
        openbao: { address: 'http://127.0.0.1:8200' },
        database: { driver: 'postgres', url: 'postgres://127.0.0.1/by' },
      }).map((t) => t.what),
    ).toEqual(['redis.url', 'openbao.address', 'database.url']);
  });
});

describe('ruleForTarget', () => {
  it.each(['localhost', 'LocalHost', 'redis.localhost', 'localhost.', '127.0.0.1', '0.0.0.0', '::1', '[::1]'])(
    'makes %s any local address on the port',
    (host) => {
      const rule = ruleForTarget(host, 6379, 'redis.url')!;
      expect(parts(rule)).toEqual({ kind: 'local', family: 4, address: [], prefixLength: 0, ports: [6379, 6379] });
      expect(describeRule(rule)).toBe('any local address port 6379');
    },
  );

  it('makes an IP literal a single address on the port', () => {
    const v4 = ruleForTarget('10.1.2.3', 5432, 'database.url')!;
    expect(parts(v4)).toEqual({ kind: 'prefix', family: 4, address: [10, 1, 2, 3], prefixLength: 32, ports: [5432, 5432] });
    expect(v4.text).toBe('database.url (10.1.2.3:5432)');
    const v6rule = ruleForTarget('fd00::7', 8200, 'openbao.address')!;
    expect(parts(v6rule)).toEqual({ kind: 'prefix', family: 6, address: v6(0xfd00, 0, 0, 0, 0, 0, 0, 7), prefixLength: 128, ports: [8200, 8200] });
    expect(v6rule.text).toBe('openbao.address ([fd00::7]:8200)');
    expect(describeRule(v6rule)).toBe('fd00::7/128 port 8200');
  });

  it('leaves a hostname to the caller', () => {
    expect(ruleForTarget('db.example', 5432, 'database.url')).toBeNull();
    expect(ruleForTarget('localhost.example', 5432, 'database.url')).toBeNull();
  });
});

describe('describeRule', () => {
  it.each([
    ['10.0.0.0/8:5432', '10.0.0.0/8 port 5432'],
    ['10.0.0.0/8:8000-8999', '10.0.0.0/8 ports 8000-8999'],
    ['fd00:ec2::254', 'fd00:ec2::254/128 any port'],
    ['2001:db8:0:0:1::1', '2001:db8::1:0:0:1/128 any port'],
    ['1:0:0:2:0:0:0:3', '1:0:0:2::3/128 any port'],
    ['1:2:3:4:5:6:0:8', '1:2:3:4:5:6:0:8/128 any port'],
  ])('shows %s as %s', (text, shown) => {
    expect(describeRule(parseAddressRule(text))).toBe(shown);
  });

  it('shows a local rule', () => {
    expect(describeRule(localized(parseAddressRule('127.0.0.1:6379')))).toBe('any local address port 6379');
    expect(describeRule(localized(parseAddressRule('127.0.0.0/8')))).toBe('any local address any port');
  });
});
