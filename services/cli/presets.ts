// Named model shapes for random checkpoints: the released SANA configurations and tiny test models.
// Transformer configs follow diffusers' scripts/convert_sana_to_diffusers.py.
import { ditTensorShapes, LinearDitConfig } from '../denoiser/linear-dit.ts';
import type { ComponentSpec } from '../common/random-checkpoint.ts';

type Component = ComponentSpec['folder'];

function transformer(overrides: Partial<LinearDitConfig> & Pick<LinearDitConfig, 'num_layers'>): ComponentSpec {
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
    init: (name, shape) => {
      if (name.endsWith('scale_shift_table')) return { std: 1 / Math.sqrt(shape[1]) };
      if (name.endsWith('.bias')) return 'zero';
      if (shape.length === 1) return 'norm';
      return 'matrix';
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

export interface Preset {
  description: string;
  components: Partial<Record<Component, () => ComponentSpec>>;
  /** scheduler/scheduler_config.json, when the preset is a whole pipeline */
  scheduler?: Record<string, unknown>;
}

export const PRESETS: Record<string, Preset> = {
  'tiny-transformer': {
    description: 'a 2-layer transformer with tiny-a-like shapes (tests)',
    components: {
      transformer: () =>
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
          sample_size: 8,
        }),
    },
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
};
