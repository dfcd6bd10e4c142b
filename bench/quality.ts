// `npm run bench -- quality --preset <pipeline-preset> --precision int8 [--json]`: the same seed and prompts through
// fp32 and the chosen precision, stage by stage and for the whole pipeline:
//   text-encoder   cosine / max relative error of the prompt and negative embeddings at the attended positions
//                  (when the model has one)
//   denoiser step  the transformer's guided prediction at every step, both precisions fed the fp32 trajectory's
//                  input (the per-step error of the stage alone)
//   latents        final latents of a whole int8 denoising run vs fp32, from fp32 embeddings (denoiser) and, with a
//                  text encoder, from int8 embeddings (pipeline)
//   image          PSNR of the decoded uint8 image vs the fp32 one (the decoder itself runs fp32)
// Models without a text encoder get seeded random caption embeddings (with one but no tokenizer/, the small test
// tokenizer where the vocabulary has room for it); without a vae/ folder, --vae names one; without a scheduler/ folder, SANA's Flow-DPM-Solver default.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Command } from 'commander';
import {
  ACTIVATION_GRANULARITIES,
  type ActivationGranularity,
  CPU_ACTIVATION_GRANULARITY,
  cosineSimilarity,
  type Int8Options,
  maxRelativeError,
  parsePrecision,
  type PrecisionOptions,
  psnrUint8,
} from '../services/common/int8-recipe.ts';
import type { EncodeResult } from '../services/common/stages.ts';
import { type HostTensor, tensor } from '../services/common/tensor.ts';
import { torchRandn } from '../services/common/torch-randn.ts';
import { LocalDecoder } from '../services/decoder/stage.ts';
import { toUint8 } from '../services/decoder/image.ts';
import type { DitInputs } from '../services/denoiser/linear-dit.ts';
import { LocalDenoiser } from '../services/denoiser/stage.ts';
import { loadGemma2Config } from '../services/text-encoder/gemma2.ts';
import { LocalTextEncoder, type TextEncoderComponents } from '../services/text-encoder/stage.ts';
import { writeTestTokenizer } from '../services/common/random-tokenizer.ts';
import { cacheRoot } from '../services/common/compile-cache.ts';
import { cachedRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { sanaScheduler } from '../services/cli/presets.ts';
import { printTable } from './util.ts';

const PROMPT = 'A small, fluffy white cat curled up on a sunny windowsill';

export interface QualityOptions {
  /** pipeline folder: transformer/ + scheduler/, optionally text_encoder/ + tokenizer/ and vae/ */
  modelDir: string;
  /** a vae/ folder for models without one */
  vaeDir?: string;
  precision: PrecisionOptions;
  steps: number;
  seed: number;
  guidanceScale: number;
  maxSequenceLength: number;
  /** latent side; default the transformer's sample_size (its native resolution) */
  latentSize?: number;
}

export interface QualityRow {
  stage: string;
  step?: number;
  timestep?: number;
  cosine: number;
  max_rel_err: number;
  psnr_db?: number;
}

const has = (dir: string, part: string) => fs.existsSync(path.join(dir, part));

const TEST_TOKENIZER_VOCAB = 512;

/** The text encoder and a tokenizer for it, when the model has a text encoder and a tokenizer fits. */
function textEncoderParts(modelDir: string): TextEncoderComponents | undefined {
  if (!has(modelDir, 'text_encoder')) return undefined;
  const textEncoder = path.join(modelDir, 'text_encoder');
  if (has(modelDir, 'tokenizer')) return { textEncoder, tokenizer: path.join(modelDir, 'tokenizer') };
  if (loadGemma2Config(path.join(textEncoder, 'config.json')).vocab_size < TEST_TOKENIZER_VOCAB) return undefined;
  const tokenizer = writeTestTokenizer(path.join(cacheRoot(), 'bench', 'test-tokenizer'), { vocabSize: TEST_TOKENIZER_VOCAB });
  return { textEncoder, tokenizer };
}

async function encodeBoth(parts: TextEncoderComponents, precision: PrecisionOptions, maxSequenceLength: number): Promise<{ prompt: EncodeResult; negative: EncodeResult }> {
  const encoder = await LocalTextEncoder.load(parts, { ...precision, cacheBytes: 0 });
  try {
    const prompt = await encoder.encode({ prompts: [PROMPT], useComplexHumanInstruction: true, maxSequenceLength });
    const negative = await encoder.encode({ prompts: [''], useComplexHumanInstruction: false, maxSequenceLength });
    return { prompt, negative };
  } finally {
    await encoder.close();
  }
}

/** The model folder itself, or (without scheduler/) a folder of links to its parts plus SANA's default scheduler. */
function withScheduler(modelDir: string): string {
  if (has(modelDir, 'scheduler')) return modelDir;
  const abs = path.resolve(modelDir);
  const dir = path.join(cacheRoot(), 'bench', 'quality-models', crypto.createHash('sha256').update(abs).digest('hex').slice(0, 16));
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(path.join(dir, 'scheduler'), { recursive: true });
  for (const part of fs.readdirSync(abs)) fs.symlinkSync(path.join(abs, part), path.join(dir, part));
  fs.writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(sanaScheduler()));
  return dir;
}

/** The embeddings [B,L,H] at the positions their mask attends, concatenated. */
function attendedRows({ embeds, mask }: EncodeResult): Float32Array {
  const hidden = embeds.dims[2];
  const rows = [...mask.data.keys()].filter((i) => mask.data[i] === 1n);
  const out = new Float32Array(rows.length * hidden);
  rows.forEach((i, j) => out.set(embeds.data.subarray(i * hidden, (i + 1) * hidden), j * hidden));
  return out;
}

/** Runs the report; rows in the order printed. */
export async function qualityReport(options: QualityOptions): Promise<QualityRow[]> {
  if (!has(options.modelDir, 'transformer')) throw new Error(`${options.modelDir} has no transformer/: only the denoiser and text encoder run int8 (the decoder runs fp32)`);
  const o = { ...options, modelDir: withScheduler(options.modelDir) };
  const rows: QualityRow[] = [];
  const compare = (stage: string, a: Float32Array, b: Float32Array, extra: Partial<QualityRow> = {}) =>
    rows.push({ stage, ...extra, cosine: cosineSimilarity(a, b), max_rel_err: maxRelativeError(a, b) });

  // 1. captions: fp32 (and int8) text embeddings, or seeded random ones
  let fp32Text: { prompt: EncodeResult; negative: EncodeResult };
  let lowText: typeof fp32Text | undefined;
  const denoiser32 = await LocalDenoiser.load(o.modelDir);
  const c = denoiser32.transformer.config;
  const textParts = textEncoderParts(o.modelDir);
  if (textParts) {
    fp32Text = await encodeBoth(textParts, {}, o.maxSequenceLength);
    lowText = await encodeBoth(textParts, o.precision, o.maxSequenceLength);
    // the positions the denoiser attends (int8 leaves padding at zero: it does not run Gemma-2 over it)
    compare('text-encoder prompt', attendedRows(fp32Text.prompt), attendedRows(lowText.prompt));
    compare('text-encoder negative', attendedRows(fp32Text.negative), attendedRows(lowText.negative));
  } else {
    const l = o.maxSequenceLength;
    const random = (seed: number): EncodeResult => ({
      embeds: tensor(torchRandn([1, l, c.caption_channels], seed), [1, l, c.caption_channels]),
      mask: tensor(new BigInt64Array(l).fill(1n), [1, l]),
    });
    fp32Text = { prompt: random(o.seed + 1), negative: random(o.seed + 2) };
  }

  // 2. the denoiser: per-step predictions on the fp32 trajectory, then whole runs
  const denoiserLow = await LocalDenoiser.load(o.modelDir, o.precision);
  const s = o.latentSize ?? c.sample_size;
  const latents = tensor(torchRandn([1, c.in_channels, s, s], o.seed), [1, c.in_channels, s, s]);
  const request = (text: typeof fp32Text) => ({
    promptEmbeds: text.prompt.embeds,
    promptMask: text.prompt.mask,
    negativeEmbeds: text.negative.embeds,
    negativeMask: text.negative.mask,
    latents,
    numInferenceSteps: o.steps,
    guidanceScale: o.guidanceScale,
  });
  // the fp32 run's transformer also hands each input to the int8 one: the same denoising loop, observed
  const fp32Dit = denoiser32.transformer;
  const fp32Forward = fp32Dit.forward.bind(fp32Dit);
  let step = 0;
  fp32Dit.forward = async (inputs: DitInputs): Promise<HostTensor<Float32Array>> => {
    const reference = await fp32Forward(inputs);
    const low = await denoiserLow.transformer.forward(inputs);
    compare('denoiser step', reference.data, low.data, { step: step++, timestep: Number(inputs.timestep.data[0]!.toFixed(1)) });
    return reference;
  };
  const final32 = await denoiser32.denoise(request(fp32Text));
  fp32Dit.forward = fp32Forward;
  const runs: { stage: string; latents: HostTensor<Float32Array> }[] = [{ stage: 'latents (denoiser)', latents: await denoiserLow.denoise(request(fp32Text)) }];
  if (lowText) runs.push({ stage: 'latents (pipeline)', latents: await denoiserLow.denoise(request(lowText)) });
  await Promise.all([denoiser32.close(), denoiserLow.close()]);

  // 3. decode each final latent with the fp32 decoder and compare the uint8 images
  const vaeDir = has(o.modelDir, 'vae') ? path.join(o.modelDir, 'vae') : o.vaeDir;
  const decoder = vaeDir ? await LocalDecoder.load(vaeDir) : undefined;
  const image = async (z: HostTensor<Float32Array>) => {
    const scale = Math.fround(decoder!.model.config.scaling_factor);
    const sample = await decoder!.decodeSample(tensor(z.data.map((v) => v / scale), z.dims));
    const [, channels, height, width] = sample.dims;
    return toUint8({ data: sample.data, channels, height, width });
  };
  const reference = decoder ? await image(final32) : undefined;
  for (const run of runs) {
    compare(run.stage, final32.data, run.latents.data);
    if (decoder) rows[rows.length - 1]!.psnr_db = psnrUint8(reference!, await image(run.latents));
  }
  await decoder?.close();
  return rows;
}

export async function run(argv: string[]): Promise<void> {
  const opts = new Command('bench quality')
    .option('--preset <name>', 'random pipeline preset (cached)', 'tiny')
    .option('--model <dir>', 'a pipeline folder instead of a preset (e.g. a golden variant)')
    .option('--vae <dir>', 'vae/ folder for models without one')
    .option('--precision <p>', 'precision compared with fp32', 'int8')
    .option('--smooth <alpha>', 'SmoothQuant α (off when absent)')
    .option('--outliers <ratio>', 'split input channels above ratio × the median channel max out to fp32 (off when absent)')
    .option('--activations <g>', `int8 activation scales of both models: ${ACTIVATION_GRANULARITIES.join(' | ')} (default: each model's own)`)
    .option('--steps <n>', 'denoising steps', '20')
    .option('--seed <n>', 'noise seed', '0')
    .option('--guidance <g>', 'guidance scale', '4.5')
    .option('--max-sequence-length <n>', 'caption length', '300')
    .option('--latent <n>', "latent side (default: the transformer's sample_size)")
    .option('--json', 'one JSON object per row')
    .parse(argv, { from: 'user' })
    .opts<{ preset: string; model?: string; vae?: string; precision: string; smooth?: string; outliers?: string; activations?: string; steps: string; seed: string; guidance: string; maxSequenceLength: string; latent?: string; json?: boolean }>();
  const precision = parsePrecision(opts.precision, '--precision');
  const int8: Partial<Int8Options> = {};
  if (opts.smooth !== undefined) int8.smoothAlpha = Number(opts.smooth);
  if (opts.outliers !== undefined) int8.outlierRatio = Number(opts.outliers);
  if (opts.activations !== undefined) int8.activations = opts.activations as ActivationGranularity;
  const modelDir = opts.model ?? cachedRandomCheckpoint(opts.preset);
  const rows = await qualityReport({
    modelDir,
    vaeDir: opts.vae,
    precision: { precision, int8 },
    steps: Number(opts.steps),
    seed: Number(opts.seed),
    guidanceScale: Number(opts.guidance),
    maxSequenceLength: Number(opts.maxSequenceLength),
    latentSize: opts.latent === undefined ? undefined : Number(opts.latent),
  });
  const model = opts.model ?? opts.preset;
  const smooth = int8.smoothAlpha ?? 'off';
  const activations = int8.activations ?? `text ${CPU_ACTIVATION_GRANULARITY['text-encoder']}, dit ${CPU_ACTIVATION_GRANULARITY.denoiser}`;
  const table = rows.map((r) => ({
    model,
    precision,
    activations,
    smooth,
    outliers: int8.outlierRatio ?? 'off',
    stage: r.stage,
    step: r.step ?? '',
    timestep: r.timestep ?? '',
    cosine: opts.json ? r.cosine : r.cosine.toFixed(6),
    max_rel_err: opts.json ? r.max_rel_err : r.max_rel_err.toExponential(2),
    psnr_db: r.psnr_db === undefined ? '' : opts.json ? r.psnr_db : r.psnr_db.toFixed(2),
  }));
  printTable(table, Boolean(opts.json));
  if (!opts.json) {
    const steps = rows.filter((r) => r.stage === 'denoiser step');
    console.log(
      `denoiser steps: min cosine ${Math.min(...steps.map((r) => r.cosine)).toFixed(6)}, max of max_rel_err ${Math.max(...steps.map((r) => r.max_rel_err)).toExponential(2)}; seed ${opts.seed}, ${opts.steps} steps, guidance ${opts.guidance}`,
    );
  }
}
