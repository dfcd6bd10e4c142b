// Overload of a served process: `multiple` × its admission capacity (running + queued, as the process printed
// them) Generate calls at once. The excess must be refused at once with RESOURCE_EXHAUSTED, every accepted call
// must complete with its image, and the process's memory stays bounded; the figures are what bench/overload.ts
// prints and test/integration/overload.test.ts checks.
import * as grpc from '@grpc/grpc-js';
import type { GenerateRequest } from '../../services/common/gen/sana/v1/generation.ts';
import { callGenerate, type GenerateOutcome } from '../helpers/grpc.ts';
import type { ServedProcess } from '../helpers/serve-process.ts';

/** A small normal request: what a busy server is asked for many times over. */
export const OVERLOAD_REQUEST: Partial<GenerateRequest> = { prompt: ['a lighthouse in a storm'], seed: 5n, numInferenceSteps: 2, width: 128, height: 128, useResolutionBinning: false };

export interface OverloadFigures {
  calls: number;
  /** running + queued at the gateway, from the served configuration */
  capacity: number;
  /** the status name → calls that ended with it */
  codes: Record<string, number>;
  /** accepted calls that completed with one image each */
  completed: number;
  /** seconds to the answer: accepted calls, refused calls */
  acceptedSeconds: number[];
  refusedSeconds: number[];
  /** a refusal's message (they all name the limits) */
  refusal?: string;
  rss: { before: number; peak: number; after: number };
  /** seconds from the first call to the last answer */
  wallSeconds: number;
}

/** Fires the calls together and waits for every answer, sampling the process's memory meanwhile. */
export async function overload(target: ServedProcess, multiple: number, request: Partial<GenerateRequest> = OVERLOAD_REQUEST): Promise<OverloadFigures> {
  const capacity = target.limits.maxInFlight + target.limits.maxQueue;
  const calls = multiple * capacity;
  const before = target.rssBytes();
  let peak = before;
  const sampler = setInterval(() => (peak = Math.max(peak, target.rssBytes())), 50);
  const started = performance.now();
  let outcomes: GenerateOutcome[];
  try {
    outcomes = await Promise.all(Array.from({ length: calls }, () => callGenerate(target.gateway, request, { deadline: Date.now() + 600_000 })));
  } finally {
    clearInterval(sampler);
  }
  const wallSeconds = (performance.now() - started) / 1000;
  const codes: Record<string, number> = {};
  for (const o of outcomes) codes[grpc.status[o.code]] = (codes[grpc.status[o.code]] ?? 0) + 1;
  const accepted = outcomes.filter((o) => o.code !== grpc.status.RESOURCE_EXHAUSTED);
  const refused = outcomes.filter((o) => o.code === grpc.status.RESOURCE_EXHAUSTED);
  return {
    calls,
    capacity,
    codes,
    completed: accepted.filter((o) => o.code === grpc.status.OK && o.images.length === 1).length,
    acceptedSeconds: accepted.map((o) => o.seconds),
    refusedSeconds: refused.map((o) => o.seconds),
    refusal: refused[0]?.details,
    rss: { before, peak, after: target.rssBytes() },
    wallSeconds,
  };
}
