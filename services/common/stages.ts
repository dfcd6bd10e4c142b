// The three pipeline stages as plain async interfaces. The in-process pipeline implements them with local
// models; the gateway implements them with gRPC clients. One orchestration (services/common/pipeline.ts)
// drives either, so every process layout computes the same image.
import type { HostTensor } from './tensor.ts';

/** Cancellation and per-request context shared by every stage call. */
export interface StageContext {
  signal?: AbortSignal;
  /** travels through the stages in gRPC metadata and log lines */
  requestId?: string;
  /** told how long a remote stage kept the call waiting for admission (its queue) before executing it */
  onQueued?: (seconds: number) => void;
}

// ---- text encoder ----

export interface EncodeRequest {
  prompts: string[];
  /** prefix the complex human instruction and keep [0] + the last max_sequence_length-1 positions (positive prompts) */
  useComplexHumanInstruction: boolean;
  /** instruction lines joined with '\n'; defaults to the text SANA was trained with */
  complexHumanInstruction?: string[];
  maxSequenceLength: number;
}

export interface EncodeResult {
  /** [B, max_sequence_length, hidden_size] float32 */
  embeds: HostTensor<Float32Array>;
  /** [B, max_sequence_length] int64, 1 for attended tokens */
  mask: HostTensor<BigInt64Array>;
}

export interface TextEncoderInfo {
  hiddenSize: number;
  /** arithmetic of the model: "fp32" or "int8" */
  precision: string;
}

/** Running totals of a text encoder's embedding cache. */
export interface EmbeddingCacheStats {
  hits: number;
  misses: number;
  bytes: number;
}

export interface TextEncoderStage {
  info(): TextEncoderInfo;
  encode(request: EncodeRequest, ctx?: StageContext): Promise<EncodeResult>;
  /** running totals of its embedding cache, where it has one */
  cacheStats?(): EmbeddingCacheStats;
}

// ---- denoiser ----

export interface DenoiseRequest {
  /** [B, L, caption_channels] and [B, L] */
  promptEmbeds: HostTensor<Float32Array>;
  promptMask: HostTensor<BigInt64Array>;
  /** present iff guidance_scale > 1 (classifier-free guidance); same shapes as the prompt's */
  negativeEmbeds?: HostTensor<Float32Array>;
  negativeMask?: HostTensor<BigInt64Array>;
  /** initial noise [B, C, h, w] (B = prompts × images per prompt) */
  latents: HostTensor<Float32Array>;
  numInferenceSteps: number;
  guidanceScale: number;
}

export interface StepEvent {
  /** 0-based index of the finished step */
  step: number;
  total: number;
  /** the scheduler timestep of this step */
  timestep: number;
  /** seconds this step took */
  seconds: number;
  /** latents after this step, when the caller asked for previews */
  latents?: HostTensor<Float32Array>;
}

export interface DenoiserInfo {
  inChannels: number;
  outChannels: number;
  captionChannels: number;
  /** transformer sample_size (latent pixels of the training resolution), which selects the aspect-ratio bins */
  sampleSize: number;
  patchSize: number;
  /** arithmetic of the transformer: "fp32" or "int8" */
  precision: string;
}

export interface DenoiseContext extends StageContext {
  onStep?: (event: StepEvent) => void;
  /** attach latents to every n-th step event (0: never) */
  previewEvery?: number;
}

/** Running totals of the transformer forwards a denoiser ran, for the mean batch size. */
export interface ForwardStats {
  forwards: number;
  /** rows of all forwards (a guided image is two rows) */
  rows: number;
  /** rows of the largest forward */
  largest: number;
}

export interface DenoiserStage {
  info(): DenoiserInfo;
  /** Runs every solver step and returns the final latents [B, C, h, w]. */
  denoise(request: DenoiseRequest, ctx?: DenoiseContext): Promise<HostTensor<Float32Array>>;
  /** running totals of its forwards, where it runs them itself */
  forwardStats?(): ForwardStats;
}

// ---- decoder ----

export type ImageFormat = 'png' | 'jpeg' | 'webp';

export interface DecodeRequest {
  /** final latents from the denoiser [B, C, h, w], NOT yet divided by the VAE scaling_factor */
  latents: HostTensor<Float32Array>;
  format: ImageFormat;
  /** size of the delivered image; differs from 32·(h, w) when resolution binning was used */
  width: number;
  height: number;
  quality?: number;
}

export interface DecodedImage {
  /** encoded file bytes in the requested format */
  bytes: Uint8Array;
  width: number;
  height: number;
  format: ImageFormat;
}

export interface DecoderInfo {
  latentChannels: number;
  /** pixels per latent pixel (32 for DC-AE F32C32) */
  spatialScale: number;
  scalingFactor: number;
  /** arithmetic of the decoder: "fp32" */
  precision: string;
}

/**
 * A finished tile of a tiled decode: final uint8 pixels of the decoded image (before the resize and crop back to
 * the requested size that resolution binning needs), sent while the rest of the image still decodes.
 */
export interface ImageTile {
  /** image of the batch */
  index: number;
  /** position and size in the decoded image, in pixels */
  top: number;
  left: number;
  width: number;
  height: number;
  /** size of the whole decoded image */
  imageWidth: number;
  imageHeight: number;
  /** RGB, row-major, 3 bytes per pixel */
  pixels: Uint8Array;
}

export interface DecodeContext extends StageContext {
  /** receives each finished tile of a tiled decode (large images only); awaited, so a slow reader slows the decode */
  onTile?: (tile: ImageTile) => Promise<void> | void;
}

export interface DecoderStage {
  info(): DecoderInfo;
  decode(request: DecodeRequest, ctx?: DecodeContext): Promise<DecodedImage[]>;
}
