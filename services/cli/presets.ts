// Named model shapes for random checkpoints: the released SANA configurations and tiny test models.
// Transformer configs follow diffusers' scripts/convert_sana_to_diffusers.py.
import { ditTensorShapes, LinearDitConfig } from '../denoiser/linear-dit.ts';
import { DcAeConfig, dcAeDecoderTensorShapes } from '../decoder/dc-ae.ts';
import { type ComponentSpec, defaultInit } from '../common/random-checkpoint.ts';
import { Gemma2Config, gemma2TensorShapes } from '../text-encoder/gemma2.ts';

type Component = ComponentSpec['folder'];

export function transformer(overrides: Partial<LinearDitConfig> & Pick<LinearDitConfig, 'num_layers'>): ComponentSpec {
  const config = LinearDitConfig.parse({
    _class_name: 'SanaTransformer2DModel',
    in_channels: 32,
    out_channels: 32,
    num_attention_heads: 36,
    attention_head_dim: 32,
    num_cross_attention_heads: 16,
    cross_attention_head_dim: 72,
    cross_attention_dim: 1152,
    caption_channels: 2304,
    mlp_ratio: 2.5,
    attention_bias: false,
    sample_size: 32,
    patch_size: 1,
    norm_elementwise_affine: false,
    norm_eps: 1e-6,
    interpolation_scale: null,
    qk_norm: null,
    ...overrides,
  });
  return {
    folder: 'transformer',
    weightsStem: 'diffusion_pytorch_model',
    config,
    shapes: ditTensorShapes(config),
    init: (name, shape) => (name.endsWith('scale_shift_table') ? { std: 1 / Math.sqrt(shape[1]) } : defaultInit(name, shape)),
  };
}

/**
 * Trained diffusion transformers have a few activation channels far larger than the rest; random weights do not.
 * This plants them: in every block's adaLN table the scale rows (shift/scale/gate × msa/mlp: rows 1 and 4) get
 * +(factor − 1) on a few channels, so the modulated LayerNorm output that feeds q/k/v and the Mix-FFN is ×factor
 * there (scale_msa ≈ 0, so 1 + scale ≈ factor).
 *
 * `compensated` also divides those channels' columns of the layers that read them (attn1.to_q/k/v,
 * ff.conv_inverted) by factor: the fp32 model then computes nearly what the unplanted one does (the outlier channels
 * lose only their timestep modulation), so the int8 error it shows is the outliers' alone. Without it the three
 * channels dominate q/k/v and the Mix-FFN input, which makes a different and more error-sensitive model.
 */
export function withPlantedOutliers(spec: ComponentSpec, factor = 50, channels = [7, 300, 801], compensated = false): ComponentSpec {
  return {
    ...spec,
    plant: (name, shape, values) => {
      if (/^transformer_blocks\.\d+\.scale_shift_table$/.test(name)) {
        const width = shape[1]!;
        for (const row of [1, 4]) for (const ch of channels) if (ch < width) values[row * width + ch]! += factor - 1;
      } else if (compensated && /^transformer_blocks\.\d+\.(attn1\.to_[qkv]|ff\.conv_inverted)\.weight$/.test(name)) {
        const [rows, inDim] = [shape[0]!, shape[1]!]; // [out, in] (conv_inverted: [out, in, 1, 1])
        for (let r = 0; r < rows; r++) for (const ch of channels) if (ch < inDim) values[r * inDim + ch]! /= factor;
      }
    },
  };
}

const sana600m = { num_layers: 28 };
const sana1600m = {
  num_layers: 20,
  num_attention_heads: 70,
  cross_attention_dim: 2240,
  num_cross_attention_heads: 20,
  cross_attention_head_dim: 112,
};

// ---- VAE (AutoencoderDC). Random checkpoints hold the decoder half only: the pipeline never encodes. ----

/** A vae/ component from an AutoencoderDC config.json (written as given, encoder keys included). */
export function vaeComponent(config: Record<string, unknown>): ComponentSpec {
  return {
    folder: 'vae',
    weightsStem: 'diffusion_pytorch_model',
    config,
    shapes: dcAeDecoderTensorShapes(DcAeConfig.parse(config)),
  };
}

const F32C32_STAGES = ['ResBlock', 'ResBlock', 'ResBlock', 'EfficientViTBlock', 'EfficientViTBlock', 'EfficientViTBlock'];

/** config.json of mit-han-lab/dc-ae-f32c32-sana-<version>-diffusers as diffusers' conversion saved it. */
function dcAeF32C32Sana(version: '1.0' | '1.1'): Record<string, unknown> {
  return {
    _class_name: 'AutoencoderDC',
    _diffusers_version: '0.32.0.dev0',
    _name_or_path: `mit-han-lab/dc-ae-f32c32-sana-${version}-diffusers`,
    attention_head_dim: 32,
    decoder_act_fns: 'silu',
    decoder_block_out_channels: [128, 256, 512, 512, 1024, 1024],
    decoder_block_types: F32C32_STAGES,
    decoder_layers_per_block: [3, 3, 3, 3, 3, 3],
    decoder_norm_types: 'rms_norm',
    decoder_qkv_multiscales: [[], [], [], [5], [5], [5]],
    downsample_block_type: 'Conv',
    encoder_block_out_channels: [128, 256, 512, 512, 1024, 1024],
    encoder_block_types: F32C32_STAGES,
    encoder_layers_per_block: [2, 2, 2, 3, 3, 3],
    encoder_qkv_multiscales: [[], [], [], [5], [5], [5]],
    in_channels: 3,
    latent_channels: 32,
    scaling_factor: 0.41407,
    upsample_block_type: 'interpolate',
  };
}

/** A tiny DC-AE with the F32C32 structure (5 ×2 up-samplings, linear attention in the 3 deepest stages) for tests. */
export function tinyVae(latentChannels = 8): ComponentSpec {
  return vaeComponent({
    _class_name: 'AutoencoderDC',
    attention_head_dim: 8,
    decoder_act_fns: 'silu',
    decoder_block_out_channels: [8, 8, 16, 16, 16, 16],
    decoder_block_types: F32C32_STAGES,
    decoder_conv_act_fn: 'relu',
    decoder_in_shortcut: true,
    decoder_layers_per_block: [1, 1, 1, 1, 1, 2],
    decoder_norm_types: 'rms_norm',
    decoder_qkv_multiscales: [[], [], [], [5], [5], [5]],
    in_channels: 3,
    latent_channels: latentChannels,
    scaling_factor: 0.41407,
    upsample_block_type: 'interpolate',
  });
}

// ---- text encoder (Gemma2Model) ----

/** A text_encoder/ component (a saved Gemma2Model) from a Gemma-2 config.json. */
export function gemma2TextEncoder(config: Record<string, unknown>): ComponentSpec {
  return {
    folder: 'text_encoder',
    weightsStem: 'model',
    config,
    shapes: gemma2TensorShapes(Gemma2Config.parse(config)),
    // Gemma's RMSNorm scales by (1 + w): zero weights are the identity scale
    init: (_name, shape) => (shape.length === 1 ? 'zero' : 'matrix'),
  };
}

/** text_encoder/config.json of the SANA checkpoints: google/gemma-2-2b-it as Gemma2Model. */
export const GEMMA_2_2B_CONFIG: Record<string, unknown> = {
  architectures: ['Gemma2Model'],
  attention_bias: false,
  attention_dropout: 0.0,
  attn_logit_softcapping: 50.0,
  bos_token_id: 2,
  cache_implementation: 'hybrid',
  eos_token_id: 1,
  final_logit_softcapping: 30.0,
  head_dim: 256,
  hidden_act: 'gelu_pytorch_tanh',
  hidden_activation: 'gelu_pytorch_tanh',
  hidden_size: 2304,
  initializer_range: 0.02,
  intermediate_size: 9216,
  max_position_embeddings: 8192,
  model_type: 'gemma2',
  num_attention_heads: 8,
  num_hidden_layers: 26,
  num_key_value_heads: 4,
  pad_token_id: 0,
  query_pre_attn_scalar: 256,
  rms_norm_eps: 1e-6,
  rope_theta: 10000.0,
  sliding_window: 4096,
  torch_dtype: 'float32',
  use_cache: true,
  vocab_size: 256000,
};

/**
 * A tiny Gemma-2 with tiny-a's shapes (hidden 48 = the tiny transformers' caption_channels): sliding window 8,
 * soft-capping and query_pre_attn_scalar all in play. Pair it with a `tokenizer: { vocabSize: 512 }` folder.
 */
export function tinyTextEncoder(): ComponentSpec {
  return gemma2TextEncoder({
    ...GEMMA_2_2B_CONFIG,
    attn_logit_softcapping: 3.0,
    head_dim: 24,
    hidden_size: 48,
    intermediate_size: 96,
    num_attention_heads: 2,
    num_hidden_layers: 2,
    num_key_value_heads: 1,
    query_pre_attn_scalar: 16,
    sliding_window: 8,
    vocab_size: 512,
  });
}

/** scheduler/scheduler_config.json of the released SANA pipelines: Flow-DPM-Solver (flow_shift 6 for 4K). */
export function sanaScheduler(flowShift = 3.0): Record<string, unknown> {
  return {
    _class_name: 'DPMSolverMultistepScheduler',
    algorithm_type: 'dpmsolver++',
    beta_end: 0.02,
    beta_schedule: 'linear',
    beta_start: 0.0001,
    final_sigmas_type: 'zero',
    flow_shift: flowShift,
    lower_order_final: true,
    num_train_timesteps: 1000,
    prediction_type: 'flow_prediction',
    solver_order: 2,
    solver_type: 'midpoint',
    use_flow_sigmas: true,
  };
}

const tinyTransformer = (sampleSize: number) =>
  transformer({
    num_layers: 2,
    in_channels: 8,
    out_channels: 8,
    num_attention_heads: 2,
    attention_head_dim: 16,
    num_cross_attention_heads: 4,
    cross_attention_head_dim: 8,
    cross_attention_dim: 32,
    caption_channels: 48,
    sample_size: sampleSize,
  });

export interface Preset {
  description: string;
  components: Partial<Record<Component, () => ComponentSpec>>;
  /** scheduler/scheduler_config.json, when the preset is a whole pipeline */
  scheduler?: Record<string, unknown>;
  /** a small Gemma-style tokenizer/ folder (services/text-encoder/tokenizer.ts writeTestTokenizer) */
  tokenizer?: { vocabSize: number };
}

export const PRESETS: Record<string, Preset> = {
  tiny: {
    description: 'a whole tiny pipeline (512 px by default): the embedded default of `sana generate` and the tests',
    components: { transformer: () => tinyTransformer(16), vae: () => tinyVae(8), text_encoder: tinyTextEncoder },
    tokenizer: { vocabSize: 512 },
    scheduler: sanaScheduler(),
  },
  'sana-600m-512-full': {
    description: 'a whole Sana_600M_512px pipeline: 600M transformer, DC-AE F32C32 1.1, Gemma-2-2B (about 13 GB)',
    components: {
      transformer: () => transformer({ ...sana600m, sample_size: 16 }),
      vae: () => vaeComponent(dcAeF32C32Sana('1.1')),
      text_encoder: () => gemma2TextEncoder(GEMMA_2_2B_CONFIG),
    },
    tokenizer: { vocabSize: 512 },
    scheduler: sanaScheduler(),
  },
  'tiny-transformer': { description: 'a 2-layer transformer with tiny-a-like shapes (tests)', components: { transformer: () => tinyTransformer(8) } },
  'tiny-transformer-outliers': {
    description: 'tiny-transformer with ×50 activation outliers planted in a few channels (int8 smoothing tests)',
    components: { transformer: () => withPlantedOutliers(tinyTransformer(8), 50, [3, 17]) },
  },
  'sana-600m-512-outliers': {
    description: 'Sana_600M_512px with ×50 activation outliers planted in three channels of every block (int8 quality)',
    components: { transformer: () => withPlantedOutliers(transformer({ ...sana600m, sample_size: 16 })) },
  },
  'sana-600m-512-outliers-compensated': {
    description: 'sana-600m-512-outliers with the reading weights divided by the factor: the fp32 model nearly unchanged, the activations ×50 (int8 quality)',
    components: { transformer: () => withPlantedOutliers(transformer({ ...sana600m, sample_size: 16 }), 50, [7, 300, 801], true) },
  },
  'sana-600m-512': { description: 'Sana_600M_512px', components: { transformer: () => transformer({ ...sana600m, sample_size: 16 }) } },
  'sana-600m-1024': { description: 'Sana_600M_1024px', components: { transformer: () => transformer({ ...sana600m, sample_size: 32 }) } },
  'sana-1600m-512': { description: 'Sana_1600M_512px', components: { transformer: () => transformer({ ...sana1600m, sample_size: 16 }) } },
  'sana-1600m-1024': { description: 'Sana_1600M_1024px', components: { transformer: () => transformer({ ...sana1600m, sample_size: 32 }) } },
  'sana-1600m-2048': {
    description: 'Sana_1600M_2Kpx (sin-cos positional embedding, interpolation_scale 1)',
    components: { transformer: () => transformer({ ...sana1600m, sample_size: 64, interpolation_scale: 1 }) },
  },
  'sana-1600m-4096': {
    description: 'Sana_1600M_4Kpx (sin-cos positional embedding, interpolation_scale 2)',
    components: { transformer: () => transformer({ ...sana1600m, sample_size: 128, interpolation_scale: 2 }) },
  },
  'sana-1.5-1600m-1024': {
    description: 'SANA1.5_1.6B_1024px (RMS qk-norm across heads)',
    components: { transformer: () => transformer({ ...sana1600m, sample_size: 32, qk_norm: 'rms_norm_across_heads' }) },
  },
  'sana-1.5-4800m-1024': {
    description: 'SANA1.5_4.8B_1024px (60 layers, RMS qk-norm across heads)',
    components: { transformer: () => transformer({ ...sana1600m, num_layers: 60, sample_size: 32, qk_norm: 'rms_norm_across_heads' }) },
  },
  'tiny-vae': { description: 'a tiny DC-AE decoder with F32C32 structure, 8 latent channels (tests)', components: { vae: () => tinyVae() } },
  'dc-ae-f32c32-sana-1.0': { description: 'DC-AE F32C32 SANA 1.0 (decoder weights only)', components: { vae: () => vaeComponent(dcAeF32C32Sana('1.0')) } },
  'dc-ae-f32c32-sana-1.1': { description: 'DC-AE F32C32 SANA 1.1 (decoder weights only)', components: { vae: () => vaeComponent(dcAeF32C32Sana('1.1')) } },
  'gemma-2-2b': { description: 'Gemma-2-2B-it text encoder as SANA ships it (26 layers, hidden 2304)', components: { text_encoder: () => gemma2TextEncoder(GEMMA_2_2B_CONFIG) } },
  'tiny-text-encoder': {
    description: 'a 2-layer Gemma-2 with tiny-a shapes and a small tokenizer (tests)',
    components: { text_encoder: tinyTextEncoder },
    tokenizer: { vocabSize: 512 },
  },
};
