// SANA's Linear Diffusion Transformer (diffusers' SanaTransformer2DModel) as an ONNX graph.
//
//   latent [B,C,H,W] ─ patch_embed (+ sin-cos pos-embed on 2K/4K models) ─► tokens x [B,N,D], N = H*W/p²
//   timestep [B]     ─ sinusoid ─ MLP ─► t6 [B,6D] (per-block shift/scale/gate) and t [B,D] (final norm)
//   caption [B,L,Dc] ─ MLP (GELU-tanh) ─ RMSNorm ─► y [B,L,D]
//   N_layers × block:  x += gate_msa · LinearAttn(LN(x)·(1+scale_msa)+shift_msa)       (ReLU linear attention)
//                      x += CrossAttn(x, y, mask)                                        (softmax, -10000 bias)
//                      x += gate_mlp · MixFFN(LN(x)·(1+scale_mlp)+shift_mlp)             (1×1, 3×3 dw, GLU, 1×1)
//   LN(x)·(1+scale)+shift ─ proj_out ─ unpatchify ─► [B,C_out,H,W]
//
// Two graphs: caption.onnx (the caption MLP and every block's cross-attention K/V with the mask's bias as one more key
// row, which depend on the caption and its mask only) and model.onnx (one denoising step, taking those K/V as inputs);
// the ONNX Runtime worker runs the caption graph once per distinct caption and keeps its outputs for the request's
// later steps (ort-session.ts PrefixModel).
// Weights are addressed by the checkpoint's own keys; the graphs are compiled once per checkpoint content and precision.
// Precision int8 runs the block linears of DIT_INT8_LAYERS as W8A8 (services/common/int8-recipe.ts), optionally
// smoothed and with outlier input channels split out to fp32, both calibrated once at compile time; everything else
// stays fp32.
import fs from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import { CheckpointWeights } from '../common/checkpoint-weights.ts';
import { cachedCompile } from '../common/compile-cache.ts';
import { ConfigError, loadConfig, unsupported } from '../common/config.ts';
import { InvalidArgumentError } from '../common/errors.ts';
import {
  DIT_INT8_LAYERS,
  type Int8Options,
  type Precision,
  type PrecisionOptions,
  resolveInt8Options,
  outlierChannels,
  scaleInputChannels,
  smoothingFactors,
  weightAbsMaxPerInput,
} from '../common/int8-recipe.ts';
import { ElemType, float, GraphBuilder } from '../common/onnx-graph.ts';
import { OrtSession, type SessionOptions } from '../common/ort-session.ts';
import { torchRandn } from '../common/torch-randn.ts';
import { Checkpoint } from '../common/safetensors.ts';
import { batchRows, concatRows, firstNonFinite, type HostTensor, tensor } from '../common/tensor.ts';

// ---- config.json of transformer/ (keys as diffusers writes them) ----
export const LinearDitConfig = z.object({
  _class_name: z.string().optional(),
  in_channels: z.number().int().positive(),
  out_channels: z.number().int().positive().nullable().default(null),
  num_attention_heads: z.number().int().positive(),
  attention_head_dim: z.number().int().positive(),
  num_layers: z.number().int().nonnegative(),
  num_cross_attention_heads: z.number().int().positive(),
  cross_attention_head_dim: z.number().int().positive(),
  cross_attention_dim: z.number().int().positive().nullable(),
  caption_channels: z.number().int().positive(),
  mlp_ratio: z.number().positive().default(2.5),
  dropout: z.number().default(0),
  attention_bias: z.boolean().default(false),
  sample_size: z.number().int().positive().default(32),
  patch_size: z.number().int().positive().default(1),
  norm_elementwise_affine: z.boolean().default(false),
  norm_eps: z.number().positive().default(1e-6),
  interpolation_scale: z.number().positive().nullable().default(null),
  guidance_embeds: z.boolean().default(false),
  guidance_embeds_scale: z.number().default(0.1),
  qk_norm: z.string().nullable().default(null),
  timestep_scale: z.number().default(1.0),
});
export type LinearDitConfig = z.infer<typeof LinearDitConfig>;

const TIMESTEP_CHANNELS = 256; // Timesteps(num_channels=256, flip_sin_to_cos=True, downscale_freq_shift=0)
const CAPTION_NORM_EPS = 1e-5;
export const QK_NORM_EPS = 1e-5; // Attention's default eps, used by its RMSNorm qk-norm
const FINAL_NORM_EPS = 1e-6;
const CAPTION_GRAPH = 'caption'; // caption.onnx beside model.onnx
/** captions whose cross-attention K/V the session keeps (a request's steps reuse one; batched steps another) */
const KEPT_CAPTIONS = 2;
const MASK_BIAS = -10000; // diffusers turns the 0/1 caption mask into (1-m)·-10000, not -inf
/** α of softmax(α·q·kᵀ + bias) */
const crossAttentionScale = (headDim: number) => 1 / Math.sqrt(headDim);

export function loadLinearDitConfig(file: string): LinearDitConfig {
  const c = loadConfig(file, LinearDitConfig);
  if (c.guidance_embeds) unsupported(file, 'guidance_embeds', true, 'SANA-Sprint guidance embeddings are not implemented');
  if (c.qk_norm !== null && c.qk_norm !== 'rms_norm_across_heads') {
    unsupported(file, 'qk_norm', c.qk_norm, 'only null and "rms_norm_across_heads" (SANA 1.5) are implemented');
  }
  const inner = c.num_attention_heads * c.attention_head_dim;
  if (c.cross_attention_dim === null) unsupported(file, 'cross_attention_dim', null, 'every SANA block has cross-attention');
  if (c.cross_attention_dim !== inner) {
    throw new ConfigError(file, `key "cross_attention_dim" = ${c.cross_attention_dim} must equal num_attention_heads × attention_head_dim = ${inner}`);
  }
  if (c.interpolation_scale !== null && inner % 4 !== 0) {
    throw new ConfigError(file, `sin-cos positional embeddings need an inner dim divisible by 4, got ${inner}`);
  }
  return c;
}

/** Derived sizes used by the graph, the FLOP count and the random-checkpoint generator. */
export function ditDims(c: LinearDitConfig) {
  const inner = c.num_attention_heads * c.attention_head_dim;
  return {
    inner,
    crossInner: c.num_cross_attention_heads * c.cross_attention_head_dim,
    ffHidden: Math.floor(c.mlp_ratio * inner),
    outChannels: c.out_channels ?? c.in_channels,
    p: c.patch_size,
  };
}

/** Every checkpoint tensor the model reads, with its shape: the contract of the checkpoint layout. */
export function ditTensorShapes(c: LinearDitConfig): Map<string, number[]> {
  const { inner, crossInner, ffHidden, outChannels, p } = ditDims(c);
  const s = new Map<string, number[]>();
  s.set('patch_embed.proj.weight', [inner, c.in_channels, p, p]);
  s.set('patch_embed.proj.bias', [inner]);
  s.set('time_embed.emb.timestep_embedder.linear_1.weight', [inner, TIMESTEP_CHANNELS]);
  s.set('time_embed.emb.timestep_embedder.linear_1.bias', [inner]);
  s.set('time_embed.emb.timestep_embedder.linear_2.weight', [inner, inner]);
  s.set('time_embed.emb.timestep_embedder.linear_2.bias', [inner]);
  s.set('time_embed.linear.weight', [6 * inner, inner]);
  s.set('time_embed.linear.bias', [6 * inner]);
  s.set('caption_projection.linear_1.weight', [inner, c.caption_channels]);
  s.set('caption_projection.linear_1.bias', [inner]);
  s.set('caption_projection.linear_2.weight', [inner, inner]);
  s.set('caption_projection.linear_2.bias', [inner]);
  s.set('caption_norm.weight', [inner]);
  for (let i = 0; i < c.num_layers; i++) {
    const b = `transformer_blocks.${i}`;
    s.set(`${b}.scale_shift_table`, [6, inner]);
    for (const proj of ['to_q', 'to_k', 'to_v']) {
      s.set(`${b}.attn1.${proj}.weight`, [inner, inner]);
      if (c.attention_bias) s.set(`${b}.attn1.${proj}.bias`, [inner]);
    }
    s.set(`${b}.attn1.to_out.0.weight`, [inner, inner]);
    s.set(`${b}.attn1.to_out.0.bias`, [inner]);
    s.set(`${b}.attn2.to_q.weight`, [crossInner, inner]);
    s.set(`${b}.attn2.to_q.bias`, [crossInner]);
    for (const proj of ['to_k', 'to_v']) {
      s.set(`${b}.attn2.${proj}.weight`, [crossInner, c.cross_attention_dim!]);
      s.set(`${b}.attn2.${proj}.bias`, [crossInner]);
    }
    s.set(`${b}.attn2.to_out.0.weight`, [inner, crossInner]);
    s.set(`${b}.attn2.to_out.0.bias`, [inner]);
    if (c.qk_norm) {
      for (const n of ['norm_q', 'norm_k']) {
        s.set(`${b}.attn1.${n}.weight`, [inner]);
        s.set(`${b}.attn2.${n}.weight`, [crossInner]);
      }
    }
    if (c.norm_elementwise_affine) {
      s.set(`${b}.norm2.weight`, [inner]);
      s.set(`${b}.norm2.bias`, [inner]);
    }
    s.set(`${b}.ff.conv_inverted.weight`, [2 * ffHidden, inner, 1, 1]);
    s.set(`${b}.ff.conv_inverted.bias`, [2 * ffHidden]);
    s.set(`${b}.ff.conv_depth.weight`, [2 * ffHidden, 1, 3, 3]);
    s.set(`${b}.ff.conv_depth.bias`, [2 * ffHidden]);
    s.set(`${b}.ff.conv_point.weight`, [inner, ffHidden, 1, 1]);
  }
  s.set('scale_shift_table', [2, inner]);
  s.set('proj_out.weight', [p * p * outChannels, inner]);
  s.set('proj_out.bias', [p * p * outChannels]);
  return s;
}

/**
 * Multiply-adds ×2 of one denoising step, from the config and the input sizes (the benchmark's FLOP count): the
 * caption MLP and the cross-attention K/V are left out, since a request computes them once for all its steps.
 */
export function ditStepFlops(c: LinearDitConfig, batch: number, height: number, width: number, captionLength: number): number {
  const { inner, crossInner, ffHidden, outChannels, p } = ditDims(c);
  const n = (height / p) * (width / p);
  const d = c.attention_head_dim;
  const perToken =
    4 * inner * inner + // q, k, v, out
    2 * c.num_attention_heads * d * (d + 1) + // K^T[V,1] and Q·KV, amortised per token
    2 * inner * crossInner + // cross q, out
    2 * captionLength * crossInner + // scores and weighted sum
    2 * ffHidden * inner + // conv_inverted
    2 * ffHidden * 9 + // depthwise 3×3
    ffHidden * inner; // conv_point
  const edges = 2 * n * (c.in_channels * p * p * inner + inner * p * p * outChannels);
  return batch * (c.num_layers * 2 * n * perToken + edges);
}

// ---- int8: which layers, and which share an input ----

const BLOCK_KEY = /^(transformer_blocks\.\d+)\.(.+)$/;

/** Whether a linear (checkpoint key prefix) runs W8A8 under precision int8. */
export function isDitInt8Layer(prefix: string): boolean {
  const m = BLOCK_KEY.exec(prefix);
  return m !== null && (DIT_INT8_LAYERS as readonly string[]).includes(m[2]!);
}

/** Quantized layers reading the same activation share one smoothing factor: the self-attention q, k and v. */
export function ditSmoothingGroup(prefix: string): string {
  const m = BLOCK_KEY.exec(prefix);
  return m && /^attn1\.to_[qkv]$/.test(m[2]!) ? `${m[1]}.attn1.to_qkv` : prefix;
}

/** Output channels [start, end) of a layer. */
type Rows = [start: number, end: number];

/** How the graph treats the int8 layers: quantized (with the calibration's result per group) or instrumented for calibration. */
type Int8Plan = { kind: 'quantize'; options: Int8Options } & Calibration | { kind: 'calibrate' };

/** What calibration decides per group of int8 layers: smoothing factors and the channels split out to fp32. */
interface Calibration {
  smoothing: Map<string, Float32Array>;
  outliers: Map<string, number[]>;
}

/** A row-major matrix of `width`-value rows with a row of `value`s inserted after every `every` rows. */
function insertRowsAfterEvery(m: Float32Array, width: number, every: number, value: number): Float32Array {
  const rows = m.length / width;
  if (rows % every !== 0) throw new Error(`internal: ${rows} rows are not groups of ${every}`);
  const out = new Float32Array((rows + rows / every) * width);
  for (let group = 0; group < rows / every; group++) {
    out.set(m.subarray(group * every * width, (group + 1) * every * width), group * (every + 1) * width);
    out.fill(value, ((group + 1) * (every + 1) - 1) * width, (group + 1) * (every + 1) * width);
  }
  return out;
}

/** About how many chunks the Mix-FFN's hidden channels run in: a chunk's [2048, 720] tensors at 1024 px fit a 32 MiB L3 */
const MIX_FFN_CHUNKS = 4;
/** ONNX Runtime's NCHWc block on AVX-512: chunk sizes are multiples of it, so each depthwise conv stays blocked */
const NCHWC_BLOCK = 16;

/** The Mix-FFN's hidden channels [0, f) as [start, end) chunks of NCHWC_BLOCK multiples (the last takes the rest). */
function mixFfnChunks(f: number): Rows[] {
  const size = Math.max(NCHWC_BLOCK, Math.ceil(f / MIX_FFN_CHUNKS / NCHWC_BLOCK) * NCHWC_BLOCK);
  const chunks: Rows[] = [];
  for (let start = 0; start < f; start += size) chunks.push([start, Math.min(f, start + size)]);
  return chunks;
}

// ---- the graph ----

class DitGraph {
  /** the graph being emitted into: the step graph, or the caption graph while its half is built */
  g: GraphBuilder;
  private readonly stepGraph: GraphBuilder;
  private readonly captionGraph: GraphBuilder;
  private readonly weights: CheckpointWeights;
  readonly dims: ReturnType<typeof ditDims>;
  /** per smoothing group: the smoothed activation (quantize) or the recorded statistic (calibrate) */
  private readonly groupInputs = new Map<string, string>();
  /** per group with outlier channels: those channels of its input, [M, k] */
  private readonly groupOutliers = new Map<string, string>();
  /** Mix-FFN image shapes [B,h,w,c] by channel count c */
  private readonly nhwcShapes = new Map<number, string>();

  constructor(
    readonly c: LinearDitConfig,
    ckpt: Checkpoint,
    dir: string,
    private readonly int8?: Int8Plan,
  ) {
    this.stepGraph = this.g = new GraphBuilder('sana_transformer', dir);
    this.captionGraph = new GraphBuilder('sana_caption', dir, undefined, CAPTION_GRAPH);
    this.weights = new CheckpointWeights(ckpt, ditTensorShapes(c));
    this.dims = ditDims(c);
  }

  /** A checkpoint tensor as an fp32 weight, shape-checked; `as` reshapes it (1×1 conv → matrix). */
  w(key: string, as?: number[]): string {
    return this.g.weight(key, as ?? this.weights.shape(key), this.weights.read(key));
  }

  /**
   * Rows [start, end) of a checkpoint tensor (its leading axis) as an fp32 weight, the whole tensor without `rows`;
   * `flat` stores each row as one axis (1×1 conv → matrix).
   */
  wRows(key: string, rows?: Rows, flat = false): string {
    const [rowCount, ...rest] = this.weights.shape(key);
    const rowShape = flat ? [rest.reduce((a, b) => a * b, 1)] : rest;
    if (!rows) return this.w(key, [rowCount!, ...rowShape]);
    const rowSize = rest.reduce((a, b) => a * b, 1);
    if (rows[0] < 0 || rows[1] > rowCount! || rows[0] >= rows[1]) throw new Error(`internal: rows [${rows}] of ${key}`);
    return this.g.weight(`${key}[${rows[0]}:${rows[1]}]`, [rows[1] - rows[0], ...rowShape], this.weights.read(key).subarray(rows[0] * rowSize, rows[1] * rowSize));
  }

  /**
   * x [M,in] · Wᵀ + b with the checkpoint's [out,in] weight used in place (Gemm transB), or W8A8 under int8;
   * `rows` takes only output channels [start, end) of the layer. `onesAfter` (W8A8 layers only) appends an output
   * channel of exactly 1 after every that many: a zero weight row with bias 1, so the GEMM writes the ones column the
   * attention needs (headsWithOnes) and no Pad pass copies the tensor again.
   */
  linear2d(x: string, prefix: string, bias = true, rows?: Rows, onesAfter?: number): string {
    const shape = this.weights.shape(`${prefix}.weight`);
    const inDim = shape.slice(1).reduce((a, b) => a * b, 1);
    const [start, end] = rows ?? [0, shape[0]!];
    const outDim = end - start;
    if (this.int8 && isDitInt8Layer(prefix)) {
      const group = ditSmoothingGroup(prefix);
      if (this.int8.kind === 'calibrate') {
        // max |x| per input channel over all tokens, a graph output named after the group
        if (!this.groupInputs.has(group)) {
          const absMax = this.g.op('ReduceMax', [this.g.op('Abs', [x]), this.g.ints([0])], { keepdims: 0 }); // [in]
          this.g.output(absMax, `absmax.${group}`, ElemType.FLOAT, [inDim]);
          this.groupInputs.set(group, absMax);
        }
      } else {
        const { g } = this;
        const original = this.weights.read(`${prefix}.weight`).subarray(start * inDim, end * inDim);
        const f = this.int8.smoothing.get(group);
        const outliers = this.int8.outliers.get(group) ?? [];
        // W·diag(f) into the weight, X·diag(1/f) once per group (shared by q, k, v); outlier channels are zero in both
        const weight = f ? scaleInputChannels(original.slice(), outDim, inDim, f) : outliers.length > 0 ? original.slice() : original;
        for (let r = 0; r < outDim; r++) for (const i of outliers) weight[r * inDim + i] = 0;
        if ((f || outliers.length > 0) && !this.groupInputs.has(group)) {
          const inverse = f ? f.map((v) => 1 / v) : new Float32Array(inDim).fill(1);
          for (const i of outliers) inverse[i] = 0;
          this.groupInputs.set(group, g.mul(x, g.weight(`${group}.smooth_inverse`, [inDim], inverse)));
          if (outliers.length > 0) {
            this.groupOutliers.set(group, g.op('Gather', [x, g.constant(BigInt64Array.from(outliers, BigInt), [outliers.length])], { axis: 1 })); // [M,k]
          }
        }
        const input = this.groupInputs.get(group) ?? x;
        const name = rows ? `${prefix}[${start}:${end}]` : onesAfter ? `${prefix}+ones` : prefix;
        // the ones channels: zero weight rows (and outlier columns), bias 1
        const ones = (m: Float32Array, width: number, one: number) => (onesAfter ? insertRowsAfterEvery(m, width, onesAfter, one) : m);
        const outWithOnes = onesAfter ? outDim + outDim / onesAfter : outDim;
        const biasValues = () => (bias ? this.weights.read(`${prefix}.bias`).subarray(start, end) : new Float32Array(outDim));
        const biasInput = onesAfter ? g.weight(`${name}.bias`, [outWithOnes], ones(biasValues(), 1, 1)) : bias ? this.wRows(`${prefix}.bias`, rows) : undefined;
        const y = g.int8Linear(input, name, ones(weight, inDim, 0), [outWithOnes, inDim], biasInput, this.int8.options.activations);
        if (outliers.length === 0) return y;
        // the split-out channels in fp32: X[:, O] · W[:, O]ᵀ
        const columns = new Float32Array(outDim * outliers.length);
        for (let r = 0; r < outDim; r++) outliers.forEach((i, j) => (columns[r * outliers.length + j] = original[r * inDim + i]!));
        const outlierWeight = g.weight(`${name}.outlier_columns`, [outWithOnes, outliers.length], ones(columns, outliers.length, 0));
        return g.add(y, g.op('Gemm', [this.groupOutliers.get(group)!, outlierWeight], { transB: 1 }));
      }
    }
    if (onesAfter) throw new Error(`internal: ${prefix} is not a W8A8 layer: its ones channels need a Pad`);
    const inputs = [x, this.wRows(`${prefix}.weight`, rows, true)];
    if (bias) inputs.push(this.wRows(`${prefix}.bias`, rows));
    return this.g.op('Gemm', inputs, { transB: 1 });
  }

  /** x [B,T,in] → [B,T,out] through a 2-D Gemm (out: the `rows` range when given). */
  linear(x: string, prefix: string, batch: string, bias = true, rows?: Rows): string {
    const shape = this.weights.shape(`${prefix}.weight`);
    const inDim = shape.slice(1).reduce((a, b) => a * b, 1);
    const y = this.linear2d(this.g.reshape(x, [-1, inDim]), prefix, bias, rows);
    return this.g.reshape(y, this.g.concat([batch, this.g.ints([-1, rows ? rows[1] - rows[0] : shape[0]!])], 0));
  }

  /**
   * x [B,T,in] → [B,T,heads,d+1]: the layer's output split into heads of d channels, each followed by a channel of
   * exactly 1 (the ones column of the attention below). A W8A8 layer computes the ones itself (linear2d `onesAfter`);
   * otherwise, or when an RMSNorm must see the output first, a Pad appends them.
   */
  headsWithOnes(x: string, prefix: string, batch: string, bias: boolean, heads: number, d: number, normKey?: string): string {
    const { g } = this;
    const inDim = this.weights.shape(`${prefix}.weight`)[1]!;
    if (!normKey && this.int8?.kind === 'quantize' && isDitInt8Layer(prefix)) {
      return g.reshape(this.linear2d(g.reshape(x, [-1, inDim]), prefix, bias, undefined, d), g.concat([batch, g.ints([-1, heads, d + 1])], 0));
    }
    let y = this.linear(x, prefix, batch, bias); // [B,T,h·d]
    if (normKey) y = this.rmsNorm(y, normKey, QK_NORM_EPS);
    return g.op('Pad', [g.reshape(y, [0, 0, heads, d]), g.ints([0, 0, 0, 0, 0, 0, 0, 1]), g.scalar(1)]); // [B,T,h,d+1]
  }

  layerNorm(x: string, eps: number, affinePrefix?: string): string {
    const { g } = this;
    const scale = affinePrefix ? this.w(`${affinePrefix}.weight`) : g.constant(new Float32Array(this.dims.inner).fill(1));
    const inputs = [x, scale];
    if (affinePrefix) inputs.push(this.w(`${affinePrefix}.bias`));
    return g.op('LayerNormalization', inputs, { axis: -1, epsilon: float(eps) });
  }

  /** diffusers RMSNorm with weight: x · rsqrt(mean(x²) + eps) · w */
  rmsNorm(x: string, weightKey: string, eps: number): string {
    return this.g.op('SimplifiedLayerNormalization', [x, this.w(weightKey)], { axis: -1, epsilon: float(eps) });
  }

  /**
   * x·(1+scale)+shift, with onePlusScale and shift [B,1,D]. Not folded into the LayerNormalization's scale and bias:
   * ONNX Runtime broadcasts those, but its results then depend on the batch size, and a batched step must give each
   * request the bits it gets alone.
   */
  modulate(x: string, onePlusScale: string, shift: string): string {
    return this.g.add(this.g.mul(x, onePlusScale), shift);
  }

  /** Timesteps(256, flip_sin_to_cos) → [cos(t·f), sin(t·f)], frequencies rounded to float32 as torch does. */
  timestepSinusoid(timestep: string): string {
    const { g } = this;
    const half = TIMESTEP_CHANNELS / 2;
    const freqs = new Float32Array(half);
    const logMax = Math.fround(-Math.log(10000));
    for (let i = 0; i < half; i++) freqs[i] = Math.fround(Math.exp(Math.fround(Math.fround(logMax * i) / half)));
    const args = g.mul(g.unsqueeze(timestep, [1]), g.constant(freqs, [1, half])); // [B,128]
    return g.concat([g.op('Cos', [args]), g.op('Sin', [args])], 1); // [B,256]
  }

  /** SANA's ReLU linear attention: out = (relu(Q)·(relu(K)ᵀ[V 1])) split into numerator / (denominator + 1e-15). */
  linearAttention(x: string, prefix: string, batch: string): string {
    const { g, c } = this;
    const { inner } = this.dims;
    const heads = c.num_attention_heads;
    const d = c.attention_head_dim;
    let q = this.linear(x, `${prefix}.to_q`, batch, c.attention_bias); // [B,N,D]
    let k = this.linear(x, `${prefix}.to_k`, batch, c.attention_bias);
    const vOnes = this.headsWithOnes(x, `${prefix}.to_v`, batch, c.attention_bias, heads, d); // [B,N,h,d+1]
    if (c.qk_norm) {
      q = this.rmsNorm(q, `${prefix}.norm_q.weight`, QK_NORM_EPS);
      k = this.rmsNorm(k, `${prefix}.norm_k.weight`, QK_NORM_EPS);
    }
    const headsView = (t: string) => g.reshape(t, [0, 0, heads, d]); // [B,N,h,d]
    const qh = g.transpose(g.relu(headsView(q)), [0, 2, 1, 3]); // [B,h,N,d]
    const kT = g.transpose(g.relu(headsView(k)), [0, 2, 3, 1]); // [B,h,d,N]
    const kv = g.matmul(kT, g.transpose(vOnes, [0, 2, 1, 3])); // [B,h,d,d+1]
    const out = g.matmul(qh, kv); // [B,h,N,d+1]
    const [num, den] = g.split(out, 3, [d, 1]);
    const attn = g.div(num, g.add(den, g.scalar(1e-15))); // [B,h,N,d]
    const merged = g.reshape(g.transpose(attn, [0, 2, 1, 3]), [0, 0, inner]); // [B,N,D]
    return this.linear(merged, `${prefix}.to_out.0`, batch);
  }

  /**
   * Cross-attention keys and values over the caption y [B,L,D]: kT [B,h,d+1,L], whose last row per head is the
   * caption mask's bias row (crossAttention), and v [B,h,L,d] (caption graph).
   */
  crossKeysValues(y: string, maskRows: string, prefix: string, batch: string): { kT: string; v: string } {
    const { g, c } = this;
    const heads = c.num_cross_attention_heads;
    const d = c.cross_attention_head_dim;
    let k = this.linear(y, `${prefix}.to_k`, batch); // [B,L,Dx]
    const v = this.linear(y, `${prefix}.to_v`, batch);
    if (c.qk_norm) k = this.rmsNorm(k, `${prefix}.norm_k.weight`, QK_NORM_EPS);
    return {
      kT: g.concat([g.transpose(g.reshape(k, [0, 0, heads, d]), [0, 2, 3, 1]), maskRows], 2), // [B,h,d+1,L]
      v: g.transpose(g.reshape(v, [0, 0, heads, d]), [0, 2, 1, 3]), // [B,h,L,d]
    };
  }

  /**
   * Softmax cross-attention over the caption tokens with the caption mask as an additive -10000 bias. The bias rides
   * in the scores' matmul: q gets a ones column and kT the row (1−m)·(-10000)/α, so α·[q 1]·kT = α·q·kᵀ + bias without
   * a pass over the [B,h,N,L] scores to add it. Attended positions add exactly 0 (the same bits as q·kᵀ alone); masked
   * ones get a softmax weight of exactly 0, as with the bias added, whenever their row attends anything.
   */
  crossAttention(x: string, kv: { kT: string; v: string }, prefix: string, batch: string): string {
    const { g, c } = this;
    const { crossInner } = this.dims;
    const heads = c.num_cross_attention_heads;
    const d = c.cross_attention_head_dim;
    const qOnes = this.headsWithOnes(x, `${prefix}.to_q`, batch, true, heads, d, c.qk_norm ? `${prefix}.norm_q.weight` : undefined); // [B,N,h,d+1]
    const qh = g.transpose(qOnes, [0, 2, 1, 3]); // [B,h,N,d+1]
    const scores = g.mul(g.matmul(qh, kv.kT), g.scalar(crossAttentionScale(d))); // [B,h,N,L]
    const attn = g.matmul(g.op('Softmax', [scores], { axis: -1 }), kv.v); // [B,h,N,d]
    const merged = g.reshape(g.transpose(attn, [0, 2, 1, 3]), [0, 0, crossInner]); // [B,N,Dx]
    return this.linear(merged, `${prefix}.to_out.0`, batch);
  }

  /**
   * GLUMBConv: 1×1 expand to 2·hidden, SiLU, 3×3 depthwise, GLU (value·SiLU(gate)), 1×1 project. The hidden channels
   * run in chunks (mixFfnChunks), each with its value and gate channels as separate 1×1 and depthwise convs: ONNX
   * Runtime reorders each into its blocked channel layout (NCHWc) and back to tokens-major by itself, instead of
   * splitting and transposing a 2·hidden tensor (an int8 Mix-FFN alone at 1024 px, batch 2: 64 → 53 ms), and a
   * chunk's tensors stay in the CPU's cache between those passes (a whole step at 1024 px: fp32 −9%, int8 −18%). A
   * chunk's output channels are each the same dot products as unchunked, so the results keep their bits; the GLU
   * chunks are concatenated for the 1×1 projection.
   */
  mixFfn(x: string, prefix: string, batch: string, grid: string): string {
    const { g } = this;
    const { ffHidden: f } = this.dims;
    const depthwise = (rows: Rows) => {
      const width = rows[1] - rows[0];
      const expanded = g.silu(this.linear(x, `${prefix}.conv_inverted`, batch, true, rows)); // [B,N,c]
      const image = g.transpose(g.reshape(expanded, this.nhwcShape(grid, width)), [0, 3, 1, 2]); // [B,c,h,w]
      const depth = [this.wRows(`${prefix}.conv_depth.weight`, rows), this.wRows(`${prefix}.conv_depth.bias`, rows)];
      return g.op('Conv', [image, ...depth], { group: width, kernel_shape: [3, 3], pads: [1, 1, 1, 1] }); // [B,c,h,w]
    };
    // each conv back to tokens-major on its own (ORT turns that into an NCHWc reorder straight to channels-last; the
    // Reshape keeps its transpose optimiser from moving the two transposes past the Mul into one slow Transpose)
    const tokensMajor = (image: string, width: number) => g.reshape(g.transpose(image, [0, 2, 3, 1]), [0, -1, width]); // [B,N,c]
    const chunks = mixFfnChunks(f).map(([s, e]) => g.mul(tokensMajor(depthwise([s, e]), e - s), tokensMajor(g.silu(depthwise([f + s, f + e])), e - s)));
    const glu = chunks.length === 1 ? chunks[0]! : g.concat(chunks, 2); // [B,N,F]
    return this.linear(glu, `${prefix}.conv_point`, batch, false); // [B,N,D]
  }

  /** [B,h,w,width] from the token grid [B,h,w], one node per width */
  private nhwcShape(grid: string, width: number): string {
    let shape = this.nhwcShapes.get(width);
    if (!shape) this.nhwcShapes.set(width, (shape = this.g.concat([grid, this.g.ints([width])], 0)));
    return shape;
  }

  block(i: number, x: string, kv: { kT: string; v: string }, t6: string, batch: string, grid: string): string {
    const { g, c } = this;
    const { inner } = this.dims;
    const b = `transformer_blocks.${i}`;
    // 1. modulation: table[6,D] + t6 viewed [B,6,D], split into six [B,1,D]
    const mod = g.add(this.w(`${b}.scale_shift_table`), g.reshape(t6, [0, 6, inner]));
    const [shiftMsa, scaleMsa, gateMsa, shiftMlp, scaleMlp, gateMlp] = g.split(mod, 1, [1, 1, 1, 1, 1, 1]);
    const one = g.scalar(1);
    // 2. self-attention (linear)
    const h1 = this.modulate(this.layerNorm(x, c.norm_eps), g.add(scaleMsa, one), shiftMsa);
    x = g.add(x, g.mul(gateMsa, this.linearAttention(h1, `${b}.attn1`, batch)));
    // 3. cross-attention on the un-normalised stream
    x = g.add(x, this.crossAttention(x, kv, `${b}.attn2`, batch));
    // 4. Mix-FFN
    const h2 = this.modulate(this.layerNorm(x, c.norm_eps, c.norm_elementwise_affine ? `${b}.norm2` : undefined), g.add(scaleMlp, one), shiftMlp);
    return g.add(x, g.mul(gateMlp, this.mixFfn(h2, `${b}.ff`, batch, grid)));
  }

  /**
   * The caption graph (caption.onnx): y = RMSNorm(MLP(caption)) [B,L,D] and from it every block's cross-attention
   * keys and values, outputs `cross_k.{i}` [B,h,d,L] and `cross_v.{i}` [B,h,L,d]. They depend on the caption only,
   * so the step graph takes them as inputs and the ONNX Runtime worker runs this graph once per caption (PrefixModel)
   * rather than at every denoising step.
   */
  private buildCaption(): void {
    this.g = this.captionGraph;
    const { g, c } = this;
    const heads = c.num_cross_attention_heads;
    const d = c.cross_attention_head_dim;
    const caption = g.input('encoder_hidden_states', ElemType.FLOAT, ['batch', 'caption_length', c.caption_channels]);
    const mask = g.input('encoder_attention_mask', ElemType.INT64, ['batch', 'caption_length']);
    const batch = g.shape(caption, 0, 1); // [1] int64
    // the mask as one more key row per head: (1−m)·(-10000)/α, [B,h,1,L] (crossAttention)
    const biasRow = g.mul(g.sub(g.scalar(1), g.cast(mask, ElemType.FLOAT)), g.scalar(MASK_BIAS / crossAttentionScale(d)));
    const maskRows = g.op('Expand', [g.unsqueeze(biasRow, [1, 2]), g.concat([batch, g.ints([heads, 1]), g.shape(mask, 1, 2)], 0)]);
    // MLP with tanh-GELU, then RMSNorm → y [B,L,D]
    const y = this.rmsNorm(
      this.linear(g.geluTanh(this.linear(caption, 'caption_projection.linear_1', batch)), 'caption_projection.linear_2', batch),
      'caption_norm.weight',
      CAPTION_NORM_EPS,
    );
    for (let i = 0; i < c.num_layers; i++) {
      const { kT, v } = this.crossKeysValues(y, maskRows, `transformer_blocks.${i}.attn2`, batch);
      g.output(kT, `cross_k.${i}`, ElemType.FLOAT, ['batch', heads, d + 1, 'caption_length']);
      g.output(v, `cross_v.${i}`, ElemType.FLOAT, ['batch', heads, 'caption_length', d]);
    }
    g.finish();
    this.g = this.stepGraph;
  }

  /** Writes caption.onnx and model.onnx (the step graph); returns the step graph's path. */
  build(): string {
    this.buildCaption();
    const { g, c } = this;
    const { inner, outChannels, p } = this.dims;
    const heads = c.num_cross_attention_heads;
    const d = c.cross_attention_head_dim;
    const hidden = g.input('hidden_states', ElemType.FLOAT, ['batch', c.in_channels, 'height', 'width']);
    const timestep = g.input('timestep', ElemType.FLOAT, ['batch']);
    const batch = g.shape(hidden, 0, 1); // [1] int64

    // patch embedding: conv p×p stride p → [B,D,h,w] → tokens [B,N,D]
    const patches = g.op('Conv', [hidden, this.w('patch_embed.proj.weight'), this.w('patch_embed.proj.bias')], {
      kernel_shape: [p, p],
      strides: [p, p],
    });
    const hw = g.shape(patches, 2, 4); // [h, w]
    let x = g.transpose(g.reshape(patches, [0, 0, -1]), [0, 2, 1]); // [B,N,D]
    if (c.interpolation_scale !== null) {
      x = g.add(x, g.input('pos_embed', ElemType.FLOAT, [1, 'tokens', inner])); // computed on the host, see sincosPosEmbed
    }

    // timestep: sinusoid → MLP → t [B,D]; t6 = linear(silu(t)) [B,6D]
    const tEmb = this.linear2d(
      g.silu(this.linear2d(this.timestepSinusoid(timestep), 'time_embed.emb.timestep_embedder.linear_1')),
      'time_embed.emb.timestep_embedder.linear_2',
    );
    const t6 = this.linear2d(g.silu(tEmb), 'time_embed.linear');

    // caption: the keys (with the mask's bias row) and values from the caption graph
    const crossKv = Array.from({ length: c.num_layers }, (_, i) => ({
      kT: g.input(`cross_k.${i}`, ElemType.FLOAT, ['batch', heads, d + 1, 'caption_length']),
      v: g.input(`cross_v.${i}`, ElemType.FLOAT, ['batch', heads, 'caption_length', d]),
    }));

    const grid = g.concat([batch, hw], 0); // [B,h,w]
    for (let i = 0; i < c.num_layers; i++) x = this.block(i, x, crossKv[i]!, t6, batch, grid);

    // final modulated norm: (table[2,D] + t[:,None]) → shift, scale
    const finalMod = g.add(this.w('scale_shift_table'), g.unsqueeze(tEmb, [1])); // [B,2,D]
    const [shift, scale] = g.split(finalMod, 1, [1, 1]);
    x = this.modulate(this.layerNorm(x, FINAL_NORM_EPS), g.add(scale, g.scalar(1)), shift);
    const out = this.linear(x, 'proj_out', batch); // [B,N,p·p·C]

    // unpatchify: [B,h,w,p,p,C] → [B,C,h,p,w,p] → [B,C,H,W]
    const six = g.reshape(out, g.concat([batch, hw, g.ints([p, p, outChannels])], 0));
    const image = g.reshape(
      g.transpose(six, [0, 5, 1, 3, 2, 4]),
      g.concat([batch, g.ints([outChannels]), g.mul(hw, g.ints([p]))], 0),
    );
    g.output(image, 'output', ElemType.FLOAT, ['batch', outChannels, 'height', 'width']);
    this.weights.assertAllUsed('model');
    return g.finish();
  }
}

/**
 * PatchEmbed's 2-D sin-cos table for an h×w token grid, [1, h·w, D]: the first D/2 channels encode the
 * column coordinate, the rest the row, positions scaled to base_size = sample_size/p and divided by
 * interpolation_scale; computed in float64 and rounded once, as diffusers does.
 */
export function sincosPosEmbed(c: LinearDitConfig, h: number, w: number): Float32Array {
  const { inner, p } = ditDims(c);
  const base = c.sample_size / p;
  const interp = c.interpolation_scale ?? 1;
  const quarter = inner / 4;
  const omega = new Float64Array(quarter);
  for (let k = 0; k < quarter; k++) omega[k] = 1 / 10000 ** (k / quarter);
  const f = Math.fround;
  const rowPos = (i: number) => f(f(i / f(h / base)) / f(interp));
  const colPos = (j: number) => f(f(j / f(w / base)) / f(interp));
  const out = new Float32Array(h * w * inner);
  for (let i = 0; i < h; i++) {
    for (let j = 0; j < w; j++) {
      const o = (i * w + j) * inner;
      const cp = colPos(j);
      const rp = rowPos(i);
      for (let k = 0; k < quarter; k++) {
        out[o + k] = Math.sin(cp * omega[k]);
        out[o + quarter + k] = Math.cos(cp * omega[k]);
        out[o + 2 * quarter + k] = Math.sin(rp * omega[k]);
        out[o + 3 * quarter + k] = Math.cos(rp * omega[k]);
      }
    }
  }
  return out;
}

/** sincosPosEmbed tables by token grid, kept for the few sizes a server sees (either engine's forwards reuse them). */
export class PosEmbedTables {
  private readonly tables = new Map<string, Float32Array>();

  constructor(private readonly config: LinearDitConfig) {}

  /** [h·w, inner] for an h×w token grid */
  get(h: number, w: number): Float32Array {
    const key = `${h}x${w}`;
    let table = this.tables.get(key);
    if (!table) {
      table = sincosPosEmbed(this.config, h, w);
      if (this.tables.size > 8) this.tables.clear();
      this.tables.set(key, table);
    }
    return table;
  }
}

export interface DitInputs {
  /** [B, in_channels, H, W] float32 */
  hiddenStates: HostTensor<Float32Array>;
  /** [B, L, caption_channels] float32 */
  encoderHiddenStates: HostTensor<Float32Array>;
  /** [B, L] int64 (1 keep / 0 drop) */
  encoderAttentionMask: HostTensor<BigInt64Array>;
  /** [B] float32 */
  timestep: HostTensor<Float32Array>;
}

/** Calibration of the smoothing factors: a 16×16 latent, timesteps across the schedule, one fixed seed. */
const CALIBRATION = { latentSize: 16, captionLength: 32, timesteps: [999, 750, 500, 250, 20], seed: 20240521 };

/**
 * Calibration per group of int8 layers: max |activation| per input channel from fp32 forwards of the model on seeded
 * noise latents and captions at timesteps across the schedule. With smoothing, max |weight| per input channel over
 * the group's weights gives f = smoothingFactors(α); with the outlier split, outlierChannels(ratio) picks the
 * channels that run fp32. Runs at compile time; the result is part of the compiled graph.
 */
async function calibrate(c: LinearDitConfig, ckpt: Checkpoint, out: string, options: Int8Options): Promise<Calibration> {
  const { smoothAlpha: alpha, outlierRatio } = options;
  const smoothing = new Map<string, Float32Array>();
  const outliers = new Map<string, number[]>();
  if (alpha === null && outlierRatio === null) return { smoothing, outliers };
  const dir = path.join(out, 'calibration');
  const modelFile = new DitGraph(c, ckpt, dir, { kind: 'calibrate' }).build();
  const session = await OrtSession.create(modelFile, {}, { modelPath: path.join(dir, `${CAPTION_GRAPH}.onnx`), keep: 1 });
  const activationMax = new Map<string, Float32Array>();
  try {
    const { latentSize: s, captionLength: l, seed } = CALIBRATION;
    const { inner, p } = ditDims(c);
    const feeds: Record<string, HostTensor> = {
      hidden_states: tensor(torchRandn([1, c.in_channels, s, s], seed), [1, c.in_channels, s, s]),
      encoder_hidden_states: tensor(torchRandn([1, l, c.caption_channels], seed + 1), [1, l, c.caption_channels]),
      encoder_attention_mask: tensor(new BigInt64Array(l).fill(1n), [1, l]),
    };
    if (c.interpolation_scale !== null) feeds.pos_embed = tensor(sincosPosEmbed(c, s / p, s / p), [1, (s / p) ** 2, inner]);
    for (const t of CALIBRATION.timesteps) {
      const outputs = await session.run({ ...feeds, timestep: tensor(new Float32Array([t * c.timestep_scale]), [1]) });
      for (const [name, value] of Object.entries(outputs)) {
        if (!name.startsWith('absmax.')) continue;
        const group = name.slice('absmax.'.length);
        const seen = activationMax.get(group);
        const v = value.data as Float32Array;
        if (!seen) activationMax.set(group, Float32Array.from(v));
        else for (let i = 0; i < v.length; i++) seen[i] = Math.max(seen[i]!, v[i]!);
      }
    }
  } finally {
    await session.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (outlierRatio !== null) for (const [group, act] of activationMax) outliers.set(group, outlierChannels(act, outlierRatio));
  if (alpha === null) return { smoothing, outliers };
  const shapes = ditTensorShapes(c);
  const weightMax = new Map<string, Float32Array>();
  for (const [key, shape] of shapes) {
    const prefix = key.replace(/\.weight$/, '');
    if (!key.endsWith('.weight') || !isDitInt8Layer(prefix)) continue;
    const group = ditSmoothingGroup(prefix);
    const inDim = shape.slice(1).reduce((a, b) => a * b, 1);
    weightMax.set(group, weightAbsMaxPerInput(ckpt.readF32(key, shape), shape[0], inDim, weightMax.get(group)));
  }
  for (const [group, act] of activationMax) smoothing.set(group, smoothingFactors(act, weightMax.get(group)!, alpha));
  return { smoothing, outliers };
}

/** Shape, dtype and finiteness checks of one forward's inputs (INVALID_ARGUMENT naming the field). */
export function validateDitInputs(c: LinearDitConfig, inputs: DitInputs): void {
  const { p } = ditDims(c);
  const hs = inputs.hiddenStates.dims;
  if (hs.length !== 4 || hs[1] !== c.in_channels) {
    throw new InvalidArgumentError('hidden_states', `shape [${hs}] must be [B, ${c.in_channels}, H, W]`);
  }
  const [b, , h, w] = hs;
  if (b < 1 || h < 1 || w < 1 || h % p !== 0 || w % p !== 0) {
    throw new InvalidArgumentError('hidden_states', `H and W must be positive multiples of patch_size ${p}, got ${h}×${w}`);
  }
  const e = inputs.encoderHiddenStates.dims;
  if (e.length !== 3 || e[0] !== b || e[2] !== c.caption_channels || e[1] < 1) {
    throw new InvalidArgumentError('encoder_hidden_states', `shape [${e}] must be [${b}, L, ${c.caption_channels}]`);
  }
  const m = inputs.encoderAttentionMask.dims;
  if (m.length !== 2 || m[0] !== b || m[1] !== e[1]) {
    throw new InvalidArgumentError('encoder_attention_mask', `shape [${m}] must be [${b}, ${e[1]}]`);
  }
  if (inputs.timestep.dims.length !== 1 || inputs.timestep.dims[0] !== b) {
    throw new InvalidArgumentError('timestep', `shape [${inputs.timestep.dims}] must be [${b}]`);
  }
  for (const [field, t] of [
    ['hidden_states', inputs.hiddenStates],
    ['encoder_hidden_states', inputs.encoderHiddenStates],
    ['timestep', inputs.timestep],
  ] as const) {
    const bad = firstNonFinite(t.data);
    if (bad >= 0) throw new InvalidArgumentError(field, `holds a non-finite value (${t.data[bad]}) at flat index ${bad}`);
  }
}

/**
 * Rows (batch × tokens) one ONNX Runtime run takes at most, as whole samples: MLAS's GEMM streams its left operand
 * once per column panel, and beyond about 4096 rows of 1152 channels that operand no longer stays in cache.
 * Measured on this 2-core machine (sana-600m, 2048 px, batch 2): 38.8 s as one run, 35.6 s as two; at 1024 px
 * batch 2 (2048 rows) one run is faster (8.3 s vs 8.5 s).
 */
const MAX_ROWS_PER_RUN = 4096;

/** A loaded SanaTransformer2DModel: forward() runs it in an ONNX Runtime worker. */
export class LinearDit {
  private readonly posTables: PosEmbedTables;

  private constructor(
    readonly config: LinearDitConfig,
    readonly session: OrtSession,
    readonly compileCacheHit: boolean,
    readonly precision: Precision,
  ) {
    this.posTables = new PosEmbedTables(config);
  }

  /** Loads `<dir>/config.json` and its safetensors (single or sharded, fp32/fp16/bf16), in fp32 or W8A8 int8. */
  static async load(dir: string, options: SessionOptions & PrecisionOptions = {}): Promise<LinearDit> {
    const { precision = 'fp32', int8, ...sessionOptions } = options;
    const configFile = path.join(dir, 'config.json');
    const config = loadLinearDitConfig(configFile);
    const ckpt = Checkpoint.open(dir, 'diffusion_pytorch_model');
    const int8Options = precision === 'int8' ? resolveInt8Options('denoiser', int8) : undefined;
    const code = [import.meta.url, new URL('../common/onnx-graph.ts', import.meta.url).href, new URL('../common/int8-recipe.ts', import.meta.url).href];
    const { dir: modelDir, hit } = await cachedCompile(
      { kind: 'linear-dit', inputs: [configFile, ...ckpt.files], options: int8Options ? { precision, ...int8Options } : {}, code },
      async (out) => {
        if (!int8Options) return void new DitGraph(config, ckpt, out).build();
        const calibration = await calibrate(config, ckpt, out, int8Options);
        new DitGraph(config, ckpt, out, { kind: 'quantize', options: int8Options, ...calibration }).build();
      },
    );
    const captionModel = { modelPath: path.join(modelDir, `${CAPTION_GRAPH}.onnx`), keep: KEPT_CAPTIONS };
    const session = await OrtSession.create(path.join(modelDir, 'model.onnx'), sessionOptions, captionModel);
    return new LinearDit(config, session, hit, precision);
  }

  validate(inputs: DitInputs): void {
    validateDitInputs(this.config, inputs);
  }

  private posEmbed(h: number, w: number): HostTensor<Float32Array> {
    return tensor(this.posTables.get(h, w), [1, h * w, ditDims(this.config).inner]);
  }

  /** The transformer's output sample [B, out_channels, H, W]. */
  async forward(inputs: DitInputs): Promise<HostTensor<Float32Array>> {
    this.validate(inputs);
    const [batch, , h, w] = inputs.hiddenStates.dims;
    const { p } = ditDims(this.config);
    const perRun = Math.max(1, Math.floor(MAX_ROWS_PER_RUN / ((h / p) * (w / p))));
    if (perRun >= batch) return this.run(inputs);
    // rows are independent samples: run them in groups and stack the outputs
    const outputs: HostTensor<Float32Array>[] = [];
    for (let start = 0; start < batch; start += perRun) {
      const end = Math.min(batch, start + perRun);
      outputs.push(
        await this.run({
          hiddenStates: batchRows(inputs.hiddenStates, start, end),
          encoderHiddenStates: batchRows(inputs.encoderHiddenStates, start, end),
          encoderAttentionMask: batchRows(inputs.encoderAttentionMask, start, end),
          timestep: batchRows(inputs.timestep, start, end),
        }),
      );
    }
    return concatRows(outputs);
  }

  private async run(inputs: DitInputs): Promise<HostTensor<Float32Array>> {
    const feeds: Record<string, HostTensor> = {
      hidden_states: inputs.hiddenStates,
      encoder_hidden_states: inputs.encoderHiddenStates,
      encoder_attention_mask: inputs.encoderAttentionMask,
      timestep: inputs.timestep,
    };
    if (this.config.interpolation_scale !== null) {
      const { p } = ditDims(this.config);
      feeds.pos_embed = this.posEmbed(inputs.hiddenStates.dims[2] / p, inputs.hiddenStates.dims[3] / p);
    }
    const { output } = await this.session.run(feeds);
    return output as HostTensor<Float32Array>;
  }

  async close(): Promise<void> {
    await this.session.close();
  }
}
