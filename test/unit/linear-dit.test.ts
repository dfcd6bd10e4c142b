import fs from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, test } from 'vitest';
import { ConfigError } from '../../services/common/config.ts';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import { Checkpoint, CheckpointError, writeSafetensors } from '../../services/common/safetensors.ts';
import { batchRows, tensor } from '../../services/common/tensor.ts';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { type DitInputs, LinearDit, loadLinearDitConfig, sincosPosEmbed } from '../../services/denoiser/linear-dit.ts';
import { maxAbsErr } from '../parity/golden.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('dit');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');

/** Re-stores a checkpoint's (already rounded) weights as float32: the same weights, another dtype. */
function restoreAsF32(fromDir: string, toDir: string): void {
  const ckpt = Checkpoint.open(fromDir, 'diffusion_pytorch_model');
  fs.mkdirSync(toDir, { recursive: true });
  fs.copyFileSync(path.join(fromDir, 'config.json'), path.join(toDir, 'config.json'));
  const specs = ckpt.names.map((name) => ({ name, shape: ckpt.entry(name).shape }));
  writeSafetensors(toDir, 'diffusion_pytorch_model', specs, (name) => ckpt.readF32(name));
}

/** Rewrites a checkpoint with extra tensors (filled by `fill`), reading the old file before replacing it. */
function addTensors(dir: string, extra: { name: string; shape: number[] }[], fill: (n: number) => Float32Array): void {
  const ckpt = Checkpoint.open(dir, 'diffusion_pytorch_model');
  const specs = [...ckpt.names.map((name) => ({ name, shape: ckpt.entry(name).shape })), ...extra];
  const staging = `${dir}.staging`;
  writeSafetensors(staging, 'diffusion_pytorch_model', specs, (n) =>
    ckpt.has(n) ? ckpt.readF32(n) : fill(extra.find((e) => e.name === n)!.shape.reduce((a, b) => a * b, 1)),
  );
  fs.renameSync(path.join(staging, 'diffusion_pytorch_model.safetensors'), path.join(dir, 'diffusion_pytorch_model.safetensors'));
}

function inputs(c: { in_channels: number; caption_channels: number }, batch: number, h: number, w: number, length: number): DitInputs {
  const wave = (n: number, f: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * f));
  const mask = BigInt64Array.from({ length: batch * length }, (_, i) => (i % length < length - 2 || i < length ? 1n : 0n));
  return {
    hiddenStates: tensor(wave(batch * c.in_channels * h * w, 0.37), [batch, c.in_channels, h, w]),
    encoderHiddenStates: tensor(wave(batch * length * c.caption_channels, 0.11), [batch, length, c.caption_channels]),
    encoderAttentionMask: tensor(mask, [batch, length]),
    timestep: tensor(Float32Array.from({ length: batch }, (_, i) => 999 - 311.5 * i), [batch]),
  };
}

describe('Linear-DiT loading', () => {
  let reference: Float32Array;
  const tiny = path.join(root, 'tiny');

  beforeAll(async () => {
    writeRandomCheckpoint('tiny-transformer', tiny, { seed: 7 });
    const dit = await LinearDit.load(path.join(tiny, 'transformer'));
    reference = (await dit.forward(inputs(dit.config, 2, 4, 6, 5))).data;
    await dit.close();
  });

  test('bf16, fp16 and sharded checkpoints give the result of the same weights stored in fp32', async () => {
    for (const dtype of ['BF16', 'F16'] as const) {
      const low = path.join(root, `tiny-${dtype}`);
      writeRandomCheckpoint('tiny-transformer', low, { seed: 7, dtype, maxShardBytes: 16 * 1024 });
      expect(Checkpoint.open(path.join(low, 'transformer')).files.length).toBeGreaterThan(1);
      const f32 = path.join(root, `tiny-${dtype}-as-f32`);
      restoreAsF32(path.join(low, 'transformer'), path.join(f32, 'transformer'));
      const outs: Float32Array[] = [];
      for (const dir of [low, f32]) {
        const dit = await LinearDit.load(path.join(dir, 'transformer'));
        outs.push((await dit.forward(inputs(dit.config, 2, 4, 6, 5))).data);
        await dit.close();
      }
      expect(maxAbsErr(outs[0], outs[1])).toBeLessThanOrEqual(1e-5);
      // rounding the weights to 16 bits changes the output, but only a little
      const drift = maxAbsErr(outs[0], reference);
      expect(drift).toBeGreaterThan(0);
      expect(drift).toBeLessThan(0.5);
    }
  });

  test('a second load reuses the compiled graph', async () => {
    const dit = await LinearDit.load(path.join(tiny, 'transformer'));
    expect(dit.compileCacheHit).toBe(true);
    const out = await dit.forward(inputs(dit.config, 2, 4, 6, 5));
    expect(Array.from(out.data)).toEqual(Array.from(reference));
    await dit.close();
  });

  test('a batch too large for one run is run in sample groups with the result of one run', async () => {
    const dit = await LinearDit.load(path.join(tiny, 'transformer'));
    /** sample i of every input, alone */
    const sample = (b: DitInputs, i: number): DitInputs => ({
      hiddenStates: batchRows(b.hiddenStates, i, i + 1),
      encoderHiddenStates: batchRows(b.encoderHiddenStates, i, i + 1),
      encoderAttentionMask: batchRows(b.encoderAttentionMask, i, i + 1),
      timestep: batchRows(b.timestep, i, i + 1),
    });
    // 16×16 tokens (patch 1): three samples share one run; each gets the bits of its own run (step-level batching
    // promises every request its exact image)
    const small = inputs(dit.config, 3, 16, 16, 5);
    const together = await dit.forward(small);
    for (let i = 0; i < 3; i++) {
      const alone = await dit.forward(sample(small, i));
      expect(Array.from(together.data.subarray(i * alone.data.length, (i + 1) * alone.data.length))).toEqual(Array.from(alone.data));
    }
    // 48×48 tokens: 2304 rows per sample (4096 at most per run), so the batch of 3 runs one sample at a time
    const large = inputs(dit.config, 3, 48, 48, 5);
    const split = await dit.forward(large);
    expect(split.dims).toEqual([3, dit.config.out_channels, 48, 48]);
    for (let i = 0; i < 3; i++) {
      const alone = await dit.forward(sample(large, i));
      expect(Array.from(split.data.subarray(i * alone.data.length, (i + 1) * alone.data.length))).toEqual(Array.from(alone.data));
    }
    await dit.close();
  });

  test('the caption K/V are computed once per caption and mask and reused by later steps, never for another caption or mask', async () => {
    const dit = await LinearDit.load(path.join(tiny, 'transformer'));
    const base = inputs(dit.config, 2, 4, 6, 5);
    const other = (shift: number): DitInputs => ({ ...base, encoderHiddenStates: tensor(base.encoderHiddenStates.data.map((v) => v + shift), base.encoderHiddenStates.dims) });
    const step = (x: DitInputs, t: number) => dit.forward({ ...x, timestep: tensor(new Float32Array([t, t]), [2]) });
    // a request's steps: one caption run, then reuse
    const first = await step(base, 999);
    await step(base, 500);
    expect(dit.session.prefixStats).toEqual({ runs: 1, reused: 1 });
    // two other captions evict the first (two are kept); each result equals a fresh session's
    const fresh = await LinearDit.load(path.join(tiny, 'transformer'));
    for (const x of [other(0.5), other(-0.25), base]) {
      const got = await step(x, 999);
      const want = await fresh.forward({ ...x, timestep: tensor(new Float32Array([999, 999]), [2]) });
      expect(Array.from(got.data)).toEqual(Array.from(want.data));
    }
    expect(dit.session.prefixStats).toEqual({ runs: 4, reused: 1 });
    expect(Array.from((await step(base, 999)).data)).toEqual(Array.from(first.data));
    expect(dit.session.prefixStats).toEqual({ runs: 4, reused: 2 });
    // the mask is part of the keys (their bias row): the same caption under another mask is another caption
    const shorter: DitInputs = { ...base, encoderAttentionMask: tensor(base.encoderAttentionMask.data.map((m, i) => (i % 5 === 2 ? 0n : m)), [2, 5]) };
    const got = await step(shorter, 999);
    expect(dit.session.prefixStats).toEqual({ runs: 5, reused: 2 });
    expect(Array.from(got.data)).toEqual(Array.from((await fresh.forward({ ...shorter, timestep: tensor(new Float32Array([999, 999]), [2]) })).data));
    expect(maxAbsErr(got.data, first.data)).toBeGreaterThan(1e-3);
    await Promise.all([dit.close(), fresh.close()]);
  });

  test('inference runs off the event loop', async () => {
    const dit = await LinearDit.load(path.join(tiny, 'transformer'));
    let settled = false;
    const running = dit.forward(inputs(dit.config, 2, 32, 32, 300)).then(() => (settled = true));
    // a forward that blocked the loop would be over before the loop turned once; one turn proves it does not
    // (a count of turns would measure the machine's speed, not the property)
    let turns = 0;
    while (!settled) {
      await new Promise((resolve) => setImmediate(resolve));
      turns++;
    }
    await running;
    await dit.close();
    expect(turns).toBeGreaterThan(0);
  });

  test('bad inputs are rejected with the field named, before any compute', async () => {
    const dit = await LinearDit.load(path.join(tiny, 'transformer'));
    const good = inputs(dit.config, 1, 4, 4, 3);
    await expect(dit.forward({ ...good, hiddenStates: tensor(new Float32Array(16), [1, 1, 4, 4]) })).rejects.toThrow(InvalidArgumentError);
    const nan = good.encoderHiddenStates.data.slice();
    nan[5] = NaN;
    await expect(dit.forward({ ...good, encoderHiddenStates: tensor(nan, good.encoderHiddenStates.dims) })).rejects.toThrow(
      /encoder_hidden_states: holds a non-finite value \(NaN\) at flat index 5/,
    );
    await expect(dit.forward({ ...good, timestep: tensor(new Float32Array(2), [2]) })).rejects.toThrow(/timestep: shape \[2\]/);
    await dit.close();
  });
});

describe('Linear-DiT configuration', () => {
  const base = path.join(root, 'cfg');
  const configFile = path.join(base, 'transformer', 'config.json');
  beforeAll(() => writeRandomCheckpoint('tiny-transformer', base));
  const withConfig = (patch: Record<string, unknown>, drop: string[] = []) => {
    const dir = path.join(root, `cfg-${Object.keys(patch).join('-')}${drop.join('-')}`, 'transformer');
    fs.mkdirSync(dir, { recursive: true });
    const config = { ...JSON.parse(fs.readFileSync(configFile, 'utf8')), ...patch };
    for (const k of drop) delete config[k];
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(config));
    fs.copyFileSync(path.join(base, 'transformer', 'diffusion_pytorch_model.safetensors'), path.join(dir, 'diffusion_pytorch_model.safetensors'));
    return dir;
  };

  test('a missing or ill-typed key names the file and the key', () => {
    const missing = withConfig({}, ['num_layers']);
    expect(() => loadLinearDitConfig(path.join(missing, 'config.json'))).toThrow(ConfigError);
    expect(() => loadLinearDitConfig(path.join(missing, 'config.json'))).toThrow(/config\.json: key "num_layers"/);
    const typed = withConfig({ attention_head_dim: 'sixteen' });
    expect(() => loadLinearDitConfig(path.join(typed, 'config.json'))).toThrow(/key "attention_head_dim"/);
  });

  test('options it does not implement fail at load with a clear message', async () => {
    await expect(LinearDit.load(withConfig({ guidance_embeds: true }))).rejects.toThrow(/guidance_embeds.*SANA-Sprint/);
    await expect(LinearDit.load(withConfig({ qk_norm: 'layer_norm' }))).rejects.toThrow(/qk_norm.*not supported/);
  });

  test('checkpoint tensors the config does not account for are reported, not ignored', async () => {
    const dir = withConfig({ attention_bias: false, norm_eps: 1e-6 });
    addTensors(dir, [{ name: 'time_embed.guidance_embedder.linear_1.weight', shape: [2, 2] }], (n) => new Float32Array(n));
    await expect(LinearDit.load(dir)).rejects.toThrow(CheckpointError);
    await expect(LinearDit.load(dir)).rejects.toThrow(/guidance_embedder.*not used by the configured model/);
  });

  test('the 2K/4K sin-cos positional embedding and SANA 1.5 qk-norm build and run at any size', async () => {
    const dir = withConfig({ interpolation_scale: 2, qk_norm: 'rms_norm_across_heads' });
    // qk-norm needs its norm weights: rewrite the checkpoint with them
    const c = loadLinearDitConfig(path.join(dir, 'config.json'));
    const extra: { name: string; shape: number[] }[] = [];
    for (let i = 0; i < c.num_layers; i++) {
      for (const n of ['norm_q', 'norm_k']) {
        extra.push({ name: `transformer_blocks.${i}.attn1.${n}.weight`, shape: [32] }, { name: `transformer_blocks.${i}.attn2.${n}.weight`, shape: [32] });
      }
    }
    addTensors(dir, extra, (n) => new Float32Array(n).fill(1.25));
    const dit = await LinearDit.load(dir);
    for (const [h, w] of [[8, 8], [6, 10]]) {
      const out = await dit.forward(inputs(dit.config, 2, h, w, 4));
      expect(out.dims).toEqual([2, 8, h, w]);
      expect(out.data.every(Number.isFinite)).toBe(true);
    }
    await dit.close();
  });

  test('the sin-cos table encodes columns in the first half and rows in the second', () => {
    const c = loadLinearDitConfig(withConfig({ interpolation_scale: 1 }) + '/config.json');
    const inner = c.num_attention_heads * c.attention_head_dim;
    const q = inner / 4;
    const table = sincosPosEmbed(c, 8, 8); // base size 8: positions are plain indices
    const at = (i: number, j: number, k: number) => table[(i * 8 + j) * inner + k];
    expect(at(0, 0, 0)).toBe(0);
    expect(at(0, 0, q)).toBe(1);
    expect(at(3, 5, 0)).toBeCloseTo(Math.sin(5), 6); // column 5, lowest frequency index 0 (ω = 1)
    expect(at(3, 5, 2 * q)).toBeCloseTo(Math.sin(3), 6); // row 3
    const wide = sincosPosEmbed(c, 8, 16); // 16 columns squeezed onto the base grid of 8
    expect(wide[(0 * 16 + 2) * inner]).toBeCloseTo(Math.sin(1), 6);
  });
});
