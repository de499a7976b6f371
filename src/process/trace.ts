// Where a spawn's time goes, for diagnostics (bench/breakdown.js): each step's
// timestamp on the diagnostics_channel 'procyard:spawn', published only
// while something subscribes (otherwise one property check per step).
import diagnosticsChannel from 'node:diagnostics_channel';

/** One step of one spawn: `at` is performance.now() when the step ended. */
export interface SpawnStepMessage {
  workerId: string;
  step: string;
  at: number;
  /** On the 'registered' step: whether a warm sandbox served the spawn (SPEC §12). */
  warm?: boolean;
}

/** The channel's name, for subscribers. */
export const SPAWN_CHANNEL = 'procyard:spawn';
const channel = diagnosticsChannel.channel(SPAWN_CHANNEL);

export function spawnStep(workerId: string | undefined, step: string, warm?: boolean): void {
  if (workerId !== undefined && channel.hasSubscribers)
    channel.publish({ workerId, step, at: performance.now(), ...(warm === undefined ? {} : { warm }) } satisfies SpawnStepMessage);
}
