import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { vaeComponent } from '../../services/cli/presets.ts';
import { ConfigError } from '../../services/common/config.ts';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import { writeComponent } from '../../services/common/random-checkpoint.ts';
import { Checkpoint, CheckpointError, writeSafetensors } from '../../services/common/safetensors.ts';
import { tensor } from '../../services/common/tensor.ts';
import { DcAeConfig, DcAeDecoder, dcAeDecoderTensorShapes, decoderLayout, loadDcAeConfig } from '../../services/decoder/dc-ae.ts';
import { Golden, maxRelErr } from '../parity/golden.ts';
import { DcAeReference } from '../helpers/dc-ae-reference.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('dc-ae');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');
const golden = new Golden(path.join(import.meta.dirname, '..', 'fixtures', 'golden', 'tiny-a'));

const STAGES = ['ResBlock', 'ResBlock', 'ResBlock', 'EfficientViTBlock', 'EfficientViTBlock', 'EfficientViTBlock'];
const baseConfig = {
  _class_name: 'AutoencoderDC',
  attention_head_dim: 8,
  decoder_block_out_channels: [8, 8, 16, 16, 16, 16],
  decoder_block_types: STAGES,
  decoder_layers_per_block: [1, 1, 1, 1, 1, 1],
  decoder_qkv_multiscales: [[], [], [], [5], [5], [5]],
  in_channels: 3,
  latent_channels: 8,
  scaling_factor: 0.5,
  upsample_block_type: 'interpolate',
};

/** A random checkpoint whose norms and batch-norm statistics are not the identity, so every term matters. */
function writeVae(name: string, config: Record<string, unknown>, seed = 7): string {
  const spec = vaeComponent(config);
  spec.init = (key, shape) => {
    if (shape.length === 0) return 'zero'; // num_batches_tracked
    if (key.endsWith('running_var')) return { std: 0.25, mean: 1 };
    if (shape.length === 1) return { std: 0.2, mean: key.endsWith('.weight') ? 1 : 0 };
    return 'matrix';
  };
  return writeComponent(path.join(root, name), spec, { seed });
}

function wave(n: number, f: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => 1.3 * Math.sin(i * f + 0.3));
}

describe('the float64 loop reference used below', () => {
  // every golden variant's vae groups: tiny-a (RMSNorm, interpolation) and any other the fixtures hold
  const fixtures = path.join(import.meta.dirname, '..', 'fixtures', 'golden');
  const checked: string[] = [];
  for (const variant of fs.readdirSync(fixtures).filter((d) => fs.existsSync(path.join(fixtures, d, 'golden.json')))) {
    const g = new Golden(path.join(fixtures, variant));
    for (const group of Object.keys(g.json.tensors).filter((t) => /^vae.*\.sample$/.test(t)).map((t) => t.slice(0, -'.sample'.length))) {
      checked.push(`${variant}/${group}`);
      test(`reproduces the reference's ${variant} ${group}.sample (linear and quadratic attention stages)`, () => {
        const reference = new DcAeReference(g.component('vae'));
        const [b, c, h, w] = g.shape(`${group}.latent`);
        const latent = g.f32(`${group}.latent`);
        const expected = g.f32(`${group}.sample`);
        const per = expected.length / b;
        for (let i = 0; i < b; i++) {
          const ours = reference.decode(latent.subarray(i * c * h * w, (i + 1) * c * h * w), h, w);
          expect(maxRelErr(ours, expected.subarray(i * per, (i + 1) * per))).toBeLessThan(1e-5);
        }
      });
    }
  }
  test('finds the vae groups of the fixtures', () => {
    expect(checked).toEqual(expect.arrayContaining(['tiny-a/vae', 'tiny-vae-dcae-in/vae.a', 'tiny-vae-dcae-in/vae.b']));
  });
});

describe('DC-AE decoder options the released checkpoints use', () => {
  const variants: Record<string, { config: Record<string, unknown>; latent: number[] }> = {
    // dc-ae-f32c32-in/mix-1.0 style: batch norm + ReLU ResBlocks, pixel-shuffle up-sampling, no multi-scale
    // attention, no blocks at stage 0 so conv_out is itself an up-sampling block
    'batch norm, pixel shuffle, head up-sampler': {
      config: {
        ...baseConfig,
        decoder_layers_per_block: [0, 1, 2, 1, 1, 1],
        decoder_qkv_multiscales: [[], [], [], [], [], []],
        decoder_norm_types: ['batch_norm', 'batch_norm', 'batch_norm', 'rms_norm', 'rms_norm', 'rms_norm'],
        decoder_act_fns: ['relu', 'relu', 'relu', 'silu', 'silu', 'silu'],
        upsample_block_type: 'pixel_shuffle',
      },
      latent: [2, 8, 2, 3],
    },
    // the remaining switches: no in-shortcut, GELU / Mish / identity ResBlock activations, two multi-scale
    // kernels, 4-channel heads (linear attention at 3×2 already), batch norm inside attention, SiLU head
    'other activations, scales and shortcuts': {
      config: {
        ...baseConfig,
        attention_head_dim: 4,
        latent_channels: 4,
        decoder_block_out_channels: [8, 16, 16, 16, 32, 32],
        decoder_in_shortcut: false,
        decoder_conv_act_fn: 'silu',
        decoder_act_fns: ['gelu', 'Mish', null, 'silu', 'silu', 'silu'],
        decoder_norm_types: ['rms_norm', 'rms_norm', 'rms_norm', 'batch_norm', 'rms_norm', 'rms_norm'],
        decoder_qkv_multiscales: [[], [], [], [3], [3, 5], [5]],
      },
      latent: [1, 4, 3, 2],
    },
  };

  for (const [name, { config, latent }] of Object.entries(variants)) {
    test(name, async () => {
      const dir = writeVae(name.replace(/\W+/g, '-'), config);
      const decoder = await DcAeDecoder.load(dir);
      try {
        const [b, c, h, w] = latent;
        const z = wave(b * c * h * w, 0.71);
        const out = await decoder.decode(tensor(z, latent));
        const s = decoder.spatialScale;
        expect(s).toBe(32);
        expect(out.dims).toEqual([b, 3, h * s, w * s]);
        const reference = new DcAeReference(dir);
        const per = c * h * w;
        const expected = new Float64Array(out.data.length);
        for (let i = 0; i < b; i++) expected.set(reference.decode(z.subarray(i * per, (i + 1) * per), h, w), (i * out.data.length) / b);
        expect(maxRelErr(out.data, expected)).toBeLessThan(1e-4);
      } finally {
        await decoder.close();
      }
    });
  }
});

describe('checkpoint layout', () => {
  test('the tensor-shape contract is exactly the decoder half of a diffusers AutoencoderDC checkpoint', () => {
    const config = loadDcAeConfig(path.join(golden.component('vae'), 'config.json'));
    const ckpt = Checkpoint.open(golden.component('vae'), 'diffusion_pytorch_model');
    const stored = new Map(ckpt.names.filter((n) => n.startsWith('decoder.')).map((n) => [n, ckpt.entry(n).shape]));
    expect(new Map([...dcAeDecoderTensorShapes(config)].sort())).toEqual(new Map([...stored].sort()));
    expect(ckpt.names.some((n) => n.startsWith('encoder.'))).toBe(true); // and the encoder is there, unused
  });

  test('a decoder tensor the config does not account for is reported by name', async () => {
    const dir = writeVae('extra', baseConfig);
    const ckpt = Checkpoint.open(dir, 'diffusion_pytorch_model');
    const specs = [...ckpt.names.map((name) => ({ name, shape: ckpt.entry(name).shape })), { name: 'decoder.up_blocks.0.2.conv1.weight', shape: [8, 8, 3, 3] }];
    const staging = path.join(root, 'extra-staging');
    writeSafetensors(staging, 'diffusion_pytorch_model', specs, (n) => (ckpt.has(n) ? ckpt.readF32(n) : new Float32Array(8 * 8 * 9)));
    fs.renameSync(path.join(staging, 'diffusion_pytorch_model.safetensors'), path.join(dir, 'diffusion_pytorch_model.safetensors'));
    const load = DcAeDecoder.load(dir);
    await expect(load).rejects.toThrow(CheckpointError);
    await expect(load).rejects.toThrow(/decoder\.up_blocks\.0\.2\.conv1\.weight.*not used by the configured decoder/);
  });

  test('a tensor with the wrong shape names the tensor and both shapes', async () => {
    const dir = writeVae('bad-shape', baseConfig);
    const ckpt = Checkpoint.open(dir, 'diffusion_pytorch_model');
    const specs = ckpt.names.map((name) => ({ name, shape: name === 'decoder.conv_in.weight' ? [16, 8, 1, 1] : ckpt.entry(name).shape }));
    const staging = path.join(root, 'bad-shape-staging');
    writeSafetensors(staging, 'diffusion_pytorch_model', specs, (n) => (n === 'decoder.conv_in.weight' ? new Float32Array(128) : ckpt.readF32(n)));
    fs.renameSync(path.join(staging, 'diffusion_pytorch_model.safetensors'), path.join(dir, 'diffusion_pytorch_model.safetensors'));
    await expect(DcAeDecoder.load(dir)).rejects.toThrow(/decoder\.conv_in\.weight.*shape \[16,8,1,1\] but the config implies \[16,8,3,3\]/);
  });
});

describe('unsupported or inconsistent configurations fail at load with the key', () => {
  const cases: [string, Record<string, unknown>, RegExp][] = [
    ['an unknown up-sampler', { upsample_block_type: 'InterpolateConv' }, /upsample_block_type.*"InterpolateConv" is not supported/],
    ['layer norm', { decoder_norm_types: 'layer_norm' }, /decoder_norm_types\[\d\].*"layer_norm" is not supported/],
    ['an unknown block', { decoder_block_types: ['ResBlock', 'ResBlock', 'ResBlock', 'ResBlock', 'ResBlock', 'LiteMLA'] }, /decoder_block_types\[5\].*"LiteMLA"/],
    ['an unknown activation', { decoder_act_fns: 'relu6' }, /decoder_act_fns\[\d\].*"relu6" is not supported/],
    ['an unknown head activation', { decoder_conv_act_fn: 'tanh' }, /decoder_conv_act_fn.*"tanh"/],
    ['per-stage lists of the wrong length', { decoder_layers_per_block: [1, 1, 1] }, /decoder_layers_per_block.*3 entries.*6/],
    ['an even multi-scale kernel', { decoder_qkv_multiscales: [[], [], [], [4], [5], [5]] }, /decoder_qkv_multiscales\[3\].*even kernel/],
    ['an in-shortcut that cannot repeat the latent', { latent_channels: 6 }, /decoder_in_shortcut.*6 latent channels/],
    ['a stage without layers in the middle', { decoder_block_out_channels: [8, 8, 16, 32, 16, 16], decoder_layers_per_block: [1, 1, 1, 0, 1, 1] }, /up_blocks\.2.*receives 16/],
    ['attention narrower than a head', { attention_head_dim: 32 }, /no head of attention_head_dim 32/],
  ];
  for (const [name, overrides, message] of cases) {
    test(name, () => {
      const file = path.join(root, `${name.replace(/\W+/g, '-')}.json`);
      fs.writeFileSync(file, JSON.stringify({ ...baseConfig, ...overrides }));
      expect(() => loadDcAeConfig(file)).toThrow(ConfigError);
      expect(() => loadDcAeConfig(file)).toThrow(message);
    });
  }

  test('the parity suite would see the same error when loading such a checkpoint', async () => {
    const dir = writeVae('unsupported', baseConfig);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...baseConfig, decoder_norm_types: 'layer_norm' }));
    await expect(DcAeDecoder.load(dir)).rejects.toThrow(ConfigError);
  });
});

describe('latents the decoder cannot take are rejected before any compute', () => {
  let decoder: DcAeDecoder;
  beforeAll(async () => {
    decoder = await DcAeDecoder.load(golden.component('vae'));
    return () => decoder.close();
  });
  const c = 8;
  const cases: [string, () => ReturnType<typeof tensor<Float32Array>>, RegExp][] = [
    ['NaN', () => tensor(new Float32Array(c * 4).fill(0.5).fill(NaN, 5, 6), [1, c, 2, 2]), /non-finite value \(NaN\) at flat index 5/],
    ['Infinity', () => tensor(new Float32Array(c * 4).fill(-Infinity), [1, c, 2, 2]), /non-finite value \(-Infinity\)/],
    ['a wrong channel count', () => tensor(new Float32Array(32 * 4), [1, 32, 2, 2]), /must be \[B, 8, h, w\].*8 latent channels/],
    ['a wrong rank', () => tensor(new Float32Array(c * 4), [c, 2, 2]), /shape \[8,2,2\] must be \[B, 8, h, w\]/],
    ['an empty dimension', () => tensor(new Float32Array(0), [1, c, 0, 2]), /empty or invalid dimension/],
  ];
  for (const [name, make, message] of cases) {
    test(name, async () => {
      await expect(decoder.decode(make())).rejects.toThrow(InvalidArgumentError);
      await expect(decoder.decode(make())).rejects.toThrow(message);
      expect(decoder.session.lastRunSeconds).toBe(0); // the session never ran
    });
  }
});

test('released configs resolve to the F32C32 structure', () => {
  const c = DcAeConfig.parse({ ...baseConfig, decoder_layers_per_block: [3, 3, 3, 3, 3, 3] });
  const layout = decoderLayout(c);
  expect(layout.spatialScale).toBe(32);
  expect(layout.stages.map((s) => s.index)).toEqual([5, 4, 3, 2, 1, 0]);
  expect(layout.stages.map((s) => s.blockType)).toEqual([...STAGES].reverse());
  expect(layout.stages[0].upsample).toBeUndefined();
  expect(layout.stages[1].upsample).toEqual({ inChannels: 16 });
});
