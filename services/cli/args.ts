// Commander argument parsers shared by the `sana` subcommands: a bad value is a usage error (exit 2).
import { InvalidArgumentError as CommanderArgumentError, Option } from 'commander';
import { InvalidArgumentError } from '../common/errors.ts';
import { DEFAULT_TILING, type TilingOptions } from '../decoder/tiling.ts';
import type { Int8Options } from '../common/int8-recipe.ts';

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new CommanderArgumentError(`expected a positive integer, got "${value}"`);
  return n;
}

export function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new CommanderArgumentError(`expected a non-negative integer, got "${value}"`);
  return n;
}

/** The decoder tiling flags of `sana generate` and `sana serve`. */
export function tilingOptions(): Option[] {
  return [
    new Option('--tile-size <px>', `decode images larger than this in overlapping tiles of this size, a multiple of the VAE's scale; 0: never tile (default ${DEFAULT_TILING.tileSize})`)
      .env('SANA_TILE_SIZE')
      .argParser(nonNegativeInt),
    new Option('--tile-overlap <px>', `pixels neighbouring tiles share and blend (default ${DEFAULT_TILING.overlap})`).env('SANA_TILE_OVERLAP').argParser(nonNegativeInt),
    new Option('--no-tiling', 'decode every image whole: the exact untiled result, with the memory of the whole image at 2K/4K'),
  ];
}

/** The denoiser's int8 calibration flags of `sana generate` and `sana serve` (they apply with --precision int8). */
export function int8Options(): Option[] {
  return [
    new Option('--int8-smooth <alpha>', 'int8 denoiser: SmoothQuant migration strength in [0, 1], calibrated at compile time (default off)')
      .env('SANA_INT8_SMOOTH')
      .argParser(unitInterval),
    new Option('--int8-outliers <ratio>', 'int8 denoiser: input channels above ratio × the median channel max run fp32 beside the int8 GEMM (default off)')
      .env('SANA_INT8_OUTLIERS')
      .argParser(ratioAboveOne),
  ];
}

function unitInterval(value: string): number {
  const n = Number(value);
  if (!(n >= 0 && n <= 1)) throw new CommanderArgumentError(`expected a number in [0, 1], got "${value}"`);
  return n;
}

function ratioAboveOne(value: string): number {
  const n = Number(value);
  if (!(n > 1) || !Number.isFinite(n)) throw new CommanderArgumentError(`expected a number > 1, got "${value}"`);
  return n;
}

/** The denoiser's int8 options from those flags (only what was given: the rest stays the recipe's default). */
export function int8FromFlags(opts: { int8Smooth?: number; int8Outliers?: number }): Partial<Int8Options> {
  return { ...(opts.int8Smooth !== undefined && { smoothAlpha: opts.int8Smooth }), ...(opts.int8Outliers !== undefined && { outlierRatio: opts.int8Outliers }) };
}

/** Tiling from those flags: false decodes whole; LocalDecoder.load checks the sizes against the VAE. */
export function tilingFromFlags(opts: { tiling: boolean; tileSize?: number; tileOverlap?: number }): TilingOptions | false {
  const sized = opts.tileSize !== undefined || opts.tileOverlap !== undefined;
  if (!opts.tiling && sized) throw new InvalidArgumentError('tiling', '--no-tiling contradicts --tile-size / --tile-overlap');
  if (!opts.tiling || opts.tileSize === 0) return false;
  return { tileSize: opts.tileSize ?? DEFAULT_TILING.tileSize, overlap: opts.tileOverlap ?? DEFAULT_TILING.overlap };
}

/** How the configuration printouts describe tiling. */
export function describeTiling(tiling: TilingOptions | false): string {
  return tiling ? `${tiling.tileSize} px tiles overlapping by ${tiling.overlap} px (larger images)` : 'off (whole images)';
}
