// A stage service is reachable (health answers NOT_SERVING) while its model loads; the slot holds the model once it
// is loaded and warmed up, and calls that arrive before then get UNAVAILABLE instead of waiting.
import type { ServiceHost } from './grpc-server.ts';
import { Status, StatusError } from './grpc-status.ts';

export class StageSlot<S> {
  private stage: S | undefined;

  constructor(private readonly what: string) {}

  get(): S {
    if (!this.stage) throw new StatusError(Status.UNAVAILABLE, `the ${this.what} is still loading its model; retry when health reports SERVING`);
    return this.stage;
  }

  get loaded(): boolean {
    return this.stage !== undefined;
  }

  set(stage: S): void {
    this.stage = stage;
  }
}

/**
 * Loads the model, runs the warm-up request, then fills the slot and reports SERVING; records both durations
 * in the metrics and the log.
 */
export async function bringUp<S>(host: ServiceHost, slot: StageSlot<S>, load: () => Promise<S>, warmUp: (stage: S) => Promise<void>): Promise<S> {
  const service = host.options.name;
  const loadStart = performance.now();
  const stage = await load();
  const loadSeconds = (performance.now() - loadStart) / 1000;
  host.metrics.modelLoadSeconds.set({ service }, loadSeconds);
  const warmStart = performance.now();
  await warmUp(stage);
  const warmupSeconds = (performance.now() - warmStart) / 1000;
  host.metrics.warmupSeconds.set({ service }, warmupSeconds);
  slot.set(stage);
  host.setServing(true);
  host.log.info({ loadSeconds: Number(loadSeconds.toFixed(3)), warmupSeconds: Number(warmupSeconds.toFixed(3)) }, 'model loaded and warmed up; serving');
  return stage;
}
