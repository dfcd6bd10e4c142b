// From the decoder's float sample to image files, as SanaPipeline + VaeImageProcessor produce them:
//   [3,H,W] float ─ (resolution binning only) bilinear resize + centre crop to the requested size (on floats)
//              ─ (x/2 + 0.5) clamped to [0,1] ─ ×255 ─ round half to even ─ uint8 HWC ─ PNG / JPEG / WebP (sharp)
// Every step rounds to float32 where the reference computes in float32 (Math.fround), so the uint8 values
// equal the reference's for the same float input.
import sharp from 'sharp';
import type { ImageFormat } from '../common/stages.ts';
import { resizeBackGeometry } from '../common/resolution-bins.ts';

const f = Math.fround;

/** A single image [channels, height, width] in float32, channel-planar as the decoder writes it. */
export interface PlanarImage {
  data: Float32Array;
  channels: number;
  height: number;
  width: number;
}

/** numpy's round(): to the nearest integer, ties to even. */
export function roundHalfEven(v: number): number {
  const lower = Math.floor(v);
  const diff = v - lower;
  if (diff > 0.5) return lower + 1;
  if (diff < 0.5) return lower;
  return lower % 2 === 0 ? lower : lower + 1;
}

/**
 * The decoded sample to interleaved uint8 RGB [H,W,C]: VaeImageProcessor's denormalize ((x·0.5 + 0.5).clamp(0, 1)
 * in float32 torch), then numpy_to_pil ((x·255).round().astype(uint8) in float32 numpy).
 */
export function toUint8(image: PlanarImage): Uint8Array {
  const { data, channels, height, width } = image;
  const plane = height * width;
  const out = new Uint8Array(plane * channels);
  for (let c = 0; c < channels; c++) {
    for (let p = 0; p < plane; p++) {
      const x01 = Math.min(Math.max(f(data[c * plane + p] * 0.5 + 0.5), 0), 1); // NaN stays NaN
      const v = roundHalfEven(f(x01 * 255));
      out[p * channels + c] = Number.isNaN(v) ? 0 : v;
    }
  }
  return out;
}

/**
 * PixArtImageProcessor.resize_and_crop_tensor for one image: PyTorch's bilinear interpolation (align_corners=False,
 * no antialias) to the size resizeBackGeometry gives, then its centre crop to newH×newW. Unchanged when the size
 * already matches.
 */
export function resizeAndCrop(image: PlanarImage, newWidth: number, newHeight: number): PlanarImage {
  const { data, channels, height, width } = image;
  const { needsResize, resizedHeight: rh, resizedWidth: rw, top, left } = resizeBackGeometry(height, width, newHeight, newWidth);
  if (!needsResize) return image;
  const rows = linearTaps(height, rh, top, newHeight);
  const cols = linearTaps(width, rw, left, newWidth);
  const out = new Float32Array(channels * newHeight * newWidth);
  for (let c = 0; c < channels; c++) {
    const src = c * height * width;
    const dst = c * newHeight * newWidth;
    for (let y = 0; y < newHeight; y++) {
      const r0 = src + rows.i0[y] * width;
      const r1 = src + rows.i1[y] * width;
      const [wy0, wy1] = [rows.w0[y], rows.w1[y]];
      for (let x = 0; x < newWidth; x++) {
        const [c0, c1, wx0, wx1] = [cols.i0[x], cols.i1[x], cols.w0[x], cols.w1[x]];
        // the rows are interpolated along x first, then blended along y, each product and sum in float32
        const upper = f(f(data[r0 + c0] * wx0) + f(data[r0 + c1] * wx1));
        const lower = f(f(data[r1 + c0] * wx0) + f(data[r1 + c1] * wx1));
        out[dst + y * newWidth + x] = f(f(upper * wy0) + f(lower * wy1));
      }
    }
  }
  return { data: out, channels, height: newHeight, width: newWidth };
}

/**
 * Source indices and weights of the output positions [start, start+count) of a linear resize from `inSize` to
 * `outSize` (half-pixel centres, clamped at 0, as upsample_bilinear2d computes them in float32).
 */
function linearTaps(inSize: number, outSize: number, start: number, count: number) {
  const scale = f(inSize / outSize);
  const taps = { i0: new Int32Array(count), i1: new Int32Array(count), w0: new Float32Array(count), w1: new Float32Array(count) };
  for (let k = 0; k < count; k++) {
    const source = Math.max(f(f(scale * f(start + k + 0.5)) - 0.5), 0);
    const i0 = Math.min(Math.floor(source), inSize - 1);
    const lambda = Math.min(Math.max(f(source - i0), 0), 1);
    taps.i0[k] = i0;
    taps.i1[k] = i0 < inSize - 1 ? i0 + 1 : i0;
    taps.w0[k] = f(1 - lambda);
    taps.w1[k] = lambda;
  }
  return taps;
}

export interface EncodeOptions {
  /** JPEG / WebP quality 1–100 (sharp's defaults when absent: 80) */
  quality?: number;
}

/** Interleaved uint8 RGB to an image file. PNG is lossless: decoding it gives back exactly these bytes. */
export async function encodeImage(
  rgb: Uint8Array,
  width: number,
  height: number,
  format: ImageFormat,
  options: EncodeOptions = {},
): Promise<Uint8Array> {
  const channels = rgb.length / (width * height);
  if (channels !== 3 && channels !== 1) throw new Error(`${rgb.length} bytes are not a ${width}×${height} RGB or grey image`);
  const img = sharp(rgb, { raw: { width, height, channels } });
  const encoded =
    format === 'png'
      ? img.png()
      : format === 'jpeg'
        ? img.jpeg({ quality: options.quality })
        : img.webp({ quality: options.quality });
  const buf = await encoded.toBuffer();
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}
