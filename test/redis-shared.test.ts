// A backend against the Redis that CI (or a developer) provides through
// PROCYARD_TEST_REDIS_URL, with a password, as production would run it.
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProcessBackend } from '../src/process/process-backend.js';
import { appSpec, testConfig } from './helpers/backend.js';
import { waitFor } from './helpers/proc.js';

// Ports 20300-20309 and UIDs 61300-61309 belong to this file.
const url = process.env.PROCYARD_TEST_REDIS_URL;

describe.runIf(url)('ProcessBackend on a provided Redis', () => {
  let redis: Redis;
  let backend: ProcessBackend;
  const prefix = `procyard-shared-${process.pid}:`;

  beforeAll(() => {
    redis = new Redis(url!, { lazyConnect: false, maxRetriesPerRequest: 1 });
    backend = new ProcessBackend(testConfig([20300, 20309], [61300, 61309]), { redis, redisKeyPrefix: prefix });
  });

  afterAll(async () => {
    await backend.close();
    const keys = await redis.keys(`${prefix}*`);
    if (keys.length > 0) await redis.del(...keys);
    redis.disconnect();
  });

  it('claims a port and UID in Redis for a worker and frees them on stop', async () => {
    await backend.spawn(appSpec('shared-1'));
    expect(await waitFor(() => backend.healthCheck('shared-1', { timeoutMs: 500 }), 10000)).toBe(true);
    const port = Number((await backend.addr('shared-1')).split(':')[1]);
    const keys = await redis.keys(`${prefix}*`);
    // Every key of this host shares one hash tag, so one cluster slot.
    expect(keys.length).toBeGreaterThan(0);
    const tags = new Set(keys.map((k) => /\{[^}]*\}/.exec(k)?.[0]));
    expect(tags.size).toBe(1);
    expect(backend.inUse).toEqual({ ports: 1, uids: 1 });
    const owners = keys.find((k) => k.endsWith(':port:owner'))!;
    expect(await redis.hget(owners, String(port))).not.toBeNull();
    await backend.stop('shared-1');
    expect(backend.inUse).toEqual({ ports: 0, uids: 0 });
    // Its claim is gone from Redis: the port has no owner any more.
    expect(await redis.hget(owners, String(port))).toBeNull();
    // Ports start from a random point of the range (a worker cannot predict the next one).
    await backend.spawn(appSpec('shared-2'));
    const next = Number((await backend.addr('shared-2')).split(':')[1]);
    expect(next).toBeGreaterThanOrEqual(20300);
    expect(next).toBeLessThanOrEqual(20309);
    await backend.stop('shared-2');
  });
});
