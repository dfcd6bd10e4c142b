// The decoder of SANA's deep-compression autoencoder (diffusers' AutoencoderDC, DC-AE F32C32) as an ONNX graph.
//
//   latent z [B,Cz,h,w] ─ conv_in 3×3 (+ z repeated channel-wise: the in-shortcut) ─► [B,C₅,h,w]
//   stages i = n-1 … 0 (up_blocks[i]), each at 2× the resolution of the one before:
//     DCUpBlock2d   x ─ nearest ×2 ─ conv 3×3 ─┐            (or conv 3×3 to 4·C ─ pixel-shuffle)
//                   x ─ repeat channels ─ pixel-shuffle ─ + ─► [B,Cᵢ,2H,2W]      (the up-shortcut)
//     ResBlock      x + norm(conv2(act(conv1(x))))
//     EfficientViT  x + norm(to_out(multi-scale ReLU linear attention(x)))                    (context)
//                   x + RMSNorm(conv_point(GLU(dw3×3(SiLU(conv_inverted(x))))))             (local: GLU MBConv)
//   RMSNorm over channels ─ act ─ conv_out 3×3 (or a last DCUpBlock2d without shortcut) ─► sample [B,3,32h,32w]
//
// Everything stays NCHW so every conv is one ORT Conv (ORT runs them in its blocked NCHWc layout); the ×2
// nearest + 3×3 conv up-sampler is built as four 2×2 convs on the small input (see upBlock). Weights are addressed
// by the checkpoint's own keys (decoder.*; the encoder.* half of a released checkpoint is ignored) and compiled
// once per checkpoint content.
import path from 'node:path';
import { z } from 'zod';
import { CheckpointWeights } from '../common/checkpoint-weights.ts';
import { cachedCompile } from '../common/compile-cache.ts';
import { ConfigError, loadConfig, unsupported } from '../common/config.ts';
import { InvalidArgumentError } from '../common/errors.ts';
import { ElemType, float, GraphBuilder } from '../common/onnx-graph.ts';
import { OrtSession, type SessionOptions } from '../common/ort-session.ts';
import { Checkpoint } from '../common/safetensors.ts';
import { firstNonFinite, type HostTensor } from '../common/tensor.ts';

// ---- config.json of vae/ (keys as diffusers writes them; encoder_* keys are accepted and unused) ----
const perStage = <T extends z.ZodType>(item: T) => z.union([item, z.array(item)]);
export const DcAeConfig = z.object({
  _class_name: z.string().optional(),
  in_channels: z.number().int().positive().default(3),
  latent_channels: z.number().int().positive().default(32),
  attention_head_dim: z.number().int().positive().default(32),
  decoder_block_types: perStage(z.string()).default('ResBlock'),
  decoder_block_out_channels: z.array(z.number().int().positive()).min(1).default([128, 256, 512, 512, 1024, 1024]),
  decoder_layers_per_block: z.array(z.number().int().nonnegative()).default([3, 3, 3, 3, 3, 3]),
  decoder_qkv_multiscales: z.array(z.array(z.number().int().positive())).default([[], [], [], [5], [5], [5]]),
  upsample_block_type: z.string().default('pixel_shuffle'),
  decoder_norm_types: perStage(z.string()).default('rms_norm'),
  decoder_act_fns: perStage(z.string().nullable()).default('silu'),
  decoder_in_shortcut: z.boolean().default(true),
  decoder_conv_act_fn: z.string().default('relu'),
  scaling_factor: z.number().positive().default(1.0),
});
export type DcAeConfig = z.infer<typeof DcAeConfig>;

const NORM_EPS = 1e-5; // RMSNorm / BatchNorm2d eps everywhere in the decoder
const ATTENTION_EPS = 1e-15; // SanaMultiscaleLinearAttention's eps
const GLU_EXPAND_RATIO = 4; // GLUMBConv inside EfficientViTBlock
const UP_FACTOR = 2;

/** get_activation's names (lower-cased); null is nn.Identity (a ResBlock given no act_fn). */
const ACTIVATIONS = ['silu', 'swish', 'relu', 'gelu', 'mish'] as const;
type Activation = (typeof ACTIVATIONS)[number] | null;
type NormType = 'rms_norm' | 'batch_norm';
type BlockType = 'ResBlock' | 'EfficientViTBlock';

/** One up_blocks[i] entry, resolved from the config: what runs, in execution order. */
export interface UpStage {
  index: number;
  channels: number;
  /** the DCUpBlock2d at up_blocks[i].0, from the previous stage's channels */
  upsample?: { inChannels: number };
  blockType: BlockType;
  layers: number;
  normType: NormType;
  act: Activation;
  /** EfficientViT only */
  heads: number;
  kernelSizes: number[];
}

export interface DecoderLayout {
  /** in execution order: up_blocks[n-1] first */
  stages: UpStage[];
  /** channels of norm_out / conv_out */
  headChannels: number;
  /** conv_out is a DCUpBlock2d without shortcut (decoder_layers_per_block[0] == 0) */
  headUpsamples: boolean;
  interpolate: boolean;
  convAct: Exclude<Activation, null>;
  /** image pixels per latent pixel along each axis */
  spatialScale: number;
}

/**
 * Resolves the per-stage options of the decoder the way AutoencoderDC builds it, and rejects with a
 * ConfigError what the reference would reject or this implementation does not support.
 */
export function decoderLayout(c: DcAeConfig, file = 'vae/config.json'): DecoderLayout {
  const widths = c.decoder_block_out_channels;
  const n = widths.length;
  const list = <T>(key: string, v: T | T[]): T[] => {
    if (!Array.isArray(v)) return Array.from({ length: n }, () => v);
    if (v.length !== n) throw new ConfigError(file, `key "${key}" has ${v.length} entries, decoder_block_out_channels has ${n}`);
    return v;
  };
  const blockTypes = list('decoder_block_types', c.decoder_block_types);
  const normTypes = list('decoder_norm_types', c.decoder_norm_types);
  const acts = list('decoder_act_fns', c.decoder_act_fns);
  const layers = list('decoder_layers_per_block', c.decoder_layers_per_block);
  const scales = list('decoder_qkv_multiscales', c.decoder_qkv_multiscales);
  if (c.upsample_block_type !== 'interpolate' && c.upsample_block_type !== 'pixel_shuffle') {
    unsupported(file, 'upsample_block_type', c.upsample_block_type, 'expected "interpolate" or "pixel_shuffle"');
  }
  const activation = (key: string, v: string | null): Activation => {
    if (v === null) return null;
    const name = v.toLowerCase();
    if (!(ACTIVATIONS as readonly string[]).includes(name)) unsupported(file, key, v, `known activations: ${ACTIVATIONS.join(', ')}`);
    return name as Activation;
  };
  const convAct = activation('decoder_conv_act_fn', c.decoder_conv_act_fn);
  if (convAct === null) unsupported(file, 'decoder_conv_act_fn', null, 'an activation name is required');
  if (c.decoder_in_shortcut && widths[n - 1] % c.latent_channels !== 0) {
    throw new ConfigError(file, `decoder_in_shortcut repeats the ${c.latent_channels} latent channels, which must divide ${widths[n - 1]}`);
  }
  if (layers[0] === 0 && n < 2) throw new ConfigError(file, 'decoder_layers_per_block[0] = 0 needs at least two decoder stages');

  const stages: UpStage[] = [];
  let channels = widths[n - 1]; // after conv_in
  let spatialScale = 1;
  for (let i = n - 1; i >= 0; i--) {
    if (layers[i] === 0) continue; // no blocks and no up-sampling at this stage
    const stage: UpStage = {
      index: i,
      channels: widths[i],
      blockType: 'ResBlock',
      layers: layers[i],
      normType: 'rms_norm',
      act: null,
      heads: 0,
      kernelSizes: [],
    };
    if (i < n - 1) {
      if (channels !== widths[i + 1]) {
        throw new ConfigError(file, `up_blocks.${i} up-samples from ${widths[i + 1]} channels but receives ${channels} (a stage with 0 layers breaks the chain)`);
      }
      if ((UP_FACTOR * UP_FACTOR * widths[i]) % widths[i + 1] !== 0) {
        throw new ConfigError(file, `up_blocks.${i}: the up-shortcut repeats ${widths[i + 1]} channels into 4×${widths[i]}, which is not a whole number of times`);
      }
      stage.upsample = { inChannels: widths[i + 1] };
      spatialScale *= UP_FACTOR;
    } else if (channels !== widths[i]) {
      throw new ConfigError(file, `up_blocks.${i} expects ${widths[i]} channels but receives ${channels}`);
    }
    channels = widths[i];
    const type = blockTypes[i];
    if (type !== 'ResBlock' && type !== 'EfficientViTBlock') {
      unsupported(file, `decoder_block_types[${i}]`, type, 'expected "ResBlock" or "EfficientViTBlock"');
    }
    stage.blockType = type;
    const norm = normTypes[i];
    if (norm !== 'rms_norm' && norm !== 'batch_norm') {
      unsupported(file, `decoder_norm_types[${i}]`, norm, 'only "rms_norm" and "batch_norm" normalise over channels (a layer_norm here would normalise over the image width)');
    }
    stage.normType = norm;
    if (type === 'ResBlock') {
      stage.act = activation(`decoder_act_fns[${i}]`, acts[i]);
    } else {
      stage.heads = Math.floor(widths[i] / c.attention_head_dim); // mult = 1
      if (stage.heads < 1) throw new ConfigError(file, `up_blocks.${i}: ${widths[i]} channels hold no head of attention_head_dim ${c.attention_head_dim}`);
      for (const k of scales[i]) {
        if (k % 2 === 0) unsupported(file, `decoder_qkv_multiscales[${i}]`, scales[i], 'even kernel sizes change the spatial size');
      }
      stage.kernelSizes = scales[i];
    }
    stages.push(stage);
  }
  const headChannels = layers[0] > 0 ? widths[0] : widths[1];
  if (channels !== headChannels) throw new ConfigError(file, `norm_out expects ${headChannels} channels but the last stage gives ${channels}`);
  const headUpsamples = layers[0] === 0;
  if (headUpsamples) spatialScale *= UP_FACTOR;
  return { stages, headChannels, headUpsamples, interpolate: c.upsample_block_type === 'interpolate', convAct, spatialScale };
}

export function loadDcAeConfig(file: string): DcAeConfig {
  const c = loadConfig(file, DcAeConfig);
  decoderLayout(c, file);
  return c;
}

const attentionInner = (s: UpStage, headDim: number) => s.heads * headDim;
const gluHidden = (channels: number) => Math.floor(GLU_EXPAND_RATIO * channels);

/** Every decoder.* tensor the model reads, with its shape: the contract of the checkpoint layout. */
export function dcAeDecoderTensorShapes(c: DcAeConfig): Map<string, number[]> {
  const layout = decoderLayout(c);
  const widths = c.decoder_block_out_channels;
  const s = new Map<string, number[]>();
  const norm = (prefix: string, type: NormType, channels: number) => {
    s.set(`${prefix}.weight`, [channels]);
    s.set(`${prefix}.bias`, [channels]);
    if (type === 'batch_norm') {
      s.set(`${prefix}.running_mean`, [channels]);
      s.set(`${prefix}.running_var`, [channels]);
      s.set(`${prefix}.num_batches_tracked`, []);
    }
  };
  const upConv = (prefix: string, inC: number, outC: number) => {
    const convOut = layout.interpolate ? outC : outC * UP_FACTOR * UP_FACTOR;
    s.set(`${prefix}.conv.weight`, [convOut, inC, 3, 3]);
    s.set(`${prefix}.conv.bias`, [convOut]);
  };
  s.set('decoder.conv_in.weight', [widths[widths.length - 1], c.latent_channels, 3, 3]);
  s.set('decoder.conv_in.bias', [widths[widths.length - 1]]);
  for (const st of layout.stages) {
    const C = st.channels;
    let j = 0;
    if (st.upsample) upConv(`decoder.up_blocks.${st.index}.${j++}`, st.upsample.inChannels, C);
    for (let l = 0; l < st.layers; l++, j++) {
      const b = `decoder.up_blocks.${st.index}.${j}`;
      if (st.blockType === 'ResBlock') {
        s.set(`${b}.conv1.weight`, [C, C, 3, 3]);
        s.set(`${b}.conv1.bias`, [C]);
        s.set(`${b}.conv2.weight`, [C, C, 3, 3]);
        norm(`${b}.norm`, st.normType, C);
      } else {
        const inner = attentionInner(st, c.attention_head_dim);
        for (const p of ['to_q', 'to_k', 'to_v']) s.set(`${b}.attn.${p}.weight`, [inner, C]);
        st.kernelSizes.forEach((k, m) => {
          s.set(`${b}.attn.to_qkv_multiscale.${m}.proj_in.weight`, [3 * inner, 1, k, k]);
          s.set(`${b}.attn.to_qkv_multiscale.${m}.proj_out.weight`, [3 * inner, c.attention_head_dim, 1, 1]);
        });
        s.set(`${b}.attn.to_out.weight`, [C, inner * (1 + st.kernelSizes.length)]);
        norm(`${b}.attn.norm_out`, st.normType, C);
        const hidden = gluHidden(C);
        s.set(`${b}.conv_out.conv_inverted.weight`, [2 * hidden, C, 1, 1]);
        s.set(`${b}.conv_out.conv_inverted.bias`, [2 * hidden]);
        s.set(`${b}.conv_out.conv_depth.weight`, [2 * hidden, 1, 3, 3]);
        s.set(`${b}.conv_out.conv_depth.bias`, [2 * hidden]);
        s.set(`${b}.conv_out.conv_point.weight`, [C, hidden, 1, 1]);
        norm(`${b}.conv_out.norm`, 'rms_norm', C);
      }
    }
  }
  norm('decoder.norm_out', 'rms_norm', layout.headChannels);
  if (layout.headUpsamples) upConv('decoder.conv_out', layout.headChannels, c.in_channels);
  else {
    s.set('decoder.conv_out.weight', [c.in_channels, layout.headChannels, 3, 3]);
    s.set('decoder.conv_out.bias', [c.in_channels]);
  }
  return s;
}

/**
 * Multiply-adds ×2 of one decode of a [1,Cz,h,w] latent, ignoring element-wise work: the benchmark's FLOP count.
 * 'reference' counts what the reference computes (nearest ×2, then a 3×3 conv at the up-sampled size); 'graph'
 * what this graph computes (four 2×2 phase convs at the input size, 16 instead of 36 MACs per Cin·Cout·pixel).
 */
export function dcAeDecoderFlops(c: DcAeConfig, h: number, w: number, count: 'reference' | 'graph' = 'reference'): number {
  const layout = decoderLayout(c);
  const d = c.attention_head_dim;
  const conv = (cin: number, cout: number, k: number, pixels: number, groups = 1) => 2 * cout * (cin / groups) * k * k * pixels;
  /** nearest ×2 + 3×3 conv to `pixels` output pixels */
  const upConv = (cin: number, cout: number, pixels: number) => (count === 'graph' ? 4 * conv(cin, cout, 2, pixels / 4) : conv(cin, cout, 3, pixels));
  let px = h * w;
  const widths = c.decoder_block_out_channels;
  let flops = conv(c.latent_channels, widths[widths.length - 1], 3, px);
  for (const st of layout.stages) {
    const C = st.channels;
    if (st.upsample) {
      px *= UP_FACTOR * UP_FACTOR;
      flops += layout.interpolate ? upConv(st.upsample.inChannels, C, px) : conv(st.upsample.inChannels, 4 * C, 3, px / 4);
    }
    for (let l = 0; l < st.layers; l++) {
      if (st.blockType === 'ResBlock') {
        flops += 2 * conv(C, C, 3, px);
        continue;
      }
      const inner = attentionInner(st, d);
      const groups = st.heads * (1 + st.kernelSizes.length);
      flops += conv(C, 3 * inner, 1, px); // q, k, v
      for (const k of st.kernelSizes) flops += conv(3 * inner, 3 * inner, k, px, 3 * inner) + conv(3 * inner, 3 * inner, 1, px, 3 * st.heads);
      flops += groups * 2 * (2 * (d + 1) * d * px); // V·Kᵀ and (V·Kᵀ)·Q per group
      flops += conv(inner * (1 + st.kernelSizes.length), C, 1, px); // to_out
      const hidden = gluHidden(C);
      flops += conv(C, 2 * hidden, 1, px) + conv(2 * hidden, 2 * hidden, 3, px, 2 * hidden) + conv(hidden, C, 1, px);
    }
  }
  if (layout.headUpsamples) {
    flops += layout.interpolate ? upConv(layout.headChannels, c.in_channels, px * 4) : conv(layout.headChannels, 4 * c.in_channels, 3, px);
  } else flops += conv(layout.headChannels, c.in_channels, 3, px);
  return flops;
}

// ---- the graph ----

class DcAeDecoderGraph {
  readonly g: GraphBuilder;
  private readonly weights: CheckpointWeights;
  readonly layout: DecoderLayout;

  constructor(
    readonly c: DcAeConfig,
    ckpt: Checkpoint,
    dir: string,
  ) {
    this.g = new GraphBuilder('dc_ae_decoder', dir);
    this.weights = new CheckpointWeights(ckpt, dcAeDecoderTensorShapes(c));
    this.layout = decoderLayout(c);
  }

  private shape(key: string): number[] {
    return this.weights.shape(key);
  }

  /** A checkpoint tensor as an fp32 weight, shape-checked; `as` reshapes it (Linear [out,in] → 1×1 conv). */
  w(key: string, as?: number[]): string {
    return this.g.weight(key, as ?? this.shape(key), this.weights.read(key));
  }

  /** A per-channel vector [C] viewed [1,C,1,1] so it broadcasts over NCHW. */
  channelVector(key: string): string {
    return this.w(key, [1, this.shape(key)[0], 1, 1]);
  }

  /** Conv2d with 'same' padding, weights by checkpoint key. */
  conv(x: string, prefix: string, opts: { bias?: boolean; group?: number } = {}): string {
    const [, , kh, kw] = this.shape(`${prefix}.weight`);
    const inputs = [x, this.w(`${prefix}.weight`)];
    if (opts.bias ?? true) inputs.push(this.w(`${prefix}.bias`));
    const ph = kh >> 1;
    const pw = kw >> 1;
    return this.g.op('Conv', inputs, { kernel_shape: [kh, kw], pads: [ph, pw, ph, pw], group: opts.group ?? 1 });
  }

  act(x: string, act: Activation): string {
    const { g } = this;
    switch (act) {
      case null:
        return x;
      case 'silu':
      case 'swish':
        return g.silu(x);
      case 'relu':
        return g.relu(x);
      case 'gelu':
        return g.op('Gelu', [x]); // nn.GELU(): the erf form
      case 'mish':
        return g.op('Mish', [x]);
    }
  }

  /** RMSNorm over channels with weight and bias (diffusers moves C last for it): x·rsqrt(mean_c(x²)+eps)·w + b */
  rmsNormChannels(x: string, prefix: string): string {
    const { g } = this;
    const meanSquare = g.op('ReduceMean', [g.mul(x, x), g.ints([1])], { keepdims: 1 }); // [B,1,H,W]
    const inv = g.op('Reciprocal', [g.op('Sqrt', [g.add(meanSquare, g.scalar(NORM_EPS))])]);
    return g.add(g.mul(g.mul(x, inv), this.channelVector(`${prefix}.weight`)), this.channelVector(`${prefix}.bias`));
  }

  /** BatchNorm2d in eval mode: running statistics (num_batches_tracked is bookkeeping). */
  batchNorm(x: string, prefix: string): string {
    this.weights.expect(`${prefix}.num_batches_tracked`);
    const keys = ['weight', 'bias', 'running_mean', 'running_var'].map((k) => this.w(`${prefix}.${k}`));
    return this.g.op('BatchNormalization', [x, ...keys], { epsilon: float(NORM_EPS) });
  }

  norm(x: string, prefix: string, type: NormType): string {
    return type === 'rms_norm' ? this.rmsNormChannels(x, prefix) : this.batchNorm(x, prefix);
  }

  /** Channel c of the result is channel ⌊c/r⌋ of x (torch.repeat_interleave along dim 1). */
  repeatChannels(x: string, channels: number, r: number): string {
    if (r === 1) return x;
    const idx = Array.from({ length: channels * r }, (_, c) => Math.floor(c / r));
    return this.g.op('Gather', [x, this.g.ints(idx)], { axis: 1 });
  }

  /**
   * DCUpBlock2d: x ─ nearest ×2 ─ conv 3×3 (or conv 3×3 to 4·Cout ─ pixel-shuffle), plus, with the shortcut,
   * pixel_shuffle(repeat_interleave(x, r)) where r = 4·Cout/Cin.
   *
   * Built without the ×2 tensor: output pixel (2i+a, 2j+b) of a 3×3 conv over the nearest-upsampled input only
   * sees x rows i-1..i (a = 0) or i..i+1 (a = 1), so each of the four phases (a, b) is a 2×2 conv on x whose
   * taps are sums of the 3×3 taps; the phases are interleaved by DepthToSpace. 16 instead of 36 multiply-adds
   * per Cin·Cout·input pixel, and no 4× larger input. The shortcut is a channel selection, so it folds into
   * the centre tap of each phase as +1 (weight + 1 rounds once, ~1e-7 of the output: far inside parity).
   */
  upBlock(x: string, prefix: string, inChannels: number, outChannels: number, shortcut: boolean): string {
    const { g } = this;
    const weightKey = `${prefix}.conv.weight`;
    const w3 = this.weights.read(weightKey); // [Cout', Cin, 3, 3]
    const bias = this.w(`${prefix}.conv.bias`);
    const r = shortcut ? (UP_FACTOR * UP_FACTOR * outChannels) / inChannels : 0;
    /** the input channel the shortcut copies into pixel-shuffled channel k = 4o + 2a + b */
    const shortcutSource = (k: number) => Math.floor(k / r);
    if (!this.layout.interpolate) {
      // conv 3×3 to 4·Cout (channel k = 4o+2a+b), shortcut added at the centre tap, then pixel-shuffle
      if (shortcut) for (let k = 0; k < 4 * outChannels; k++) w3[((k * inChannels + shortcutSource(k)) * 3 + 1) * 3 + 1] += 1;
      const conv = g.op('Conv', [x, g.weight(weightKey, [4 * outChannels, inChannels, 3, 3], w3), bias], { kernel_shape: [3, 3], pads: [1, 1, 1, 1] });
      return g.op('DepthToSpace', [conv], { blocksize: UP_FACTOR, mode: 'CRD' }); // [B,Cout,2H,2W]
    }
    // 3×3 taps grouped by the input row (column) offset they land on, per output phase:
    // phase 0 reads offsets (-1, 0) ← taps ({0}, {1,2}); phase 1 reads (0, +1) ← taps ({0,1}, {2})
    const tapGroups = [
      [[0], [1, 2]],
      [[0, 1], [2]],
    ];
    const phases: string[] = [];
    for (const a of [0, 1]) {
      for (const b of [0, 1]) {
        const w2 = new Float32Array(outChannels * inChannels * 4);
        for (let o = 0; o < outChannels; o++) {
          for (let c = 0; c < inChannels; c++) {
            const src = (o * inChannels + c) * 9;
            for (let ty = 0; ty < 2; ty++) {
              for (let tx = 0; tx < 2; tx++) {
                let sum = 0;
                for (const ky of tapGroups[a][ty]) for (const kx of tapGroups[b][tx]) sum += w3[src + ky * 3 + kx];
                w2[((o * inChannels + c) * 2 + ty) * 2 + tx] = sum;
              }
            }
          }
          // the centre (offset 0) tap is ty = 1 - a, tx = 1 - b
          if (shortcut) w2[((o * inChannels + shortcutSource(4 * o + 2 * a + b)) * 2 + (1 - a)) * 2 + (1 - b)] += 1;
        }
        const weight = g.weight(`${weightKey}(phase ${a}${b})`, [outChannels, inChannels, 2, 2], w2);
        phases.push(g.op('Conv', [x, weight, bias], { kernel_shape: [2, 2], pads: [1 - a, 1 - b, a, b] })); // [B,Cout,H,W]
      }
    }
    // phase-major channels (2a+b)·Cout + o are DepthToSpace's DCR order
    return g.op('DepthToSpace', [g.concat(phases, 1)], { blocksize: UP_FACTOR, mode: 'DCR' }); // [B,Cout,2H,2W]
  }

  resBlock(x: string, prefix: string, st: UpStage): string {
    const h = this.act(this.conv(x, `${prefix}.conv1`), st.act); // [B,C,H,W]
    const out = this.norm(this.conv(h, `${prefix}.conv2`, { bias: false }), `${prefix}.norm`, st.normType);
    return this.g.add(out, x);
  }

  /**
   * SanaMultiscaleLinearAttention. q, k, v (1×1 convs, concatenated [q;k;v] along channels) and each
   * multi-scale aggregate (depthwise k×k, then grouped 1×1) are cut into consecutive groups of 3·d channels,
   * each group split into its own (q, k, v) — the layout of the original fused qkv conv, which does not
   * line up with to_q / to_k / to_v heads. Per group: out = V'·relu(K)ᵀ·relu(Q), V' = [V; 1], and the
   * first d rows are divided by the last (+1e-15).
   *
   * The reference evaluates (V'Kᵀ)Q when H·W > attention_head_dim and V'(KᵀQ) otherwise (calls.vae): the
   * same product associated differently, so one form serves every size (parity covers both cases).
   */
  attention(x: string, prefix: string, st: UpStage, hw: string, batch: string): string {
    const { g } = this;
    const d = this.c.attention_head_dim;
    const inner = attentionInner(st, d);
    const C = st.channels;
    const qkvWeight = new Float32Array(3 * inner * C);
    ['to_q', 'to_k', 'to_v'].forEach((p, i) => qkvWeight.set(this.weights.read(`${prefix}.${p}.weight`), i * inner * C));
    const qkv = g.op('Conv', [x, g.weight(`${prefix}.to_qkv(concat)`, [3 * inner, C, 1, 1], qkvWeight)], { kernel_shape: [1, 1] }); // [B,3I,H,W]
    const scales = [qkv];
    st.kernelSizes.forEach((_, m) => {
      const ms = `${prefix}.to_qkv_multiscale.${m}`;
      const local = this.conv(qkv, `${ms}.proj_in`, { bias: false, group: 3 * inner }); // depthwise k×k
      scales.push(this.conv(local, `${ms}.proj_out`, { bias: false, group: 3 * st.heads })); // [B,3I,H,W]
    });
    const all = scales.length > 1 ? g.concat(scales, 1) : qkv; // [B,3I·(1+S),H,W]
    const groups = st.heads * scales.length;
    const grouped = g.reshape(all, [0, groups, 3 * d, -1]); // [B,G,3d,N]
    const [q, k, v] = g.split(grouped, 2, [d, d, d]); // [B,G,d,N] each
    const vOnes = g.op('Pad', [v, g.ints([0, 0, 0, 0, 0, 0, 1, 0]), g.scalar(1)]); // [B,G,d+1,N]
    const vk = g.matmul(vOnes, g.transpose(g.relu(k), [0, 1, 3, 2])); // [B,G,d+1,d]
    const out = g.matmul(vk, g.relu(q)); // [B,G,d+1,N]
    const [num, den] = g.split(out, 2, [d, 1]);
    const attn = g.div(num, g.add(den, g.scalar(ATTENTION_EPS))); // [B,G,d,N]
    const image = g.reshape(attn, g.concat([batch, g.ints([groups * d]), hw], 0)); // [B,I·(1+S),H,W]
    const projected = g.op('Conv', [image, this.w(`${prefix}.to_out.weight`, [C, groups * d, 1, 1])], { kernel_shape: [1, 1] }); // [B,C,H,W]
    return g.add(this.norm(projected, `${prefix}.norm_out`, st.normType), x);
  }

  /** GLUMBConv: 1×1 to 2·4C, SiLU, 3×3 depthwise, value·SiLU(gate), 1×1 back to C, RMSNorm, residual. */
  gluMbConv(x: string, prefix: string, channels: number): string {
    const { g } = this;
    const hidden = gluHidden(channels);
    const expanded = g.silu(this.conv(x, `${prefix}.conv_inverted`)); // [B,2F,H,W]
    const depth = this.conv(expanded, `${prefix}.conv_depth`, { group: 2 * hidden }); // [B,2F,H,W]
    const [value, gate] = g.split(depth, 1, [hidden, hidden]);
    const glu = g.mul(value, g.silu(gate)); // [B,F,H,W]
    const projected = this.conv(glu, `${prefix}.conv_point`, { bias: false }); // [B,C,H,W]
    return g.add(this.rmsNormChannels(projected, `${prefix}.norm`), x);
  }

  build(): string {
    const { g, c, layout } = this;
    const widths = c.decoder_block_out_channels;
    const top = widths[widths.length - 1];
    const latent = g.input('latent', ElemType.FLOAT, ['batch', c.latent_channels, 'height', 'width']);
    const batch = g.shape(latent, 0, 1);

    // conv_in + in-shortcut (latent channels repeated to the top width)
    let x = this.conv(latent, 'decoder.conv_in'); // [B,C₅,h,w]
    if (c.decoder_in_shortcut) x = g.add(x, this.repeatChannels(latent, c.latent_channels, top / c.latent_channels));

    for (const st of layout.stages) {
      let j = 0;
      if (st.upsample) x = this.upBlock(x, `decoder.up_blocks.${st.index}.${j++}`, st.upsample.inChannels, st.channels, true); // [B,Cᵢ,2H,2W]
      const hw = g.shape(x, 2, 4);
      for (let l = 0; l < st.layers; l++, j++) {
        const b = `decoder.up_blocks.${st.index}.${j}`;
        if (st.blockType === 'ResBlock') x = this.resBlock(x, b, st);
        else x = this.gluMbConv(this.attention(x, `${b}.attn`, st, hw, batch), `${b}.conv_out`, st.channels);
      }
    }

    // head: RMSNorm over channels, activation, conv_out
    x = this.act(this.rmsNormChannels(x, 'decoder.norm_out'), layout.convAct);
    const sample = layout.headUpsamples
      ? this.upBlock(x, 'decoder.conv_out', layout.headChannels, c.in_channels, false)
      : this.conv(x, 'decoder.conv_out'); // [B,3,H·s,W·s]
    g.output(sample, 'sample', ElemType.FLOAT, ['batch', c.in_channels, 'sample_height', 'sample_width']);
    this.weights.assertAllUsed('decoder', (name) => name.startsWith('encoder.')); // the encoder half is not ours
    return g.finish();
  }
}

/** A loaded AutoencoderDC decoder: decode() runs it in an ONNX Runtime worker. */
export class DcAeDecoder {
  readonly layout: DecoderLayout;

  private constructor(
    readonly config: DcAeConfig,
    readonly session: OrtSession,
    readonly compileCacheHit: boolean,
  ) {
    this.layout = decoderLayout(config);
  }

  /** Loads `<dir>/config.json` and its safetensors (single or sharded, fp32/fp16/bf16; encoder weights ignored). */
  static async load(dir: string, options: SessionOptions = {}): Promise<DcAeDecoder> {
    const configFile = path.join(dir, 'config.json');
    const config = loadDcAeConfig(configFile);
    const ckpt = Checkpoint.open(dir, 'diffusion_pytorch_model');
    const { dir: modelDir, hit } = await cachedCompile(
      {
        kind: 'dc-ae-decoder',
        inputs: [configFile, ...ckpt.files],
        options: {},
        code: [import.meta.url, new URL('../common/onnx-graph.ts', import.meta.url).href],
      },
      (out) => {
        new DcAeDecoderGraph(config, ckpt, out).build();
      },
    );
    // ORT's arena keeps its (power-of-two grown) high-water mark: 8.4 GiB after 1024² decodes vs 4.1 GiB without it,
    // but without it every large tensor is a fresh mmap, measured 27% slower here and up to 5× on some runs
    // ORT reorders every conv filter into NCHWc blocks: its saved optimized graph keeps them in a file of their own
    const session = await OrtSession.create(path.join(modelDir, 'model.onnx'), { optimizedWeightsApart: true, ...options });
    return new DcAeDecoder(config, session, hit);
  }

  get spatialScale(): number {
    return this.layout.spatialScale;
  }

  /** Rejects a latent the decoder cannot take, before any compute. */
  validate(latent: HostTensor<Float32Array>, field = 'latent'): void {
    const c = this.config;
    const dims = latent.dims;
    if (dims.length !== 4 || dims[1] !== c.latent_channels) {
      throw new InvalidArgumentError(field, `shape [${dims}] must be [B, ${c.latent_channels}, h, w] (the VAE has ${c.latent_channels} latent channels)`);
    }
    if (dims.some((d) => !Number.isSafeInteger(d) || d < 1)) throw new InvalidArgumentError(field, `shape [${dims}] has an empty or invalid dimension`);
    if (latent.data.length !== dims.reduce((a, b) => a * b, 1)) {
      throw new InvalidArgumentError(field, `${latent.data.length} values do not fill shape [${dims}]`);
    }
    const bad = firstNonFinite(latent.data);
    if (bad >= 0) throw new InvalidArgumentError(field, `holds a non-finite value (${latent.data[bad]}) at flat index ${bad}`);
  }

  /** The raw decoder output [B, in_channels, s·h, s·w] of latents [B, latent_channels, h, w] (already divided by scaling_factor). */
  async decode(latent: HostTensor<Float32Array>): Promise<HostTensor<Float32Array>> {
    this.validate(latent);
    const { sample } = await this.session.run({ latent });
    return sample as HostTensor<Float32Array>;
  }

  async close(): Promise<void> {
    await this.session.close();
  }
}
