// `npm run bench -- denoiser --preset sana-600m-1024 --res 512,1024,2048 --batch 2 [--precision int8]`: seconds per
// transformer forward at real shapes (random weights), analytic FLOPs, achieved GFLOP/s and the ratio to this
// machine's fp32 MatMul peak measured in the same run; int8 rows come beside the fp32 rows of the same run.
// Every forward has the same caption, so after the warm-up each one is a denoising step that reuses the caption's
// cross-attention K/V (as a request's steps do): the FLOPs count a step's work, without the caption MLP and K/V.
import path from 'node:path';
import { Command } from 'commander';
import { ditStepFlops, LinearDit } from '../services/denoiser/linear-dit.ts';
import { tensor } from '../services/common/tensor.ts';
import { cachedRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { benchPrecisions, measureMatmulPeakGflops, median, peakRssGiB, printTable, timeInterleaved } from './util.ts';

const VAE_SCALE = 32; // DC-AE F32C32: one latent pixel per 32×32 image pixels
const CAPTION_LENGTH = 300; // SANA's max_sequence_length

export async function run(argv: string[]): Promise<void> {
  const opts = new Command('bench denoiser')
    .option('--preset <name>', 'transformer preset', 'sana-600m-1024')
    .option('--res <list>', 'image resolutions (square), comma-separated', '512,1024,2048')
    .option('--batch <n>', 'batch rows per forward (2 = one image with CFG)', '2')
    .option('--repeats <n>', 'timed forwards per resolution and precision (after one warm-up), the precisions in turn', '5')
    .option('--precision <list>', 'fp32 | int8, comma-separated (int8 comes with fp32 rows)', 'fp32')
    .option('--smooth <alpha>', 'int8 SmoothQuant α (off when absent)')
    .option('--outliers <ratio>', 'int8: split input channels above ratio × the median channel max out to fp32 (off when absent)')
    .option('--activations <g>', 'int8 activation scales: per-tensor | per-token')
    .option('--json', 'one JSON object per row')
    .parse(argv, { from: 'user' })
    .opts<{ preset: string; res: string; batch: string; repeats: string; precision: string; smooth?: string; outliers?: string; activations?: 'per-tensor' | 'per-token'; json?: boolean }>();
  const batch = Number(opts.batch);
  const resolutions = opts.res.split(',').map(Number);
  const precisions = benchPrecisions(opts.precision);
  const int8 = {
    ...(opts.smooth !== undefined && { smoothAlpha: Number(opts.smooth) }),
    ...(opts.outliers !== undefined && { outlierRatio: Number(opts.outliers) }),
    ...(opts.activations && { activations: opts.activations }),
  };

  const dir = path.join(cachedRandomCheckpoint(opts.preset), 'transformer');
  const models: LinearDit[] = [];
  for (const precision of precisions) models.push(await LinearDit.load(dir, { precision, int8 }));
  const c = models[0]!.config;
  const peak = await measureMatmulPeakGflops();
  const rows: Record<string, string | number>[] = [];
  for (const res of resolutions) {
    const h = res / VAE_SCALE;
    const fill = (n: number, v: (i: number) => number) => Float32Array.from({ length: n }, (_, i) => v(i));
    const inputs = {
      hiddenStates: tensor(fill(batch * c.in_channels * h * h, (i) => Math.sin(i)), [batch, c.in_channels, h, h]),
      encoderHiddenStates: tensor(fill(batch * CAPTION_LENGTH * c.caption_channels, (i) => Math.cos(i)), [batch, CAPTION_LENGTH, c.caption_channels]),
      encoderAttentionMask: tensor(new BigInt64Array(batch * CAPTION_LENGTH).fill(1n), [batch, CAPTION_LENGTH]),
      timestep: tensor(new Float32Array(batch).fill(500), [batch]),
    };
    // the precisions take turns, so their ratio compares runs under the same load
    const runs = await timeInterleaved(models.map((dit) => () => dit.forward(inputs)), Number(opts.repeats));
    for (const [i, dit] of models.entries()) {
      const seconds = median(runs[i]!);
      const gflop = ditStepFlops(c, batch, h, h, CAPTION_LENGTH) / 1e9;
      const fp32Row = rows.find((r) => r.res === res && r.precision === 'fp32');
      rows.push({
        stage: 'denoiser',
        preset: opts.preset,
        precision: dit.precision,
        res,
        batch,
        tokens: batch * h * h,
        median_s: Number(seconds.toFixed(3)),
        gflop: Number(gflop.toFixed(1)),
        gflops: Number((gflop / seconds).toFixed(1)),
        peak_gflops: Number(peak.toFixed(1)),
        of_peak: `${((100 * gflop) / seconds / peak).toFixed(1)}%`,
        vs_fp32: fp32Row ? Number(((fp32Row.median_s as number) / seconds).toFixed(2)) : '',
      });
    }
  }
  for (const dit of models) await dit.close();
  if (opts.json) {
    for (const r of rows) {
      delete r.tokens;
      delete r.of_peak;
    }
  } else {
    // growth against the previous resolution's row of the same precision: ×4 tokens should cost about ×4 time
    rows.forEach((r, i) => {
      const before = rows.slice(0, i).reverse().find((b) => b.precision === r.precision);
      r.tokens_x = before ? Number(((r.tokens as number) / (before.tokens as number)).toFixed(2)) : '';
      r.time_x = before ? Number(((r.median_s as number) / (before.median_s as number)).toFixed(2)) : '';
    });
  }
  printTable(rows, Boolean(opts.json));
  if (!opts.json) console.log(`peak RSS ${peakRssGiB().toFixed(2)} GiB; runs per row: 1 warm-up + ${opts.repeats} timed, precisions in turn`);
}
