// Text-to-image as SanaPipeline.__call__ defines it, over the three stage interfaces: the same function runs
// in-process (CLI, tests) and in the gateway over gRPC clients, so every process layout gives the same image.
//
//   prompt(s) ─ CHI + Gemma-2 ─► embeds [B,L,H] ┐
//   negative  ─ Gemma-2 ───────► embeds [B,L,H] ┼─► CFG denoising (Flow-DPM-Solver) ─► latents ─► DC-AE ─► images
//   seed ─ torch.randn ────────► noise [B,C,h,w]┘
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { InvalidArgumentError } from '../common/errors.ts';
import { FORMATS, intInRange, LIMITS } from '../common/limits.ts';
import type {
  DecodedImage,
  DecoderStage,
  DenoiserStage,
  ImageFormat,
  StepEvent,
  TextEncoderStage,
} from '../common/stages.ts';
import { concatRows, type HostTensor, tensor } from '../common/tensor.ts';
import { torchRandn } from '../common/torch-randn.ts';
import { LocalDecoder } from '../decoder/stage.ts';
import { type DenoiserOptions, LocalDenoiser } from '../denoiser/stage.ts';
import { LocalTextEncoder } from '../text-encoder/stage.ts';
import { binForSampleSize, classifyHeightWidthBin } from './resolution-bins.ts';

export interface PipelineStages {
  textEncoder: TextEncoderStage;
  denoiser: DenoiserStage;
  decoder: DecoderStage;
}

export interface LocalStages extends PipelineStages {
  textEncoder: LocalTextEncoder;
  denoiser: LocalDenoiser;
  decoder: LocalDecoder;
  close(): Promise<void>;
}

const COMPONENTS = ['transformer', 'vae', 'text_encoder', 'tokenizer', 'scheduler'] as const;

/** Checks that a folder is a diffusers SANA pipeline checkpoint, naming what is missing. */
export function checkModelDir(modelDir: string): void {
  if (!fs.existsSync(modelDir) || !fs.statSync(modelDir).isDirectory()) {
    throw new InvalidArgumentError('model', `no such folder: ${modelDir}`);
  }
  const missing = COMPONENTS.filter((c) => !fs.existsSync(path.join(modelDir, c)));
  if (missing.length > 0) {
    throw new InvalidArgumentError('model', `${modelDir} is not a SANA diffusers checkpoint: missing ${missing.map((m) => `${m}/`).join(', ')}`);
  }
}

/** The three stages in this process, from a pipeline checkpoint folder. */
export async function loadLocalStages(modelDir: string, options: DenoiserOptions = {}): Promise<LocalStages> {
  checkModelDir(modelDir);
  // a stage that fails to load closes the ones loaded before it (their workers would keep the process alive)
  const { device, cudaMode, ...session } = options;
  const textEncoder = await LocalTextEncoder.load(modelDir, session);
  const denoiser = await LocalDenoiser.load(modelDir, options).catch(closingOnError([textEncoder]));
  const decoder = await LocalDecoder.load(path.join(modelDir, 'vae'), session).catch(closingOnError([textEncoder, denoiser]));
  return {
    textEncoder,
    denoiser,
    decoder,
    async close() {
      await Promise.all([textEncoder.close(), denoiser.close(), decoder.close()]);
    },
  };
}

/** A catch handler that closes what was already loaded, then rethrows. */
export function closingOnError(loaded: { close(): Promise<void> }[]): (e: unknown) => Promise<never> {
  return async (e) => {
    await Promise.all(loaded.map((stage) => stage.close()));
    throw e;
  };
}

/** SanaPipeline's arguments (camelCase), with its defaults. */
export interface GenerateArgs {
  prompt: string | string[];
  negativePrompt?: string;
  numInferenceSteps?: number;
  guidanceScale?: number;
  /** default: the transformer's sample_size × the VAE's spatial scale */
  height?: number;
  width?: number;
  numImagesPerPrompt?: number;
  /** torch.Generator('cpu').manual_seed(seed); random when absent (and reported) */
  seed?: number | bigint;
  /** initial noise [B·n, C, h, w] instead of drawing it from the seed (SanaPipeline's `latents=`) */
  latents?: HostTensor<Float32Array>;
  useResolutionBinning?: boolean;
  maxSequenceLength?: number;
  /** instruction lines (default: the text SANA was trained with); false or [] disables it, as in diffusers */
  complexHumanInstruction?: string[] | false;
  format?: ImageFormat;
  quality?: number;
}

export interface GenerateContext {
  signal?: AbortSignal;
  requestId?: string;
  onStep?: (event: StepEvent) => void;
  previewEvery?: number;
  onStage?: (stage: 'encode' | 'denoise' | 'decode', seconds: number) => void;
}

export interface GenerateResult {
  images: DecodedImage[];
  seed: bigint;
  width: number;
  height: number;
  timings: { encodeSeconds: number; denoiseSeconds: number; decodeSeconds: number; totalSeconds: number };
}

export interface ResolvedArgs {
  prompts: string[];
  negativePrompt: string;
  numInferenceSteps: number;
  guidanceScale: number;
  height: number;
  width: number;
  numImagesPerPrompt: number;
  seed: bigint;
  useResolutionBinning: boolean;
  maxSequenceLength: number;
  /** undefined: the default instruction */
  complexHumanInstruction: string[] | false | undefined;
  format: ImageFormat;
  quality?: number;
}

/** Applies SanaPipeline's defaults and checks every limit; `defaultSide` is sample_size × spatial scale. */
export function validateGenerateArgs(args: GenerateArgs, defaultSide: number): ResolvedArgs {
  const prompts = typeof args.prompt === 'string' ? [args.prompt] : args.prompt;
  if (!Array.isArray(prompts) || prompts.length === 0) throw new InvalidArgumentError('prompt', 'at least one prompt is required');
  if (prompts.length > LIMITS.prompts) throw new InvalidArgumentError('prompt', `at most ${LIMITS.prompts} prompts per request, got ${prompts.length}`);
  const checkText = (field: string, text: unknown) => {
    if (typeof text !== 'string') throw new InvalidArgumentError(field, 'must be a string');
    const bytes = Buffer.byteLength(text, 'utf8');
    if (bytes > LIMITS.promptBytes) throw new InvalidArgumentError(field, `is ${bytes} bytes; the limit is ${LIMITS.promptBytes}`);
  };
  prompts.forEach((p) => checkText('prompt', p));
  const negativePrompt = args.negativePrompt ?? '';
  checkText('negative_prompt', negativePrompt);

  const numInferenceSteps = intInRange('num_inference_steps', args.numInferenceSteps ?? 20, LIMITS.steps.min, LIMITS.steps.max);
  const guidanceScale = args.guidanceScale ?? 4.5;
  if (typeof guidanceScale !== 'number' || !Number.isFinite(guidanceScale) || guidanceScale < LIMITS.guidanceScale.min || guidanceScale > LIMITS.guidanceScale.max) {
    throw new InvalidArgumentError('guidance_scale', `must be a finite number in [${LIMITS.guidanceScale.min}, ${LIMITS.guidanceScale.max}], got ${guidanceScale}`);
  }
  const useResolutionBinning = args.useResolutionBinning ?? true;
  const side = (field: 'height' | 'width', value: number | undefined) => {
    const v = intInRange(field, value ?? defaultSide, LIMITS.side.min, LIMITS.side.max);
    if (!useResolutionBinning && v % 32 !== 0) {
      throw new InvalidArgumentError(field, `must be a multiple of 32 when use_resolution_binning is off, got ${v}`);
    }
    return v;
  };
  const height = side('height', args.height);
  const width = side('width', args.width);
  const numImagesPerPrompt = intInRange('num_images_per_prompt', args.numImagesPerPrompt ?? 1, 1, LIMITS.numImagesPerPrompt);
  if (prompts.length * numImagesPerPrompt > LIMITS.images) {
    throw new InvalidArgumentError('num_images_per_prompt', `prompts × images per prompt must be at most ${LIMITS.images}, got ${prompts.length * numImagesPerPrompt}`);
  }
  let seed: bigint;
  if (args.seed === undefined) {
    seed = crypto.randomBytes(8).readBigUInt64LE() >> 11n; // 53 bits: representable as a JSON number too
  } else {
    if (typeof args.seed === 'number' && !Number.isSafeInteger(args.seed)) {
      throw new InvalidArgumentError('seed', `must be an integer in [0, 2^64), got ${args.seed}`);
    }
    seed = BigInt(args.seed);
    if (seed < 0n || seed >= LIMITS.seedExclusive) throw new InvalidArgumentError('seed', `must be an integer in [0, 2^64), got ${seed}`);
  }
  const maxSequenceLength = intInRange('max_sequence_length', args.maxSequenceLength ?? 300, LIMITS.maxSequenceLength.min, LIMITS.maxSequenceLength.max);
  const format = args.format ?? 'png';
  if (!FORMATS.includes(format)) throw new InvalidArgumentError('format', `must be one of ${FORMATS.join(', ')}, got ${JSON.stringify(format)}`);
  const quality = args.quality === undefined ? undefined : intInRange('quality', args.quality, LIMITS.quality.min, LIMITS.quality.max);
  const chi = args.complexHumanInstruction;
  if (chi !== undefined && chi !== false && (!Array.isArray(chi) || chi.some((l) => typeof l !== 'string'))) {
    throw new InvalidArgumentError('complex_human_instruction', 'must be a list of strings or false');
  }
  if (Array.isArray(chi)) checkText('complex_human_instruction', chi.join('\n'));
  return {
    prompts,
    negativePrompt,
    numInferenceSteps,
    guidanceScale,
    height,
    width,
    numImagesPerPrompt,
    seed,
    useResolutionBinning,
    maxSequenceLength,
    complexHumanInstruction: Array.isArray(chi) && chi.length === 0 ? false : chi,
    format,
    quality,
  };
}

/** Each row repeated n times in place: [a, b] → [a, a, b, b] (torch .repeat(1, n, 1).view(B·n, …)). */
export function repeatEachRow<T extends Float32Array | BigInt64Array>(t: HostTensor<T>, n: number): HostTensor<T> {
  if (n === 1) return t;
  const rowSize = t.data.length / t.dims[0];
  const out = new (t.data.constructor as { new (len: number): T })(t.data.length * n);
  for (let r = 0; r < t.dims[0]; r++) {
    const row = t.data.subarray(r * rowSize, (r + 1) * rowSize);
    for (let k = 0; k < n; k++) (out as Float32Array).set(row as Float32Array, (r * n + k) * rowSize);
  }
  return tensor(out, [t.dims[0] * n, ...t.dims.slice(1)]);
}

/**
 * The whole batch repeated n times: [a, b] → [a, b, a, b] (torch .repeat(n, 1)). SanaPipeline repeats the
 * attention masks this way while it repeats the embeddings row by row; with several prompts and several images
 * per prompt the masks therefore pair with other prompts' embeddings. We reproduce that so images match it.
 */
export function repeatWholeBatch<T extends Float32Array | BigInt64Array>(t: HostTensor<T>, n: number): HostTensor<T> {
  return n === 1 ? t : concatRows(new Array<HostTensor<T>>(n).fill(t));
}

export async function generate(stages: PipelineStages, args: GenerateArgs, ctx: GenerateContext = {}): Promise<GenerateResult> {
  const started = performance.now();
  const denoiserInfo = stages.denoiser.info();
  const decoderInfo = stages.decoder.info();
  const a = validateGenerateArgs(args, denoiserInfo.sampleSize * decoderInfo.spatialScale);

  // resolution binning: compute at the nearest trained aspect ratio, deliver the requested size
  let { height, width } = a;
  if (a.useResolutionBinning) ({ height, width } = classifyHeightWidthBin(height, width, binForSampleSize(denoiserInfo.sampleSize)));
  const n = a.numImagesPerPrompt;
  const latentShape = [a.prompts.length * n, denoiserInfo.inChannels, Math.floor(height / decoderInfo.spatialScale), Math.floor(width / decoderInfo.spatialScale)];
  if (args.latents && args.latents.dims.join() !== latentShape.join()) {
    throw new InvalidArgumentError('latents', `shape [${args.latents.dims}] must be [${latentShape}]`);
  }
  const stageCtx = { signal: ctx.signal, requestId: ctx.requestId };

  // 1. text encoding (the negative prompt only when guidance is on; no CHI for it)
  const guided = a.guidanceScale > 1;
  const positive = await stages.textEncoder.encode(
    {
      prompts: a.prompts,
      useComplexHumanInstruction: a.complexHumanInstruction !== false,
      complexHumanInstruction: a.complexHumanInstruction || undefined,
      maxSequenceLength: a.maxSequenceLength,
    },
    stageCtx,
  );
  const negative = guided
    ? await stages.textEncoder.encode(
        { prompts: a.prompts.map(() => a.negativePrompt), useComplexHumanInstruction: false, maxSequenceLength: a.maxSequenceLength },
        stageCtx,
      )
    : undefined;
  const encodeSeconds = (performance.now() - started) / 1000;
  ctx.onStage?.('encode', encodeSeconds);

  // 2. initial noise exactly as torch.randn on a CPU generator seeded with `seed`
  const latents = args.latents ?? tensor(torchRandn(latentShape, a.seed), latentShape);

  // 3. denoising
  const denoiseStart = performance.now();
  const finalLatents = await stages.denoiser.denoise(
    {
      promptEmbeds: repeatEachRow(positive.embeds, n),
      promptMask: repeatWholeBatch(positive.mask, n),
      negativeEmbeds: negative && repeatEachRow(negative.embeds, n),
      negativeMask: negative && repeatWholeBatch(negative.mask, n),
      latents,
      numInferenceSteps: a.numInferenceSteps,
      guidanceScale: a.guidanceScale,
    },
    { ...stageCtx, onStep: ctx.onStep, previewEvery: ctx.previewEvery },
  );
  const denoiseSeconds = (performance.now() - denoiseStart) / 1000;
  ctx.onStage?.('denoise', denoiseSeconds);

  // 4. decoding to images of the requested size
  const decodeStart = performance.now();
  const images = await stages.decoder.decode({ latents: finalLatents, format: a.format, width: a.width, height: a.height, quality: a.quality }, stageCtx);
  const decodeSeconds = (performance.now() - decodeStart) / 1000;
  ctx.onStage?.('decode', decodeSeconds);

  return {
    images,
    seed: a.seed,
    width: a.width,
    height: a.height,
    timings: { encodeSeconds, denoiseSeconds, decodeSeconds, totalSeconds: (performance.now() - started) / 1000 },
  };
}
