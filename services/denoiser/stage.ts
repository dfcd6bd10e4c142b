// The denoiser stage in-process: SanaPipeline's denoising loop (classifier-free guidance in one batch,
// Flow-DPM-Solver steps) over a loaded Linear-DiT.
import path from 'node:path';
import { CancelledError, InvalidArgumentError } from '../common/errors.ts';
import type { SessionOptions } from '../common/ort-session.ts';
import type { DenoiseContext, DenoiseRequest, DenoiserInfo, DenoiserStage } from '../common/stages.ts';
import { concatRows, firstNonFinite, type HostTensor, tensor } from '../common/tensor.ts';
import { ConfigError } from '../common/config.ts';
import { FlowDpmSolver, type FlowDpmSolverSettings, loadSchedulerSettings, schedulerConfigFile, validateStepCount } from './flow-dpm-solver.ts';
import { applyGuidance, firstChannels } from './guidance.ts';
import { CudaLinearDit, type CudaMode, type Device } from './cuda-backend.ts';
import { type DitInputs, LinearDit, type LinearDitConfig } from './linear-dit.ts';

/** What the stage needs of a transformer engine: ONNX Runtime on the CPU (LinearDit) or the CUDA kernels. */
export interface DitEngine {
  readonly config: LinearDitConfig;
  forward(inputs: DitInputs): Promise<HostTensor<Float32Array>>;
  close(): Promise<void>;
}

export interface DenoiserOptions extends SessionOptions {
  /** cpu: ONNX Runtime (default); cuda: the kernels/ addon */
  device?: Device;
  /** the CUDA backend's arithmetic: int8 (W8A8, default) or bf16 (its accuracy reference) */
  cudaMode?: CudaMode;
}

export class LocalDenoiser implements DenoiserStage {
  private constructor(
    readonly transformer: DitEngine,
    readonly schedulerSettings: FlowDpmSolverSettings,
  ) {}

  /** Loads `<modelDir>/transformer` and `<modelDir>/scheduler`. */
  static async load(modelDir: string, options: DenoiserOptions = {}): Promise<LocalDenoiser> {
    const schedulerDir = path.join(modelDir, 'scheduler');
    const settings = loadSchedulerSettings(schedulerDir);
    if (settings.algorithm.startsWith('sde-')) {
      // the SDE solvers draw fresh noise every step from the pipeline's generator, which lives in the gateway
      throw new ConfigError(schedulerConfigFile(schedulerDir), `key "algorithm_type" = "${settings.algorithm}" is not supported by the serving pipeline (stochastic)`);
    }
    const { device = 'cpu', cudaMode, ...session } = options;
    const transformerDir = path.join(modelDir, 'transformer');
    const transformer = device === 'cuda' ? await CudaLinearDit.load(transformerDir, { mode: cudaMode }) : await LinearDit.load(transformerDir, session);
    return new LocalDenoiser(transformer, settings);
  }

  info(): DenoiserInfo {
    const c = this.transformer.config;
    return {
      inChannels: c.in_channels,
      outChannels: c.out_channels ?? c.in_channels,
      captionChannels: c.caption_channels,
      sampleSize: c.sample_size,
      patchSize: c.patch_size,
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
    }
  }

  async denoise(req: DenoiseRequest, ctx: DenoiseContext = {}): Promise<HostTensor<Float32Array>> {
    this.validate(req);
    const c = this.transformer.config;
    const scheduler = new FlowDpmSolver(this.schedulerSettings); // per request: solvers carry multistep state
    const { timesteps } = scheduler.setTimesteps(req.numInferenceSteps);
    const guided = req.guidanceScale > 1;
    // CFG batch: unconditional rows first, as the reference concatenates them
    const caption = guided ? concatRows([req.negativeEmbeds!, req.promptEmbeds]) : req.promptEmbeds;
    const mask = guided ? concatRows([req.negativeMask!, req.promptMask]) : req.promptMask;
    const [batch, channels, h, w] = req.latents.dims;
    const rows = guided ? 2 * batch : batch;
    const learnedSigma = Math.floor((c.out_channels ?? c.in_channels) / 2) === channels;
    let latents = req.latents.data;
    for (let i = 0; i < timesteps.length; i++) {
      if (ctx.signal?.aborted) throw new CancelledError(`denoising cancelled before step ${i + 1} of ${timesteps.length}`);
      const started = performance.now();
      const t = timesteps[i];
      const modelInput = guided ? concatRows([tensor(latents, req.latents.dims), tensor(latents, req.latents.dims)]) : tensor(latents, req.latents.dims);
      const prediction = await this.transformer.forward({
        hiddenStates: modelInput,
        encoderHiddenStates: caption,
        encoderAttentionMask: mask,
        timestep: tensor(new Float32Array(rows).fill(t * c.timestep_scale), [rows]),
      });
      let noise = guided ? applyGuidance(prediction.data, req.guidanceScale) : prediction.data;
      if (learnedSigma) noise = firstChannels(noise, batch, channels, h * w);
      latents = scheduler.step(noise, t, latents);
      ctx.onStep?.({
        step: i,
        total: timesteps.length,
        timestep: t,
        seconds: (performance.now() - started) / 1000,
        latents: ctx.previewEvery && (i + 1) % ctx.previewEvery === 0 ? tensor(latents, [batch, channels, h, w]) : undefined,
      });
    }
    return tensor(latents, [batch, channels, h, w]);
  }

  async close(): Promise<void> {
    await this.transformer.close();
  }
}
