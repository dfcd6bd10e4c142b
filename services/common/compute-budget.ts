// The compute budget of each stage in a serving process: how many ONNX Runtime threads its session gets and how
// many requests it admits at once. Defaults follow from the machine and the stage's execution capacity; every
// value can be set from the command line / environment.
//
// `sana serve all` shares one machine between three sessions. The denoiser runs 20-odd forwards per image and is
// the bottleneck, so it keeps every core; the text encoder (one forward per request) and the decoder (one per
// image) get half the cores each. Sessions never spin: an idle pool sleeps instead of busy-waiting, so when two
// stages work at once (pipelining across requests) they share the cores instead of burning them on spin loops.
//
// Admission follows execution capacity: a session runs one forward at a time, so a stage admits its running
// request plus one whose input is arriving (2); the batching denoiser admits as many requests as one batch
// holds (max rows / 2: a guided image takes two rows). The gateway of `serve all` admits the sum of its stages,
// enough to keep every stage busy; beyond that requests wait in the gateway's queue, not inside a stage.
import os from 'node:os';

export type StageName = 'text-encoder' | 'denoiser' | 'decoder';

export interface BudgetSettings {
  /** every session's threads when set (the old single knob) */
  threads?: number;
  /** per-stage threads, overriding `threads` */
  stageThreads?: Partial<Record<StageName, number>>;
  /** requests handled at once per service, overriding the capacity-derived default */
  maxInFlight?: number;
  /** the denoiser's batch bound in rows; 0: step-level batching off */
  batchRows: number;
}

export interface StageBudget {
  intraOpThreads: number;
  maxInFlight: number;
}

/** Requests the gateway of a gateway-only process admits when not told: it cannot see its remote stages. */
export const GATEWAY_DEFAULT_IN_FLIGHT = 4;

/** Threads a stage's session gets: the per-stage setting, else the shared one, else the split above. */
export function stageThreads(stage: StageName, settings: BudgetSettings, allInOne: boolean, cores = os.availableParallelism()): number {
  const explicit = settings.stageThreads?.[stage] ?? settings.threads;
  if (explicit !== undefined) return explicit;
  if (!allInOne || stage === 'denoiser') return cores;
  return Math.max(1, Math.floor(cores / 2));
}

/** Requests a stage can execute at once (see the header). */
export function stageCapacity(stage: StageName, batchRows: number): number {
  if (stage === 'denoiser' && batchRows > 0) return Math.max(1, Math.floor(batchRows / 2));
  return 2;
}

export function stageBudget(stage: StageName, settings: BudgetSettings, allInOne: boolean, cores = os.availableParallelism()): StageBudget {
  return {
    intraOpThreads: stageThreads(stage, settings, allInOne, cores),
    maxInFlight: settings.maxInFlight ?? stageCapacity(stage, settings.batchRows),
  };
}

/** The gateway's in-flight limit: the sum of its stages' capacities in `serve all`, else the fixed default. */
export function gatewayInFlight(settings: BudgetSettings, allInOne: boolean): number {
  if (settings.maxInFlight !== undefined) return settings.maxInFlight;
  if (!allInOne) return GATEWAY_DEFAULT_IN_FLIGHT;
  return (['text-encoder', 'denoiser', 'decoder'] as const).reduce((n, s) => n + stageCapacity(s, settings.batchRows), 0);
}
