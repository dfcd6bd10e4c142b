// Step-level continuous batching on a tiny pipeline: every request of a mixed batch (guided and unguided, other
// scales, other step counts, several images) gives what it gives alone, requests join and leave at step
// boundaries, a cancelled one leaves the others untouched, and batches stay within their row bound. Caption padding
// that no row attends is dropped without changing the prediction.
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CancelledError } from '../../services/common/errors.ts';
import type { DenoiseContext, DenoiseRequest, StepEvent } from '../../services/common/stages.ts';
import { type HostTensor, tensor } from '../../services/common/tensor.ts';
import { torchRandn } from '../../services/common/torch-randn.ts';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { LocalDenoiser } from '../../services/denoiser/stage.ts';
import { CAPTION_LENGTH_STEP, dropCaptionPadding } from '../../services/denoiser/step-batcher.ts';
import { LinearDit } from '../../services/denoiser/linear-dit.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('step-batcher');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');
const modelDir = path.join(root, 'tiny');

let solo: LocalDenoiser;
const batchers: LocalDenoiser[] = [];
async function batching(maxRows: number, maxWaitMs = 0): Promise<LocalDenoiser> {
  const d = await LocalDenoiser.load(modelDir, { batching: { maxRows, maxWaitMs } });
  batchers.push(d);
  return d;
}

beforeAll(async () => {
  writeRandomCheckpoint('tiny', modelDir, { seed: 3 });
  solo = await LocalDenoiser.load(modelDir);
});
afterAll(async () => {
  await Promise.all([solo?.close(), ...batchers.map((b) => b.close())]);
});

interface Spec {
  seed: number;
  images?: number;
  steps: number;
  guidance: number;
  side?: number;
  /** attended caption tokens of each row (the rest is padding) */
  attended?: number;
}

const CAPTION_LENGTH = 12;

function request(s: Spec): DenoiseRequest {
  const { captionChannels, inChannels, sampleSize } = solo.info();
  const b = s.images ?? 1;
  const side = s.side ?? sampleSize;
  const embeds = (seed: number) => tensor(torchRandn([b, CAPTION_LENGTH, captionChannels], BigInt(seed)), [b, CAPTION_LENGTH, captionChannels]);
  const attended = s.attended ?? CAPTION_LENGTH;
  const mask = () => tensor(BigInt64Array.from({ length: b * CAPTION_LENGTH }, (_, i) => (i % CAPTION_LENGTH < attended ? 1n : 0n)), [b, CAPTION_LENGTH]);
  const guided = s.guidance > 1;
  return {
    promptEmbeds: embeds(s.seed + 1000),
    promptMask: mask(),
    negativeEmbeds: guided ? embeds(s.seed + 2000) : undefined,
    negativeMask: guided ? mask() : undefined,
    latents: tensor(torchRandn([b, inChannels, side, side], BigInt(s.seed)), [b, inChannels, side, side]),
    numInferenceSteps: s.steps,
    guidanceScale: s.guidance,
  };
}

/** max |a − b| / max |b|, the parity measure */
function relErr(a: HostTensor<Float32Array>, b: HostTensor<Float32Array>): number {
  expect(a.dims).toEqual(b.dims);
  let err = 0;
  let scale = 0;
  for (let i = 0; i < b.data.length; i++) {
    err = Math.max(err, Math.abs(a.data[i] - b.data[i]));
    scale = Math.max(scale, Math.abs(b.data[i]));
  }
  return err / scale;
}

const MIXED: Spec[] = [
  { seed: 1, steps: 6, guidance: 4.5 },
  { seed: 2, steps: 6, guidance: 1, attended: 5 },
  { seed: 3, steps: 4, guidance: 2, attended: 9 },
  { seed: 4, steps: 7, guidance: 4.5, images: 2, attended: 3 },
  { seed: 5, steps: 5, guidance: 3, side: 8 }, // another latent size: shares no forward with the others
];

describe('step-level continuous batching', () => {
  test('every request of a mixed batch equals its solo run (parity tolerance); shapes group, rows stay bounded', async () => {
    const expected = await Promise.all(MIXED.map((s) => solo.denoise(request(s))));
    const batched = await batching(8, 50);
    const events = MIXED.map(() => [] as StepEvent[]);
    const got = await Promise.all(MIXED.map((s, i) => batched.denoise(request(s), { onStep: (e) => events[i].push(e) })));
    const errors = got.map((g, i) => relErr(g, expected[i]));
    for (const e of errors) expect(e).toBeLessThanOrEqual(1e-4);
    // each request sees its own steps, in order
    MIXED.forEach((s, i) => expect(events[i].map((e) => [e.step, e.total])).toEqual(Array.from({ length: s.steps }, (_, k) => [k, s.steps])));
    const stats = batched.forwardStats();
    // rows: 2 + 1 + 2 + 4 for the 16×16 latents (9 > 8, so one of them waits a forward), 2 for the 8×8 one
    expect(stats.largest).toBeLessThanOrEqual(8);
    expect(stats.rows).toBe(2 * 6 + 6 + 2 * 4 + 4 * 7 + 2 * 5);
    expect(stats.forwards).toBeLessThan(6 + 6 + 4 + 7 + 5);
    expect(stats.forwards).toBeGreaterThanOrEqual(7 + 5); // the longest request at each shape, at least
  });

  test('a request joins a running batch at a step boundary and leaves when done', async () => {
    const first: Spec = { seed: 11, steps: 6, guidance: 4.5 };
    const late: Spec = { seed: 12, steps: 3, guidance: 1 };
    const [soloFirst, soloLate] = await Promise.all([solo.denoise(request(first)), solo.denoise(request(late))]);
    const batched = await batching(16);
    let lateRun: Promise<HostTensor<Float32Array>> | undefined;
    const order: string[] = [];
    const firstRun = batched.denoise(request(first), {
      onStep: (e) => {
        order.push(`first ${e.step}`);
        // submitted while the batch runs: it takes part from the next forward on
        if (e.step === 1) lateRun = batched.denoise(request(late), { onStep: (l) => order.push(`late ${l.step}`) });
      },
    });
    const a = await firstRun;
    const b = await lateRun!;
    expect(relErr(a, soloFirst)).toBeLessThanOrEqual(1e-4);
    expect(relErr(b, soloLate)).toBeLessThanOrEqual(1e-4);
    // the 3rd to 5th forwards carry both requests, each at its own step (the newcomer first); then the late one is gone
    expect(order).toEqual(['first 0', 'first 1', 'late 0', 'first 2', 'first 3', 'late 1', 'first 4', 'late 2', 'first 5']);
    expect(batched.forwardStats()).toEqual({ forwards: 6, rows: 6 * 2 + 3, largest: 3 });
  });

  test('cancelling one request removes it at once and leaves the others exact', async () => {
    const specs: Spec[] = [
      { seed: 21, steps: 5, guidance: 4.5 },
      { seed: 22, steps: 5, guidance: 4.5 },
      { seed: 23, steps: 5, guidance: 1 },
    ];
    const expected = await Promise.all([solo.denoise(request(specs[0])), solo.denoise(request(specs[2]))]);
    const batched = await batching(16, 20);
    const abort = new AbortController();
    const victimSteps: number[] = [];
    const ctx = (i: number): DenoiseContext =>
      i === 1
        ? {
            signal: abort.signal,
            onStep: (e) => {
              victimSteps.push(e.step);
              if (e.step === 1) abort.abort();
            },
          }
        : {};
    const runs = specs.map((s, i) => batched.denoise(request(s), ctx(i)));
    await expect(runs[1]).rejects.toThrow(CancelledError);
    await expect(runs[1]).rejects.toThrow('before step 3 of 5');
    const [a, , c] = await Promise.all([runs[0], runs[1].catch(() => undefined), runs[2]]);
    expect(relErr(a!, expected[0])).toBeLessThanOrEqual(1e-4);
    expect(relErr(c!, expected[1])).toBeLessThanOrEqual(1e-4);
    expect(victimSteps).toEqual([0, 1]);
    // 5 forwards; the cancelled request's rows were in the first two only
    expect(batched.forwardStats()).toEqual({ forwards: 5, rows: 5 * 3 + 2 * 2, largest: 5 });
  });

  test('an idle batcher waits up to max-wait for company before its first forward', async () => {
    const batched = await batching(16, 300);
    const specs: Spec[] = [
      { seed: 31, steps: 3, guidance: 1 },
      { seed: 32, steps: 3, guidance: 1 },
    ];
    const first = batched.denoise(request(specs[0]));
    await new Promise((r) => setTimeout(r, 50));
    const second = batched.denoise(request(specs[1]));
    await Promise.all([first, second]);
    expect(batched.forwardStats()).toEqual({ forwards: 3, rows: 6, largest: 2 });
  });

  test('a request already cancelled is refused before it joins', async () => {
    const batched = await batching(16);
    const abort = new AbortController();
    abort.abort();
    await expect(batched.denoise(request({ seed: 41, steps: 2, guidance: 1 }), { signal: abort.signal })).rejects.toThrow(CancelledError);
    expect(batched.forwardStats().forwards).toBe(0);
  });
});

describe('caption padding', () => {
  const channels = 4;
  const caption = (batch: number, length: number) => tensor(Float32Array.from({ length: batch * length * channels }, (_, i) => i), [batch, length, channels]);
  const mask = (attended: number[], length: number) => tensor(BigInt64Array.from({ length: attended.length * length }, (_, i) => (i % length < attended[i / length | 0] ? 1n : 0n)), [attended.length, length]);

  test('positions no row attends are dropped, to a multiple of the length step', () => {
    const kept = dropCaptionPadding(caption(2, 300), mask([1, 40], 300));
    expect(kept.caption.dims).toEqual([2, 2 * CAPTION_LENGTH_STEP, channels]);
    expect(kept.mask.dims).toEqual([2, 2 * CAPTION_LENGTH_STEP]);
    // each row keeps its own first positions
    expect(kept.caption.data[2 * CAPTION_LENGTH_STEP * channels]).toBe(300 * channels);
    expect([...kept.mask.data.subarray(0, 3)]).toEqual([1n, 0n, 0n]);
    expect(kept.mask.data.subarray(2 * CAPTION_LENGTH_STEP).filter((v) => v === 1n).length).toBe(40);
  });

  test('masks that are not right-padded, or rows that attend nothing, keep every position', () => {
    const holes = mask([300, 300], 300);
    holes.data[5] = 0n;
    for (const m of [holes, mask([0, 12], 300), mask([299, 300], 300)]) {
      const kept = dropCaptionPadding(caption(2, 300), m);
      expect(kept.caption.dims).toEqual([2, 300, channels]);
    }
  });

  test('the transformer gives the same prediction without the dropped positions', async () => {
    const { captionChannels, inChannels, sampleSize } = solo.info();
    const length = 3 * CAPTION_LENGTH_STEP + 5;
    const full = {
      hiddenStates: tensor(torchRandn([2, inChannels, sampleSize, sampleSize], 7n), [2, inChannels, sampleSize, sampleSize]),
      encoderHiddenStates: tensor(torchRandn([2, length, captionChannels], 8n), [2, length, captionChannels]),
      encoderAttentionMask: mask([3, 17], length),
      timestep: tensor(new Float32Array([500, 500]), [2]),
    };
    const kept = dropCaptionPadding(full.encoderHiddenStates, full.encoderAttentionMask);
    expect(kept.caption.dims[1]).toBe(CAPTION_LENGTH_STEP);
    const dit = await LinearDit.load(path.join(modelDir, 'transformer'));
    try {
      const reference = await dit.forward(full);
      const dropped = await dit.forward({ ...full, encoderHiddenStates: kept.caption, encoderAttentionMask: kept.mask });
      expect(relErr(dropped, reference)).toBeLessThan(1e-6); // bit-identical on the machines measured; rounding at most
    } finally {
      await dit.close();
    }
  });
});
