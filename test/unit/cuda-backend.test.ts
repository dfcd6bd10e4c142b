// The denoiser's CUDA backend through the SIMT emulation build of kernels/ (build/kernels/emu, npm run
// kernels:build): the whole forward against the ONNX Runtime fp32 engine on every golden variant's transformer (every
// transformer group of each), against the plain C++ reference with the same rounding, and the denoiser stage wired
// with device 'cuda'.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { beforeAll, describe, expect, test } from 'vitest';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import { writeComponent } from '../../services/common/random-checkpoint.ts';
import { tensor } from '../../services/common/tensor.ts';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { startServe } from '../../services/cli/serve.ts';
import { DenoiserClient } from '../../services/common/gen/sana/v1/denoiser.ts';
import { PRESETS, transformer } from '../../services/cli/presets.ts';
import { INT8_MAX } from '../../services/common/int8-recipe.ts';
import { CudaLinearDit, CudaUnavailableError, DEFAULT_CUDA_ADDON, EMULATION_ADDON, PARITY_LIMITS, resolveCudaMode } from '../../services/denoiser/cuda-backend.ts';
import { type DitInputs, LinearDit } from '../../services/denoiser/linear-dit.ts';
import { LocalDenoiser } from '../../services/denoiser/stage.ts';
import { Golden, maxRelErr } from '../parity/golden.ts';
import { groupsByOutput } from '../parity/stages.ts';
import { goldenDitInputs } from '../parity/transformer.ts';
import { loopbackServeConfig } from '../helpers/serve-config.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('cuda-backend');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');

const INT8_LIMIT = PARITY_LIMITS.int8;
const BF16_LIMIT = PARITY_LIMITS.bf16;
// The kernels against the C++ reference with the same rounding. int8: the int32 products are exact, only the fp32
// summation order of norms and attention differs. bf16: a last-bit fp32 difference may flip a high part's rounding,
// but the low part takes the difference up, so the pair still agrees to a few 2^-17 steps.
const INT8_SAME_ROUNDING_LIMIT = 1e-5;
const BF16_SAME_ROUNDING_LIMIT = 2e-5;
// Except where an activation sits exactly on an int8 rounding tie: in tiny-posembed-qknorm's group transformer.b the
// reference's v/s is 93.5000 (to 7 digits) for one element of one attention-block row, which the kernel's fp32 value
// rounds the other way. That one step (1/127 of the row maximum) is the whole 9.7e-4 difference of that group; the
// bound there is that one step.
const INT8_TIES: Record<string, number> = { 'golden tiny-posembed-qknorm transformer.b': 1 / INT8_MAX };

beforeAll(() => {
  if (!fs.existsSync(EMULATION_ADDON)) throw new Error(`${EMULATION_ADDON} is missing: run npm run kernels:build first`);
  process.env.SANA_CUDA_ADDON = EMULATION_ADDON;
});

/** Every transformer group (inputs → output) of a golden variant. */
function goldenCase(variant: string) {
  const dir = path.resolve('test/fixtures/golden', variant);
  return {
    name: `golden ${variant}`,
    dir: path.join(dir, 'transformer'),
    inputs: (): { group: string; inputs: DitInputs }[] => {
      const golden = new Golden(dir);
      return groupsByOutput(golden, 'transformer', 'output').map((group) => ({ group, inputs: goldenDitInputs(golden, group) }));
    },
  };
}

describe('emulated CUDA forward vs the ONNX fp32 engine', () => {
  const cases = [
    goldenCase('tiny-a'),
    goldenCase('tiny-bf16-sharded'), // qk_norm, 3 heads of 8, bf16 weights in 4 shards, a non-square latent group
    goldenCase('tiny-posembed-qknorm'), // qk_norm, patch 2, sin-cos positions, biases, affine norm2, 3 latent sizes
    {
      // patch 2, sin-cos position table, attention biases, affine norm2, 3 heads of 8 (padded Q tile, a part-filled
      // K/V tile), 2 cross heads of 12, a 39-token caption with padding, stored in bf16
      name: 'random p2 pos-embed bias affine bf16-stored',
      dir: path.join(root, 'variant', 'transformer'),
      inputs: (): { group: string; inputs: DitInputs }[] => {
        const wave = (n: number, f: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * f));
        return [
          {
            group: 'sin waves',
            inputs: {
              hiddenStates: tensor(wave(2 * 4 * 12 * 10, 0.37), [2, 4, 12, 10]),
              encoderHiddenStates: tensor(wave(2 * 39 * 40, 0.11), [2, 39, 40]),
              encoderAttentionMask: tensor(BigInt64Array.from({ length: 78 }, (_, i) => (i % 39 < 30 ? 1n : 0n)), [2, 39]),
              timestep: tensor(Float32Array.from([999, 321.5]), [2]),
            },
          },
        ];
      },
    },
  ];

  beforeAll(() => {
    const spec = transformer({
      num_layers: 2, in_channels: 4, out_channels: 4, num_attention_heads: 3, attention_head_dim: 8,
      num_cross_attention_heads: 2, cross_attention_head_dim: 12, cross_attention_dim: 24, caption_channels: 40,
      patch_size: 2, interpolation_scale: 2, attention_bias: true, norm_elementwise_affine: true, sample_size: 12,
    });
    writeComponent(path.join(root, 'variant'), spec, { dtype: 'BF16', seed: 3 });
  });

  for (const c of cases) {
    test(`${c.name}: bf16 and int8 modes`, async () => {
      const groups = c.inputs();
      const onnx = await LinearDit.load(c.dir);
      const refs: Float32Array[] = [];
      for (const { inputs } of groups) refs.push((await onnx.forward(inputs)).data);
      await onnx.close();
      for (const mode of ['bf16', 'int8'] as const) {
        const dit = await CudaLinearDit.load(c.dir, { mode, keepHostCopy: true });
        try {
          for (const [g, { group, inputs }] of groups.entries()) {
            const out = await dit.forward(inputs);
            expect(out.dims).toEqual(inputs.hiddenStates.dims.map((d, i) => (i === 1 ? dit.config.out_channels ?? d : d)));
            const sameRounding = (await dit.forwardReference(inputs, 'rounded')).data;
            const unrounded = (await dit.forwardReference(inputs, 'fp32')).data;
            // the C++ reference itself is the ONNX model in fp32
            expect(maxRelErr(unrounded, refs[g])).toBeLessThan(1e-5);
            const sameRoundingLimit = mode === 'int8' ? (INT8_TIES[`${c.name} ${group}`] ?? INT8_SAME_ROUNDING_LIMIT) : BF16_SAME_ROUNDING_LIMIT;
            expect(maxRelErr(out.data, sameRounding)).toBeLessThan(sameRoundingLimit);
            expect(maxRelErr(out.data, refs[g])).toBeLessThan(mode === 'int8' ? INT8_LIMIT : BF16_LIMIT);
          }
        } finally {
          await dit.close();
        }
      }
    });
  }
});

describe('CUDA backend refusals', () => {
  test('a caption longer than the 300 tokens the kernels keep in shared memory is INVALID_ARGUMENT', async () => {
    const dit = await CudaLinearDit.load(path.resolve('test/fixtures/golden/tiny-a/transformer'));
    try {
      const inputs = goldenDitInputs(new Golden(path.resolve('test/fixtures/golden/tiny-a')), 'transformer');
      const long: DitInputs = {
        ...inputs,
        encoderHiddenStates: tensor(new Float32Array(2 * 301 * 48), [2, 301, 48]),
        encoderAttentionMask: tensor(new BigInt64Array(2 * 301).fill(1n), [2, 301]),
      };
      await expect(dit.forward(long)).rejects.toThrow(InvalidArgumentError);
      await expect(dit.forward(long)).rejects.toThrow(/301 exceeds .* 300/);
    } finally {
      await dit.close();
    }
  });

  test('the CUDA build on a machine without a device refuses to start, naming the cause', async () => {
    if (!fs.existsSync(DEFAULT_CUDA_ADDON)) throw new Error(`${DEFAULT_CUDA_ADDON} is missing: run npm run kernels:build first`);
    if (fs.existsSync('/dev/nvidia0')) return; // a machine with a GPU: nothing to refuse
    const load = CudaLinearDit.load(path.resolve('test/fixtures/golden/tiny-a/transformer'), { addon: DEFAULT_CUDA_ADDON });
    await expect(load).rejects.toThrow(CudaUnavailableError);
    await expect(CudaLinearDit.load(path.resolve('test/fixtures/golden/tiny-a/transformer'), { addon: DEFAULT_CUDA_ADDON })).rejects.toThrow(
      /--device cuda: .*(CUDA driver|no CUDA|cudaError)/,
    );
  });
});

describe('denoiser stage with device cuda (emulation build)', () => {
  const modelDir = path.join(root, 'pipeline');
  beforeAll(() => {
    writeRandomCheckpoint('tiny-transformer', modelDir);
    fs.mkdirSync(path.join(modelDir, 'scheduler'));
    fs.writeFileSync(path.join(modelDir, 'scheduler', 'scheduler_config.json'), JSON.stringify(PRESETS.tiny.scheduler));
  });

  test('denoises through the same stage code as the CPU engine', async () => {
    const cpu = await LocalDenoiser.load(modelDir);
    const cuda = await LocalDenoiser.load(modelDir, { device: 'cuda', cudaMode: 'bf16' });
    try {
      expect(cuda.info()).toEqual({ ...cpu.info(), precision: 'cuda-bf16' });
      const wave = (n: number, f: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * f));
      const req = {
        latents: tensor(wave(8 * 8 * 8, 0.3), [1, 8, 8, 8]),
        promptEmbeds: tensor(wave(7 * 48, 0.2), [1, 7, 48]),
        promptMask: tensor(new BigInt64Array(7).fill(1n), [1, 7]),
        negativeEmbeds: tensor(wave(7 * 48, 0.5), [1, 7, 48]),
        negativeMask: tensor(BigInt64Array.from([1n, 1n, 1n, 0n, 0n, 0n, 0n]), [1, 7]),
        guidanceScale: 4.5,
        numInferenceSteps: 3,
      };
      const steps: number[] = [];
      const ours = await cuda.denoise(req, { onStep: (s) => steps.push(s.step) });
      const want = await cpu.denoise(req);
      expect(steps).toEqual([0, 1, 2]);
      // guidance u + g·(c − u) scales a per-forward error by up to 2g − 1
      expect(maxRelErr(ours.data, want.data)).toBeLessThan((2 * req.guidanceScale - 1) * BF16_LIMIT);
    } finally {
      await cpu.close();
      await cuda.close();
    }
  });

  test('--precision picks the CUDA mode (int8 → W8A8, fp32 → bf16) unless SANA_CUDA_MODE or cudaMode says otherwise', async () => {
    const precisionOf = async (options: Parameters<typeof LocalDenoiser.load>[1]) => {
      const denoiser = await LocalDenoiser.load(modelDir, { device: 'cuda', ...options });
      try {
        return denoiser.info().precision;
      } finally {
        await denoiser.close();
      }
    };
    expect(await precisionOf({ precision: 'int8' })).toBe('cuda-int8');
    expect(await precisionOf({ precision: 'fp32' })).toBe('cuda-bf16');
    expect(await precisionOf({})).toBe('cuda-bf16'); // --precision defaults to fp32
    expect(resolveCudaMode('fp32', undefined, { SANA_CUDA_MODE: 'int8' })).toBe('int8');
    expect(resolveCudaMode('int8', undefined, { SANA_CUDA_MODE: 'bf16' })).toBe('bf16');
    expect(resolveCudaMode('int8', 'bf16', { SANA_CUDA_MODE: 'int8' })).toBe('bf16');
    expect(() => resolveCudaMode('fp32', undefined, { SANA_CUDA_MODE: 'fp16' })).toThrow(/SANA_CUDA_MODE must be one of int8, bf16, got "fp16"/);
    process.env.SANA_CUDA_MODE = 'int8';
    try {
      expect(await precisionOf({ precision: 'fp32' })).toBe('cuda-int8');
    } finally {
      delete process.env.SANA_CUDA_MODE;
    }
  });

  test('sana serve denoiser --device cuda: GetInfo reports the mode --precision picked, over gRPC', async () => {
    for (const [precision, want] of [['int8', 'cuda-int8'], ['fp32', 'cuda-bf16']] as const) {
      const serving = await startServe(loopbackServeConfig(modelDir, { role: 'denoiser', device: 'cuda', precision, shutdownGraceSeconds: 0 }));
      try {
        await serving.ready;
        const client = new DenoiserClient(serving.hosts.find((h) => h.options.name === 'denoiser')!.address, grpc.credentials.createInsecure());
        try {
          const info = await new Promise<{ precision: string }>((resolve, reject) => client.getInfo({}, (e, r) => (e ? reject(e) : resolve(r))));
          expect(info.precision).toBe(want);
        } finally {
          client.close();
        }
      } finally {
        await serving.close();
      }
    }
  });
});
