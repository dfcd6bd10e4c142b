// The denoiser stage in-process: SanaPipeline's denoising loop (classifier-free guidance in one batch,
// Flow-DPM-Solver steps) over a loaded Linear-DiT, run alone or, with batching on, in step-level batches shared
// with other requests (step-batcher.ts).
import path from 'node:path';
import { CancelledError, InvalidArgumentError } from '../common/errors.ts';
import type { PrecisionOptions } from '../common/int8-recipe.ts';
import type { SessionOptions } from '../common/ort-session.ts';
import type { DenoiseContext, DenoiseRequest, DenoiserInfo, DenoiserStage, ForwardStats } from '../common/stages.ts';
import { firstNonFinite, type HostTensor } from '../common/tensor.ts';
import { ConfigError } from '../common/config.ts';
import { type FlowDpmSolverSettings, loadSchedulerSettings, schedulerConfigFile, validateStepCount } from './flow-dpm-solver.ts';
import { CudaLinearDit, type CudaMode, resolveCudaMode } from './cuda-backend.ts';
import type { Device } from './device.ts';
import { type DitInputs, LinearDit, type LinearDitConfig } from './linear-dit.ts';
import { type BatchingOptions, DenoiseJob, StepBatcher } from './step-batcher.ts';

/** What the stage needs of a transformer engine: ONNX Runtime on the CPU (LinearDit) or the CUDA kernels. */
export interface DitEngine {
  readonly config: LinearDitConfig;
  /** as GetInfo reports it */
  readonly precision: string;
  forward(inputs: DitInputs): Promise<HostTensor<Float32Array>>;
  close(): Promise<void>;
}

export interface LocalDenoiserOptions extends SessionOptions, PrecisionOptions {
  batching?: BatchingOptions;
  /** cpu: ONNX Runtime (default); cuda: the kernels/ addon */
  device?: Device;
  /** the CUDA backend's arithmetic: int8 (W8A8) or bf16 (its accuracy reference); default from SANA_CUDA_MODE, else
   *  from `precision` (resolveCudaMode) */
  cudaMode?: CudaMode;
}

export class LocalDenoiser implements DenoiserStage {
  /** step-level batching across requests; undefined: each request runs its own forwards */
  private readonly batcher: StepBatcher | undefined;
  private readonly soloStats: ForwardStats = { forwards: 0, rows: 0, largest: 0 };

  private constructor(
    readonly transformer: DitEngine,
    readonly schedulerSettings: FlowDpmSolverSettings,
    batching: BatchingOptions | undefined,
  ) {
    this.batcher = batching && new StepBatcher(transformer, batching);
  }

  /** Loads `<modelDir>/transformer` and `<modelDir>/scheduler`; `batching` turns on step-level batching. */
  static async load(modelDir: string, options: LocalDenoiserOptions = {}): Promise<LocalDenoiser> {
    const schedulerDir = path.join(modelDir, 'scheduler');
    const settings = loadSchedulerSettings(schedulerDir);
    if (settings.algorithm.startsWith('sde-')) {
      // the SDE solvers draw fresh noise every step from the pipeline's generator, which lives in the gateway
      throw new ConfigError(schedulerConfigFile(schedulerDir), `key "algorithm_type" = "${settings.algorithm}" is not supported by the serving pipeline (stochastic)`);
    }
    const { batching, device = 'cpu', cudaMode, ...session } = options;
    const transformerDir = path.join(modelDir, 'transformer');
    if (device === 'cuda' && (session.int8?.smoothAlpha != null || session.int8?.outlierRatio != null || session.int8?.activations !== undefined)) {
      // the kernels run the recipe's GPU scheme (per-token activations, no calibration): say so rather than ignore it
      throw new InvalidArgumentError('int8', 'smoothing, the outlier split and the activation granularity are CPU (ONNX Runtime) options; the CUDA backend quantizes activations per token without calibration');
    }
    const transformer =
      device === 'cuda' ? await CudaLinearDit.load(transformerDir, { mode: resolveCudaMode(session.precision, cudaMode) }) : await LinearDit.load(transformerDir, session);
    return new LocalDenoiser(transformer, settings, batching);
  }

  info(): DenoiserInfo {
    const c = this.transformer.config;
    return {
      inChannels: c.in_channels,
      outChannels: c.out_channels ?? c.in_channels,
      captionChannels: c.caption_channels,
      sampleSize: c.sample_size,
      patchSize: c.patch_size,
      precision: this.transformer.precision,
    };
  }

  private validate(req: DenoiseRequest): void {
    const c = this.transformer.config;
    validateStepCount(req.numInferenceSteps);
    if (!Number.isFinite(req.guidanceScale)) throw new InvalidArgumentError('guidance_scale', `must be finite, got ${req.guidanceScale}`);
    const [b, ch, h, w] = req.latents.dims;
    if (req.latents.dims.length !== 4 || ch !== c.in_channels || b < 1 || h < 1 || w < 1) {
      throw new InvalidArgumentError('latents', `shape [${req.latents.dims}] must be [B, ${c.in_channels}, h, w]`);
    }
    const bad = firstNonFinite(req.latents.data);
    if (bad >= 0) throw new InvalidArgumentError('latents', `holds a non-finite value at flat index ${bad}`);
    const checkCaption = (field: string, embeds: HostTensor<Float32Array> | undefined, mask: HostTensor<BigInt64Array> | undefined) => {
      if (!embeds || !mask) throw new InvalidArgumentError(field, 'is required (guidance_scale > 1 needs the negative prompt embeddings)');
      const [eb, l, d] = embeds.dims;
      if (embeds.dims.length !== 3 || eb !== b || d !== c.caption_channels || l < 1) {
        throw new InvalidArgumentError(field, `shape [${embeds.dims}] must be [${b}, L, ${c.caption_channels}]`);
      }
      if (mask.dims.length !== 2 || mask.dims[0] !== b || mask.dims[1] !== l) {
        throw new InvalidArgumentError(`${field}_attention_mask`, `shape [${mask.dims}] must be [${b}, ${l}]`);
      }
      const badValue = firstNonFinite(embeds.data);
      if (badValue >= 0) throw new InvalidArgumentError(field, `holds a non-finite value at flat index ${badValue}`);
    };
    checkCaption('prompt_embeds', req.promptEmbeds, req.promptMask);
    if (req.guidanceScale > 1) {
      checkCaption('negative_prompt_embeds', req.negativeEmbeds, req.negativeMask);
      if (req.negativeEmbeds!.dims[1] !== req.promptEmbeds.dims[1]) {
        throw new InvalidArgumentError('negative_prompt_embeds', `length ${req.negativeEmbeds!.dims[1]} differs from the prompt's ${req.promptEmbeds.dims[1]}`);
      }
    } else if (req.negativeEmbeds || req.negativeMask) {
      // without guidance they would be ignored: a caller sending them expects guidance it would not get
      const field = req.negativeEmbeds ? 'negative_prompt_embeds' : 'negative_prompt_attention_mask';
      throw new InvalidArgumentError(field, `must not be sent with guidance_scale ${req.guidanceScale}: classifier-free guidance needs guidance_scale > 1`);
    }
  }

  async denoise(req: DenoiseRequest, ctx: DenoiseContext = {}): Promise<HostTensor<Float32Array>> {
    this.validate(req);
    const job = new DenoiseJob(req, this.schedulerSettings, this.transformer, ctx);
    if (this.batcher) return this.batcher.submit(job);
    // alone: this request's forwards interleave with other requests' at the session, one at a time
    while (!job.done) {
      job.checkCancelled();
      const started = performance.now();
      const prediction = await this.transformer.forward(job.inputs());
      this.soloStats.forwards++;
      this.soloStats.rows += job.rows;
      this.soloStats.largest = Math.max(this.soloStats.largest, job.rows);
      job.advance(prediction.data, (performance.now() - started) / 1000);
    }
    return job.result();
  }

  /** Forwards run so far and the rows they took (mean batch size = rows / forwards). */
  forwardStats(): ForwardStats {
    return this.batcher ? this.batcher.stats() : { ...this.soloStats };
  }

  async close(): Promise<void> {
    await this.transformer.close();
  }
}
