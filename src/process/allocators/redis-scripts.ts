// The Lua scripts of the Redis claim store. Each runs atomically and touches
// only keys of one host (one hash tag), hence one Redis Cluster slot.
//
// Per resource (ports, UIDs) a store has two keys that always agree:
//   bits   a bitmap, bit N set = value N claimed (BITPOS finds a free one)
//   owner  a hash, N -> owner id (who may release N; what a sweep checks)
// A lease is `<lease prefix><owner id>`, a string with a TTL. Scripts that
// look up other owners' leases build that name from a KEYS entry (the lease
// prefix), so the name gets any ioredis keyPrefix and shares the hash tag.
import { createHash } from 'node:crypto';

export interface Script {
  source: string;
  sha: string;
}

function script(source: string): Script {
  return { source, sha: createHash('sha1').update(source).digest('hex') };
}

/** Frees one claim. */
const FREE = `
local function free(bits, owners, slot)
  redis.call('HDEL', owners, slot)
  redis.call('SETBIT', bits, slot, 0)
end
`;

/**
 * KEYS bits, owner, leasePrefix[, cursor]; ARGV owner, start, lo, hi.
 * The first free value from start up to hi, else from lo up to start - 1,
 * now the owner's; -1 when none, -2 when the owner's lease is missing (a
 * claim without a lease could be swept by a peer at once). With a cursor
 * key (UIDs) the scan starts after the value it last handed out, and the
 * cursor moves to the claim: round robin, so a released UID is reused last.
 */
export const CLAIM = script(`
if redis.call('EXISTS', KEYS[3] .. ARGV[1]) == 0 then return -2 end
local start, lo, hi = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if KEYS[4] then
  local last = tonumber(redis.call('GET', KEYS[4]))
  if last then start = last + 1 end
end
if start < lo or start > hi then start = lo end
-- BITPOS only looks at bytes the string has: grow it to cover hi, or a
-- clear bit past its end would read as "none free".
if redis.call('STRLEN', KEYS[1]) * 8 <= hi then redis.call('SETBIT', KEYS[1], hi, 0) end
local pos = redis.call('BITPOS', KEYS[1], 0, start, hi, 'BIT')
if pos < 0 and start > lo then pos = redis.call('BITPOS', KEYS[1], 0, lo, start - 1, 'BIT') end
if pos < 0 then return -1 end
redis.call('SETBIT', KEYS[1], pos, 1)
redis.call('HSET', KEYS[2], pos, ARGV[1])
if KEYS[4] then redis.call('SET', KEYS[4], pos) end
return pos
`);

/** KEYS bits, owner; ARGV owner, slot...: frees the slots this owner holds (others are left alone). */
export const RELEASE = script(`${FREE}
local n = 0
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    free(KEYS[1], KEYS[2], ARGV[i])
    n = n + 1
  end
end
return n
`);

/**
 * KEYS bits, owner; ARGV owner, keep...: frees every claim of the owner
 * except `keep` (what it really holds). Retries releases that failed and
 * drops claims whose reply was lost; with no `keep`, releases everything.
 */
export const RELEASE_ALL_EXCEPT = script(`${FREE}
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local freed = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] and not keep[all[i]] then
    free(KEYS[1], KEYS[2], all[i])
    freed[#freed + 1] = all[i]
  end
end
return freed
`);

/**
 * KEYS bits, owner, leasePrefix; ARGV self, then slots to keep: frees every
 * claim whose owner has no lease key (crashed or stopped without close),
 * but for the slots to keep (still in use on the host: its owner's lease
 * may only have lapsed). Never the caller's. Returns slot, owner pairs.
 */
export const SWEEP = script(`${FREE}
local alive, freed, keep = {}, {}, {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local owner = all[i + 1]
  if alive[owner] == nil then
    alive[owner] = owner == ARGV[1] or redis.call('EXISTS', KEYS[3] .. owner) == 1
  end
  if not alive[owner] and not keep[all[i]] then
    free(KEYS[1], KEYS[2], all[i])
    freed[#freed + 1] = all[i]
    freed[#freed + 1] = owner
  end
end
return freed
`);

/**
 * KEYS lease, then bits, owner per store; ARGV owner, ttl, then per store a
 * count and the slots the owner holds. Creates or extends the lease and
 * re-claims held slots that Redis lost (lease lapsed and swept, or Redis
 * restarted empty), in one step so no claim slips in between. Returns
 * {leaseExisted, store index, slot, holder, ...} for held slots another
 * owner has meanwhile.
 */
export const RENEW = script(`
local existed = redis.call('PEXPIRE', KEYS[1], ARGV[2])
if existed == 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
local out = { existed }
local a = 3
for s = 1, (#KEYS - 1) / 2 do
  local bits, owners = KEYS[2 * s], KEYS[2 * s + 1]
  local n = tonumber(ARGV[a])
  for i = a + 1, a + n do
    local holder = redis.call('HGET', owners, ARGV[i])
    if not holder then
      redis.call('HSET', owners, ARGV[i], ARGV[1])
      redis.call('SETBIT', bits, ARGV[i], 1)
    elseif holder ~= ARGV[1] then
      out[#out + 1] = s
      out[#out + 1] = ARGV[i]
      out[#out + 1] = holder
    end
  end
  a = a + n + 1
end
return out
`);

/** KEYS lease; ARGV owner: deletes the lease if it is still this owner's. */
export const DROP_LEASE = script(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`);
