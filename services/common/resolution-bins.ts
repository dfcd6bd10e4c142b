// SANA's resolution binning, as SanaPipeline does it with use_resolution_binning: the requested height and
// width are replaced by the trained resolution of the nearest aspect ratio (tables by the transformer's
// sample_size: 16 -> 512 px, 32 -> 1024, 64 -> 2048, 128 -> 4096), the image is generated at that size, and
// the decoded image is scaled (bilinear, align_corners=False, no antialiasing) so that it covers the
// requested size, then centre-cropped to it. The pixel resampling belongs to the decoder; this file gives
// the sizes and the crop box.
import { InvalidArgumentError } from './errors.ts';

/** One bin: the aspect ratio key as the reference writes it (height / width, rounded) and the bin's size. */
export interface AspectRatioBin {
  ratio: string;
  height: number;
  width: number;
}
/** In the reference's order: ties in ratio distance go to the earlier bin. */
export type AspectRatioBins = readonly AspectRatioBin[];

function bins(rows: [string, number, number][]): AspectRatioBins {
  return Object.freeze(rows.map(([ratio, height, width]) => Object.freeze({ ratio, height, width })));
}

// The tables are model data (the resolutions SANA/PixArt were trained at), as diffusers ships them:
// pipeline_pixart_alpha.py (512, 1024), pipeline_pixart_sigma.py (2048), pipeline_sana.py (4096).
export const ASPECT_RATIO_512_BIN: AspectRatioBins = bins([
  ['0.25', 256, 1024], ['0.28', 256, 928], ['0.32', 288, 896], ['0.33', 288, 864], ['0.35', 288, 832],
  ['0.4', 320, 800], ['0.42', 320, 768], ['0.48', 352, 736], ['0.5', 352, 704], ['0.52', 352, 672],
  ['0.57', 384, 672], ['0.6', 384, 640], ['0.68', 416, 608], ['0.72', 416, 576], ['0.78', 448, 576],
  ['0.82', 448, 544], ['0.88', 480, 544], ['0.94', 480, 512], ['1.0', 512, 512], ['1.07', 512, 480],
  ['1.13', 544, 480], ['1.21', 544, 448], ['1.29', 576, 448], ['1.38', 576, 416], ['1.46', 608, 416],
  ['1.67', 640, 384], ['1.75', 672, 384], ['2.0', 704, 352], ['2.09', 736, 352], ['2.4', 768, 320],
  ['2.5', 800, 320], ['3.0', 864, 288], ['4.0', 1024, 256],
]);

export const ASPECT_RATIO_1024_BIN: AspectRatioBins = bins([
  ['0.25', 512, 2048], ['0.28', 512, 1856], ['0.32', 576, 1792], ['0.33', 576, 1728], ['0.35', 576, 1664],
  ['0.4', 640, 1600], ['0.42', 640, 1536], ['0.48', 704, 1472], ['0.5', 704, 1408], ['0.52', 704, 1344],
  ['0.57', 768, 1344], ['0.6', 768, 1280], ['0.68', 832, 1216], ['0.72', 832, 1152], ['0.78', 896, 1152],
  ['0.82', 896, 1088], ['0.88', 960, 1088], ['0.94', 960, 1024], ['1.0', 1024, 1024], ['1.07', 1024, 960],
  ['1.13', 1088, 960], ['1.21', 1088, 896], ['1.29', 1152, 896], ['1.38', 1152, 832], ['1.46', 1216, 832],
  ['1.67', 1280, 768], ['1.75', 1344, 768], ['2.0', 1408, 704], ['2.09', 1472, 704], ['2.4', 1536, 640],
  ['2.5', 1600, 640], ['3.0', 1728, 576], ['4.0', 2048, 512],
]);

export const ASPECT_RATIO_2048_BIN: AspectRatioBins = bins([
  ['0.25', 1024, 4096], ['0.26', 1024, 3968], ['0.27', 1024, 3840], ['0.28', 1024, 3712], ['0.32', 1152, 3584],
  ['0.33', 1152, 3456], ['0.35', 1152, 3328], ['0.4', 1280, 3200], ['0.42', 1280, 3072], ['0.48', 1408, 2944],
  ['0.5', 1408, 2816], ['0.52', 1408, 2688], ['0.57', 1536, 2688], ['0.6', 1536, 2560], ['0.68', 1664, 2432],
  ['0.72', 1664, 2304], ['0.78', 1792, 2304], ['0.82', 1792, 2176], ['0.88', 1920, 2176], ['0.94', 1920, 2048],
  ['1.0', 2048, 2048], ['1.07', 2048, 1920], ['1.13', 2176, 1920], ['1.21', 2176, 1792], ['1.29', 2304, 1792],
  ['1.38', 2304, 1664], ['1.46', 2432, 1664], ['1.67', 2560, 1536], ['1.75', 2688, 1536], ['2.0', 2816, 1408],
  ['2.09', 2944, 1408], ['2.4', 3072, 1280], ['2.5', 3200, 1280], ['2.89', 3328, 1152], ['3.0', 3456, 1152],
  ['3.11', 3584, 1152], ['3.62', 3712, 1024], ['3.75', 3840, 1024], ['3.88', 3968, 1024], ['4.0', 4096, 1024],
]);

export const ASPECT_RATIO_4096_BIN: AspectRatioBins = bins([
  ['0.25', 2048, 8192], ['0.26', 2048, 7936], ['0.27', 2048, 7680], ['0.28', 2048, 7424], ['0.32', 2304, 7168],
  ['0.33', 2304, 6912], ['0.35', 2304, 6656], ['0.4', 2560, 6400], ['0.42', 2560, 6144], ['0.48', 2816, 5888],
  ['0.5', 2816, 5632], ['0.52', 2816, 5376], ['0.57', 3072, 5376], ['0.6', 3072, 5120], ['0.68', 3328, 4864],
  ['0.72', 3328, 4608], ['0.78', 3584, 4608], ['0.82', 3584, 4352], ['0.88', 3840, 4352], ['0.94', 3840, 4096],
  ['1.0', 4096, 4096], ['1.07', 4096, 3840], ['1.13', 4352, 3840], ['1.21', 4352, 3584], ['1.29', 4608, 3584],
  ['1.38', 4608, 3328], ['1.46', 4864, 3328], ['1.67', 5120, 3072], ['1.75', 5376, 3072], ['2.0', 5632, 2816],
  ['2.09', 5888, 2816], ['2.4', 6144, 2560], ['2.5', 6400, 2560], ['2.89', 6656, 2304], ['3.0', 6912, 2304],
  ['3.11', 7168, 2304], ['3.62', 7424, 2048], ['3.75', 7680, 2048], ['3.88', 7936, 2048], ['4.0', 8192, 2048],
]);

/** The table SanaPipeline uses for a transformer's config.sample_size (latent size of its base resolution). */
export function binForSampleSize(sampleSize: number): AspectRatioBins {
  switch (sampleSize) {
    case 128:
      return ASPECT_RATIO_4096_BIN;
    case 64:
      return ASPECT_RATIO_2048_BIN;
    case 32:
      return ASPECT_RATIO_1024_BIN;
    case 16:
      return ASPECT_RATIO_512_BIN;
    default:
      throw new InvalidArgumentError(
        'use_resolution_binning',
        `the transformer's sample_size ${sampleSize} has no aspect-ratio bins (16, 32, 64 and 128 have); turn resolution binning off`,
      );
  }
}

function requirePositiveInteger(field: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 1) throw new InvalidArgumentError(field, `must be a positive integer, got ${value}`);
}

/** The bin whose ratio key is nearest to height / width (the first one on a tie), as the image processor picks. */
export function classifyHeightWidthBin(height: number, width: number, ratios: AspectRatioBins): { height: number; width: number } {
  requirePositiveInteger('height', height);
  requirePositiveInteger('width', width);
  if (ratios.length === 0) throw new Error('classifyHeightWidthBin: empty bin table');
  const aspect = height / width;
  let best = ratios[0];
  let bestDistance = Math.abs(Number(best.ratio) - aspect);
  for (const bin of ratios.slice(1)) {
    const distance = Math.abs(Number(bin.ratio) - aspect);
    if (distance < bestDistance) {
      best = bin;
      bestDistance = distance;
    }
  }
  return { height: best.height, width: best.width };
}

/** How a decoded image of the bin's size becomes the requested size. */
export interface ResizeBackGeometry {
  /** the size to resample the whole decoded image to (equal to the decoded size when nothing changes) */
  resizedHeight: number;
  resizedWidth: number;
  /** the crop box within the resized image, of exactly the requested size */
  top: number;
  left: number;
  height: number;
  width: number;
  /** false when the decoded image already has the requested size */
  needsResize: boolean;
}

/**
 * resize_and_crop_tensor's geometry: scale by max(target/decoded) over both axes (sizes truncated to
 * integers), then a centre crop with the offset rounded down.
 *
 * One deliberate difference: the reference truncates decoded·scale, which for some sizes lands one pixel
 * short of the target on the axis that sets the scale (e.g. 736·(104/736) = 103.99…), and its crop then
 * starts at -1 and Python slicing returns a 1-pixel-wide image. Here that axis is resized to the target
 * itself, so the result always has the requested size; every other case is the reference's geometry.
 */
export function resizeBackGeometry(decodedHeight: number, decodedWidth: number, targetHeight: number, targetWidth: number): ResizeBackGeometry {
  requirePositiveInteger('decoded height', decodedHeight);
  requirePositiveInteger('decoded width', decodedWidth);
  requirePositiveInteger('height', targetHeight);
  requirePositiveInteger('width', targetWidth);
  if (decodedHeight === targetHeight && decodedWidth === targetWidth) {
    return { resizedHeight: decodedHeight, resizedWidth: decodedWidth, top: 0, left: 0, height: targetHeight, width: targetWidth, needsResize: false };
  }
  const scale = Math.max(targetHeight / decodedHeight, targetWidth / decodedWidth);
  const resizedWidth = Math.max(Math.trunc(decodedWidth * scale), targetWidth);
  const resizedHeight = Math.max(Math.trunc(decodedHeight * scale), targetHeight);
  return {
    resizedHeight,
    resizedWidth,
    top: Math.floor((resizedHeight - targetHeight) / 2),
    left: Math.floor((resizedWidth - targetWidth) / 2),
    height: targetHeight,
    width: targetWidth,
    needsResize: true,
  };
}
