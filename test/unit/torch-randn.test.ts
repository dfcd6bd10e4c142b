// torchRandn against torch's own draws (test/fixtures/torch-randn, copied from the shared golden): every
// draw within 1e-5 absolute. randn.json lists the calls; shapes below 16 elements and not multiple of 16
// are there on purpose (torch's scalar path and its redrawn tail block).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { parsePythonJson } from '../../services/common/config.ts';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import { Checkpoint } from '../../services/common/safetensors.ts';
import { TorchGenerator, torchRandn } from '../../services/common/torch-randn.ts';
import { maxAbsErr } from '../parity/golden.ts';

const FIXTURE_DIR = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'torch-randn');
const ABS_LIMIT = 1e-5;

interface Draw {
  name: string;
  seed: number;
  shape: number[];
}
const drawsJson = parsePythonJson(fs.readFileSync(path.join(FIXTURE_DIR, 'randn.json'), 'utf8')) as { draws: Draw[] };
const reference = Checkpoint.open(path.join(FIXTURE_DIR, 'randn.safetensors'));

describe('torchRandn matches torch.randn on CPU', () => {
  it('covers every draw of the fixture', () => {
    expect(drawsJson.draws.length).toBeGreaterThan(0);
    for (const d of drawsJson.draws) expect(reference.has(d.name)).toBe(true);
  });

  for (const draw of drawsJson.draws) {
    it(`${draw.name} within ${ABS_LIMIT} absolute`, () => {
      // JSON numbers above 2^53 would lose bits; the fixture's seeds are exact integers below that.
      expect(Number.isSafeInteger(draw.seed)).toBe(true);
      const expected = reference.readF32(draw.name, draw.shape);
      const ours = torchRandn(draw.shape, draw.seed);
      const err = maxAbsErr(ours, expected);
      expect(ours.length).toBe(expected.length);
      expect(err).toBeLessThanOrEqual(ABS_LIMIT);
    });
  }
});

describe('TorchGenerator', () => {
  it('uses only the low 32 bits of the seed, as torch does (2^32 + 5 draws like 5)', () => {
    expect(torchRandn([40], 2n ** 32n + 5n)).toEqual(torchRandn([40], 5));
  });

  it('wraps negative seeds as two-complement 64-bit integers', () => {
    expect(torchRandn([20], -1)).toEqual(torchRandn([20], 2n ** 64n - 1n));
  });

  it('continues its stream across calls and restarts on manualSeed', () => {
    const gen = new TorchGenerator(11);
    const first = gen.randn([32]);
    const second = gen.randn([32]);
    expect(second).not.toEqual(first);
    gen.manualSeed(11);
    expect(gen.randn([32])).toEqual(first);
  });

  it('caches the second normal of a float64 pair between small draws, and manualSeed drops it', () => {
    // three values = pair 1 (cos, sin) + the cos of pair 2; the next draw starts with pair 2's cached sin
    const gen = new TorchGenerator(5);
    const three = gen.randn([3]);
    const one = gen.randn([1]);
    const four = new TorchGenerator(5).randn([4]);
    expect([...three, ...one]).toEqual([...four]);
    gen.manualSeed(5);
    expect(gen.randn([4])).toEqual(four);
  });

  it('is the reference mt19937 (first output for seed 5489 is 3499211612)', () => {
    expect(new TorchGenerator(5489).random()).toBe(3499211612);
  });

  it('gives an empty tensor for a zero-size shape and refuses bad shapes and seeds', () => {
    expect(torchRandn([2, 0, 3], 1).length).toBe(0);
    expect(() => torchRandn([2, -1], 1)).toThrow(InvalidArgumentError);
    expect(() => torchRandn([1.5], 1)).toThrow(/non-negative integers/);
    expect(() => torchRandn([2], 0.5)).toThrow(/seed/);
    expect(() => torchRandn([2], 2n ** 64n)).toThrow(/seed/);
  });

  it('draws standard normals (mean ~0, variance ~1 over 2^16 values)', () => {
    const x = torchRandn([1, 4, 128, 128], 1234);
    let sum = 0;
    let sumSq = 0;
    for (const v of x) {
      sum += v;
      sumSq += v * v;
    }
    const mean = sum / x.length;
    expect(Math.abs(mean)).toBeLessThan(0.02);
    expect(Math.abs(sumSq / x.length - mean * mean - 1)).toBeLessThan(0.02);
  });
});
