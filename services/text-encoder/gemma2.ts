// Gemma-2 (transformers' Gemma2Model, as of 4.46) as one ONNX graph: SANA's text encoder.
//
//   input_ids [B,L] ─ embed_tokens ─ ×√H (rounded to float32, the model's dtype) ─► x [B·L,H]
//   attention_mask [B,L] ─► additive biases [B,1,G·L,L]: causal + padding (global layers),
//                           and the same limited to the last sliding_window keys (sliding layers)
//   N_layers × block (sliding-window attention on even layers, or as config.layer_types says):
//      x += post_attention_layernorm(SelfAttn(input_layernorm(x)))
//              SelfAttn: q,k,v projections ─ RoPE ─ grouped-query scores·query_pre_attn_scalar^-½
//                        ─ cap·tanh(s/cap) ─ + bias ─ softmax ─ ·V ─ o_proj
//      x += post_feedforward_layernorm(down_proj(gelu_tanh(gate_proj(h)) · up_proj(h))), h = pre_feedforward_layernorm(x)
//   norm(x) ─► last_hidden_state [B,L,H]
//
// Every RMSNorm is Gemma's x·rsqrt(mean(x²)+eps)·(1+w). Padded query rows are computed exactly as the eager
// reference does: a row whose keys are all masked (possible only in sliding layers) gets equal logits
// (finfo.min) and therefore the uniform average of all L values.
// Weights are addressed by the checkpoint's own keys; a Gemma2ForCausalLM checkpoint's `model.` prefix is
// recognised. The graph is compiled once per checkpoint content and precision: int8 runs the decoder-layer linears
// of GEMMA2_INT8_LAYERS as W8A8 (services/common/int8-recipe.ts: per-token activations, two int8 passes where
// isGemma2TwoPassLinear says, no smoothing); embeddings, norms, RoPE and the attention softmax stay fp32.
import path from 'node:path';
import { z } from 'zod';
import { CheckpointWeights } from '../common/checkpoint-weights.ts';
import { cachedCompile } from '../common/compile-cache.ts';
import { ConfigError, loadConfig, unsupported } from '../common/config.ts';
import { InvalidArgumentError } from '../common/errors.ts';
import { GEMMA2_INT8_LAYERS, type Int8Options, isGemma2TwoPassLinear, type Precision, type PrecisionOptions, resolveInt8Options } from '../common/int8-recipe.ts';
import { ElemType, float, GraphBuilder } from '../common/onnx-graph.ts';
import { OrtSession, type SessionOptions } from '../common/ort-session.ts';
import { Checkpoint, CheckpointError } from '../common/safetensors.ts';
import type { HostTensor } from '../common/tensor.ts';

// ---- config.json of text_encoder/ (keys as transformers writes them; defaults are Gemma2Config's) ----
export const Gemma2Config = z.object({
  architectures: z.array(z.string()).optional(),
  model_type: z.string().optional(),
  vocab_size: z.number().int().positive(),
  hidden_size: z.number().int().positive(),
  intermediate_size: z.number().int().positive(),
  num_hidden_layers: z.number().int().nonnegative(),
  num_attention_heads: z.number().int().positive(),
  num_key_value_heads: z.number().int().positive(),
  head_dim: z.number().int().positive(),
  hidden_activation: z.string().nullable().default('gelu_pytorch_tanh'),
  max_position_embeddings: z.number().int().positive().default(8192),
  rms_norm_eps: z.number().positive().default(1e-6),
  pad_token_id: z.number().int().nullable().default(0),
  eos_token_id: z.union([z.number().int(), z.array(z.number().int())]).nullable().default(1),
  bos_token_id: z.number().int().nullable().default(2),
  rope_theta: z.number().positive().default(10000),
  attention_bias: z.boolean().default(false),
  attention_dropout: z.number().default(0),
  query_pre_attn_scalar: z.number().positive().default(256),
  sliding_window: z.number().int().positive().default(4096),
  attn_logit_softcapping: z.number().positive().nullable().default(50),
  final_logit_softcapping: z.number().positive().nullable().default(30),
  /** written by newer transformers; absent means "sliding on even layers" */
  layer_types: z.array(z.enum(['sliding_attention', 'full_attention'])).nullable().optional(),
  use_bidirectional_attention: z.boolean().nullable().optional(),
  torch_dtype: z.string().nullable().optional(),
});
export type Gemma2Config = z.infer<typeof Gemma2Config>;

/** transformers' ACT2FN names for the tanh-approximated GELU and the exact one, as ONNX Gelu's `approximate`. */
const GELU_KINDS: Record<string, 'tanh' | 'none'> = { gelu_pytorch_tanh: 'tanh', gelu_new: 'tanh', gelu_fast: 'tanh', gelu: 'none' };
const FLOAT32_MIN = -3.4028234663852886e38; // torch.finfo(torch.float32).min, the reference's mask value
const CAUSAL_LM_PREFIX = 'model.';

export function loadGemma2Config(file: string): Gemma2Config {
  const c = loadConfig(file, Gemma2Config);
  if (c.model_type !== undefined && c.model_type !== 'gemma2') unsupported(file, 'model_type', c.model_type, 'this is a Gemma-2 text encoder');
  if (!GELU_KINDS[c.hidden_activation ?? 'gelu_pytorch_tanh']) {
    unsupported(file, 'hidden_activation', c.hidden_activation, `one of ${Object.keys(GELU_KINDS).join(', ')} is needed`);
  }
  if (c.use_bidirectional_attention) unsupported(file, 'use_bidirectional_attention', true, 'Gemma-2 is causal here');
  if (c.num_attention_heads % c.num_key_value_heads !== 0) {
    throw new ConfigError(file, `num_attention_heads (${c.num_attention_heads}) must be a multiple of num_key_value_heads (${c.num_key_value_heads})`);
  }
  if (c.head_dim % 2 !== 0) throw new ConfigError(file, `head_dim (${c.head_dim}) must be even for rotary embeddings`);
  if (c.layer_types && c.layer_types.length !== c.num_hidden_layers) {
    throw new ConfigError(file, `layer_types has ${c.layer_types.length} entries for ${c.num_hidden_layers} layers`);
  }
  return c;
}

/** Whether decoder layer i uses sliding-window attention (transformers 4.46: the even layers). */
export function isSlidingLayer(c: Gemma2Config, i: number): boolean {
  return c.layer_types ? c.layer_types[i] === 'sliding_attention' : i % 2 === 0;
}

/** Every checkpoint tensor the model reads, with its shape: the contract of the checkpoint layout. */
export function gemma2TensorShapes(c: Gemma2Config, prefix = ''): Map<string, number[]> {
  const h = c.hidden_size;
  const qDim = c.num_attention_heads * c.head_dim;
  const kvDim = c.num_key_value_heads * c.head_dim;
  const s = new Map<string, number[]>();
  s.set(`${prefix}embed_tokens.weight`, [c.vocab_size, h]);
  for (let i = 0; i < c.num_hidden_layers; i++) {
    const l = `${prefix}layers.${i}`;
    for (const norm of ['input_layernorm', 'post_attention_layernorm', 'pre_feedforward_layernorm', 'post_feedforward_layernorm']) {
      s.set(`${l}.${norm}.weight`, [h]);
    }
    s.set(`${l}.self_attn.q_proj.weight`, [qDim, h]);
    s.set(`${l}.self_attn.k_proj.weight`, [kvDim, h]);
    s.set(`${l}.self_attn.v_proj.weight`, [kvDim, h]);
    s.set(`${l}.self_attn.o_proj.weight`, [h, qDim]);
    if (c.attention_bias) {
      s.set(`${l}.self_attn.q_proj.bias`, [qDim]);
      s.set(`${l}.self_attn.k_proj.bias`, [kvDim]);
      s.set(`${l}.self_attn.v_proj.bias`, [kvDim]);
      s.set(`${l}.self_attn.o_proj.bias`, [h]);
    }
    s.set(`${l}.mlp.gate_proj.weight`, [c.intermediate_size, h]);
    s.set(`${l}.mlp.up_proj.weight`, [c.intermediate_size, h]);
    s.set(`${l}.mlp.down_proj.weight`, [h, c.intermediate_size]);
  }
  s.set(`${prefix}norm.weight`, [h]);
  return s;
}

/** Multiply-adds ×2 of one forward over [batch, length] tokens (the benchmark's FLOP count). */
export function gemma2ForwardFlops(c: Gemma2Config, batch: number, length: number): number {
  const h = c.hidden_size;
  const qDim = c.num_attention_heads * c.head_dim;
  const kvDim = c.num_key_value_heads * c.head_dim;
  const perToken = 2 * (h * qDim + 2 * h * kvDim + qDim * h + 3 * h * c.intermediate_size);
  const attention = 2 * 2 * c.num_attention_heads * length * length * c.head_dim; // scores and ·V, full L×L as computed
  return batch * c.num_hidden_layers * (length * perToken + attention);
}

/** The key prefix of a checkpoint: '' for a saved Gemma2Model, 'model.' for a saved Gemma2ForCausalLM. */
export function gemma2KeyPrefix(ckpt: Checkpoint): string {
  if (ckpt.has('embed_tokens.weight')) return '';
  if (ckpt.has(`${CAUSAL_LM_PREFIX}embed_tokens.weight`)) return CAUSAL_LM_PREFIX;
  throw new CheckpointError(ckpt.source, 'embed_tokens.weight', 'missing (neither a Gemma2Model nor a Gemma2ForCausalLM checkpoint)');
}

/** rotary inverse frequencies exactly as torch computes them in float32: 1 / base^(2i/d) */
function ropeInverseFrequencies(c: Gemma2Config): Float32Array {
  const f = Math.fround;
  const half = c.head_dim / 2;
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) inv[i] = f(1 / f(Math.pow(c.rope_theta, f((2 * i) / c.head_dim))));
  return inv;
}

// ---- the graph ----

class Gemma2Graph {
  readonly g: GraphBuilder;
  private readonly weights: CheckpointWeights;
  private readonly heads: number;
  private readonly kvHeads: number;
  private readonly groups: number;
  private readonly d: number;

  constructor(
    readonly c: Gemma2Config,
    ckpt: Checkpoint,
    private readonly prefix: string,
    dir: string,
    private readonly int8?: Int8Options,
  ) {
    this.g = new GraphBuilder('gemma2_text_encoder', dir);
    this.weights = new CheckpointWeights(ckpt, gemma2TensorShapes(c, prefix));
    this.heads = c.num_attention_heads;
    this.kvHeads = c.num_key_value_heads;
    this.groups = this.heads / this.kvHeads;
    this.d = c.head_dim;
  }

  /** A checkpoint tensor (key without the prefix) as an fp32 weight, shape-checked; `map` transforms values. */
  w(key: string, map?: (values: Float32Array) => Float32Array): string {
    const name = this.prefix + key;
    const values = this.weights.read(name);
    return this.g.weight(name, this.weights.shape(name), map ? map(values) : values);
  }

  /** x [M,in] · Wᵀ (+ b) with the checkpoint's [out,in] weight used in place (Gemm transB), or W8A8 under int8. */
  linear(x: string, key: string): string {
    const bias = this.c.attention_bias && key.includes('.self_attn.') ? this.w(`${key}.bias`) : undefined;
    const layer = /^layers\.(\d+)\.(.+)$/.exec(key);
    const int8Name = layer && GEMMA2_INT8_LAYERS.find((n) => n === layer[2]);
    if (this.int8 && int8Name) {
      const name = this.prefix + key;
      const shape = this.weights.shape(`${name}.weight`);
      const passes = this.int8.activations === 'per-token' && isGemma2TwoPassLinear(Number(layer![1]), int8Name) ? 2 : 1;
      return this.g.int8Linear(x, name, this.weights.read(`${name}.weight`), [shape[0], shape[1]], bias, this.int8.activations, passes);
    }
    const inputs = [x, this.w(`${key}.weight`)];
    if (bias) inputs.push(bias);
    return this.g.op('Gemm', inputs, { transB: 1 });
  }

  /** Gemma's RMSNorm: x·rsqrt(mean(x²)+eps)·(1+w); (1+w) is rounded to float32 once, as torch does per call. */
  rmsNorm(x: string, key: string): string {
    const scale = this.w(`${key}.weight`, (w) => w.map((v) => Math.fround(1 + v)));
    return this.g.op('SimplifiedLayerNormalization', [x, scale], { axis: -1, epsilon: float(this.c.rms_norm_eps) });
  }

  /** x·cos + rotate_half(x)·sin on [B,L,heads,d], with cos/sin [L,1,d]. */
  rope(x: string, cos: string, sin: string): string {
    const { g } = this;
    const [x1, x2] = g.split(x, -1, [this.d / 2, this.d / 2]);
    const rotated = g.concat([g.op('Neg', [x2]), x1], -1);
    return g.add(g.mul(x, cos), g.mul(rotated, sin));
  }

  selfAttention(x: string, i: number, bias: string, rope: { cos: string; sin: string }, dims: { seq5: string; seq4: string }): string {
    const { g, c } = this;
    const { heads, kvHeads, groups, d } = this;
    const key = `layers.${i}.self_attn`;
    const q = this.linear(x, `${key}.q_proj`); // [B·L, heads·d]
    const k = this.linear(x, `${key}.k_proj`); // [B·L, kv·d]
    const v = this.linear(x, `${key}.v_proj`); // [B·L, kv·d]
    // RoPE on [B,L,heads,d]; query heads h = kv·groups + r share key/value head kv (repeat_kv)
    const qr = this.rope(g.reshape(q, g.concat([dims.seq4, g.ints([heads, d])], 0)), rope.cos, rope.sin); // [B,L,heads,d]
    const kr = this.rope(g.reshape(k, g.concat([dims.seq4, g.ints([kvHeads, d])], 0)), rope.cos, rope.sin); // [B,L,kv,d]
    const qh = g.reshape(g.transpose(g.reshape(qr, g.concat([dims.seq4, g.ints([kvHeads, groups, d])], 0)), [0, 2, 3, 1, 4]), [0, kvHeads, -1, d]); // [B,kv,G·L,d]
    const kT = g.transpose(kr, [0, 2, 3, 1]); // [B,kv,d,L]
    const vh = g.transpose(g.reshape(v, g.concat([dims.seq4, g.ints([kvHeads, d])], 0)), [0, 2, 1, 3]); // [B,kv,L,d]
    let scores = g.mul(g.matmul(qh, kT), g.scalar(Math.fround(c.query_pre_attn_scalar ** -0.5))); // [B,kv,G·L,L]
    if (c.attn_logit_softcapping !== null) {
      const cap = g.scalar(c.attn_logit_softcapping);
      scores = g.mul(g.op('Tanh', [g.div(scores, cap)]), cap);
    }
    const probs = g.op('Softmax', [g.add(scores, bias)], { axis: -1 }); // [B,kv,G·L,L]
    const attn = g.reshape(g.matmul(probs, vh), dims.seq5); // [B,kv,G,L,d]
    const merged = g.reshape(g.transpose(attn, [0, 3, 1, 2, 4]), [-1, heads * d]); // [B·L, heads·d]
    return this.linear(merged, `${key}.o_proj`); // [B·L, H]
  }

  mlp(x: string, i: number): string {
    const { g } = this;
    const key = `layers.${i}.mlp`;
    const approximate = GELU_KINDS[this.c.hidden_activation ?? 'gelu_pytorch_tanh'];
    const gate = g.op('Gelu', [this.linear(x, `${key}.gate_proj`)], { approximate }); // [B·L, I]
    return this.linear(g.mul(gate, this.linear(x, `${key}.up_proj`)), `${key}.down_proj`); // [B·L, H]
  }

  block(i: number, x: string, bias: string, rope: { cos: string; sin: string }, dims: { seq5: string; seq4: string }): string {
    const { g } = this;
    const l = `layers.${i}`;
    const attn = this.selfAttention(this.rmsNorm(x, `${l}.input_layernorm`), i, bias, rope, dims);
    x = g.add(x, this.rmsNorm(attn, `${l}.post_attention_layernorm`));
    const ff = this.mlp(this.rmsNorm(x, `${l}.pre_feedforward_layernorm`), i);
    return g.add(x, this.rmsNorm(ff, `${l}.post_feedforward_layernorm`));
  }

  /**
   * The eager reference's additive masks, tiled over the query groups: [B,1,G·L,L] with 0 where key k is
   * visible from query q and finfo.min elsewhere. Global: k ≤ q and mask[k] ≠ 0; sliding: also k > q − window.
   */
  biases(mask: string, positions: string): { global: string; sliding: string } {
    const { g, c } = this;
    const q = g.unsqueeze(positions, [1]); // [L,1]
    const k = g.unsqueeze(positions, [0]); // [1,L]
    const keyVisible = g.unsqueeze(g.cast(mask, ElemType.BOOL), [1, 2]); // [B,1,1,L]
    const global = g.op('And', [g.op('LessOrEqual', [k, q]), keyVisible]); // [B,1,L,L]
    const inWindow = g.op('Greater', [k, g.sub(q, g.ints([c.sliding_window]))]); // [L,L]
    const sliding = g.op('And', [global, inWindow]);
    const toBias = (visible: string) => {
      const bias = g.op('Where', [visible, g.scalar(0), g.scalar(FLOAT32_MIN)]); // [B,1,L,L]
      return this.groups === 1 ? bias : g.op('Tile', [bias, g.ints([1, 1, this.groups, 1])]); // [B,1,G·L,L]
    };
    return { global: toBias(global), sliding: toBias(sliding) };
  }

  build(): string {
    const { g, c } = this;
    const h = c.hidden_size;
    const ids = g.input('input_ids', ElemType.INT64, ['batch', 'length']);
    const mask = g.input('attention_mask', ElemType.INT64, ['batch', 'length']);
    const bl = g.shape(ids); // [B, L]
    const seqLen = g.squeeze(g.shape(ids, 1, 2), [0]); // scalar L
    const dims = {
      seq4: bl, // prefix [B, L] of per-head views
      seq5: g.concat([g.shape(ids, 0, 1), g.ints([this.kvHeads, this.groups]), g.shape(ids, 1, 2), g.ints([this.d])], 0), // [B,kv,G,L,d]
    };

    // positions 0..L-1 whatever the padding (position_ids = cache_position), and the rotary tables
    const positions = g.op('Range', [g.constant(new BigInt64Array([0n]), []), seqLen, g.constant(new BigInt64Array([1n]), [])]); // [L]
    const angles = g.mul(g.unsqueeze(g.cast(positions, ElemType.FLOAT), [1]), g.constant(ropeInverseFrequencies(c), [1, this.d / 2])); // [L,d/2]
    const emb = g.unsqueeze(g.concat([angles, angles], 1), [1]); // [L,1,d]
    const rope = { cos: g.op('Cos', [emb]), sin: g.op('Sin', [emb]) };

    const biases = this.biases(mask, positions);

    // embedding × √H, the normaliser rounded to float32 as the reference does in the model's dtype
    const embedded = g.op('Gather', [this.w('embed_tokens.weight'), ids], { axis: 0 }); // [B,L,H]
    let x = g.mul(g.reshape(embedded, [-1, h]), g.scalar(Math.fround(Math.sqrt(h)))); // [B·L,H]

    for (let i = 0; i < c.num_hidden_layers; i++) {
      x = this.block(i, x, isSlidingLayer(c, i) ? biases.sliding : biases.global, rope, dims);
    }
    const out = g.reshape(this.rmsNorm(x, 'norm'), g.concat([bl, g.ints([h])], 0)); // [B,L,H]
    g.output(out, 'last_hidden_state', ElemType.FLOAT, ['batch', 'length', h]);
    // a causal-LM checkpoint may carry its (tied) output head; the encoder does not use it
    this.weights.assertAllUsed('model', (name) => name === 'lm_head.weight');
    return g.finish();
  }
}

/** A loaded Gemma2Model: forward() runs it in an ONNX Runtime worker. */
export class Gemma2Model {
  private constructor(
    readonly config: Gemma2Config,
    readonly session: OrtSession,
    readonly compileCacheHit: boolean,
    readonly precision: Precision,
  ) {}

  /** Loads `<dir>/config.json` and its safetensors (`model*.safetensors`, single or sharded, fp32/fp16/bf16), in fp32 or W8A8 int8. */
  static async load(dir: string, options: SessionOptions & PrecisionOptions = {}): Promise<Gemma2Model> {
    const { precision = 'fp32', int8, ...sessionOptions } = options;
    const configFile = path.join(dir, 'config.json');
    const config = loadGemma2Config(configFile);
    const ckpt = Checkpoint.open(dir, 'model');
    const prefix = gemma2KeyPrefix(ckpt);
    const int8Options = precision === 'int8' ? resolveInt8Options('text-encoder', int8) : undefined;
    if (int8Options && (int8Options.smoothAlpha !== null || int8Options.outlierRatio !== null)) {
      throw new Error('the Gemma-2 int8 graph has no calibration (smoothing, outlier split): leave int8.smoothAlpha and int8.outlierRatio null');
    }
    const { dir: modelDir, hit } = await cachedCompile(
      {
        kind: 'gemma2',
        inputs: [configFile, ...ckpt.files],
        options: int8Options ? { precision, ...int8Options } : {},
        code: [import.meta.url, new URL('../common/onnx-graph.ts', import.meta.url).href, new URL('../common/int8-recipe.ts', import.meta.url).href],
      },
      (out) => {
        new Gemma2Graph(config, ckpt, prefix, out, int8Options).build();
      },
    );
    const session = await OrtSession.create(path.join(modelDir, 'model.onnx'), sessionOptions);
    return new Gemma2Model(config, session, hit, precision);
  }

  validate(inputIds: HostTensor<BigInt64Array>, attentionMask: HostTensor<BigInt64Array>): void {
    const d = inputIds.dims;
    if (inputIds.type !== 'int64' || d.length !== 2 || d[0] < 1 || d[1] < 1) {
      throw new InvalidArgumentError('input_ids', `must be int64 [B, L] with B, L ≥ 1, got ${inputIds.type} [${d}]`);
    }
    const m = attentionMask.dims;
    if (attentionMask.type !== 'int64' || m.length !== 2 || m[0] !== d[0] || m[1] !== d[1]) {
      throw new InvalidArgumentError('attention_mask', `must be int64 [${d}], got ${attentionMask.type} [${m}]`);
    }
    const vocab = BigInt(this.config.vocab_size);
    for (let i = 0; i < inputIds.data.length; i++) {
      const id = inputIds.data[i];
      if (id < 0n || id >= vocab) throw new InvalidArgumentError('input_ids', `token id ${id} at flat index ${i} is outside [0, ${vocab})`);
    }
    for (let i = 0; i < attentionMask.data.length; i++) {
      const v = attentionMask.data[i];
      if (v !== 0n && v !== 1n) throw new InvalidArgumentError('attention_mask', `value ${v} at flat index ${i} is not 0 or 1`);
    }
  }

  /** last_hidden_state [B, L, hidden_size] for input_ids [B, L] and attention_mask [B, L] (1 keep, 0 padding). */
  async forward(inputIds: HostTensor<BigInt64Array>, attentionMask: HostTensor<BigInt64Array>): Promise<HostTensor<Float32Array>> {
    this.validate(inputIds, attentionMask);
    const { last_hidden_state } = await this.session.run({ input_ids: inputIds, attention_mask: attentionMask });
    return last_hidden_state as HostTensor<Float32Array>;
  }

  async close(): Promise<void> {
    await this.session.close();
  }
}
