// A TypeScript consumer of the published types (dist/index.d.ts through the
// package's `exports`). test/types.test.ts compiles it with tsc --noEmit:
// every `@ts-expect-error` line must be an error, and nothing else.
import {
  ConfigError,
  NotSupportedError,
  ProcessBackend,
  RedisUnreachableError,
  SpecError,
  WorkerNotFoundError,
  WorkerNotReadyError,
  type WorkerExitEvent,
} from 'procyard';

export async function consumer(): Promise<void> {
  const be = new ProcessBackend({ process: { portRangeStart: 20000 } });

  be.on('exit', (e) => {
    const id: string = e.workerId;
    const code: number | null = e.code;
    const signal: string | null = e.signal;
    const oom: boolean = e.oomKilled;
    void [id, code, signal, oom];
  });
  be.once('exit', (e: WorkerExitEvent) => void e.workerId);
  be.off('exit', () => {});
  be.prependListener('exit', (e) => void e.code);

  // @ts-expect-error: there is no 'exited' event
  be.on('exited', () => {});
  // @ts-expect-error: the event has no field wrkerId
  be.on('exit', (e) => e.wrkerId);
  // @ts-expect-error: the listener gets a WorkerExitEvent, not a string
  be.on('exit', (e: string) => e);
  // @ts-expect-error: an exit event needs all its fields
  be.emit('exit', { workerId: 'w' });

  await be.waitReady('w', { timeoutMs: 1000, signal: AbortSignal.timeout(1000) });
  // @ts-expect-error: the option is timeoutMs
  await be.waitReady('w', { timeout: 1000 });

  // Every error class a caller may test for is exported from the root.
  const classes = [SpecError, WorkerNotFoundError, WorkerNotReadyError, ConfigError, NotSupportedError, RedisUnreachableError];
  for (const C of classes) void (new Error() instanceof C);
  try {
    await be.addr('w');
  } catch (err) {
    if (err instanceof WorkerNotFoundError) void err.workerId;
  }
}
