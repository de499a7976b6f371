// Turns the results into markdown tables and the list of targets (met or not).

function ms(x) {
  if (!Number.isFinite(x)) return 'n/a';
  if (x < 1) return `${x.toFixed(3)} ms`;
  if (x < 100) return `${x.toFixed(2)} ms`;
  return `${x.toFixed(0)} ms`;
}

function ratio(x) {
  if (!Number.isFinite(x)) return 'n/a';
  if (x >= 100) return `${x.toFixed(0)}x`;
  if (x >= 10) return `${x.toFixed(1)}x`;
  return `${x.toFixed(2)}x`;
}

function rate(x) {
  if (x >= 1e6) return `${(x / 1e6).toFixed(2)} M/s`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(1)} k/s`;
  return `${x.toFixed(0)} /s`;
}

function table(head, rows) {
  const line = (cells) => `| ${cells.join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}

const PATHS = [
  ['native', 'procyard native spawn'],
  ['backend', 'ProcessBackend.spawn (full spec, limits on)'],
  ['backendOff', 'ProcessBackend.spawn, resourceLimits off'],
  ['childProcess', 'child_process.spawn'],
  ['execa', 'execa'],
];

// Section 1's rows beyond the burst paths: issue 15's backend (everything on).
const FULL_LABEL = "ProcessBackend.spawn, limits + policy + seccomp 'builtin' (issue 15)";

export function buildReport(r) {
  const sections = [];
  const targets = [];
  const target = (name, measured, met, note = '') => targets.push({ name, measured, met, note });
  if (r.only) {
    // `--only <section>`: that section and the leak check alone.
    if (r.ttfb) sections.push(ttfbSection(r.ttfb, target));
    if (r.hostile) sections.push(hostileSection(r.hostile, target));
    leftoversTarget(r, target);
    return finish(sections, targets);
  }
  const { small, big } = r.spawn;
  const bigLabel = `${big.residentMb} MB resident${r.quick ? ' (quick)' : ''}`;
  const smallLabel = `small heap (RSS ${small.rssMb.toFixed(0)} MB)`;

  // 1 + floor
  const cpSmall = small.latency.childProcess.p50;
  const cpBig = big.latency.childProcess.p50;
  const latencyPaths = [
    ...PATHS,
    ...(small.latency.backendFull ? [['backendFull', FULL_LABEL]] : []),
    ['floor', 'C floor, bare (bench/floor.c: the native spawn\'s clone child)'],
    ...(small.latency.floorSandbox ? [['floorSandbox', 'C floor, same sandbox (bench/floor.c: limits + policy + seccomp, as issue 15\'s row)']] : []),
  ];
  const rows = latencyPaths.map(([key, label]) => {
    const s = small.latency[key];
    const b = big.latency[key];
    return [label, ms(s.p50), ms(s.p99), ms(b.p50), ms(b.p99), ratio(b.p50 / s.p50), ratio(s.p50 / cpSmall), ratio(b.p50 / cpBig)];
  });
  const fs = small.latency.floor;
  const fb = big.latency.floor;
  sections.push(
    `### 1. Spawn latency: call to resolution, \`bwrap <worker flags> -- /bin/true\` (${small.latency.native.n} spawns per path and size, one at a time)\n\n` +
      `Small = ${smallLabel}; large = ${bigLabel}. "vs child_process" is this path's p50 over child_process.spawn's at the same size (below 1 = faster).\n\n` +
      table(
        ['path', 'small p50', 'small p99', 'large p50', 'large p99', 'large / small p50', 'vs child_process, small', 'vs child_process, large'],
        rows,
      ),
  );
  const be = { s: small.latency.backend.p50, b: big.latency.backend.p50 };
  target('ProcessBackend.spawn p50 <= 0.3x child_process.spawn, small heap', `${ms(be.s)} vs ${ms(cpSmall)} = ${ratio(be.s / cpSmall)}`, be.s <= 0.3 * cpSmall);
  target(
    `ProcessBackend.spawn >= 100x faster than child_process.spawn at ${bigLabel}`,
    `${ms(be.b)} vs ${ms(cpBig)} = ${ratio(cpBig / be.b)} faster`,
    cpBig / be.b >= 100,
  );
  target(`ProcessBackend.spawn p50 at ${bigLabel} within 1.5x of small heap`, `${ms(be.b)} vs ${ms(be.s)} = ${ratio(be.b / be.s)}`, be.b <= 1.5 * be.s);
  // Per-worker limits (a cgroup per worker) against the same backend without
  // them: from the paired run (1d) where there is one, else section 1's batches.
  if (small.latency.backendOff) {
    const paired = small.limits?.pairs && big.limits?.pairs;
    const off = paired
      ? { s: small.limits.pairs.off.p50, b: big.limits.pairs.off.p50 }
      : { s: small.latency.backendOff.p50, b: big.latency.backendOff.p50 };
    const on = paired ? { s: small.limits.pairs.on.p50, b: big.limits.pairs.on.p50 } : be;
    for (const [label, withLimits, without] of [['small heap', on.s, off.s], [bigLabel, on.b, off.b]])
      target(
        `ProcessBackend.spawn p50 with limits on within 10% of limits off, ${label}${paired ? ' (paired, 1d)' : ''}`,
        `${ms(withLimits)} vs ${ms(without)} = ${withLimits >= without ? '+' : ''}${(((withLimits - without) / without) * 100).toFixed(1)}%`,
        withLimits <= 1.1 * without,
      );
  }
  const nat = { s: small.latency.native.p50, b: big.latency.native.p50 };
  target('native spawn p50 within 1.5x of the C floor, small heap', `${ms(nat.s)} vs ${ms(fs.p50)} = ${ratio(nat.s / fs.p50)}`, nat.s <= 1.5 * fs.p50);
  target(`native spawn p50 within 1.5x of the C floor, ${bigLabel}`, `${ms(nat.b)} vs ${ms(fb.p50)} = ${ratio(nat.b / fb.p50)}`, nat.b <= 1.5 * fb.p50);

  // 1b: the network policy's cost (same backend, 'auto' vs 'off', interleaved)
  if (small.networkPolicy?.pairs) {
    const np = small.networkPolicy;
    const applied = np.enforced.tcp || np.enforced.scopes
      ? `Landlock ABI ${np.abi}: ${[np.enforced.tcp ? 'TCP port rules' : '', np.enforced.scopes ? 'abstract-unix-socket and signal scopes' : ''].filter(Boolean).join(' and ')}`
      : `no Landlock domain (ABI ${np.abi}): the two rows measure the same thing`;
    const rowsNp = [['small heap', small], [bigLabel, big]].map(([label, run]) => {
      const { on, off: offS, pairRatio } = run.networkPolicy.pairs;
      return [label, ms(on.p50), ms(offS.p50), ratio(on.p50 / offS.p50), ratio(pairRatio.p50), ms(on.p99), ms(offS.p99)];
    });
    sections.push(
      `### 1b. The network policy's cost: ProcessBackend.spawn with networkPolicy 'auto' vs 'off'\n\n` +
        `Same spec, two backends; ${small.networkPolicy.pairs.on.n} pairs per size, each pair one spawn through each (alternating which goes first), so drift on a shared machine hits both alike. ` +
        `'auto' here = ${applied}; the ruleset is built in the spawn call, the clone child makes two more syscalls (no_new_privs, landlock_restrict_self). ` +
        `(Section 1's batches also carry the 'off' backend: ${ms(small.latency.backendPolicyOff.p50)} small, ${ms(big.latency.backendPolicyOff.p50)} large.)\n\n` +
        table(['size', "'auto' p50", "'off' p50", "'auto' / 'off' p50", 'median per-pair ratio', "'auto' p99", "'off' p99"], rowsNp),
    );
    for (const [label, run] of [['small heap', small], [bigLabel, big]]) {
      const { on, off: offS } = run.networkPolicy.pairs;
      target(`network policy on vs off: spawn p50 within 10%, ${label}`, `${ms(on.p50)} vs ${ms(offS.p50)} = ${ratio(on.p50 / offS.p50)}`, on.p50 <= 1.1 * offS.p50);
    }
  }

  // 1c: issue 15, the backend against the C floor of the same sandbox
  if (small.latency.backendFull && small.latency.floorSandbox) {
    const notes = small.floorSandbox?.notes ?? [];
    const rows1c = [['small heap', small], [bigLabel, big]].map(([label, run]) => {
      const be = run.latency.backendFull;
      const fl = run.latency.floorSandbox;
      return [label, ms(be.p50), ms(fl.p50), ratio(be.p50 / fl.p50), `+${ms(be.p50 - fl.p50)}`, ms(run.latency.floor.p50), ms(be.p99), ms(fl.p99)];
    });
    sections.push(
      `### 1c. Issue 15: ProcessBackend.spawn against the C floor of the same sandbox (limits + policy on)\n\n` +
        `${FULL_LABEL}: a backend with resourceLimits 'auto' (default memory 1g, 2 CPUs, pids 1024), networkPolicy 'auto' and seccompProfile 'builtin', ` +
        `the full spec with a bundle mount. The floor (bench/floor.c, sandbox kind) starts the same bwrap argv from C with the same work per spawn: ` +
        `status pipe, the seccomp program and the --args bytes each in a pipe, the cgroups' \`tasks\` opened, the Landlock ruleset, stdio pipes, clone(CLONE_VM|CLONE_VFORK), ` +
        `and the same child (cgroups entered before the UID switch, no_new_privs + landlock_restrict_self last); its cgroups are made (limits written) ahead and removed after, untimed, as the backend's spares are. ` +
        `Section 1's batches, interleaved; ${small.latency.backendFull.n} spawns per size each.\n\n` +
        `The floor here: ${notes.length ? notes.map((n) => n.replace(/\|/g, '/')).join('; ') : 'no notes'}${r.floorReuseCpu === false ? ' (--floor-fresh-cpu: a fresh cpu cgroup per spawn, as procyard before it recycled the directory)' : ' (the cpu cgroup directory reused across spawns, as procyard recycles it; --floor-fresh-cpu for a fresh one per spawn)'}.\n\n` +
        table(['size', 'backend p50', 'floor, same sandbox p50', 'backend / floor', 'difference', '(floor, bare p50)', 'backend p99', 'floor p99'], rows1c),
    );
    for (const [label, run] of [['small heap', small], [bigLabel, big]]) {
      const be = run.latency.backendFull.p50;
      const fl = run.latency.floorSandbox.p50;
      target(
        `ProcessBackend.spawn p50 within 1.5x of the C floor of the same sandbox (limits+policy on), ${label}`,
        `${ms(be)} vs ${ms(fl)} = ${ratio(be / fl)}`,
        be <= 1.5 * fl,
      );
    }
  }

  // 1d: the per-worker limits' cost, paired
  if (small.limits?.pairs && big.limits?.pairs) {
    const rowsLim = [['small heap', small], [bigLabel, big]].map(([label, run]) => {
      const { on, off: offS, pairRatio } = run.limits.pairs;
      return [label, ms(on.p50), ms(offS.p50), `${on.p50 >= offS.p50 ? '+' : ''}${(((on.p50 - offS.p50) / offS.p50) * 100).toFixed(1)}%`, ratio(pairRatio.p50), ms(on.p99), ms(offS.p99)];
    });
    sections.push(
      `### 1d. The per-worker limits' cost: ProcessBackend.spawn with resourceLimits 'auto' vs 'off'\n\n` +
        `Section 1's two backends (limits on: a cgroup per worker, default memory 1g and 2 CPUs, pids 1024; and off), ${small.limits.pairs.on.n} pairs per size, ` +
        `each pair one spawn through each (alternating which goes first), so drift on a shared machine hits both alike.\n\n` +
        table(['size', 'limits on p50', 'limits off p50', 'difference', 'median per-pair ratio', 'on p99', 'off p99'], rowsLim),
    );
  }

  // 1e: the socket hooks' cost (issue 21), paired, and their one-off set-up
  if (small.socketHooks?.pairs && big.socketHooks?.pairs) {
    const pct = (a, b) => `${a >= b ? '+' : ''}${(((a - b) / b) * 100).toFixed(1)}%`;
    const rowsHooks = [['small heap', small], [bigLabel, big]].map(([label, run]) => {
      const { on, off: offS, pairRatio } = run.socketHooks.pairs;
      return [label, ms(on.p50), ms(offS.p50), pct(on.p50, offS.p50), ratio(pairRatio.p50), ms(on.p99), ms(offS.p99)];
    });
    const oneOff = small.socketHooks.oneOff;
    const setUp = oneOff?.setUp
      ? `Once per backend (the first spawn): loading the eight programs and three maps, listing the backend's port range for the other servers (port-ranges/) and reading theirs, making the hooks' cgroup2 directory and attaching them took ` +
        `${ms(oneOff.setUp.p50)} p50 (${ms(oneOff.setUp.max)} max, ${oneOff.setUp.n} backends); close() ${ms(oneOff.tearDown.p50)} p50.`
      : `One-off set-up: not measured (${oneOff?.unavailable ?? 'no data'}).`;
    sections.push(
      `### 1e. The tenant network's cost: ProcessBackend.spawn with and without the cgroup socket hooks (issue 21)\n\n` +
        `Section 1's default backend (limits, Landlock and the hooks) against the same config with only the hooks switched off, ${small.socketHooks.pairs.on.n} pairs per size, ` +
        `each pair one spawn through each (alternating which goes first). On this hybrid host a hooked sandbox is born in the hooks' cgroup2 directory (clone3 CLONE_INTO_CGROUP) ` +
        `and its UID's port goes into a map; on pure v2 the hooks sit on the instance directory and a spawn does nothing more. ${setUp}\n\n` +
        table(['size', 'hooks on p50', 'hooks off p50', 'difference', 'median per-pair ratio', 'on p99', 'off p99'], rowsHooks),
    );
    for (const [label, run] of [['small heap', small], [bigLabel, big]]) {
      const { on, off: offS } = run.socketHooks.pairs;
      target(`socket hooks on vs off: spawn p50 within 5%, ${label} (paired, 1e)`, `${ms(on.p50)} vs ${ms(offS.p50)} = ${pct(on.p50, offS.p50)}`, on.p50 <= 1.05 * offS.p50);
    }
  }

  // 2
  const burstN = small.bursts[`native@1`].spawns;
  const cell = (b) => (b ? `${ms(b.maxMs)} / ${ms(b.p99Ms)}` : 'n/a');
  const eldRows = [['idle, no spawns (the machine\'s own jitter)', cell(small.bursts.idle), '', cell(big.bursts.idle), '']];
  for (const [key, label] of PATHS)
    eldRows.push([label, cell(small.bursts[`${key}@1`]), cell(small.bursts[`${key}@${burstN}`]), cell(big.bursts[`${key}@1`]), cell(big.bursts[`${key}@${burstN}`])]);
  sections.push(
    `### 2. Event-loop delay during a burst of ${burstN} spawns: max / p99\n\n` +
      `perf_hooks.monitorEventLoopDelay({ resolution: 1 }); its samples are whole timer intervals, so an idle loop reads about 1.1 ms. ` +
      `"One at a time": each spawn is issued when the previous sandbox has exited (what the spawn call itself costs the loop). ` +
      `"All in flight": the ${burstN} spawns are issued one per loop turn without waiting, so up to ${burstN} sandboxes start together on ${r.machine.cores} cores.\n\n` +
      table(['path', 'small, one at a time', 'small, all in flight', 'large, one at a time', 'large, all in flight'], eldRows) +
      `\n\nThe main thread during the all-in-flight burst (small heap): CPU it ran, time it waited runnable for a core, times it was preempted.\n\n` +
      table(
        ['path', 'main-thread CPU', 'run-queue wait', 'preempted'],
        PATHS.map(([key, label]) => {
          const b = small.bursts[`${key}@${burstN}`];
          return [label, ms(b.mainCpuMs), ms(b.runQueueWaitMs), String(b.involuntarySwitches)];
        }),
      ),
  );
  for (const [variant, suffix] of [['one at a time', '1'], ['all in flight', String(burstN)]]) {
    const vals = [
      ['native', small.bursts[`native@${suffix}`], 'small'],
      ['native', big.bursts[`native@${suffix}`], 'large'],
      ['backend', small.bursts[`backend@${suffix}`], 'small'],
      ['backend', big.bursts[`backend@${suffix}`], 'large'],
    ];
    target(
      `event-loop max delay <= 2 ms for procyard, both sizes (${variant})`,
      vals.map(([k, b, size]) => `${k} ${size} ${ms(b.maxMs)}`).join(', ') + `; idle ${ms(small.bursts.idle.maxMs)} / ${ms(big.bursts.idle.maxMs)}`,
      vals.every(([, b]) => b.maxMs <= 2),
    );
  }
  // Issue 15: against the machine's own jitter, measured in the same process just before.
  {
    const vals = [['small', small], ['large', big]].map(([size, run]) => ({ size, burst: run.bursts[`backend@${burstN}`], idle: run.bursts.idle }));
    target(
      `event-loop max delay during ${burstN} spawns in flight <= idle loop max + 2 ms, ProcessBackend.spawn, both sizes`,
      vals.map(({ size, burst, idle }) => `${size} ${ms(burst.maxMs)} vs idle ${ms(idle.maxMs)} + 2 ms`).join(', '),
      vals.every(({ burst, idle }) => burst.maxMs <= idle.maxMs + 2),
    );
  }

  // 3
  const o = r.overhead;
  sections.push(
    `### 3. Backend overhead: spawn-to-exit of the /bin/true sandbox (${o.backend.n} round trips each)\n\n` +
      table(
        ['', 'p50', 'p99', 'main-thread CPU per round trip'],
        [
          ["ProcessBackend: spawn() to its 'exit' event", ms(o.backend.p50), ms(o.backend.p99), ms(o.backend.mainCpuMsPerRoundTrip)],
          ['bare sandbox: native spawn to pidfd exit', ms(o.bare.p50), ms(o.bare.p99), ms(o.bare.mainCpuMsPerRoundTrip)],
          ['ratio', ratio(o.backend.p50 / o.bare.p50), ratio(o.backend.p99 / o.bare.p99), ratio(o.backend.mainCpuMsPerRoundTrip / o.bare.mainCpuMsPerRoundTrip)],
        ],
      ),
  );
  target('backend spawn-to-exit <= 1.2x the bare sandbox round trip', `${ms(o.backend.p50)} vs ${ms(o.bare.p50)} = ${ratio(o.backend.p50 / o.bare.p50)}`, o.backend.p50 <= 1.2 * o.bare.p50);

  // 3b
  const bd = r.breakdown;
  if (bd && !bd.unavailable) {
    const calls = (c) => Object.entries(c).filter(([, n]) => n > 0).map(([k, n]) => `${n} ${k}`).join(', ') || 'none';
    sections.push(
      `### 3b. Where ProcessBackend.spawn's time goes (${bd.traced[0][1].n} real spawns, limits, policy and seccomp on, small heap; each step timed from the one before through the 'procyard:spawn' diagnostics channel)

` +
        table(
          ['step', 'p50', 'p99'],
          [...bd.traced, ...Object.entries(bd.steps)].map(([k, v]) => [k, ms(v.p50), ms(v.p99)]),
        ) +
        `

fs/promises calls per worker (spawn to removal): /bin/true ${calls(bd.fsPromisesCallsPerWorker.binTrue)}; ` +
        `sleep, stopped after 300 ms: ${calls(bd.fsPromisesCallsPerWorker.sleepThenStop)}. Each readFile is four libuv pool jobs (open, fstat, read, close), queued behind the spawns on the same 4 threads. ` +
        `The orphan scan a backend starts on construction (cleanupOrphanResources) took ${ms(bd.orphanScan.ms)} over ${bd.orphanScan.hostProcesses} host processes; ` +
        `a spawn issued right after construction took ${ms(bd.spawnRightAfterConstruction.p50)} (p50 of ${bd.spawnRightAfterConstruction.n}).`,
    );
  } else if (bd) {
    sections.push(`### 3b. Where ProcessBackend.spawn's time goes

unavailable: ${bd.unavailable}`);
  }

  // 4
  const rd = r.ready;
  sections.push(
    `### 4. Spawn to ready: spawn call to the first accepted TCP connection, minimal node server (${rd.sandboxed.n} runs each)\n\n` +
      table(
        ['', 'p50', 'p99'],
        [
          ['in the sandbox (ProcessBackend.spawn)', ms(rd.sandboxed.p50), ms(rd.sandboxed.p99)],
          ['no sandbox (child_process.spawn)', ms(rd.plain.p50), ms(rd.plain.p99)],
          ['ratio (the sandbox costs the difference)', `${ratio(rd.sandboxed.p50 / rd.plain.p50)} (+${ms(rd.sandboxed.p50 - rd.plain.p50)})`, ratio(rd.sandboxed.p99 / rd.plain.p99)],
        ],
      ),
  );

  // 5
  const sm = r.sampling;
  sections.push(
    `### 5. Sampling: one tick over ${sm.workers} live sleep workers (${sm.ticks} ticks, all workers at once)\n\n` +
      table(
        ['', 'tick p50', 'tick max', 'per worker', 'RSS summed over all trees'],
        [
          [`backend.workerResourceUsage() x ${sm.workers}`, ms(sm.procyard.p50), ms(sm.procyard.max), ms(sm.procyard.p50 / sm.workers), `${(sm.procyard.rssBytes / 2 ** 20).toFixed(0)} MB`],
          [`pidtree(root, {root: true}) + pidusage(pids) x ${sm.workers}`, ms(sm.peer.p50), ms(sm.peer.max), ms(sm.peer.p50 / sm.workers), `${(sm.peer.rssBytes / 2 ** 20).toFixed(0)} MB`],
          ['(for reference) native sampleTrees(all roots), one call', ms(sm.sampleTreesOneCall.p50), ms(sm.sampleTreesOneCall.max), ms(sm.sampleTreesOneCall.p50 / sm.workers), ''],
          ['pidusage + pidtree / procyard', ratio(sm.peer.p50 / sm.procyard.p50), '', '', ''],
        ],
      ),
  );
  target('sampling >= 10x faster than pidusage + pidtree', `${ms(sm.procyard.p50)} vs ${ms(sm.peer.p50)} per tick = ${ratio(sm.peer.p50 / sm.procyard.p50)} faster`, sm.peer.p50 / sm.procyard.p50 >= 10);

  // 6
  const a = r.alloc;
  sections.push(
    `### 6. Allocation over a ${a.slots}-slot range\n\n` +
      table(
        ['', '10% occupied', '90% occupied'],
        [
          ['native Bitset alloc + release', rate(a.bitset['10%']), rate(a.bitset['90%'])],
          ['MemoryUidAllocator (LRU queue, async) alloc + release', rate(a.memoryAllocator['10%']), rate(a.memoryAllocator['90%'])],
          ...(a.hostAllocator
            ? [
                [`HostUidAllocator (the default: OFD locks + LRU stamps, ${a.hostAllocator.fs}) alloc + release`, rate(a.hostAllocator['10%']), rate(a.hostAllocator['90%'])],
                ['port reserve + release (bind, listen, close), memory / host-wide', `${rate(a.portReserve.memory)} / ${rate(a.portReserve.host)}`, ''],
              ]
            : []),
          ['(reference) JS array scanned from slot 0', rate(a.arrayScan['10%']), rate(a.arrayScan['90%'])],
          ['Redis reserve p50 / p99, procyard (one Lua script: BITPOS)', `${ms(a.redis['10%'].procyard.p50)} / ${ms(a.redis['10%'].procyard.p99)}`, `${ms(a.redis['90%'].procyard.p50)} / ${ms(a.redis['90%'].procyard.p99)}`],
          ['Redis reserve p50 / p99, original (SET NX PX per slot from the first)', `${ms(a.redis['10%'].scan.p50)} / ${ms(a.redis['10%'].scan.p99)}`, `${ms(a.redis['90%'].scan.p50)} / ${ms(a.redis['90%'].scan.p99)}`],
          ['original / procyard (p50)', ratio(a.redis['10%'].scan.p50 / a.redis['10%'].procyard.p50), ratio(a.redis['90%'].scan.p50 / a.redis['90%'].procyard.p50)],
          ['(reference) Redis PING round trip p50', ms(a.redis.pingMs.p50), ''],
        ],
      ),
  );
  const r90 = a.redis['90%'];
  target('Redis reserve at 90% occupancy >= 5x faster than the per-slot SETNX scan', `${ms(r90.procyard.p50)} vs ${ms(r90.scan.p50)} = ${ratio(r90.scan.p50 / r90.procyard.p50)} faster`, r90.scan.p50 / r90.procyard.p50 >= 5);

  // 7: scale
  const sc = r.scale;
  const leakText = Object.entries(sc.leaks)
    .filter(([, v]) => v !== 0)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
  sections.push(
    `### 7. Scale: ${sc.workers} sandboxed sleep workers, Redis allocators, on ${r.machine.cores} cores\n\n` +
      table(
        ['spawn all (all requested at once)', 'all running', 'one sampling tick over all', 'stop all (graceful)', 'parent RSS per worker', 'parent fds per worker', 'leak check after stop'],
        [[ms(sc.spawnAllMs), ms(sc.allRunningMs), ms(sc.tickMs), ms(sc.stopAllMs), `${sc.parentRssPerWorkerKb.toFixed(0)} KB`, sc.fdsPerWorker.toFixed(1), sc.leakFree ? 'none (ports, UIDs, entries, Redis claims and lease, fds, zombies, stray processes)' : `LEAKS: ${leakText}`]],
      ),
  );
  target(`no leaks after ${sc.workers} workers spawned and stopped`, sc.leakFree ? 'none' : leakText, sc.leakFree);

  // 9, then 8 (run last)
  if (r.ttfb) sections.push(ttfbSection(r.ttfb, target));
  if (r.hostile) sections.push(hostileSection(r.hostile, target));

  leftoversTarget(r, target);
  return finish(sections, targets);
}

function leftoversTarget(r, target) {
  if (r.leftovers)
    target(
      'no process left with a bench UID after the whole run',
      r.leftovers.live === 0 ? `none (${r.leftovers.zombies} zombies awaiting the host's PID 1)` : `${r.leftovers.live} live: ${r.leftovers.pids.join(' ')}`,
      r.leftovers.live === 0,
    );
}

function finish(sections, targets) {
  const targetTable = table(
    ['target', 'measured (p50 unless said)', 'met'],
    targets.map((t) => [t.name, t.measured, t.met ? 'yes' : '**no**']),
  );
  return { markdown: sections.join('\n\n'), targetTable, targets };
}

const pct = (x) => (Number.isFinite(x) ? `${x.toFixed(0)}%` : 'n/a');
const yes = (met) => (met ? 'yes' : '**no**');

/** Section 9 (issue 22): time to first byte of examples/shiny, bare, cold and warm; its targets through target(). */
function ttfbSection(t, target) {
  if (t.unavailable) return `### 9. Time to first byte of a Shiny app (issue 22)\n\nNot measured: ${t.unavailable}`;
  const rows = [
    ['bare `Rscript` on the app (no sandbox)', ms(t.bare.p50), ms(t.bare.min), ms(t.bare.max), '1x'],
    ['procyard cold (`ProcessBackend.spawn`, no pool)', ms(t.cold.p50), ms(t.cold.min), ms(t.cold.max), ratio(t.cold.p50 / t.bare.p50)],
    ['procyard warm (a pool of one, refilled between runs)', ms(t.warm.p50), ms(t.warm.min), ms(t.warm.max), ratio(t.warm.p50 / t.bare.p50)],
  ];
  const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const section =
    `### 9. Time to first byte of a Shiny app (issue 22)\n\n` +
    `examples/shiny, from the request (the spawn call, or the exec of Rscript) to the first byte of its page (GET / tried every 5 ms); ` +
    `${t.runs} runs of each, interleaved and rotated. spawn() resolved in ${ms(t.warmSpawn.p50)} warm against ${ms(t.coldSpawn.p50)} cold (p50). ` +
    `A waiting warm sandbox holds ${t.warmHeldBytes ? mib(t.warmHeldBytes) : 'n/a'} (RSS of its tree). ` +
    `Filling a pool of ${t.refill.sandboxes} took ${ms(t.refill.fillMs)}; the event loop's max delay meanwhile was ${ms(t.refill.loopMaxMs)} (idle: ${ms(t.refill.idleMaxMs)}).\n\n` +
    table(['path', 'first byte p50', 'min', 'max', 'vs bare'], rows);
  target('warm first byte p50 <= 0.15x bare Rscript', `${ms(t.warm.p50)} vs ${ms(t.bare.p50)} = ${ratio(t.warm.p50 / t.bare.p50)}`, t.warm.p50 <= 0.15 * t.bare.p50);
  target('cold first byte p50 within 1.1x of bare Rscript', `${ms(t.cold.p50)} vs ${ms(t.bare.p50)} = ${ratio(t.cold.p50 / t.bare.p50)}`, t.cold.p50 <= 1.1 * t.bare.p50);
  target('warm spawn() p50 within 2x of cold spawn()', `${ms(t.warmSpawn.p50)} vs ${ms(t.coldSpawn.p50)} = ${ratio(t.warmSpawn.p50 / t.coldSpawn.p50)}`, t.warmSpawn.p50 <= 2 * t.coldSpawn.p50);
  target(
    `event-loop max during a refill of ${t.refill.sandboxes} within idle + 5 ms`,
    `${ms(t.refill.loopMaxMs)} vs ${ms(t.refill.idleMaxMs)} + 5 ms`,
    t.refill.loopMaxMs <= t.refill.idleMaxMs + 5,
  );
  return section;
}

/** Section 8 (issue 20): its two tables, and its targets added through target(). */
function hostileSection(h, target) {
  const { flood: f, timeWait: tw, targets: goal } = h;
  const floodRows = [
    ['server CPU, every thread (% of one core)', pct(f.alone.cpuPercent), pct(f.flood.cpuPercent), ratio(f.flood.cpuPercent / f.alone.cpuPercent), `<= ${goal.cpuPercent}%`, f.flood.cpuPercent <= goal.cpuPercent],
    ['event-loop delay p99', ms(f.alone.eldP99Ms), ms(f.flood.eldP99Ms), ratio(f.flood.eldP99Ms / f.alone.eldP99Ms), `<= ${goal.eldP99Ms} ms`, f.flood.eldP99Ms <= goal.eldP99Ms],
    ["neighbour's healthCheck p50", ms(f.alone.health.p50), ms(f.flood.health.p50), ratio(f.flood.health.p50 / f.alone.health.p50), `<= ${goal.floodHealthMs} ms`, f.flood.health.p50 <= goal.floodHealthMs],
  ];
  const readyMet = tw.readyLag.max <= goal.readyLagMs;
  const twRows = [
    ["a live worker's healthCheck p50", ms(tw.health.p50), `one read + scan of /proc/net/tcp + tcp6: ${ms(tw.procScan.p50)}`, ratio(tw.procScan.p50 / tw.health.p50), `<= ${goal.twHealthMs} ms`, tw.health.p50 <= goal.twHealthMs],
    ['waitReady resolved after the first accepted connect, p50 / max', `${ms(tw.readyLag.p50)} / ${ms(tw.readyLag.max)}`, 'the first accepted connect (1 ms polls): 0', '', `<= ${goal.readyLagMs} ms (max)`, readyMet],
  ];
  target(`log flood: server CPU <= ${goal.cpuPercent}% of one core`, `${pct(f.flood.cpuPercent)} (alone ${pct(f.alone.cpuPercent)})`, floodRows[0][5]);
  target(`log flood: event-loop delay p99 <= ${goal.eldP99Ms} ms`, `${ms(f.flood.eldP99Ms)} (alone ${ms(f.alone.eldP99Ms)})`, floodRows[1][5]);
  target(`log flood: neighbour's healthCheck p50 <= ${goal.floodHealthMs} ms`, `${ms(f.flood.health.p50)} (alone ${ms(f.alone.health.p50)})`, floodRows[2][5]);
  target(`${tw.timeWaitAtScan} TIME_WAIT sockets: healthCheck p50 <= ${goal.twHealthMs} ms`, `${ms(tw.health.p50)} vs /proc/net/tcp* read ${ms(tw.procScan.p50)}`, twRows[0][5]);
  target(
    `${tw.timeWaitAtScan} TIME_WAIT sockets: waitReady within ${goal.readyLagMs} ms of the first accepted connect`,
    `p50 ${ms(tw.readyLag.p50)}, max ${ms(tw.readyLag.max)} (${tw.readyLag.n} runs)`,
    readyMet,
  );
  return (
    `### 8. Hostile tenant (issue 20)\n\n` +
    `**Log flood.** A worker at cpuLimit ${f.floodCpus} runs \`yes ''\` (it got ${pct(f.floodWorkerCpuPercent)} of a CPU); a quiet neighbour (the minimal node server) is health-checked ` +
    `one call at a time, every 20 ms, for ${(f.windowMs / 1000).toFixed(0)} s. Peer: the same window with the neighbour alone, just before. ` +
    `Server CPU counts every thread of the bench process (process.cpuUsage over wall time). ` +
    `Loop delay max: ${ms(f.alone.eldMaxMs)} alone, ${ms(f.flood.eldMaxMs)} flooded; unhealthy answers: ${f.alone.unhealthy} / ${f.flood.unhealthy} of ${f.alone.health.n} / ${f.flood.health.n}.\n\n` +
    table(['log flood', 'neighbour alone (peer)', "with the `yes ''` flood", 'flood / alone', 'target', 'met'], floodRows.map((row) => [...row.slice(0, 5), yes(row[5])])) +
    `\n\n**TIME_WAIT bloat.** ${tw.made} connections made and closed client-first on loopback in ${ms(tw.makeMs)} (${tw.requested} asked, ${tw.failed} failed); ` +
    `TIME_WAIT on the host: ${tw.timeWaitBefore} before, ${tw.timeWaitAtScan} when measured, ${tw.timeWaitAtEnd} at the end; /proc/net/tcp* then held ${(tw.procBytes / 2 ** 20).toFixed(1)} MB. ` +
    `healthCheck: ${tw.health.n} calls, one at a time (${tw.unhealthy} unhealthy); the peer read ${tw.procScan.n} times. ` +
    `waitReady: ${tw.readyLag.n} workers whose app listens ${tw.listenDelayMs.join('-')} ms (spread over the runs) after node starts, polled with a connect every 1 ms from the bench (spawn to first accept p50 ${ms(tw.spawnToAccept.p50)}).\n\n` +
    table(['TIME_WAIT bloat', 'procyard', 'peer', 'peer / procyard', 'target', 'met'], twRows.map((row) => [...row.slice(0, 5), yes(row[5])]))
  );
}

export function machineMarkdown(m) {
  return table(
    ['cores', 'CPU', 'memory', 'kernel', 'Node', 'bwrap', 'load average (start / end)'],
    [[String(m.cores), m.cpu, `${m.memoryGb} GB`, m.kernel, m.node, m.bwrap, `${m.loadStart} / ${m.loadEnd}`]],
  );
}
