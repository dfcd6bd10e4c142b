// The decoder stage in-process: what SanaPipeline does after the last denoising step.
//   latents / scaling_factor ─ DC-AE decoder (tiled when larger than a tile) ─ resize + crop back to the
//   requested size (resolution binning) ─ uint8 ─ PNG / JPEG / WebP
// One image at a time, so memory holds one decode (one tile's when tiled) plus the images.
import { CancelledError, InvalidArgumentError } from '../common/errors.ts';
import { FORMATS, intInRange, LIMITS } from '../common/limits.ts';
import type { SessionOptions } from '../common/ort-session.ts';
import type { DecodeContext, DecodedImage, DecodeRequest, DecoderInfo, DecoderStage } from '../common/stages.ts';
import type { HostTensor } from '../common/tensor.ts';
import { DcAeDecoder } from './dc-ae.ts';
import { encodeImage, resizeAndCrop, toUint8 } from './image.ts';
import { DEFAULT_TILING, needsTiling, tiledDecode, type TilingOptions, validateTiling } from './tiling.ts';


export interface LocalDecoderOptions extends SessionOptions {
  /** tile size and overlap for latents larger than a tile; false decodes every latent whole */
  tiling?: TilingOptions | false;
}

export class LocalDecoder implements DecoderStage {
  private constructor(
    readonly model: DcAeDecoder,
    readonly tiling: TilingOptions | false,
  ) {}

  /** Loads an AutoencoderDC folder (`vae/`: config.json + safetensors). */
  static async load(vaeDir: string, options: LocalDecoderOptions = {}): Promise<LocalDecoder> {
    const { tiling = DEFAULT_TILING, ...session } = options;
    const model = await DcAeDecoder.load(vaeDir, session);
    if (tiling) {
      try {
        validateTiling(tiling, model.spatialScale);
      } catch (e) {
        await model.close();
        throw e;
      }
    }
    return new LocalDecoder(model, tiling);
  }

  info(): DecoderInfo {
    return {
      latentChannels: this.model.config.latent_channels,
      spatialScale: this.model.spatialScale,
      scalingFactor: this.model.config.scaling_factor,
      precision: 'fp32',
    };
  }

  /** Everything a request can get wrong, checked before any compute. */
  private validate(req: DecodeRequest): void {
    if (!FORMATS.includes(req.format)) throw new InvalidArgumentError('format', `must be one of ${FORMATS.join(', ')}, got ${JSON.stringify(req.format)}`);
    for (const field of ['width', 'height'] as const) intInRange(field, req[field], LIMITS.side.min, LIMITS.side.max);
    if (req.quality !== undefined) intInRange('quality', req.quality, LIMITS.quality.min, LIMITS.quality.max);
    this.model.validate(req.latents, 'latents');
  }

  /**
   * The raw sample [1, 3, s·h, s·w] of one image's latent [1, C, h, w] (already divided by scaling_factor); a tiled
   * decode hands each finished tile of image `index` to ctx.onTile as it goes.
   */
  async decodeSample(z: HostTensor<Float32Array>, ctx: DecodeContext = {}, index = 0): Promise<HostTensor<Float32Array>> {
    const [, , h, w] = z.dims;
    const s = this.model.spatialScale;
    if (this.tiling && needsTiling(h, w, this.tiling, s)) {
      const { onTile } = ctx;
      return tiledDecode(z, (tile) => this.model.decode(tile), {
        ...this.tiling,
        spatialScale: s,
        signal: ctx.signal,
        // the same uint8 conversion as the whole image's, so tiles hold the final pixels
        onTile: onTile && ((t) => onTile({ index, top: t.top, left: t.left, width: t.width, height: t.height, imageWidth: w * s, imageHeight: h * s, pixels: toUint8(t) })),
      });
    }
    return this.model.decode(z);
  }

  async decode(req: DecodeRequest, ctx: DecodeContext = {}): Promise<DecodedImage[]> {
    this.validate(req);
    const [batch, channels, h, w] = req.latents.dims;
    // torch divides float32 latents by the Python float scaling_factor in float32
    const scale = Math.fround(this.model.config.scaling_factor);
    const perImage = channels * h * w;
    const images: DecodedImage[] = [];
    for (let b = 0; b < batch; b++) {
      if (ctx.signal?.aborted) throw new CancelledError('decode cancelled');
      const z = new Float32Array(perImage);
      const src = req.latents.data.subarray(b * perImage, (b + 1) * perImage);
      for (let i = 0; i < perImage; i++) z[i] = src[i] / scale;
      const sample = await this.decodeSample({ type: 'float32', dims: [1, channels, h, w], data: z }, ctx, b);
      const [, outChannels, height, width] = sample.dims;
      const image = resizeAndCrop({ data: sample.data, channels: outChannels, height, width }, req.width, req.height);
      const bytes = await encodeImage(toUint8(image), image.width, image.height, req.format, { quality: req.quality });
      images.push({ bytes, width: image.width, height: image.height, format: req.format });
    }
    return images;
  }

  async close(): Promise<void> {
    await this.model.close();
  }
}
