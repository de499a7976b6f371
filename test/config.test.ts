// loadConfig: the original server's TOML mapped to Config, defaults applied once.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ProcessBackend } from '../src/process/process-backend.js';
import {
  checkConfig,
  ConfigError,
  loadConfig,
  parseMemorySize,
  PROCESS_DEFAULTS,
  resolveProcessConfig,
  withTomlNames,
} from '../src/config.js';

const dir = mkdtempSync(path.join(os.tmpdir(), 'procyard-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function file(text: string): string {
  const p = path.join(dir, `config-${n++}.toml`);
  writeFileSync(p, text);
  return p;
}

/** Loads `text` as a config file: a ConfigError naming `key`, the file and `expected`. */
function tomlError(text: string, key: string, expected: string): ConfigError {
  const p = file(text);
  const err = configError(() => loadConfig(p));
  expect(err.key).toBe(key);
  expect(err.message).toContain(key);
  expect(err.message).toContain(p);
  expect(err.message).toContain(expected);
  return err;
}

function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError');
}

describe('loadConfig', () => {
  it('maps a full example file', () => {
    const p = file(`
[server]
bind = "0.0.0.0:8080"            # the server's own keys are accepted and not read
default_memory_limit = "2g"
default_cpu_limit = 1.5

[process]
bwrap_path = "/opt/bwrap"
r_path = "/opt/R/4.4.1/bin/R"
rig_base = "/opt/rig"
seccomp_profile = "builtin"
port_range_start = 22000
port_range_end = 22099
worker_uid_range_start = 63000
worker_uid_range_end = 63099
worker_gid = 63999
skip_metadata_check = true
metadata_addr = "127.0.0.1:9"
stop_grace_ms = 2500
log_lines = 500
log_bytes = 4194304
tmp_size_bytes = 1048576
network_policy = "required"
allowed_connect_ports = [443, 5432]
denied_connect = ["10.9.0.0/16"]
allowed_connect = ["10.0.0.0/8:443"]
allocator = "memory"
runtime_dir = "/run/procyard-test"
resource_limits = "required"
cgroup_parent = "/procyard.slice"
pids_limit = 256

[[process.warm_pool]]
size = 2

[[process.warm_pool]]
size = 1
preload = ["shiny", "DT"]
r_version = "4.4.1"

[redis]
url = "redis://:secret@127.0.0.1:16400/0"

[openbao]
address = "http://127.0.0.1:8200"

[database]
driver = "postgres"
url = "postgres://by:pw@127.0.0.1:5432/by"

[storage]
bundle_worker_path = "/srv/app"
bundle_server_path = "/data/bundles"
`);
    expect(loadConfig(p)).toEqual({
      process: {
        bwrapPath: '/opt/bwrap',
        rPath: '/opt/R/4.4.1/bin/R',
        rigBase: '/opt/rig',
        seccompProfile: 'builtin',
        portRangeStart: 22000,
        portRangeEnd: 22099,
        workerUidStart: 63000,
        workerUidEnd: 63099,
        workerGid: 63999,
        skipMetadataCheck: true,
        metadataAddr: '127.0.0.1:9',
        stopGraceMs: 2500,
        logLines: 500,
        logBytes: 4194304,
        tmpSizeBytes: 1048576,
        networkPolicy: 'required',
        allowedConnectPorts: [443, 5432],
        deniedConnect: ['10.9.0.0/16'],
        allowedConnect: ['10.0.0.0/8:443'],
        allocator: 'memory',
        runtimeDir: '/run/procyard-test',
        resourceLimits: 'required',
        cgroupParent: '/procyard.slice',
        pidsLimit: 256,
        warmPool: [{ size: 2 }, { size: 1, preload: ['shiny', 'DT'], rVersion: '4.4.1' }],
      },
      server: { defaultMemoryLimit: '2g', defaultCpuLimit: 1.5 },
      redis: { url: 'redis://:secret@127.0.0.1:16400/0' },
      openbao: { address: 'http://127.0.0.1:8200' },
      database: { driver: 'postgres', url: 'postgres://by:pw@127.0.0.1:5432/by' },
      storage: { bundleWorkerPath: '/srv/app' },
    });
  });

  it('applies every default to an empty file', () => {
    const config = loadConfig(file(''));
    expect(config.process).toEqual(PROCESS_DEFAULTS);
    expect(config.storage).toEqual({ bundleWorkerPath: '/app' });
    expect(config.redis).toBeUndefined();
    expect(config.openbao).toBeUndefined();
    expect(config.database).toBeUndefined();
    // Applied once: resolving again changes nothing.
    expect(resolveProcessConfig(config)).toEqual(config.process);
  });

  it('keeps defaults for keys a partial [process] leaves out', () => {
    const config = loadConfig(file('[process]\nport_range_start = 22000\nport_range_end = 22009\n'));
    expect(config.process).toEqual({ ...PROCESS_DEFAULTS, portRangeStart: 22000, portRangeEnd: 22009 });
  });

  it('accepts [vault] as the older name of [openbao]', () => {
    expect(loadConfig(file('[vault]\naddress = "http://127.0.0.1:8200"\n')).openbao).toEqual({
      address: 'http://127.0.0.1:8200',
    });
  });

  it('defaults the database driver to sqlite', () => {
    expect(loadConfig(file('[database]\npath = "/var/lib/by.db"\n')).database).toEqual({
      driver: 'sqlite',
      path: '/var/lib/by.db',
    });
  });

  it('rejects an unknown [process] key, naming the key and the file', () => {
    const p = file('[process]\nbwrap_pth = "/usr/bin/bwrap"\n');
    const err = configError(() => loadConfig(p));
    expect(err.message).toContain('bwrap_pth');
    expect(err.message).toContain(p);
    expect(err.message).toContain('did you mean "bwrap_path"');
    expect(err.key).toBe('process.bwrap_pth');
    expect(err.file).toBe(p);
  });

  it('accepts the hosting server\'s own sections and keys without reading them', () => {
    const config = loadConfig(
      file(
        '[server]\nbind = "x"\nworker_env = { A = "1" }\n[redis]\nurl = "redis://127.0.0.1:16400"\nkey_prefix = "b:"\n' +
          '[oidc]\nissuer_url = "https://id.example"\n[proxy]\nmax_workers = 3\n[[openbao.services]]\nid = "x"\nlabel = "X"\n' +
          '[openbao]\naddress = "http://127.0.0.1:8200"\n',
      ),
    );
    expect(config.redis).toEqual({ url: 'redis://127.0.0.1:16400' });
    expect(config.server).toEqual({});
    expect(config.openbao).toEqual({ address: 'http://127.0.0.1:8200' });
  });

  it.each([
    // A misspelled section would run workers without the seccomp filter.
    ['[procss]\nseccomp_profile = "builtin"\n', 'procss', 'unknown section [procss]', '[process]'],
    ['[server]\ndefault_memory_lmit = "2g"\n', 'server.default_memory_lmit', 'unknown key "default_memory_lmit" in [server]', '"default_memory_limit"'],
    ['[redis]\nurl = "redis://127.0.0.1:1"\npool = 3\n', 'redis.pool', 'unknown key "pool" in [redis]', 'valid: "url", "key_prefix"'],
    ['[oidc]\nissuer = "x"\n', 'oidc.issuer', 'unknown key "issuer" in [oidc]', '"issuer_url"'],
    ['[storage]\nbundle_worker_pth = "/srv"\n', 'storage.bundle_worker_pth', 'in [storage]', '"bundle_worker_path"'],
    ['[process.limits]\npids = 3\n', 'process.limits', 'unknown key "limits" in [process]', 'valid:'],
    ['[nonsense]\nx = 1\n', 'nonsense', 'unknown section [nonsense]', 'valid: [process]'],
  ])('rejects an unknown name, with the nearest valid one: %s', (text, key, what, hint) => {
    const p = file(text);
    const err = configError(() => loadConfig(p));
    expect(err.key).toBe(key);
    expect(err.file).toBe(p);
    expect(err.message).toContain(what);
    expect(err.message).toContain(p);
    expect(err.message).toContain(hint);
  });

  it('says which section a key above every section header belongs in', () => {
    const p = file('port_range_start = 22000\n[process]\n');
    const err = configError(() => loadConfig(p));
    expect(err.message).toContain('key "port_range_start"');
    expect(err.message).toContain('put it under [process]');
  });

  it.each([
    ['[server]\ndefault_memory_limit = "2q"\n', 'server.default_memory_limit', 'must be a size like'],
    ['[server]\ndefault_memory_limit = "-1g"\n', 'server.default_memory_limit', 'must be a size like'],
    ['[server]\ndefault_memory_limit = ""\n', 'server.default_memory_limit', 'must be a size like'],
    ['[server]\ndefault_cpu_limit = -0.5\n', 'server.default_cpu_limit', 'must be a number of CPUs from 0 to 4096'],
    ['[server]\ndefault_cpu_limit = 1e9\n', 'server.default_cpu_limit', 'must be a number of CPUs from 0 to 4096'],
    ['[server]\ndefault_memory_limit = "512k"\n', 'server.default_memory_limit', 'must be 0 (no limit) or at least 4m'],
    ['[process]\nport_range_start = 3000\nport_range_end = 2000\n', 'process.port_range_start', 'process.port_range_end'],
    ['[process]\nport_range_end = 70000\n', 'process.port_range_start', 'within 1-65535'],
    ['[process]\nworker_uid_range_start = 0\n', 'process.worker_uid_range_start', 'non-root UIDs'],
    ['[process]\nallocator = "redis"\n', 'process.allocator', '"host" or "memory"'],
    ['[process]\nruntime_dir = "run/procyard"\n', 'process.runtime_dir', 'absolute path'],
    ['[storage]\nbundle_worker_path = "app"\n', 'storage.bundle_worker_path', 'absolute path'],
  ])('rejects a value procyard cannot use, in TOML names: %s', (text, key, expected) => {
    const err = tomlError(text, key, expected);
    // Never the JS field names a TOML user has not seen.
    expect(err.message).not.toMatch(/process\.[a-z]+[A-Z]|server\.[a-z]+[A-Z]|storage\.[a-z]+[A-Z]/);
  });

  it.each([
    ['64m', 64 * 2 ** 20],
    ['2g', 2 * 2 ** 30],
    ['512k', 512 * 1024],
    ['512K', 512 * 1024],
    ['1G', 2 ** 30],
    ['1.5g', 1.5 * 2 ** 30],
    ['64mb', 64 * 2 ** 20],
    ['64MiB', 64 * 2 ** 20],
    ['1048576', 1048576],
  ])('reads the memory size %s as %d bytes', (text, bytes) => {
    expect(parseMemorySize(text)).toBe(bytes);
    // A limit takes 0 or at least 4m (hostile-spec.test.ts).
    if (bytes === 0 || bytes >= 4 * 2 ** 20) expect(loadConfig(file(`[server]\ndefault_memory_limit = "${text}"\n`)).server?.defaultMemoryLimit).toBe(text);
  });

  it.each([
    ['[process]\nport_range_start = "10000"\n', 'process.port_range_start', 'non-negative integer'],
    ['[process]\nworker_gid = -1\n', 'process.worker_gid', 'non-negative integer'],
    ['[process]\nstop_grace_ms = 1.5\n', 'process.stop_grace_ms', 'non-negative integer'],
    ['[process]\nskip_metadata_check = "yes"\n', 'process.skip_metadata_check', 'true or false'],
    ['[process]\nbwrap_path = 42\n', 'process.bwrap_path', 'a string'],
    ['[server]\ndefault_cpu_limit = "2"\n', 'server.default_cpu_limit', 'a number'],
    ['[redis]\nurl = 6379\n', 'redis.url', 'a string'],
    ['[database]\ndriver = "mysql"\n', 'database.driver', '"sqlite" or "postgres"'],
    ['process = 3\n', 'process', 'must be a table'],
  ])('rejects a wrong type: %s', (text, key, expected) => {
    tomlError(text, key, expected);
  });

  it('names the file and line of a TOML syntax error', () => {
    const p = file('[process]\nbwrap_path = \n');
    const err = configError(() => loadConfig(p));
    expect(err.message).toMatch(new RegExp(`invalid TOML in ${p.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}:2:`));
  });

  it('names a file it cannot read', () => {
    const err = configError(() => loadConfig(path.join(dir, 'missing.toml')));
    expect(err.message).toContain('missing.toml');
    expect(err.message).toContain('ENOENT');
  });
});

describe('deniedConnect and allowedConnect', () => {
  it('maps denied_connect and allowed_connect', () => {
    const config = loadConfig(
      file('[process]\ndenied_connect = ["10.0.0.0/8:5432", "[::1]:6379"]\nallowed_connect = ["192.168.0.0/16", "fd00::/8"]\n'),
    );
    expect(config.process).toEqual({
      ...PROCESS_DEFAULTS,
      deniedConnect: ['10.0.0.0/8:5432', '[::1]:6379'],
      allowedConnect: ['192.168.0.0/16', 'fd00::/8'],
    });
  });

  it('denies nothing more and allows any destination by default', () => {
    expect(PROCESS_DEFAULTS.deniedConnect).toEqual([]);
    expect(loadConfig(file('')).process?.allowedConnect).toBeUndefined();
    expect(loadConfig(file('[process]\nallowed_connect = []\n')).process?.allowedConnect).toEqual([]);
  });

  it.each([
    ['[process]\ndenied_connect = ["10.0.0.0/8", "10.0.0.1/8"]\n', 'process.denied_connect', 'process.denied_connect[1]', 'the network is 10.0.0.0/8'],
    ['[process]\ndenied_connect = ["db.example:5432"]\n', 'process.denied_connect', 'process.denied_connect[0]', 'hostnames are not accepted'],
    ['[process]\nallowed_connect = ["fd00::/8:443"]\n', 'process.allowed_connect', 'process.allowed_connect[0]', 'write [fd00::/8]:443'],
    ['[process]\nallowed_connect = ["10.0.0.1:0"]\n', 'process.allowed_connect', 'process.allowed_connect[0]', 'outside 1-65535'],
  ])('rejects a bad entry naming the TOML key and the file: %s', (text, key, indexed, expected) => {
    const err = tomlError(text, key, expected);
    expect(err.message).toContain(indexed);
    expect(err.file).toBeDefined();
    expect(err.message).not.toMatch(/deniedConnect|allowedConnect/);
  });

  it.each([
    ['[process]\ndenied_connect = "10.0.0.0/8"\n', 'process.denied_connect', 'an array of strings'],
    ['[process]\nallowed_connect = [10]\n', 'process.allowed_connect', 'an array of strings'],
  ])('rejects a wrong type: %s', (text, key, expected) => {
    tomlError(text, key, expected);
  });

  it('names the field of a Config given in code', () => {
    const err = configError(() => checkConfig({ process: { deniedConnect: ['x'] } }));
    expect(err.key).toBe('process.deniedConnect');
    expect(err.file).toBeUndefined();
    expect(err.message).toMatch(/^process\.deniedConnect\[0\] "x" /);
    const allowed = configError(() => checkConfig({ process: { allowedConnect: '10.0.0.0/8' as unknown as string[] } }));
    expect(allowed.key).toBe('process.allowedConnect');
    expect(allowed.message).toContain('process.allowedConnect must be an array of strings');
    expect(() => checkConfig({ process: { deniedConnect: ['10.0.0.0/8'], allowedConnect: ['[fd00::/8]:443'] } })).not.toThrow();
  });
});

describe('a Config given in code', () => {
  it('refuses an unknown key, at any level, naming it and the nearest valid name', () => {
    const typo = configError(() => checkConfig({ process: { seccompProfle: 'builtin' } } as never));
    expect(typo.key).toBe('process.seccompProfle');
    expect(typo.message).toBe('unknown key "seccompProfle" in config.process (did you mean "seccompProfile"?)');
    const section = configError(() => checkConfig({ proces: { portRangeStart: 20000 } } as never));
    expect(section.key).toBe('proces');
    expect(section.message).toContain('(did you mean "process"?)');
    // A file's snake_case name, in code: its field.
    const snake = configError(() => checkConfig({ process: { port_range_start: 20000 } } as never));
    expect(snake.message).toContain('(did you mean "portRangeStart"?)');
    const uid = configError(() => checkConfig({ process: { worker_uid_range_start: 20000 } } as never));
    expect(uid.message).toContain('(did you mean "workerUidStart"?)');
    const nested = configError(() => checkConfig({ server: { defaultMemoryLimt: '1g' } } as never));
    expect(nested.message).toContain('(did you mean "defaultMemoryLimit"?)');
    const notObject = configError(() => checkConfig({ process: 'x' } as never));
    expect(notObject.message).toContain('config.process must be an object');
  });

  it('is refused by the backend before anything starts', () => {
    expect(() => new ProcessBackend({ process: { seccompProfle: 'builtin' } } as never)).toThrow(/did you mean "seccompProfile"/);
  });
});

describe('warmPool ([[process.warm_pool]])', () => {
  it('is none by default', () => {
    expect(loadConfig(file('')).process?.warmPool).toEqual([]);
  });

  it('names an unknown key of an entry, with the nearest valid one, and the file', () => {
    const p = file('[[process.warm_pool]]\nsize = 1\npreloads = ["shiny"]\n');
    const err = configError(() => loadConfig(p));
    expect(err.key).toBe('process.warm_pool[0].preloads');
    expect(err.message).toContain('did you mean "preload"?');
    expect(err.message).toContain(p);
  });

  it('rejects a size out of 0-64, a package name that is not one, and a bad version, naming the entry', () => {
    const size = configError(() => loadConfig(file('[[process.warm_pool]]\nsize = 65\n')));
    expect(size.message).toMatch(/process\.warm_pool\[0\]\.size in .* must be an integer 0-64, got number 65/);
    const pkg = configError(() => checkConfig({ process: { warmPool: [{ size: 1 }, { size: 1, preload: ['shiny', 'x; system("id")'] }] } }));
    expect(pkg.key).toBe('process.warmPool');
    expect(pkg.message).toMatch(/^process\.warmPool\[1\]\.preload must be an array of R package names/);
    const version = configError(() => checkConfig({ process: { warmPool: [{ size: 1, rVersion: '../4.4' }] } }));
    expect(version.message).toContain('process.warmPool[0].rVersion must be an R version');
    const field = configError(() => checkConfig({ process: { warmPool: [{ size: 1, sise: 2 } as never] } }));
    expect(field.message).toContain('unknown field "sise"');
    const notArray = configError(() => loadConfig(file('[process]\nwarm_pool = 2\n')));
    expect(notArray.message).toContain('process.warm_pool in');
    expect(notArray.message).toContain('must be an array of tables');
  });
});

describe('withTomlNames', () => {
  it('maps the connect lists', () => {
    expect(withTomlNames('process.deniedConnect[2] and process.allowedConnect')).toBe(
      'process.denied_connect[2] and process.allowed_connect',
    );
  });

  it('rewrites the Config field names procyard reads to their TOML names, and nothing else', () => {
    expect(withTomlNames('widen process.portRangeStart/process.portRangeEnd or set process.bwrapPath')).toBe(
      'widen process.port_range_start/process.port_range_end or set process.bwrap_path',
    );
    expect(withTomlNames('storage.bundleWorkerPath and server.defaultCpuLimit')).toBe(
      'storage.bundle_worker_path and server.default_cpu_limit',
    );
    expect(withTomlNames('process.workerUidStart, process.runtimeDir')).toBe('process.worker_uid_range_start, process.runtime_dir');
    expect(withTomlNames('spec.workerId and process.noSuchField stay')).toBe('spec.workerId and process.noSuchField stay');
  });
});
