// `sana generate "prompt" [--model DIR | --server ADDRESS] ... --out FILE`: one text-to-image generation, in this
// process or by a running gateway, with a progress bar per stage and per-stage timings.
import fs from 'node:fs';
import path from 'node:path';
import cliProgress from 'cli-progress';
import { type Command, Option } from 'commander';
import { DEVICES, type Device } from '../denoiser/device.ts';
import { InvalidArgumentError } from '../common/errors.ts';
import type { ImageFormat } from '../common/stages.ts';
import { FORMATS, LIMITS } from '../common/limits.ts';
import { type Precision, PRECISIONS } from '../common/int8-recipe.ts';
import { channelCredentials } from '../common/grpc-tls.ts';
import { generateRemote } from '../gateway/client.ts';
import { generate, type GenerateArgs, type GenerateContext, type GenerateResult, validateGenerateArgs } from '../common/pipeline.ts';
import { JobsClient } from '../gateway/jobs-client.ts';
import { int8FromFlags, int8Options, tilingFromFlags, tilingOptions } from './args.ts';
import { cachedRandomCheckpoint } from './checkpoint.ts';

/** The embedded default: a tiny random-weight pipeline, written once into the cache folder. */
export function defaultModelDir(): string {
  return cachedRandomCheckpoint('tiny');
}

export interface GenerateOptions {
  model?: string;
  negative?: string;
  width?: string;
  height?: string;
  steps?: string;
  guidance?: string;
  seed?: string;
  numImages?: string;
  format?: ImageFormat;
  binning: boolean;
  chi: boolean;
  out?: string;
  threads?: string;
  precision: Precision;
  int8Smooth?: number;
  int8Outliers?: number;
  device: Device;
  server?: string;
  token?: string;
  tiling: boolean;
  tileSize?: number;
  tileOverlap?: number;
  async?: boolean;
  key?: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
}

/** Parses a numeric flag strictly; the pipeline's validation then names the limit. */
function numberFlag(field: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === '' || (Number.isNaN(n) && value.trim().toLowerCase() !== 'nan')) {
    throw new InvalidArgumentError(field, `expected a number, got "${value}"`);
  }
  return n;
}

function threadsFlag(value: string | undefined): number | undefined {
  const n = numberFlag('threads', value);
  if (n !== undefined && (!Number.isSafeInteger(n) || n < 1)) throw new InvalidArgumentError('threads', `must be a positive integer, got "${value}"`);
  return n;
}

function seedFlag(value: string | undefined): bigint | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value.trim())) throw new InvalidArgumentError('seed', `must be an integer in [0, 2^64), got "${value}"`);
  return BigInt(value.trim());
}

/** Output paths: FILE for one image, FILE-0.ext, FILE-1.ext ... for several. */
export function outputPaths(out: string, count: number, format: ImageFormat): string[] {
  const ext = path.extname(out);
  const stem = ext ? out.slice(0, -ext.length) : out;
  const suffix = ext || `.${format === 'jpeg' ? 'jpg' : format}`;
  if (count === 1) return [`${stem}${suffix}`];
  return Array.from({ length: count }, (_, i) => `${stem}-${i}${suffix}`);
}

function formatFromPath(out: string): ImageFormat | undefined {
  const ext = path.extname(out).slice(1).toLowerCase();
  if (ext === 'jpg' || ext === 'jpeg') return 'jpeg';
  if (ext === 'png' || ext === 'webp') return ext;
  return undefined;
}

/** The pipeline's arguments from the command's flags. */
export function generateArgsFromOptions(prompt: string, opts: GenerateOptions) {
  const named = formatFromPath(opts.out ?? '');
  if (opts.format && named && opts.format !== named) {
    // writing WebP bytes into x.png would mislead every viewer that trusts the extension
    throw new InvalidArgumentError('out', `${opts.out} names a ${named} file but --format is ${opts.format}; change the extension or leave out --format`);
  }
  const format = opts.format ?? named ?? 'png';
  return {
    prompt,
    negativePrompt: opts.negative,
    width: numberFlag('width', opts.width),
    height: numberFlag('height', opts.height),
    numInferenceSteps: numberFlag('num_inference_steps', opts.steps),
    guidanceScale: numberFlag('guidance_scale', opts.guidance),
    seed: seedFlag(opts.seed),
    numImagesPerPrompt: numberFlag('num_images_per_prompt', opts.numImages),
    useResolutionBinning: opts.binning,
    complexHumanInstruction: opts.chi ? undefined : (false as const),
    format,
  };
}

async function runGenerate(prompt: string, opts: GenerateOptions): Promise<void> {
  const args = generateArgsFromOptions(prompt, opts);
  const { format } = args;
  if (opts.async) return submitAsync(args, opts);
  if (!opts.out) throw new InvalidArgumentError('out', 'is required (or use --async --server ADDRESS)');
  // reject bad arguments before spending seconds on loading models (the size default needs the model: any valid one here)
  const { numInferenceSteps } = validateGenerateArgs(args, LIMITS.side.min);
  const outDir = path.dirname(path.resolve(opts.out));
  if (!fs.existsSync(outDir)) throw new InvalidArgumentError('out', `folder ${outDir} does not exist`);

  const { run, loadSeconds } = opts.server ? remoteRunner(opts.server, opts) : await localRunner(opts);

  const interactive = Boolean(process.stderr.isTTY);
  const bars = interactive
    ? new cliProgress.MultiBar(
        { format: ' {stage} |{bar}| {value}/{total} {note}', hideCursor: true, clearOnComplete: false, stream: process.stderr },
        cliProgress.Presets.shades_classic,
      )
    : undefined;
  const denoiserBar = { bar: undefined as cliProgress.SingleBar | undefined };
  const stageBar = (name: string, total: number) => bars?.create(total, 0, { stage: name.padEnd(8), note: '' });
  // Ctrl-C stops between denoising steps instead of killing the process mid-write
  const abort = new AbortController();
  const onSigint = () => abort.abort();
  process.once('SIGINT', onSigint);
  const encodeBar = stageBar('encode', 1);
  let result: GenerateResult;
  try {
    result = await run(args, {
      signal: abort.signal,
      onStage: (stage, seconds) => {
        if (stage === 'encode') encodeBar?.update(1, { note: `${seconds.toFixed(2)} s` });
        if (stage === 'denoise') denoiserBar.bar?.update({ note: `${seconds.toFixed(2)} s` });
        if (!interactive) console.error(`${stage}: ${seconds.toFixed(2)} s`);
      },
      onStep: (e) => {
        if (interactive) {
          denoiserBar.bar ??= stageBar('denoise', e.total);
          denoiserBar.bar?.update(e.step + 1, { note: `${e.seconds.toFixed(2)} s/step` });
        } else console.error(`denoise: step ${e.step + 1}/${e.total} (${e.seconds.toFixed(2)} s)`);
      },
    });
  } finally {
    process.off('SIGINT', onSigint);
    bars?.stop();
    await run.close?.();
  }
  const paths = outputPaths(opts.out, result.images.length, format);
  result.images.forEach((img, i) => fs.writeFileSync(paths[i], img.bytes));
  const t = result.timings;
  const rows: [string, number][] = [
    ...(opts.server ? [] : [['load', loadSeconds] as [string, number]]),
    ['encode', t.encodeSeconds],
    ['denoise', t.denoiseSeconds],
    ['decode', t.decodeSeconds],
    ['total', loadSeconds + t.totalSeconds],
  ];
  console.log(`seed ${result.seed}, ${result.width}×${result.height}, ${numInferenceSteps} steps`);
  for (const [stage, seconds] of rows) console.log(`${stage.padEnd(8)} ${seconds.toFixed(2).padStart(8)} s`);
  for (const p of paths) console.log(`wrote ${p}`);
}

/** `--async`: queues a job on the gateway and prints its id (`sana jobs watch|result ID` follow it). */
async function submitAsync(args: GenerateArgs, opts: GenerateOptions): Promise<void> {
  if (!opts.server) throw new InvalidArgumentError('server', '--async submits a job to a gateway: give --server ADDRESS');
  if (opts.model) throw new InvalidArgumentError('model', 'the server at --server uses its own model; leave out --model');
  validateGenerateArgs(args, LIMITS.side.min);
  const client = new JobsClient(opts.server, opts.token ?? process.env.SANA_AUTH_TOKEN);
  try {
    console.log(await client.submit(args, opts.key));
  } finally {
    client.close();
  }
}

type Runner = ((args: GenerateArgs, ctx: GenerateContext) => Promise<GenerateResult>) & { close?: () => Promise<void> };

/** Loads the three stages into this process (the default model when none is given). */
async function localRunner(opts: GenerateOptions): Promise<{ run: Runner; loadSeconds: number }> {
  let modelDir = opts.model;
  if (!modelDir) {
    console.error(
      'No --model given: using a tiny random-weight SANA pipeline (generated once into the cache folder). Random weights give noise.\n' +
        'For real images, point --model at a downloaded SANA diffusers checkpoint folder, e.g. Efficient-Large-Model/Sana_600M_1024px_diffusers.',
    );
    modelDir = defaultModelDir();
  }
  const loadStart = performance.now();
  // loaded on demand: `sana generate --server` and `sana serve gateway` never load ONNX Runtime, the tokenizer or sharp
  const { loadLocalStages } = await import('./local-stages.ts');
  const stages = await loadLocalStages(modelDir, { intraOpThreads: threadsFlag(opts.threads), tiling: tilingFromFlags(opts), precision: opts.precision, int8: int8FromFlags(opts), device: opts.device });
  const run: Runner = (args, ctx) => generate(stages, args, ctx);
  run.close = () => stages.close();
  return { run, loadSeconds: (performance.now() - loadStart) / 1000 };
}

/** Calls Generate on a gateway (`sana serve all` or a deployment); the model is the server's. */
function remoteRunner(address: string, opts: GenerateOptions): { run: Runner; loadSeconds: number } {
  if (opts.model) throw new InvalidArgumentError('model', 'the server at --server uses its own model; leave out --model');
  if (opts.threads) throw new InvalidArgumentError('threads', 'the server at --server sets its own threads; leave out --threads');
  if (!opts.tiling || opts.tileSize !== undefined || opts.tileOverlap !== undefined) {
    throw new InvalidArgumentError('tiling', 'the server at --server decodes with its own tiling (sana serve --tile-size); leave out the tiling flags');
  }
  if (opts.precision !== 'fp32') throw new InvalidArgumentError('precision', 'the server at --server sets its own precision; leave out --precision');
  if (opts.device !== 'cpu') throw new InvalidArgumentError('device', 'the server at --server chooses its own device; leave out --device');
  const token = opts.token ?? process.env.SANA_AUTH_TOKEN;
  const credentials = channelCredentials({ ca: opts.tlsCa, cert: opts.tlsCert, key: opts.tlsKey });
  return { run: (args, ctx) => generateRemote(address, args, ctx, { token, credentials }), loadSeconds: 0 };
}

/** The flags that describe a generation (shared by `generate` and `jobs submit`). */
export function addGenerateOptions(command: Command): Command {
  return command
    .option('--model <dir>', 'SANA pipeline checkpoint folder in the diffusers layout (default: tiny random weights)')
    .option('--negative <text>', 'negative prompt, used when --guidance > 1 (default "")')
    .option('--width <px>', 'image width (default: the model\'s trained size)')
    .option('--height <px>', 'image height (default: the model\'s trained size)')
    .option('--steps <n>', 'num_inference_steps (default 20)')
    .option('--guidance <scale>', 'guidance_scale; <= 1 turns classifier-free guidance off (default 4.5)')
    .option('--seed <n>', 'seed of the initial noise, as torch.Generator("cpu").manual_seed (default random)')
    .option('--num-images <n>', 'num_images_per_prompt (default 1)')
    .addOption(new Option('--format <format>', 'image format (default from --out, else png)').choices([...FORMATS]))
    .option('--no-binning', 'turn off resolution binning (width and height must then be multiples of 32)')
    .option('--no-chi', 'turn off the complex human instruction prefix')
    .option('--threads <n>', 'ONNX Runtime threads per model (default: all cores)')
    .addOption(new Option('--precision <p>', 'text encoder and denoiser arithmetic: W8A8 int8 or fp32 (the decoder runs fp32)').choices([...PRECISIONS]).default('fp32'))
    .addOption(new Option('--device <device>', 'denoiser transformer engine: cpu (ONNX Runtime) or cuda (fused kernels: W8A8 with --precision int8, split bf16 with fp32; env SANA_CUDA_MODE=int8|bf16 overrides)').env('SANA_DEVICE').choices([...DEVICES]).default('cpu'))
    .option('--server <address>', 'call Generate on a running gateway (e.g. 127.0.0.1:50051 from `sana serve all`) instead of loading the model here')
    .option('--token <token>', 'bearer token for --server (default: SANA_AUTH_TOKEN)')
    .addOption(new Option('--tls-ca <file>', 'PEM CA that signed the server certificate: call --server over TLS').env('SANA_TLS_CA'))
    .addOption(new Option('--tls-cert <file>', 'PEM client certificate for a server that requires mutual TLS (with --tls-key)').env('SANA_TLS_CERT'))
    .addOption(new Option('--tls-key <file>', 'PEM private key of --tls-cert').env('SANA_TLS_KEY'));
}

export function registerGenerate(program: Command): void {
  const generate = addGenerateOptions(
    program
      .command('generate')
      .description('generate images from a prompt, in this process or on a gateway (--server)')
      .argument('<prompt>', 'the text prompt'),
  )
    .option('--out <file>', 'output image path (several images: FILE-0.png, FILE-1.png, ...); required unless --async')
    .option('--async', 'queue a durable job on the gateway (--server, which runs with --nats) and print its id')
    .option('--key <key>', 'with --async: idempotency key (the same key gives the same job)')
    .action(runGenerate);
  for (const option of [...tilingOptions(), ...int8Options()]) generate.addOption(option);
}
