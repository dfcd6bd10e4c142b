// `npm run bench -- batching --preset sana-600m-512 --concurrency 1,2,8 --steps 20`: the denoiser stage under
// concurrent requests, with step-level batching off and on in the same run (levels alternate off/on, so the
// shared machine's noise hits both alike). Every request is a guided 1-image request at its own seed with its own
// random caption (SANA's 300 tokens). Per row: images/s, p50/p99 latency, mean batch rows per forward, the mean
// wait before a request's first step (queue) and from there to its end (execution), and how far each batched
// result is from the unbatched one of the same request (max |a-b| / max |b|, the parity measure).
import fs from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import type { DenoiseRequest, StepEvent } from '../services/common/stages.ts';
import { type HostTensor, tensor } from '../services/common/tensor.ts';
import { torchRandn } from '../services/common/torch-randn.ts';
import { cachedRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { PRESETS } from '../services/cli/presets.ts';
import { cacheRoot } from '../services/common/compile-cache.ts';
import { LocalDenoiser } from '../services/denoiser/stage.ts';
import { median, peakRssGiB, printTable, quantile } from './util.ts';

const VAE_SCALE = 32;
const CAPTION_LENGTH = 300;

export async function run(argv: string[]): Promise<void> {
  const opts = new Command('bench batching')
    .option('--preset <name>', 'transformer preset (random weights)', 'sana-600m-512')
    .option('--res <n>', 'image resolution (square)', '512')
    .option('--concurrency <list>', 'concurrent requests, comma-separated', '1,2,8')
    .option('--requests <n>', 'requests per level (default: the concurrency)')
    .option('--steps <n>', 'num_inference_steps per request', '20')
    .option('--batch-rows <n>', 'rows per batched forward', '16')
    .option('--batch-wait-ms <n>', 'how long an idle batcher waits for company (0, the server default: the first request starts alone)', '0')
    .option('--json', 'one JSON object per row')
    .parse(argv, { from: 'user' })
    .opts<{ preset: string; res: string; concurrency: string; requests?: string; steps: string; batchRows: string; batchWaitMs: string; json?: boolean }>();
  const levels = opts.concurrency.split(',').map(Number);
  const steps = Number(opts.steps);
  const side = Number(opts.res) / VAE_SCALE;
  const modelDir = denoiserFolder(opts.preset);
  const solo = await LocalDenoiser.load(modelDir);
  const batched = await LocalDenoiser.load(modelDir, { batching: { maxRows: Number(opts.batchRows), maxWaitMs: Number(opts.batchWaitMs) } });
  const { captionChannels: d, inChannels: c } = solo.info();

  const request = (seed: number): DenoiseRequest => {
    const embeds = (s: number) => tensor(torchRandn([1, CAPTION_LENGTH, d], BigInt(s)), [1, CAPTION_LENGTH, d]);
    const mask = () => tensor(BigInt64Array.from({ length: CAPTION_LENGTH }, (_, i) => (i < 40 + (seed % 7) * 20 ? 1n : 0n)), [1, CAPTION_LENGTH]);
    return {
      promptEmbeds: embeds(seed + 100_000),
      promptMask: mask(),
      negativeEmbeds: embeds(seed + 200_000),
      negativeMask: mask(),
      latents: tensor(torchRandn([1, c, side, side], BigInt(seed)), [1, c, side, side]),
      numInferenceSteps: steps,
      guidanceScale: 4.5,
    };
  };

  const rows: Record<string, string | number>[] = [];
  const warmUp = { ...request(0), numInferenceSteps: 1 };
  try {
    await solo.denoise(warmUp);
    await batched.denoise(warmUp);
    let seed = 1;
    for (const concurrency of levels) {
      const total = opts.requests ? Number(opts.requests) : concurrency;
      const seeds = Array.from({ length: total }, () => seed++);
      const results: Record<string, HostTensor<Float32Array>[]> = {};
      for (const [mode, stage] of [['off', solo], ['on', batched]] as const) {
        const before = stage.forwardStats();
        const latencies: number[] = [];
        const queued: number[] = [];
        const outputs: HostTensor<Float32Array>[] = [];
        let next = 0;
        const started = performance.now();
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (next < total) {
              const i = next++;
              const t0 = performance.now();
              let firstStep = 0;
              // the first forward started `seconds` before the first step event
              const onStep = (e: StepEvent) => void (e.step === 0 && (firstStep = performance.now() - e.seconds * 1000));
              outputs[i] = await stage.denoise(request(seeds[i]), { onStep });
              latencies.push((performance.now() - t0) / 1000);
              queued.push((firstStep - t0) / 1000);
            }
          }),
        );
        const wall = (performance.now() - started) / 1000;
        const after = stage.forwardStats();
        results[mode] = outputs;
        const latencySum = latencies.reduce((a, b) => a + b, 0);
        const queueSum = queued.reduce((a, b) => a + b, 0);
        rows.push({
          batching: mode,
          concurrency,
          requests: total,
          images_per_s: Number((total / wall).toFixed(4)),
          p50_s: Number(median(latencies).toFixed(2)),
          p99_s: Number(quantile(latencies, 0.99).toFixed(2)),
          mean_batch_rows: Number(((after.rows - before.rows) / (after.forwards - before.forwards)).toFixed(2)),
          queue_s: Number((queueSum / total).toFixed(2)),
          exec_s: Number(((latencySum - queueSum) / total).toFixed(2)),
          max_rel_err: '',
        });
      }
      const on = rows.at(-1)!;
      const off = rows.at(-2)!;
      on.max_rel_err = Math.max(...results.on.map((r, i) => relativeError(r.data, results.off[i].data))).toExponential(2);
      if (!opts.json) {
        on.vs_off = `${((on.images_per_s as number) / (off.images_per_s as number)).toFixed(2)}x`;
        on.p99_vs_off = `${((on.p99_s as number) / (off.p99_s as number)).toFixed(2)}x`;
      }
    }
  } finally {
    await Promise.all([solo.close(), batched.close()]);
  }
  printTable(rows, Boolean(opts.json));
  if (!opts.json) {
    console.log(
      `preset ${opts.preset}, ${opts.res} px, ${steps} steps, guided (2 rows per image), caption ${CAPTION_LENGTH} tokens; batch ≤ ${opts.batchRows} rows, max wait ${opts.batchWaitMs} ms. ` +
        'queue_s = mean wait before a request\'s first forward, exec_s = mean from there to its end; max_rel_err = batched vs unbatched ' +
        `result of the same request (max |a-b| / max |b|). peak RSS ${peakRssGiB().toFixed(2)} GiB`,
    );
  }
}

/**
 * A folder with the preset's transformer and a scheduler: the preset's own, else SANA's (transformer-only
 * presets have none), beside a link to the cached transformer.
 */
function denoiserFolder(preset: string): string {
  const checkpoint = cachedRandomCheckpoint(preset);
  if (fs.existsSync(path.join(checkpoint, 'scheduler'))) return checkpoint;
  const dir = path.join(cacheRoot(), 'bench', `denoiser-${preset}`);
  fs.mkdirSync(path.join(dir, 'scheduler'), { recursive: true });
  fs.writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(PRESETS['sana-600m-512-full'].scheduler));
  if (!fs.existsSync(path.join(dir, 'transformer'))) fs.symlinkSync(path.join(checkpoint, 'transformer'), path.join(dir, 'transformer'));
  return dir;
}

function relativeError(a: Float32Array, b: Float32Array): number {
  let err = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    err = Math.max(err, Math.abs(a[i] - b[i]));
    scale = Math.max(scale, Math.abs(b[i]));
  }
  return err / scale;
}
