// Tiled decoding with blended seams, as AutoencoderDC.tiled_decode does it, so a 4K image needs the memory of
// one tile, not of the image:
//
//   latent split into tiles of T/s latent pixels every (T-O)/s   (T tile size, O overlap, s the VAE's scale)
//   each tile decoded on its own → T×T pixels (smaller at the right / bottom border)
//   top O rows blended with the bottom O rows of the tile above, then the left O columns with the right O
//   columns of the tile to the left (linear ramps, in place, in that order), and the top-left (T-O)×(T-O)
//   pixels of each tile kept.
//
// Only the previous row of tiles is held, so memory is one tile's decode plus the output image.
import { CancelledError, InvalidArgumentError } from '../common/errors.ts';
import type { HostTensor } from '../common/tensor.ts';

const f = Math.fround;

export interface TilingOptions {
  /** tile edge in image pixels (the reference's tile_sample_min_height / _width) */
  tileSize: number;
  /** pixels shared by neighbouring tiles and blended (tile_sample_min − tile_sample_stride) */
  overlap: number;
}

/**
 * Tiles of 1024 px overlapping by 128 (the reference's 512/64 ratio at twice the size): 2K and 4K images tile,
 * 1024 px and below decode whole, and memory peaks at one 1024² decode whatever the image size.
 */
export const DEFAULT_TILING: TilingOptions = { tileSize: 1024, overlap: 128 };

/** Checks that tiles and strides fall on latent pixels: both must be multiples of the spatial scale. */
export function validateTiling(t: TilingOptions, spatialScale: number, field = 'tiling'): void {
  if (!Number.isSafeInteger(t.tileSize) || t.tileSize <= 0 || t.tileSize % spatialScale !== 0) {
    throw new InvalidArgumentError(`${field}.tileSize`, `must be a positive multiple of ${spatialScale} pixels, got ${t.tileSize}`);
  }
  if (!Number.isSafeInteger(t.overlap) || t.overlap < 0 || t.overlap >= t.tileSize || t.overlap % spatialScale !== 0) {
    throw new InvalidArgumentError(`${field}.overlap`, `must be a multiple of ${spatialScale} pixels in [0, tileSize), got ${t.overlap}`);
  }
}

/** The reference's rule: tile when the latent is larger than one tile along either axis. */
export function needsTiling(latentHeight: number, latentWidth: number, t: TilingOptions, spatialScale: number): boolean {
  const tile = t.tileSize / spatialScale;
  return latentHeight > tile || latentWidth > tile;
}

/** Where each tile sits in a latent of h×w: row-major, as the reference visits them. */
export function tileGrid(latentHeight: number, latentWidth: number, t: TilingOptions, spatialScale: number) {
  const tile = t.tileSize / spatialScale;
  const stride = (t.tileSize - t.overlap) / spatialScale;
  const tiles: { top: number; left: number; height: number; width: number }[] = [];
  for (let top = 0; top < latentHeight; top += stride) {
    for (let left = 0; left < latentWidth; left += stride) {
      tiles.push({ top, left, height: Math.min(tile, latentHeight - top), width: Math.min(tile, latentWidth - left) });
    }
  }
  return tiles;
}

/** A decoded tile, [C, H, W] of one image. */
interface Tile {
  data: Float32Array;
  channels: number;
  height: number;
  width: number;
}

/** b's first rows ← a's last rows·(1 − y/e) + b's·(y/e), float32 as torch computes it. */
function blendVertical(a: Tile, b: Tile, extent: number): void {
  const e = Math.min(a.height, b.height, extent);
  for (let y = 0; y < e; y++) {
    const wa = f(1 - y / e);
    const wb = f(y / e);
    for (let c = 0; c < b.channels; c++) {
      const rowA = (c * a.height + a.height - e + y) * a.width;
      const rowB = (c * b.height + y) * b.width;
      for (let x = 0; x < b.width; x++) b.data[rowB + x] = f(f(a.data[rowA + x] * wa) + f(b.data[rowB + x] * wb));
    }
  }
}

/** b's first columns ← a's last columns·(1 − x/e) + b's·(x/e). */
function blendHorizontal(a: Tile, b: Tile, extent: number): void {
  const e = Math.min(a.width, b.width, extent);
  for (let x = 0; x < e; x++) {
    const wa = f(1 - x / e);
    const wb = f(x / e);
    for (let c = 0; c < b.channels; c++) {
      for (let y = 0; y < b.height; y++) {
        const ia = (c * a.height + y) * a.width + a.width - e + x;
        const ib = (c * b.height + y) * b.width + x;
        b.data[ib] = f(f(a.data[ia] * wa) + f(b.data[ib] * wb));
      }
    }
  }
}

/** Copies z[b, :, top:top+h, left:left+w] into its own [1, C, h, w] tensor. */
function cropLatent(z: HostTensor<Float32Array>, b: number, top: number, left: number, h: number, w: number): HostTensor<Float32Array> {
  const [, channels, height, width] = z.dims;
  const out = new Float32Array(channels * h * w);
  for (let c = 0; c < channels; c++) {
    for (let y = 0; y < h; y++) {
      const from = ((b * channels + c) * height + top + y) * width + left;
      out.set(z.data.subarray(from, from + w), (c * h + y) * w);
    }
  }
  return { type: 'float32', dims: [1, channels, h, w], data: out };
}

/** The kept part of one blended tile, final as soon as it is blended: later tiles blend only into themselves. */
export interface FinishedTile {
  /** image of the batch */
  batchIndex: number;
  /** where it sits in the decoded image, in pixels */
  top: number;
  left: number;
  height: number;
  width: number;
  channels: number;
  /** [channels, height, width] */
  data: Float32Array;
}

export interface TiledDecodeOptions extends TilingOptions {
  spatialScale: number;
  signal?: AbortSignal;
  /** called with each tile's final pixels in decode order (row-major), awaited before the next tile */
  onTile?: (tile: FinishedTile) => Promise<void> | void;
}

/**
 * Decodes latents [B, C, h, w] tile by tile with `decodeTile` ([1, C, th, tw] → [1, C', s·th, s·tw]) and
 * returns the blended sample [B, C', s·h, s·w].
 */
export async function tiledDecode(
  z: HostTensor<Float32Array>,
  decodeTile: (tile: HostTensor<Float32Array>) => Promise<HostTensor<Float32Array>>,
  options: TiledDecodeOptions,
): Promise<HostTensor<Float32Array>> {
  const { spatialScale: s, tileSize, overlap } = options;
  validateTiling(options, s);
  const [batch, , h, w] = z.dims;
  const grid = tileGrid(h, w, options, s);
  const stride = tileSize - overlap; // pixels each tile contributes
  let out: Float32Array | undefined;
  let outChannels = 0;
  const H = h * s;
  const W = w * s;
  for (let b = 0; b < batch; b++) {
    let above: Tile[] = []; // the previous row of blended tiles
    let row: Tile[] = [];
    for (const t of grid) {
      if (t.left === 0) {
        if (row.length > 0) above = row;
        row = [];
      }
      if (options.signal?.aborted) throw new CancelledError('decode cancelled');
      const decoded = await decodeTile(cropLatent(z, b, t.top, t.left, t.height, t.width));
      const [, channels, height, width] = decoded.dims;
      if (height !== t.height * s || width !== t.width * s) throw new Error(`tile decoded to ${height}×${width}, expected ${t.height * s}×${t.width * s}`);
      const tile: Tile = { data: decoded.data, channels, height, width };
      if (t.top > 0) blendVertical(above[row.length], tile, overlap);
      if (t.left > 0) blendHorizontal(row[row.length - 1], tile, overlap);
      row.push(tile);
      if (!out) {
        outChannels = channels;
        out = new Float32Array(batch * channels * H * W);
      }
      // keep the top-left stride×stride part (all of it at the right / bottom border)
      const keepH = Math.min(stride, height);
      const keepW = Math.min(stride, width);
      const kept = options.onTile ? new Float32Array(channels * keepH * keepW) : undefined;
      for (let c = 0; c < channels; c++) {
        for (let y = 0; y < keepH; y++) {
          const from = (c * height + y) * width;
          const pixels = tile.data.subarray(from, from + keepW);
          out.set(pixels, ((b * channels + c) * H + t.top * s + y) * W + t.left * s);
          kept?.set(pixels, (c * keepH + y) * keepW);
        }
      }
      if (kept) await options.onTile!({ batchIndex: b, top: t.top * s, left: t.left * s, height: keepH, width: keepW, channels, data: kept });
    }
  }
  return { type: 'float32', dims: [batch, outChannels, H, W], data: out! };
}
