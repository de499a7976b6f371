// The pure parts of per-worker limits: sizes, config checks, and where the
// cgroup hierarchies are (from /proc/self/mountinfo and /proc/self/cgroup
// texts as real hosts have them). No cgroup needed.
import { describe, expect, it } from 'vitest';
import { ProcessBackend } from '../src/process/process-backend.js';
import { configFromToml } from '../src/config.js';
import { checkWorkerSpec } from '../src/process/validate.js';
import { dirOf, layoutFrom, parentPath, parseMountinfo } from '../src/process/cgroup-hierarchy.js';
import { cgroupParentProblem, cpuQuotaUs, parseMemorySize, resolveLimitsConfig, workerLimits } from '../src/process/limits.js';
import { appSpec, testConfig } from './helpers/backend.js';

describe('memory sizes', () => {
  it('takes binary units in any case, an optional b/ib, fractions, and plain bytes', () => {
    expect(parseMemorySize('64m')).toBe(64 * 2 ** 20);
    expect(parseMemorySize('2g')).toBe(2 * 2 ** 30);
    expect(parseMemorySize('512k')).toBe(512 * 1024);
    expect(parseMemorySize('1048576')).toBe(1048576);
    expect(parseMemorySize('64M')).toBe(64 * 2 ** 20);
    expect(parseMemorySize('64MiB')).toBe(64 * 2 ** 20);
    expect(parseMemorySize('64mb')).toBe(64 * 2 ** 20);
    expect(parseMemorySize('1.5g')).toBe(1.5 * 2 ** 30);
    expect(parseMemorySize('1t')).toBe(2 ** 40);
    expect(parseMemorySize('0')).toBe(0);
  });

  it('refuses what is no size', () => {
    for (const bad of ['', 'm', '64x', '-1m', '1e9', '64 m b', '0x10', '64ib', 'NaN', '1.2.3g', '99999999999t'])
      expect(parseMemorySize(bad), bad).toBeNull();
  });
});

describe('config and spec checks name the field', () => {
  const base = testConfig([24190, 24199], [65190, 65199]);

  it('resolves the defaults', () => {
    expect(resolveLimitsConfig(base)).toEqual({ mode: 'auto', cgroupParent: '', pidsLimit: 1024, memoryBytes: 0, cpus: 0 });
    expect(resolveLimitsConfig({ ...base, server: { defaultMemoryLimit: '2g', defaultCpuLimit: 1.5 } })).toMatchObject({
      memoryBytes: 2 * 2 ** 30,
      cpus: 1.5,
    });
  });

  it('refuses a malformed default_memory_limit, a negative or NaN default_cpu_limit, a bad mode or pids_limit', () => {
    const cases: [Parameters<typeof resolveLimitsConfig>[0], RegExp][] = [
      [{ ...base, server: { defaultMemoryLimit: '2 gigs' } }, /defaultMemoryLimit.*"2 gigs"/],
      [{ ...base, server: { defaultCpuLimit: -1 } }, /defaultCpuLimit.*-1/],
      [{ ...base, server: { defaultCpuLimit: NaN } }, /defaultCpuLimit.*NaN/],
      [{ ...base, process: { ...base.process, resourceLimits: 'sometimes' as 'auto' } }, /resourceLimits.*"sometimes"/],
      [{ ...base, process: { ...base.process, pidsLimit: -5 } }, /pidsLimit.*-5/],
      [{ ...base, process: { ...base.process, pidsLimit: 1.5 } }, /pidsLimit/],
    ];
    for (const [config, message] of cases) {
      expect(() => resolveLimitsConfig(config)).toThrow(message);
      // The constructor refuses it the same way, before anything starts.
      expect(() => new ProcessBackend(config)).toThrow(message);
    }
  });

  it('refuses a cgroupParent that is relative or climbs with ".."', () => {
    for (const bad of ['procyard', 'a/b', '/a/../b', '/..', '/a/./b', '//a', '/a\0b'])
      expect(cgroupParentProblem(bad), bad).toMatch(/cgroupParent/);
    for (const good of ['', '/', '/procyard.slice', '/system.slice/x.service/workers', '/a/'])
      expect(cgroupParentProblem(good), good).toBeNull();
    expect(() => new ProcessBackend({ ...base, process: { ...base.process, cgroupParent: '/srv/../etc' } })).toThrow(/cgroupParent.*"\.\."/);
  });

  it('refuses a malformed memoryLimit and a negative or NaN cpuLimit in a spec, naming the field', () => {
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { memoryLimit: '64 megs' }))).toThrow(/memoryLimit.*"64 megs"/);
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { memoryLimit: 64 as unknown as string }))).toThrow(/memoryLimit/);
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { cpuLimit: -0.5 }))).toThrow(/cpuLimit.*-0.5/);
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { cpuLimit: NaN }))).toThrow(/cpuLimit.*NaN/);
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { cpuLimit: Infinity }))).toThrow(/cpuLimit/);
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { memoryLimit: '512k' }))).toThrow(/memoryLimit must be 0 \(no limit\) or at least 4m \(4194304 bytes\), got "512k"/);
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { cpuLimit: 1e9 }))).toThrow(/cpuLimit must be at most 4096 CPUs, got 1000000000/);
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { memoryLimit: '4m', cpuLimit: 0.5 }))).not.toThrow();
    expect(() => checkWorkerSpec(appSpec('w', 'serve', { memoryLimit: '0', cpuLimit: 4096 }))).not.toThrow();
  });

  it('takes the spec limits over the defaults, "0" meaning none', () => {
    const config = resolveLimitsConfig({ ...base, server: { defaultMemoryLimit: '1g', defaultCpuLimit: 2 } });
    expect(workerLimits({}, config)).toEqual({ memoryBytes: 2 ** 30, cpus: 2, pids: 1024 });
    expect(workerLimits({ memoryLimit: '64m', cpuLimit: 0.5 }, config)).toEqual({ memoryBytes: 64 * 2 ** 20, cpus: 0.5, pids: 1024 });
    expect(workerLimits({ memoryLimit: '0', cpuLimit: 0 }, config)).toEqual({ memoryBytes: 0, cpus: 0, pids: 1024 });
  });

  it('turns CPUs into a CFS quota per 100 ms, at least 1 ms', () => {
    expect(cpuQuotaUs(0.5)).toBe(50_000);
    expect(cpuQuotaUs(2)).toBe(200_000);
    expect(cpuQuotaUs(0.001)).toBe(1000);
  });

  it('maps the TOML keys', () => {
    const config = configFromToml({ process: { resource_limits: 'off', cgroup_parent: '/x.slice', pids_limit: 64 } });
    expect(config.process).toMatchObject({ resourceLimits: 'off', cgroupParent: '/x.slice', pidsLimit: 64 });
  });
});

// This machine's view (v1, memory nested), a systemd host's (v2), a hybrid one, a container's.
const V1_MOUNTINFO = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw`;
const V1_CGROUP = `9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/`;
const V2_MOUNTINFO = `25 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot`;

describe('cgroup hierarchies', () => {
  it('finds v1 controllers on their hierarchies, with the nested memory path', () => {
    const layout = layoutFrom(V1_MOUNTINFO, V1_CGROUP);
    expect(layout).toEqual({
      version: 1,
      // In the order the clone child enters them: cpu last.
      hierarchies: [
        { mountPoint: '/sys/fs/cgroup/memory', mountRoot: '/', controllers: ['memory'], ownPath: '/process_api/abc' },
        { mountPoint: '/sys/fs/cgroup/pids', mountRoot: '/', controllers: ['pids'], ownPath: '/' },
        { mountPoint: '/sys/fs/cgroup/cpu', mountRoot: '/', controllers: ['cpu'], ownPath: '/' },
      ],
    });
    if (layout.version !== 1) throw new Error('v1 expected');
    const memory = layout.hierarchies[0]!;
    expect(dirOf(memory, parentPath(memory, ''))).toBe('/sys/fs/cgroup/memory/process_api/abc');
    expect(dirOf(memory, parentPath(memory, '/procyard.slice'))).toBe('/sys/fs/cgroup/memory/procyard.slice');
    expect(dirOf(layout.hierarchies[2]!, '/')).toBe('/sys/fs/cgroup/cpu');
  });

  it('reads cpu,cpuacct co-mounted as one hierarchy', () => {
    const layout = layoutFrom(
      '30 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory',
      '3:cpu,cpuacct:/user.slice\n2:memory:/user.slice/u.scope\n',
    );
    expect(layout).toMatchObject({
      version: 1,
      hierarchies: [
        { mountPoint: '/sys/fs/cgroup/memory', controllers: ['memory'], ownPath: '/user.slice/u.scope' },
        { mountPoint: '/sys/fs/cgroup/cpu,cpuacct', controllers: ['cpu'], ownPath: '/user.slice' },
      ],
    });
  });

  it('takes the unified hierarchy on a v2 host, and its leaf\'s parent as the server\'s own', () => {
    const layout = layoutFrom(V2_MOUNTINFO, '0::/system.slice/procyard.service\n');
    expect(layout).toEqual({
      version: 2,
      hierarchies: [{ mountPoint: '/sys/fs/cgroup', mountRoot: '/', controllers: ['memory', 'pids', 'cpu'], ownPath: '/system.slice/procyard.service' }],
    });
    if (layout.version !== 2) throw new Error('v2 expected');
    const h = layout.hierarchies[0]!;
    expect(dirOf(h, parentPath(h, ''))).toBe('/sys/fs/cgroup/system.slice/procyard.service');
    // Once the server sits in its leaf, the delegated cgroup is still the parent.
    const moved = { ...h, ownPath: '/system.slice/procyard.service/procyard-server' };
    expect(parentPath(moved, '')).toBe('/system.slice/procyard.service');
  });

  it('maps paths through a mount of a sub-tree (a container without a cgroup namespace)', () => {
    const layout = layoutFrom('50 40 0:22 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw', '0::/docker/abc\n');
    if (layout.version !== 2) throw new Error('v2 expected');
    const h = layout.hierarchies[0]!;
    expect(dirOf(h, '/docker/abc')).toBe('/sys/fs/cgroup');
    expect(dirOf(h, '/docker/abc/w')).toBe('/sys/fs/cgroup/w');
    expect(dirOf(h, '/docker/other')).toBeNull();
  });

  it('says why when there is no usable hierarchy', () => {
    expect(layoutFrom('22 1 0:20 / /proc rw - proc proc rw', '')).toMatchObject({ version: 0, reason: /no cgroup filesystem/ });
    expect(layoutFrom(V2_MOUNTINFO, '')).toMatchObject({ version: 0, reason: /no "0::" line/ });
  });

  it('unescapes mount points', () => {
    expect(parseMountinfo('30 25 0:26 / /mnt/with\\040space rw - cgroup2 none rw')[0]!.mountPoint).toBe('/mnt/with space');
  });
});
