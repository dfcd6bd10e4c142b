// The W8A8 INT8 recipe, in one place for every backend that runs it: the ONNX Runtime CPU graphs (denoiser,
// text encoder) and the CUDA kernels of kernels/ (their TypeScript loader hands the addon the int8 weights and
// scales this module computes, so both backends start from the same bytes).
//
// As in the released SANA / SVDQuant (nunchaku) / ViDiT-Q code:
//   weights      symmetric int8, one scale per output channel: s_w[o] = max_i |W[o,i]| / 127, q = round(W / s_w)
//                (round half to even, clamped to [-127, 127]); quantized once, at compile time (the precision and
//                these options are part of the compile-cache key).
//   activations  dynamic, computed at run time from the tensor itself:
//                  GPU  symmetric int8 per token (row): s_x[t] = max_i |X[t,i]| / 127
//                  CPU  per model (CPU_ACTIVATION_GRANULARITY: the denoiser per tensor, the text encoder per
//                       token), both built by GraphBuilder.int8Linear:
//                       per-tensor  DynamicQuantizeLinear: asymmetric uint8 with one scale and zero point per
//                                   tensor; com.microsoft MatMulIntegerToFloat: u8×s8 → int32, fp32 epilogue (scales,
//                                   bias) fused in the kernel (what DynamicQuantizeMatMul does in one node, same bits);
//                                   ONNX Runtime's fastest int8 path on these CPUs (s8 activations run slower than fp32)
//                       per-token   the GPU's scheme: ReduceMax|x| per row, QuantizeLinear along axis 0 with zero
//                                   point 128 (= the symmetric int8 value + 128, so the int32 sums equal s8×s8 ones),
//                                   com.microsoft MatMulIntegerToFloat (u8×s8, per-column weight scales), × s_x[t], + bias
//                       Either way layers that read the same tensor (q, k and v; gate and up; the Mix-FFN's expand
//                       chunks) quantize it once and share the result.
//                       On a 4096×1152×1152 GEMM chain (2 cores): per-tensor 2.48×, per-token 2.16× the fp32 speed;
//                       in whole graphs the gap is smaller (Gemma-2 at 300 tokens: per-token 6% slower; Linear-DiT at
//                       1024 px: within noise). Per tensor is the denoiser's default: its error is small (quality
//                       report). The text encoder's error compounds over Gemma-2's 26 layers and classifier-free
//                       guidance amplifies it in the image, so it takes the finer scales: per token is its default
//                       (whole pipeline at SANA-600M shapes 28.4 → 33.8 dB PSNR against fp32; 39.8 dB with the
//                       two-pass layers below).
//                       The quality report (`npm run bench -- quality`) measures the error of either.
//                  two-pass (text encoder: isGemma2TwoPassLinear) the per-token int8 x_q, then the rounding residual
//                       x − s_x·x_q (|r| ≤ s_x/2) quantized again at s_x/254, both through MatMulIntegerToFloat with
//                       the same int8 weight and summed: about 16-bit activations from two int8 GEMMs (one more
//                       GEMM where an fp32 layer would cost about 3.4 int8 ones on this CPU).
//   GEMM         int32 accumulation, then an fp32 epilogue: y[t,o] = acc[t,o] · s_x[t] · s_w[o] + bias[o].
//   smoothing    optional SmoothQuant (Int8Options.smoothAlpha; off by default): per input channel i,
//                f[i] = max|X[:,i]|^α / max|W[:,i]|^(1-α). The denoiser calibrates max|X| at compile time (fp32
//                forwards of the model on seeded noise latents and captions at five timesteps); W·diag(f) is folded
//                into the weights before quantization and X·diag(1/f) is one Mul per group of layers that read the
//                same activation (q, k and v share one). The text encoder has no smoothing.
//   outliers     optional (Int8Options.outlierRatio; off by default; CPU graphs only): the mixed-precision split of
//                LLM.int8(). Input channels whose calibrated max|X| exceeds outlierRatio × the median channel's are
//                taken out of the int8 GEMM (their weight columns zeroed before quantization, their activations
//                zeroed by the same Mul as the smoothing) and run as an fp32 GEMM over those few channels, added to
//                the int8 result. Smoothing alone spreads a ×50 channel's range over weights and activations;
//                the split keeps it out of both scales. Calibrated like smoothing, with it or alone.
//
// Quantized layers (checkpoint key suffixes below); everything else stays fp32: patch embedding, timestep and
// caption embeddings, adaLN tables, norms, the final projection, the cross-attention K/V over the caption, the
// depthwise conv, the linear-attention KV state and the cross-attention softmax; in Gemma-2 the token embedding,
// RMSNorms, RoPE and the attention scores/softmax. The DC-AE decoder runs fp32.

export const PRECISIONS = ['fp32', 'int8'] as const;
export type Precision = (typeof PRECISIONS)[number];

export const INT8_MAX = 127;

/** Linear-DiT (SanaTransformer2DModel) block layers that run W8A8, relative to `transformer_blocks.{i}.`. */
export const DIT_INT8_LAYERS = [
  'attn1.to_q',
  'attn1.to_k',
  'attn1.to_v',
  'attn1.to_out.0',
  'attn2.to_q',
  'attn2.to_out.0',
  'ff.conv_inverted',
  'ff.conv_point',
] as const;

/** Gemma-2 decoder layer linears that run W8A8, relative to `layers.{i}.`. */
export const GEMMA2_INT8_LAYERS = [
  'self_attn.q_proj',
  'self_attn.k_proj',
  'self_attn.v_proj',
  'self_attn.o_proj',
  'mlp.gate_proj',
  'mlp.up_proj',
  'mlp.down_proj',
] as const;

/**
 * Gemma-2 linears whose activations take two int8 passes (GraphBuilder.int8Linear `passes`, per-token only): every
 * linear of the first GEMMA2_TWO_PASS_FIRST_LAYERS decoder layers, whose error the later layers amplify, and in every
 * layer those of GEMMA2_TWO_PASS_LAYERS. Measured on gemma-2-2b random weights, 300-token prompt with the instruction
 * prefix (error power: 1 − cosine of the embeddings vs fp32): all one pass 8.1e-4; first two layers fp32 4.3e-4;
 * last two layers or q/k_proj fp32: no change; two-pass down_proj 5.4e-4, v/o/down_proj 4.0e-4; first two layers +
 * down_proj 3.7e-4 (whole-pipeline latents cosine 0.99894); first three layers + v/o/down_proj 3.1e-4 (this recipe).
 * It costs about 43% more int8 GEMM work than one pass everywhere.
 */
export const GEMMA2_TWO_PASS_FIRST_LAYERS = 3;
export const GEMMA2_TWO_PASS_LAYERS: readonly (typeof GEMMA2_INT8_LAYERS)[number][] = ['self_attn.v_proj', 'self_attn.o_proj', 'mlp.down_proj'];

export function isGemma2TwoPassLinear(layer: number, name: (typeof GEMMA2_INT8_LAYERS)[number]): boolean {
  return layer < GEMMA2_TWO_PASS_FIRST_LAYERS || GEMMA2_TWO_PASS_LAYERS.includes(name);
}

export type ActivationGranularity = 'per-token' | 'per-tensor';
export const ACTIVATION_GRANULARITIES: readonly ActivationGranularity[] = ['per-tensor', 'per-token'];

/** The models that run W8A8 on the CPU. */
export type Int8Model = 'denoiser' | 'text-encoder';

/**
 * The CPU graphs' default activation scheme per model: ONNX Runtime's per-tensor uint8 path (DynamicQuantizeLinear
 * + MatMulIntegerToFloat) for the denoiser; per token (the GPU's scheme: symmetric, QuantizeLinear along the rows +
 * MatMulIntegerToFloat) for the text encoder, whose per-tensor error dominated the whole pipeline's.
 */
export const CPU_ACTIVATION_GRANULARITY: Record<Int8Model, ActivationGranularity> = { denoiser: 'per-tensor', 'text-encoder': 'per-token' };

export interface Int8Options {
  /** SmoothQuant migration strength α in [0, 1]; null switches smoothing off. */
  smoothAlpha: number | null;
  /** input channels above this multiple of the median channel's calibrated max|X| run in fp32; null: off */
  outlierRatio: number | null;
  /** dynamic activation scales: one per tensor (CPU fast path) or one per token (row) */
  activations: ActivationGranularity;
}


/** What a model loader takes besides its ONNX Runtime session options. */
export interface PrecisionOptions {
  precision?: Precision;
  int8?: Partial<Int8Options>;
}

/** A `--precision` / SANA_PRECISION value, checked: the message names the field and the accepted values. */
export function parsePrecision(value: string, field = 'precision'): Precision {
  if (!(PRECISIONS as readonly string[]).includes(value)) throw new Error(`${field} must be one of ${PRECISIONS.join(', ')}, got "${value}"`);
  return value as Precision;
}

/** The int8 options a model's graph compiles with, complete and checked (they are part of the compile-cache key). */
export function resolveInt8Options(model: Int8Model, partial: Partial<Int8Options> = {}): Int8Options {
  const o = { smoothAlpha: null, outlierRatio: null, activations: CPU_ACTIVATION_GRANULARITY[model], ...partial };
  if (o.smoothAlpha !== null && !(o.smoothAlpha >= 0 && o.smoothAlpha <= 1)) throw new Error(`int8 smoothAlpha must be in [0, 1] or null, got ${o.smoothAlpha}`);
  if (o.outlierRatio !== null && !(o.outlierRatio > 1)) throw new Error(`int8 outlierRatio must be > 1 or null, got ${o.outlierRatio}`);
  if (!ACTIVATION_GRANULARITIES.includes(o.activations)) throw new Error(`int8 activations must be one of ${ACTIVATION_GRANULARITIES.join(', ')}, got ${o.activations}`);
  return o;
}

/** A quantized [rows, cols] weight transposed to [cols, rows] — the [in, out] layout MatMulInteger's B takes. */
export function transposeInt8(q: QuantizedMatrix): Int8Array {
  const t = new Int8Array(q.values.length);
  for (let r = 0; r < q.rows; r++) for (let c = 0; c < q.cols; c++) t[c * q.rows + r] = q.values[r * q.cols + c]!;
  return t;
}

/** max_o |W[o, i]| per input channel i of a row-major [out, in] weight (smoothing's weight statistic). */
export function weightAbsMaxPerInput(w: Float32Array, rows: number, cols: number, into: Float32Array = new Float32Array(cols)): Float32Array {
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) into[c] = Math.max(into[c]!, Math.abs(w[r * cols + c]!));
  return into;
}

/** W[o, i] · f[i] in place: a smoothing factor folded into a row-major [out, in] weight. */
export function scaleInputChannels(w: Float32Array, rows: number, cols: number, f: Float32Array): Float32Array {
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) w[r * cols + c] = Math.fround(w[r * cols + c]! * f[c]!);
  return w;
}

/** Round half to even, as torch.round, CUDA's __float2int_rn and ONNX QuantizeLinear do. */
export function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function quantizeValue(v: number, scale: number): number {
  if (scale === 0) return 0;
  return Math.max(-INT8_MAX, Math.min(INT8_MAX, roundHalfEven(v / scale)));
}

export interface QuantizedMatrix {
  /** [rows, cols] row-major int8 values. */
  values: Int8Array;
  /** One scale per row (output channel of a weight, token of an activation). */
  scales: Float32Array;
  rows: number;
  cols: number;
}

/** Symmetric int8 with one scale per row of a row-major [rows, cols] matrix (weights: [out, in]). */
export function quantizeRows(m: Float32Array, rows: number, cols: number): QuantizedMatrix {
  if (m.length !== rows * cols) throw new Error(`quantizeRows: ${m.length} values is not ${rows}×${cols}`);
  const values = new Int8Array(rows * cols);
  const scales = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let absMax = 0;
    for (let c = 0; c < cols; c++) absMax = Math.max(absMax, Math.abs(m[r * cols + c]!));
    const scale = Math.fround(absMax / INT8_MAX);
    scales[r] = scale;
    for (let c = 0; c < cols; c++) values[r * cols + c] = quantizeValue(m[r * cols + c]!, scale);
  }
  return { values, scales, rows, cols };
}

/** The weight half of the recipe: W [out, in] → int8 with per-output-channel scales. */
export const quantizeWeight = quantizeRows;

/** The GPU activation half: X [tokens, in] → int8 with per-token scales. */
export const quantizeActivationPerToken = quantizeRows;

/**
 * SmoothQuant factors per input channel from calibration maxima: f[i] = max|X_i|^α / max|W_i|^(1-α), with channels
 * that never fire (or weights that are zero) left at 1. Dividing X by f and multiplying W's column i by f leaves X·Wᵀ
 * unchanged in exact arithmetic and moves activation outliers into the weights.
 */
export function smoothingFactors(activationAbsMax: Float32Array, weightAbsMaxPerInput: Float32Array, alpha: number): Float32Array {
  if (activationAbsMax.length !== weightAbsMaxPerInput.length) throw new Error('smoothingFactors: channel counts differ');
  if (!(alpha >= 0 && alpha <= 1)) throw new Error(`smoothingFactors: alpha must be in [0, 1], got ${alpha}`);
  const f = new Float32Array(activationAbsMax.length);
  for (let i = 0; i < f.length; i++) {
    const a = activationAbsMax[i]!;
    const w = weightAbsMaxPerInput[i]!;
    f[i] = a > 0 && w > 0 ? Math.max(1e-5, Math.fround(a ** alpha / w ** (1 - alpha))) : 1;
  }
  return f;
}

/** Input channels whose max |X| exceeds ratio × the median channel's (the outlier split's channels), ascending. */
export function outlierChannels(activationAbsMax: Float32Array, ratio: number): number[] {
  const sorted = Float32Array.from(activationAbsMax).sort();
  const median = sorted[sorted.length >> 1]!;
  const out: number[] = [];
  activationAbsMax.forEach((v, i) => {
    if (v > ratio * median) out.push(i);
  });
  return out;
}

/** Reference W8A8 GEMM (per-token × per-channel): y = (Xq · Wqᵀ) · s_x[t] · s_w[o] + bias, int32 accumulation. */
export function referenceW8A8(x: QuantizedMatrix, w: QuantizedMatrix, bias?: Float32Array): Float32Array {
  if (x.cols !== w.cols) throw new Error(`referenceW8A8: inner sizes ${x.cols} and ${w.cols} differ`);
  const y = new Float32Array(x.rows * w.rows);
  for (let t = 0; t < x.rows; t++) {
    for (let o = 0; o < w.rows; o++) {
      let acc = 0;
      for (let i = 0; i < x.cols; i++) acc += x.values[t * x.cols + i]! * w.values[o * w.cols + i]!;
      y[t * w.rows + o] = Math.fround(Math.fround(acc * x.scales[t]! * w.scales[o]!) + (bias ? bias[o]! : 0));
    }
  }
  return y;
}

// ---- the error measures the recipe is judged by (quality report, tests, CPU-vs-GPU agreement) ----

/** Cosine similarity of two equally long vectors, accumulated in float64; 1 when both are zero. */
export function cosineSimilarity(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`cosineSimilarity: lengths ${a.length} and ${b.length} differ`);
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return na === 0 && nb === 0 ? 1 : dot / Math.sqrt(na * nb);
}

/** max |a − b| / max |reference|: the largest error relative to the reference's range. */
export function maxRelativeError(reference: ArrayLike<number>, b: ArrayLike<number>): number {
  if (reference.length !== b.length) throw new Error(`maxRelativeError: lengths ${reference.length} and ${b.length} differ`);
  let err = 0;
  let range = 0;
  for (let i = 0; i < reference.length; i++) {
    err = Math.max(err, Math.abs(reference[i]! - b[i]!));
    range = Math.max(range, Math.abs(reference[i]!));
  }
  return range === 0 ? (err === 0 ? 0 : Infinity) : err / range;
}

/** PSNR in dB of two uint8 images against the 255 peak; Infinity when identical. */
export function psnrUint8(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) throw new Error(`psnrUint8: lengths ${a.length} and ${b.length} differ`);
  let se = 0;
  for (let i = 0; i < a.length; i++) se += (a[i]! - b[i]!) ** 2;
  return se === 0 ? Infinity : 10 * Math.log10((255 * 255 * a.length) / se);
}
