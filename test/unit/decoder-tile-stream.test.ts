// Tile-streamed decoding on a tiny DC-AE: each tile is handed over as soon as it is blended, the tiles cover the
// image exactly once, and put together they are the pixels of the final image, which is the plain tiled decode's.
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { tinyVae } from '../../services/cli/presets.ts';
import { writeComponent } from '../../services/common/random-checkpoint.ts';
import type { ImageTile } from '../../services/common/stages.ts';
import { fromTileMessage, tileMessages } from '../../services/common/tensor-chunks.ts';
import { tensor } from '../../services/common/tensor.ts';
import { LocalDecoder } from '../../services/decoder/stage.ts';
import { tempDir } from '../helpers/tmp.ts';

const root = tempDir('tile-stream');
process.env.SANA_CACHE_DIR = path.join(root, 'cache');

let decoder: LocalDecoder;
beforeAll(async () => {
  const dir = writeComponent(root, tinyVae(), { seed: 5 });
  decoder = await LocalDecoder.load(dir, { tiling: { tileSize: 128, overlap: 32 } });
});
afterAll(() => decoder?.close());

function latents(batch: number, h: number, w: number) {
  const c = decoder.info().latentChannels;
  return tensor(Float32Array.from({ length: batch * c * h * w }, (_, i) => Math.sin(i * 0.37) + 0.3 * Math.cos(i * 0.011)), [batch, c, h, w]);
}

describe('tile-streamed decoding', () => {
  test('tiles arrive during the decode, cover each image once, and hold the final image pixels', async () => {
    const s = decoder.info().spatialScale;
    const [h, w] = [7, 10]; // 3 × 4 tiles of 4 latent pixels every 3 (tile 128 px, overlap 32 px)
    const z = latents(2, h, w);
    const plain = await decoder.decode({ latents: z, format: 'png', width: w * s, height: h * s });
    const tiles: ImageTile[] = [];
    let decodeDone = false;
    const streamed = decoder
      .decode({ latents: z, format: 'png', width: w * s, height: h * s }, { onTile: (t) => void tiles.push(t) })
      .finally(() => (decodeDone = true));
    // the first tile comes while the decode still runs
    while (tiles.length === 0) await new Promise((r) => setTimeout(r, 1));
    expect(decodeDone).toBe(false);
    const images = await streamed;
    expect(tiles.length).toBe(2 * 3 * 4);

    for (const [index, image] of images.entries()) {
      // the final image is the plain tiled decode's, byte for byte
      expect(Buffer.from(image.bytes).equals(Buffer.from(plain[index].bytes))).toBe(true);
      const final = await sharp(image.bytes).raw().toBuffer();
      const canvas = new Uint8Array(final.length);
      const covered = new Uint8Array(w * s * h * s);
      for (const t of tiles.filter((tile) => tile.index === index)) {
        expect([t.imageWidth, t.imageHeight]).toEqual([w * s, h * s]);
        for (let y = 0; y < t.height; y++) {
          canvas.set(t.pixels.subarray(y * t.width * 3, (y + 1) * t.width * 3), ((t.top + y) * w * s + t.left) * 3);
          for (let x = 0; x < t.width; x++) covered[(t.top + y) * w * s + t.left + x]++;
        }
      }
      expect(covered.every((n) => n === 1)).toBe(true);
      expect(Buffer.from(canvas).equals(final)).toBe(true);
    }
  });

  test('a tile travels as row bands under the chunk size and comes back whole', () => {
    const tile: ImageTile = { index: 1, top: 64, left: 32, width: 10, height: 7, imageWidth: 100, imageHeight: 80, pixels: Uint8Array.from({ length: 10 * 7 * 3 }, (_, i) => i % 251) };
    const messages = [...tileMessages(tile, 2 * 10 * 3)];
    expect(messages.map((m) => [m.top, m.height])).toEqual([
      [64, 2],
      [66, 2],
      [68, 2],
      [70, 1],
    ]);
    const back = messages.map(fromTileMessage);
    expect(Buffer.concat(back.map((b) => b.pixels)).equals(Buffer.from(tile.pixels))).toBe(true);
    expect(() => fromTileMessage({ ...messages[0], pixels: Buffer.alloc(5) })).toThrow(/carries 5 bytes/);
    expect(() => fromTileMessage({ ...messages[0], left: 95 })).toThrow(/outside/);
  });
});
