// W8A8 int8: the recipe's GEMMs as ONNX Runtime runs them, and the tiny models' quality against fp32 with the
// tolerances of the quality report (`npm run bench -- quality --preset tiny --precision int8`: denoiser steps
// cosine ≥ 0.99994, final latents 0.99996 and 47.6 dB, whole pipeline 44.3 dB, text embeddings at the attended
// positions cosine ≥ 0.99996 with the text encoder's per-token, partly two-pass activations).
import fs from 'node:fs';
import path from 'node:path';
import onnxProto from 'onnx-proto';
import { describe, expect, test } from 'vitest';
import {
  parsePrecision,
  quantizeActivationPerToken,
  quantizeWeight,
  referenceW8A8,
  resolveInt8Options,
} from '../../services/common/int8-recipe.ts';
import { ElemType, GraphBuilder } from '../../services/common/onnx-graph.ts';
import { OrtSession } from '../../services/common/ort-session.ts';
import { tensor } from '../../services/common/tensor.ts';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import type { LinearDit } from '../../services/denoiser/linear-dit.ts';
import { LocalDenoiser } from '../../services/denoiser/stage.ts';
import { qualityReport, type QualityRow } from '../../bench/quality.ts';
import { tempDir } from '../helpers/tmp.ts';

const { onnx } = onnxProto;
const root = tempDir('int8');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');

/** Deterministic values in [-1, 1) with a few larger ones, like real activations. */
function values(n: number, seed: number): Float32Array {
  return Float32Array.from({ length: n }, (_, i) => Math.sin(i * 0.7317 + seed) * (i % 13 === 0 ? 3 : 1));
}

/** One int8Linear graph [m, k] → [m, n] run by ONNX Runtime. */
async function runInt8Linear(activations: 'per-tensor' | 'per-token', x: Float32Array, w: Float32Array, bias: Float32Array, m: number, k: number, n: number, passes: 1 | 2 = 1) {
  const dir = path.join(root, `linear-${activations}-${passes}`);
  const g = new GraphBuilder('int8_linear', dir);
  const y = g.int8Linear(g.input('x', ElemType.FLOAT, [m, k]), 'layer', w, [n, k], g.weight('layer.bias', [n], bias), activations, passes);
  g.output(y, 'y', ElemType.FLOAT, [m, n]);
  const session = await OrtSession.create(g.finish());
  try {
    return (await session.run({ x: tensor(x, [m, k]) })).y!.data as Float32Array;
  } finally {
    await session.close();
  }
}

describe('the W8A8 recipe', () => {
  const [m, k, n] = [7, 96, 40];
  const x = values(m * k, 1);
  const w = values(n * k, 2).map((v) => v / Math.sqrt(k));
  const bias = values(n, 3);

  test('weights: symmetric, one scale per output channel, round half to even', () => {
    const q = quantizeWeight(Float32Array.from([1.27, -0.005, 0.015, -1.27, 0, 0]), 2, 3);
    expect(Array.from(q.scales)).toEqual([Math.fround(1.27 / 127), Math.fround(1.27 / 127)]);
    expect(Array.from(q.values)).toEqual([127, 0, 2, -127, 0, 0]); // -0.5 → -0 and 1.5 → 2 (ties to even)
  });

  test('per-token on the CPU is the reference GEMM the GPU runs, to float rounding', async () => {
    const got = await runInt8Linear('per-token', x, w, bias, m, k, n);
    const want = referenceW8A8(quantizeActivationPerToken(x, m, k), quantizeWeight(w, n, k), bias);
    const range = Math.max(...want.map(Math.abs));
    for (let i = 0; i < want.length; i++) expect(Math.abs(got[i]! - want[i]!)).toBeLessThanOrEqual(1e-6 * range);
  });

  test('two passes leave the activations 1/254 of the one-pass rounding error: what remains is the weights\'', async () => {
    const [one, two] = [await runInt8Linear('per-token', x, w, bias, m, k, n), await runInt8Linear('per-token', x, w, bias, m, k, n, 2)];
    const q = quantizeWeight(w, n, k);
    const xq = quantizeActivationPerToken(x, m, k);
    let oneErr = 0;
    let twoErr = 0;
    for (let t = 0; t < m; t++) {
      for (let o = 0; o < n; o++) {
        // x against the int8 weights: only the activations' rounding differs from this
        let withInt8Weights = bias[o]!;
        let bound = 1e-5;
        for (let i = 0; i < k; i++) {
          const wHat = q.values[o * k + i]! * q.scales[o]!;
          withInt8Weights += x[t * k + i]! * wHat;
          bound += (Math.abs(wHat) * xq.scales[t]!) / (2 * 254);
        }
        expect(Math.abs(two[t * n + o]! - withInt8Weights)).toBeLessThanOrEqual(bound);
        twoErr = Math.max(twoErr, Math.abs(two[t * n + o]! - withInt8Weights));
        oneErr = Math.max(oneErr, Math.abs(one[t * n + o]! - withInt8Weights));
      }
    }
    expect(oneErr).toBeGreaterThan(20 * twoErr);
    await expect(runInt8Linear('per-tensor', x, w, bias, m, k, n, 2)).rejects.toThrow('two-pass activations need per-token scales');
  });

  test('per-tensor stays within the rounding bound of its scales', async () => {
    const got = await runInt8Linear('per-tensor', x, w, bias, m, k, n);
    // uint8 asymmetric over [min(x, 0), max(x, 0)]: |x − x̂| ≤ s_x/2; weights |w − ŵ| ≤ s_w[o]/2
    const sx = (Math.max(0, ...x) - Math.min(0, ...x)) / 255;
    const q = quantizeWeight(w, n, k);
    for (let t = 0; t < m; t++) {
      for (let o = 0; o < n; o++) {
        let exact = bias[o]!;
        let bound = 0;
        for (let i = 0; i < k; i++) {
          exact += x[t * k + i]! * w[o * k + i]!;
          bound += (Math.abs(w[o * k + i]!) * sx) / 2 + ((Math.abs(x[t * k + i]!) + sx / 2) * q.scales[o]!) / 2;
        }
        expect(Math.abs(got[t * n + o]! - exact)).toBeLessThanOrEqual(bound);
      }
    }
  });

  test('layers that read one tensor quantize it once, and each gets the bits it gets alone', async () => {
    const w2 = values(n * k, 4).map((v) => v / Math.sqrt(k));
    for (const [activations, passes] of [['per-tensor', [1, 1]], ['per-token', [1, 2]]] as const) {
      const dir = path.join(root, `shared-${activations}`);
      const g = new GraphBuilder('int8_shared', dir);
      const input = g.input('x', ElemType.FLOAT, [m, k]);
      g.output(g.int8Linear(input, 'a', w, [n, k], g.weight('a.bias', [n], bias), activations, passes[0]), 'a', ElemType.FLOAT, [m, n]);
      g.output(g.int8Linear(input, 'b', w2, [n, k], g.weight('b.bias', [n], bias), activations, passes[1]), 'b', ElemType.FLOAT, [m, n]);
      const file = g.finish();
      const ops = onnx.ModelProto.decode(fs.readFileSync(file)).graph!.node!.map((node) => node.opType);
      // per tensor one DynamicQuantizeLinear; per token one QuantizeLinear of x, plus one of b's second-pass residual
      expect(ops.filter((op) => op === 'DynamicQuantizeLinear' || op === 'QuantizeLinear').length).toBe(activations === 'per-tensor' ? 1 : 2);
      const session = await OrtSession.create(file);
      const out = await session.run({ x: tensor(x, [m, k]) });
      await session.close();
      expect(Array.from(out.a!.data as Float32Array)).toEqual(Array.from(await runInt8Linear(activations, x, w, bias, m, k, n, passes[0])));
      expect(Array.from(out.b!.data as Float32Array)).toEqual(Array.from(await runInt8Linear(activations, x, w2, bias, m, k, n, passes[1])));
    }
  });

  test('bad precision and options are named', () => {
    expect(() => parsePrecision('int4', '--precision')).toThrow('--precision must be one of fp32, int8, got "int4"');
    expect(() => resolveInt8Options('denoiser', { smoothAlpha: 1.5 })).toThrow('smoothAlpha must be in [0, 1]');
    expect(resolveInt8Options('denoiser')).toEqual({ smoothAlpha: null, outlierRatio: null, activations: 'per-tensor' });
    expect(resolveInt8Options('text-encoder')).toEqual({ smoothAlpha: null, outlierRatio: null, activations: 'per-token' });
  });
});

const worst = (rows: QualityRow[], stage: string) => {
  const picked = rows.filter((r) => r.stage === stage);
  expect(picked.length).toBeGreaterThan(0);
  return { cosine: Math.min(...picked.map((r) => r.cosine)), psnr: Math.min(...picked.map((r) => r.psnr_db ?? Infinity)) };
};

describe('int8 models against fp32', () => {
  const report = (modelDir: string, int8: { smoothAlpha?: number; outlierRatio?: number } = {}, maxSequenceLength = 300) =>
    qualityReport({ modelDir, precision: { precision: 'int8', int8 }, steps: 20, seed: 0, guidanceScale: 4.5, maxSequenceLength });

  test('the tiny pipeline holds the quality report tolerances', async () => {
    const dir = path.join(root, 'tiny');
    writeRandomCheckpoint('tiny', dir);
    const rows = await report(dir);
    expect(worst(rows, 'text-encoder prompt').cosine).toBeGreaterThanOrEqual(0.9998);
    expect(worst(rows, 'text-encoder negative').cosine).toBeGreaterThanOrEqual(0.9998);
    expect(worst(rows, 'denoiser step').cosine).toBeGreaterThanOrEqual(0.9999);
    expect(rows.filter((r) => r.stage === 'denoiser step')).toHaveLength(20);
    const denoiser = worst(rows, 'latents (denoiser)');
    expect(denoiser.cosine).toBeGreaterThanOrEqual(0.9999);
    expect(denoiser.psnr).toBeGreaterThanOrEqual(45);
    expect(worst(rows, 'latents (pipeline)').psnr).toBeGreaterThanOrEqual(42);
  });

  test('the CPU-only calibration options are refused on the CUDA backend, not ignored', async () => {
    const dir = path.join(root, 'tiny');
    await expect(LocalDenoiser.load(dir, { device: 'cuda', precision: 'int8', int8: { outlierRatio: 8 } })).rejects.toThrow('CPU (ONNX Runtime) options');
  });

  test('int8 compiles apart from fp32, reports its precision and reuses its compiled graph', async () => {
    const dir = path.join(root, 'tiny-denoiser');
    writeRandomCheckpoint('tiny', dir, { seed: 1 }); // other weights than the test before: nothing compiled yet
    const fp32 = await LocalDenoiser.load(dir);
    const int8 = await LocalDenoiser.load(dir, { precision: 'int8' });
    const again = await LocalDenoiser.load(dir, { precision: 'int8' });
    try {
      expect([fp32.info().precision, int8.info().precision]).toEqual(['fp32', 'int8']);
      const hits = [fp32, int8, again].map((stage) => (stage.transformer as LinearDit).compileCacheHit);
      expect(hits).toEqual([false, false, true]);
    } finally {
      await Promise.all([fp32.close(), int8.close(), again.close()]);
    }
  });

  test('smoothing and the outlier split take planted ×50 activation outliers out of the int8 scales', async () => {
    // measured: per-step cosine 0.98789 without either, 0.99491 with α = 0.5, 0.99440 with the split at 8× the median
    // (per-tensor activations)
    const dir = path.join(root, 'outliers');
    writeRandomCheckpoint('tiny-transformer-outliers', dir);
    const plain = worst(await report(dir, {}, 16), 'denoiser step').cosine;
    const smoothed = worst(await report(dir, { smoothAlpha: 0.5 }, 16), 'denoiser step').cosine;
    const split = worst(await report(dir, { outlierRatio: 8 }, 16), 'denoiser step').cosine;
    expect(plain).toBeLessThan(0.99);
    expect(smoothed).toBeGreaterThanOrEqual(0.994);
    expect(1 - smoothed).toBeLessThan((1 - plain) / 2);
    expect(split).toBeGreaterThanOrEqual(0.994);
    expect(1 - split).toBeLessThan((1 - plain) / 2);
  });
});
