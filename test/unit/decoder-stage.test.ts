import fs from 'node:fs';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { CancelledError, InvalidArgumentError } from '../../services/common/errors.ts';
import type { DecodeRequest } from '../../services/common/stages.ts';
import { tensor } from '../../services/common/tensor.ts';
import { LocalDecoder } from '../../services/decoder/stage.ts';
import { Golden } from '../parity/golden.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('decoder-stage');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');
const golden = new Golden(path.join(import.meta.dirname, '..', 'fixtures', 'golden', 'tiny-a'));

let decoder: LocalDecoder;
beforeAll(async () => {
  decoder = await LocalDecoder.load(golden.component('vae'));
});
afterAll(() => decoder?.close());

function finalLatents() {
  return tensor(golden.f32('pipe.final_latents'), golden.shape('pipe.final_latents'));
}

describe('the decoder stage as the pipeline uses it', () => {
  test('info comes from the VAE config', () => {
    const config = JSON.parse(fs.readFileSync(path.join(golden.component('vae'), 'config.json'), 'utf8'));
    // every stage after the first up-samples ×2
    const spatialScale = 2 ** (config.decoder_block_out_channels.length - 1);
    expect(decoder.info()).toEqual({ latentChannels: config.latent_channels, spatialScale, scalingFactor: config.scaling_factor, precision: 'fp32' });
  });

  test("final latents → PNG: the golden pipeline's uint8 image, up to float rounding of single values", async () => {
    const [, , h, w] = golden.shape('pipe.image_decoded');
    const [image] = await decoder.decode({ latents: finalLatents(), format: 'png', width: w, height: h });
    expect([image.width, image.height, image.format]).toEqual([w, h, 'png']);
    const pixels = await sharp(image.bytes).raw().toBuffer();
    const expected = golden.u8('pipe.image_uint8');
    let maxDiff = 0;
    let differing = 0;
    for (let i = 0; i < expected.length; i++) {
      const d = Math.abs(pixels[i] - expected[i]);
      maxDiff = Math.max(maxDiff, d);
      if (d) differing++;
    }
    // our float decode differs by ~1e-6 relative, which moves a value across a rounding boundary rarely
    expect(maxDiff).toBeLessThanOrEqual(1);
    expect(differing / expected.length).toBeLessThan(0.005);
  });

  test('resolution binning: the decoded image is resized and cropped to the requested size', async () => {
    const [image] = await decoder.decode({ latents: finalLatents(), format: 'webp', width: 100, height: 120, quality: 90 });
    const meta = await sharp(image.bytes).metadata();
    expect([meta.format, meta.width, meta.height, image.width, image.height]).toEqual(['webp', 100, 120, 100, 120]);
  });

  test('a batch gives one image per latent, in order', async () => {
    const one = golden.f32('pipe.final_latents');
    const [, c, h, w] = golden.shape('pipe.final_latents');
    const two = new Float32Array(2 * one.length);
    two.set(one);
    two.set(one.map((v) => -v), one.length);
    const images = await decoder.decode({ latents: tensor(two, [2, c, h, w]), format: 'jpeg', width: 128, height: 128 });
    expect(images.map((i) => i.format)).toEqual(['jpeg', 'jpeg']);
    const [first] = await decoder.decode({ latents: finalLatents(), format: 'jpeg', width: 128, height: 128 });
    expect(Buffer.from(images[0].bytes).equals(Buffer.from(first.bytes))).toBe(true);
    const [negated] = await decoder.decode({ latents: tensor(two.slice(one.length), [1, c, h, w]), format: 'jpeg', width: 128, height: 128 });
    expect(Buffer.from(images[1].bytes).equals(Buffer.from(negated.bytes))).toBe(true);
    expect(Buffer.from(images[1].bytes).equals(Buffer.from(first.bytes))).toBe(false);
  });

  test('latents larger than a tile decode tiled to the full size', async () => {
    const tiled = await LocalDecoder.load(golden.component('vae'), { tiling: { tileSize: 64, overlap: 32 } });
    try {
      const latents = tensor(Float32Array.from({ length: 8 * 3 * 5 }, (_, i) => Math.sin(i)), [1, 8, 3, 5]);
      const [image] = await tiled.decode({ latents, format: 'png', width: 160, height: 96 });
      expect([image.width, image.height]).toEqual([160, 96]);
    } finally {
      await tiled.close();
    }
  });
});

describe('bad requests are rejected before any compute', () => {
  let fresh: LocalDecoder;
  beforeAll(async () => {
    fresh = await LocalDecoder.load(golden.component('vae'));
  });
  afterAll(() => fresh?.close());

  const ok = (): DecodeRequest => ({ latents: finalLatents(), format: 'png', width: 128, height: 128 });
  const cases: [string, () => DecodeRequest, string, RegExp][] = [
    ['NaN latents', () => ({ ...ok(), latents: tensor(finalLatents().data.slice().fill(NaN, 3, 4), [1, 8, 4, 4]) }), 'latents', /non-finite value \(NaN\) at flat index 3/],
    ['infinite latents', () => ({ ...ok(), latents: tensor(finalLatents().data.slice().fill(Infinity, 0, 1), [1, 8, 4, 4]) }), 'latents', /non-finite/],
    ['a wrong channel count', () => ({ ...ok(), latents: tensor(new Float32Array(32 * 16), [1, 32, 4, 4]) }), 'latents', /\[B, 8, h, w\]/],
    ['an unknown format', () => ({ ...ok(), format: 'gif' as 'png' }), 'format', /png, jpeg, webp/],
    ['a zero width', () => ({ ...ok(), width: 0 }), 'width', /\[32, 4096\]/],
    ['a fractional height', () => ({ ...ok(), height: 12.5 }), 'height', /integer/],
    ['quality 0', () => ({ ...ok(), format: 'jpeg', quality: 0 }), 'quality', /\[1, 100\]/],
  ];
  for (const [name, make, field, message] of cases) {
    test(name, async () => {
      const error = await fresh.decode(make()).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(InvalidArgumentError);
      expect((error as InvalidArgumentError).field).toBe(field);
      expect((error as Error).message).toMatch(message);
      expect(fresh.model.session.lastRunSeconds).toBe(0); // the network never ran
    });
  }

  test('a cancelled request stops before decoding', async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(fresh.decode(ok(), { signal: controller.signal })).rejects.toThrow(CancelledError);
    expect(fresh.model.session.lastRunSeconds).toBe(0);
  });

  test('tiles off the latent grid are refused at load', async () => {
    await expect(LocalDecoder.load(golden.component('vae'), { tiling: { tileSize: 100, overlap: 32 } })).rejects.toThrow(/tileSize.*multiple of 32/);
  });
});
