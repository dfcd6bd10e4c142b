import path from 'node:path';
import sharp from 'sharp';
import { describe, expect, test } from 'vitest';
import { encodeImage, resizeAndCrop, roundHalfEven, toUint8 } from '../../services/decoder/image.ts';
import { Golden } from '../parity/golden.ts';

const golden = new Golden(path.join(import.meta.dirname, '..', 'fixtures', 'golden', 'tiny-a'));

describe('float → uint8 as the reference pipeline rounds', () => {
  test('numpy rounding: halves go to the even neighbour', () => {
    expect([0.5, 1.5, 2.5, 3.5, 254.5, 2.4999999, 2.5000001, 0, 255].map(roundHalfEven)).toEqual([0, 2, 2, 4, 254, 2, 3, 0, 255]);
  });

  test("equals the golden pipeline's uint8 image bit for bit, from its decoded floats", () => {
    const [b, c, h, w] = golden.shape('pipe.image_decoded');
    const decoded = golden.f32('pipe.image_decoded');
    const expected = golden.u8('pipe.image_uint8'); // [B,H,W,3]
    const per = c * h * w;
    for (let i = 0; i < b; i++) {
      const ours = toUint8({ data: decoded.subarray(i * per, (i + 1) * per), channels: c, height: h, width: w });
      expect(Buffer.from(ours).equals(Buffer.from(expected.subarray(i * per, (i + 1) * per)))).toBe(true);
    }
  });

  test('clamps, interleaves planar channels, and maps NaN to 0', () => {
    // planes R, G, B of a 1×2 image
    const data = Float32Array.from([-3, 3, 0, 1 / 255, NaN, -1]);
    expect(Array.from(toUint8({ data, channels: 3, height: 1, width: 2 }))).toEqual([0, 128, 0, 255, 128, 0]);
  });
});

describe('resize and crop back to the requested size (resolution binning)', () => {
  const plane = (values: number[], height: number, width: number) => ({ data: Float32Array.from(values), channels: 1, height, width });

  test('is the identity at the same size', () => {
    const img = plane([1, 2, 3, 4], 2, 2);
    expect(resizeAndCrop(img, 2, 2)).toBe(img);
  });

  test("matches PyTorch's bilinear (align_corners=False) on a 2×2 → 4×4 upscale", () => {
    const out = resizeAndCrop(plane([0, 1, 2, 3], 2, 2), 4, 4);
    expect(Array.from(out.data)).toEqual([0, 0.25, 0.75, 1, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2, 2.25, 2.75, 3]);
  });

  test('scales by the larger ratio and crops the centre', () => {
    // 4 rows × 8 columns, value = column: to 4×4 the ratio is 1 → no resize, columns 2..5 kept
    const cols = plane(Array.from({ length: 32 }, (_, i) => i % 8), 4, 8);
    expect(Array.from(resizeAndCrop(cols, 4, 4).data.subarray(0, 4))).toEqual([2, 3, 4, 5]);
    // to 2×3: ratio max(2/4, 3/8) = 0.5 → 2×4 (columns 0.5, 2.5, 4.5, 6.5) → crop columns 0..2
    const out = resizeAndCrop(cols, 3, 2);
    expect([out.height, out.width]).toEqual([2, 3]);
    expect(Array.from(out.data.subarray(0, 3))).toEqual([0.5, 2.5, 4.5]);
  });

  test("keeps the requested width where the reference's truncation falls one pixel short (736 → 104 columns)", () => {
    // 352×736 bin back to 48×104: the width sets the scale, 736·(104/736) truncates to 103 in the reference
    const ramp = plane(Array.from({ length: 352 * 736 }, (_, i) => i % 736), 352, 736);
    const out = resizeAndCrop(ramp, 104, 48);
    expect([out.height, out.width]).toEqual([48, 104]);
    // a straight 736 → 104 bilinear resize of the columns, align_corners=False: column x samples (x + 0.5)·736/104 − 0.5
    for (const x of [1, 50, 102]) expect(out.data[x]).toBeCloseTo((x + 0.5) * (736 / 104) - 0.5, 3);
  });
});

describe('image files', () => {
  const [w, h] = [5, 3];
  const rgb = Uint8Array.from({ length: w * h * 3 }, (_, i) => (i * 37) % 256);

  test('PNG is lossless', async () => {
    const png = await encodeImage(rgb, w, h, 'png');
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    expect([info.width, info.height, info.channels]).toEqual([w, h, 3]);
    expect(Buffer.from(data).equals(Buffer.from(rgb))).toBe(true);
  });

  test('JPEG and WebP carry their format, size and quality', async () => {
    const big = Uint8Array.from({ length: 64 * 64 * 3 }, (_, i) => (i * 7919) % 256);
    for (const format of ['jpeg', 'webp'] as const) {
      const low = await encodeImage(big, 64, 64, format, { quality: 20 });
      const high = await encodeImage(big, 64, 64, format, { quality: 95 });
      const meta = await sharp(high).metadata();
      expect([meta.format, meta.width, meta.height]).toEqual([format, 64, 64]);
      expect(high.length).toBeGreaterThan(low.length);
    }
  });
});
