// `sana serve all` with step-level batching and the capacity-derived compute budget, on the tiny checkpoint:
// concurrent Generate calls share denoiser forwards yet each gets the in-process pipeline's exact image, and the
// summary and the metrics split every stage's time into queue wait and execution; a large image streams its
// finished tiles before its chunks.
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type Serving } from '../../services/cli/serve.ts';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import type { GenerateRequest, GenerateSummary } from '../../services/common/gen/sana/v1/generation.ts';
import { createRegistry } from '../../services/common/metrics.ts';
import { loadLocalStages, type LocalStages } from '../../services/cli/local-stages.ts';
import { generate } from '../../services/common/pipeline.ts';
import { callGenerate } from '../helpers/grpc.ts';
import { tempDir } from '../helpers/tmp.ts';
import { loopbackServeConfig } from '../helpers/serve-config.ts';

const registry = createRegistry();
let serving: Serving;
let local: LocalStages;

async function metricValue(name: string, labels: Record<string, string>): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return 0;
  const { values } = await metric.get();
  return values.filter((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val)).reduce((n, v) => n + v.value, 0);
}

beforeAll(async () => {
  const modelDir = tempDir('serve-batching');
  writeRandomCheckpoint('tiny', modelDir);
  serving = await startServe(loopbackServeConfig(modelDir, { maxQueue: 16, batchRows: 8, batchWaitMs: 100 }), { registry, logger: pino({ level: 'warn' }) });
  await serving.ready;
  local = await loadLocalStages(modelDir);
});

afterAll(async () => {
  await serving?.close();
  await local?.close();
});

describe('sana serve all with step-level batching', () => {
  it('admits by execution capacity: 2 per single-session stage, a batch of guided images for the denoiser, their sum at the gateway', () => {
    const limits = Object.fromEntries(serving.hosts.map((h) => [h.options.name, h.options.admission.maxInFlight]));
    expect(limits).toEqual({ gateway: 2 + 4 + 2, 'text-encoder': 2, denoiser: 4, decoder: 2 });
  });

  it('concurrent requests share forwards, each gets its exact image, and queue wait is reported apart from execution', async () => {
    // the counters catch up with the denoiser's totals (its warm-up forward included) at each served step
    expect((await callGenerate(serving.address, { prompt: ['warm-up'], seed: 9n, numInferenceSteps: 1 })).code).toBe(grpc.status.OK);
    const forwardsBefore = await metricValue('sana_denoiser_forwards_total', { service: 'denoiser' });
    const rowsBefore = await metricValue('sana_denoiser_forward_rows_total', { service: 'denoiser' });
    const requests: Partial<GenerateRequest>[] = [
      { prompt: ['a lighthouse at dusk'], seed: 1n, numInferenceSteps: 5 },
      { prompt: ['a fox in the snow'], seed: 2n, numInferenceSteps: 3, guidanceScale: 2 },
      { prompt: ['a bowl of ramen'], seed: 3n, numInferenceSteps: 4, guidanceScale: 1 },
      { prompt: ['a sailing ship'], seed: 4n, numInferenceSteps: 5 },
    ];
    const served = await Promise.all(requests.map((r) => callGenerate(serving.address, r)));
    for (const [i, r] of requests.entries()) {
      expect(served[i].code, served[i].details).toBe(grpc.status.OK);
      const reference = await generate(local, { prompt: r.prompt![0], seed: r.seed, numInferenceSteps: r.numInferenceSteps, guidanceScale: r.guidanceScale });
      expect(Buffer.from(served[i].images[0].bytes).equals(Buffer.from(reference.images[0].bytes))).toBe(true);
    }
    const forwards = (await metricValue('sana_denoiser_forwards_total', { service: 'denoiser' })) - forwardsBefore;
    const rows = (await metricValue('sana_denoiser_forward_rows_total', { service: 'denoiser' })) - rowsBefore;
    expect(rows).toBe(2 * 5 + 2 * 3 + 4 + 2 * 5);
    expect(forwards).toBeLessThan(5 + 3 + 4 + 5); // some forwards carried several requests

    const summaries = served.map((s) => {
      const last = s.events.at(-1)?.event;
      return (last?.$case === 'summary' ? last.value : undefined) as GenerateSummary;
    });
    for (const { timings: t } of summaries) {
      expect(t!.encodeQueuedSeconds).toBeGreaterThanOrEqual(0);
      expect(t!.encodeQueuedSeconds).toBeLessThanOrEqual(t!.encodeSeconds);
      expect(t!.denoiseQueuedSeconds).toBeLessThanOrEqual(t!.denoiseSeconds);
      expect(t!.decodeQueuedSeconds).toBeLessThanOrEqual(t!.decodeSeconds);
    }
    // four requests (eight encode calls with the negative prompts) at a text encoder that admits two: some waited
    expect(Math.max(...summaries.map((s) => s.timings!.encodeQueuedSeconds))).toBeGreaterThan(0);
    for (const service of ['text-encoder', 'denoiser', 'decoder', 'gateway']) {
      expect(await metricValue('sana_execution_seconds', { service })).toBeGreaterThan(0);
    }
  });

  it('streams the finished tiles of a large image before its chunks; together they are the final image', async () => {
    const request: Partial<GenerateRequest> = { prompt: ['a wide panorama'], seed: 5n, numInferenceSteps: 1, width: 1536, height: 512, useResolutionBinning: false, streamTiles: true };
    const served = await callGenerate(serving.address, request);
    expect(served.code, served.details).toBe(grpc.status.OK);
    const kinds = served.events.map((e) => e.event!.$case);
    const tiles = served.events.flatMap((e) => (e.event?.$case === 'tile' ? [e.event.value] : []));
    expect(tiles.length).toBeGreaterThan(1); // 1024 px tiles every 896 px: two columns, in row bands
    expect(kinds.indexOf('tile')).toBeLessThan(kinds.indexOf('image'));
    expect(kinds.lastIndexOf('tile')).toBeLessThan(kinds.indexOf('image'));
    const final = await sharp(served.images[0].bytes).raw().toBuffer();
    const canvas = Buffer.alloc(final.length);
    for (const t of tiles) {
      expect([t.imageWidth, t.imageHeight]).toEqual([1536, 512]);
      for (let y = 0; y < t.height; y++) t.pixels.copy(canvas, ((t.top + y) * 1536 + t.left) * 3, y * t.width * 3, (y + 1) * t.width * 3);
    }
    expect(canvas.equals(final)).toBe(true);
  });
});
