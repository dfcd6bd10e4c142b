import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { tinyVae } from '../../services/cli/presets.ts';
import { CancelledError, InvalidArgumentError } from '../../services/common/errors.ts';
import { writeComponent } from '../../services/common/random-checkpoint.ts';
import { type HostTensor, tensor } from '../../services/common/tensor.ts';
import { DcAeDecoder } from '../../services/decoder/dc-ae.ts';
import { needsTiling, tiledDecode, tileGrid, validateTiling } from '../../services/decoder/tiling.ts';
import { maxAbsErr } from '../parity/golden.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('tiling');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');
const f = Math.fround;

function wave(dims: number[], freq: number): HostTensor<Float32Array> {
  const n = dims.reduce((a, b) => a * b, 1);
  return tensor(
    Float32Array.from({ length: n }, (_, i) => Math.sin(i * freq) + 0.5 * Math.cos(i * 0.013)),
    dims,
  );
}

/** A pixel-local decoder (each latent pixel → an s×s block of its channel values): tiles cannot disagree. */
function localDecode(s: number) {
  return async (z: HostTensor<Float32Array>): Promise<HostTensor<Float32Array>> => {
    const [, c, h, w] = z.dims;
    const out = new Float32Array(c * h * s * w * s);
    for (let ch = 0; ch < c; ch++)
      for (let y = 0; y < h * s; y++)
        for (let x = 0; x < w * s; x++) out[(ch * h * s + y) * w * s + x] = z.data[(ch * h + Math.floor(y / s)) * w + Math.floor(x / s)];
    return tensor(out, [1, c, h * s, w * s]);
  };
}

describe('tile geometry', () => {
  test('tiles start every (tile − overlap)/s latent pixels and are cut at the border, as the reference visits them', () => {
    const tiles = tileGrid(20, 30, { tileSize: 512, overlap: 64 }, 32);
    expect(tiles.filter((t) => t.left === 0).map((t) => [t.top, t.height])).toEqual([
      [0, 16],
      [14, 6],
    ]);
    expect(tiles.filter((t) => t.top === 0).map((t) => [t.left, t.width])).toEqual([
      [0, 16],
      [14, 16],
      [28, 2],
    ]);
    expect(needsTiling(16, 16, { tileSize: 512, overlap: 64 }, 32)).toBe(false);
    expect(needsTiling(16, 17, { tileSize: 512, overlap: 64 }, 32)).toBe(true);
  });

  test('tile sizes and overlaps off the latent grid are rejected', () => {
    expect(() => validateTiling({ tileSize: 500, overlap: 64 }, 32)).toThrow(InvalidArgumentError);
    expect(() => validateTiling({ tileSize: 512, overlap: 48 }, 32)).toThrow(/overlap.*multiple of 32/);
    expect(() => validateTiling({ tileSize: 512, overlap: 512 }, 32)).toThrow(/overlap/);
  });
});

describe('blending', () => {
  test('with a pixel-local decoder the tiled image equals the whole one (geometry and crops are exact)', async () => {
    const s = 4;
    const z = wave([2, 3, 13, 22], 0.37);
    const whole = await localDecode(s)(tensor(z.data.subarray(0, 3 * 13 * 22), [1, 3, 13, 22]));
    const tiled = await tiledDecode(z, localDecode(s), { tileSize: 20, overlap: 8, spatialScale: s });
    expect(tiled.dims).toEqual([2, 3, 52, 88]);
    // blending a value with itself: w·a + (1−w)·a is a within one float32 rounding
    expect(maxAbsErr(tiled.data.subarray(0, whole.data.length), whole.data)).toBeLessThan(1e-6);
  });

  test('seams are the reference linear ramps, vertical first, in place', async () => {
    // each tile decodes to a constant: its index; 2×2 tiles of a 6×6 latent, tile 4, overlap 2 (s = 1)
    let next = 0;
    const constantTiles = async (t: HostTensor<Float32Array>) => {
      const [, c, h, w] = t.dims;
      return tensor(new Float32Array(c * h * w).fill(10 * ++next), [1, c, h, w]);
    };
    const out = await tiledDecode(wave([1, 1, 6, 6], 1), constantTiles, { tileSize: 4, overlap: 2, spatialScale: 1 });
    const at = (y: number, x: number) => out.data[y * 6 + x];
    const ramp = (a: number, b: number, k: number, e: number) => f(f(a * f(1 - k / e)) + f(b * f(k / e)));
    // tiles: 10 at (0,0), 20 at (0,2) [4 wide], 30 at (2,0), 40 at (2,2); tile 2 is 4×4 starting at column 2
    expect([at(0, 0), at(0, 1)]).toEqual([10, 10]);
    expect([at(0, 2), at(0, 3)]).toEqual([ramp(10, 20, 0, 2), ramp(10, 20, 1, 2)]);
    expect([at(2, 0), at(3, 0)]).toEqual([ramp(10, 30, 0, 2), ramp(10, 30, 1, 2)]);
    // the corner: tile 4 first takes tile 2's (unblended) bottom rows, then tile 3's blended right columns
    const afterVertical = ramp(20, 40, 1, 2);
    const tile3Right = ramp(10, 30, 1, 2); // tile 3 row 1 was blended with tile 1 above
    expect(at(3, 3)).toBe(ramp(tile3Right, afterVertical, 1, 2));
    expect(at(5, 5)).toBe(40);
  });

  test('cancellation stops between tiles', async () => {
    const controller = new AbortController();
    let decoded = 0;
    const decodeTile = async (t: HostTensor<Float32Array>) => {
      if (++decoded === 2) controller.abort();
      return localDecode(2)(t);
    };
    await expect(tiledDecode(wave([1, 1, 8, 8], 1), decodeTile, { tileSize: 8, overlap: 2, spatialScale: 2, signal: controller.signal })).rejects.toThrow(CancelledError);
    expect(decoded).toBe(2);
  });
});

describe('tiled against whole decoding with a DC-AE', () => {
  let decoder: DcAeDecoder;
  beforeAll(async () => {
    decoder = await DcAeDecoder.load(writeComponent(root, tinyVae(), { seed: 3 }));
  });
  afterAll(() => decoder?.close());

  test('stays within the measured bound at the seams and elsewhere', async () => {
    const [h, w] = [10, 14];
    const z = wave([1, 8, h, w], 0.61);
    const whole = await decoder.decode(z);
    const tiling = { tileSize: 256, overlap: 64, spatialScale: 32 };
    const tiled = await tiledDecode(z, (t) => decoder.decode(t), tiling);
    expect(tiled.dims).toEqual(whole.dims);
    const [, c, H, W] = whole.dims;
    const stride = tiling.tileSize - tiling.overlap;
    const inBand = (p: number) => p >= stride && p % stride < tiling.overlap;
    let scale = 0;
    let seam = 0;
    let rest = 0;
    for (let i = 0; i < whole.data.length; i++) {
      const y = Math.floor(i / W) % H;
      const x = i % W;
      const d = Math.abs(tiled.data[i] - whole.data[i]);
      scale = Math.max(scale, Math.abs(whole.data[i]));
      if (inBand(y) || inBand(x)) seam = Math.max(seam, d);
      else rest = Math.max(rest, d);
    }
    expect(c).toBe(3);
    // Tiles see less context than the whole latent (the linear attention is global), so they differ
    // everywhere a little; the blend keeps the seams no worse than the rest. Random weights, measured:
    // seams 0.21, elsewhere 0.24 of max |whole| 2.9 → bound 0.1 relative.
    expect(seam / scale).toBeLessThan(0.1);
    expect(rest / scale).toBeLessThan(0.1);
    // the first tile's top-left, outside every blend band and far from the tile border, matches closely
    expect(Math.abs(tiled.data[0] - whole.data[0]) / scale).toBeLessThan(0.1);
  });

  test('a latent that fits one tile is not tiled', async () => {
    const z = wave([1, 8, 4, 6], 0.29);
    const whole = await decoder.decode(z);
    const tiled = await tiledDecode(z, (t) => decoder.decode(t), { tileSize: 256, overlap: 64, spatialScale: 32 });
    expect(Array.from(tiled.data)).toEqual(Array.from(whole.data));
  });
});
