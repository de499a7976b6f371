// The numbers and names the README and docs state, read against what the code
// does (issue 23): how many preflight checks there are and their order, the
// sections the README links to, the config keys docs/cli.md lists.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { PROCESS_DEFAULTS } from '../src/config.js';
import { CHECKS } from '../src/preflight/index.js';

const read = (file: string) => readFileSync(fileURLToPath(new URL(`../${file}`, import.meta.url)), 'utf8');

describe('docs against the code', () => {
  it("docs/cli.md's sample summary counts every preflight check", () => {
    const counted = Number(/^(\d+) checks: /m.exec(read('docs/cli.md'))?.[1]);
    expect(counted).toBe(CHECKS.length);
  });

  it('docs/preflight.md names the extra checks in the order they run, and documents each', () => {
    const doc = read('docs/preflight.md');
    const extra = CHECKS.slice(11).map((c) => c.name);
    const listed = /then\s+([\s\S]*?)\.\n/.exec(doc.slice(doc.indexOf('the eleven checks below first')))?.[1] ?? '';
    expect([...listed.matchAll(/`(\w+)`/g)].map((m) => m[1])).toEqual(extra);
    for (const check of CHECKS) expect(doc, check.name).toContain(`### \`${check.name}\``);
  });

  it("the README's table of checks has a row for each", () => {
    const readme = read('README.md');
    for (const check of CHECKS) expect(readme, check.name).toContain(`| \`${check.name}\` |`);
  });

  it('docs/cli.md lists every [process] key a config file may set', () => {
    const cli = read('docs/cli.md');
    const snake = (field: string) => field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    const toml = Object.keys(PROCESS_DEFAULTS).map((field) =>
      ({ workerUidStart: 'worker_uid_range_start', workerUidEnd: 'worker_uid_range_end' })[field] ?? snake(field),
    );
    for (const key of [...toml, 'allowed_connect_ports', 'allowed_connect'])
      expect(cli, key).toMatch(key === 'warm_pool' ? /\[\[process\.warm_pool\]\]/ : new RegExp(`^${key} =`, 'm'));
  });
});
