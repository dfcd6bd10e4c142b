// The Decoder gRPC service: a thin adapter over DecoderStage.decode. Latents arrive as a Tensor run; the encoded
// images stream back in bounded chunks, one image after the other, at the pace the client reads them. DecodeTiles
// also sends each finished tile of a tiled decode as soon as it is blended, ahead of the chunks.
import { InvalidArgumentError } from '../common/errors.ts';
import { type DecodeEvent, DecoderService, type DecodeRequest, type DecodeSettings } from '../common/gen/sana/v1/decoder.ts';
import type { ImageChunk } from '../common/gen/sana/v1/image.ts';
import type { CallScope, RequestReader, ServiceHost } from '../common/grpc-server.ts';
import type { StageSlot } from '../common/stage-slot.ts';
import type { DecoderStage } from '../common/stages.ts';
import { tensor } from '../common/tensor.ts';
import { fromProtoFormat, imageChunks, TensorAssembler, tileMessages } from '../common/tensor-chunks.ts';
import { LIMITS } from '../common/limits.ts';

export const DECODER_SERVICE = 'sana.v1.Decoder';

export function addDecoderService(host: ServiceHost, slot: StageSlot<DecoderStage>): void {
  const service = host.options.name;
  /** Reads the settings and latents, decodes, and hands the chunks (and tiles, when asked for) to `send`. */
  const decodeCall = async (requests: RequestReader<DecodeRequest>, scope: CallScope, send: (event: DecodeEvent['event']) => Promise<void>, withTiles: boolean) => {
    const stage = slot.get();
    const info = stage.info();
    const maxLatentArea = 2 * (LIMITS.side.max / info.spatialScale) ** 2;
    const latents = new TensorAssembler({ field: 'latents', type: 'float32', rank: 4, maxBytes: LIMITS.images * info.latentChannels * maxLatentArea * 4, finite: true });
    let settings: DecodeSettings | undefined;
    await requests.readAll(({ input }) => {
      if (!input) throw new InvalidArgumentError('input', 'a DecodeRequest message must set one field');
      if (input.$case === 'settings') {
        if (settings) throw new InvalidArgumentError('settings', 'was sent twice');
        settings = input.value;
      } else latents.add(input.value);
    });
    if (!settings) throw new InvalidArgumentError('settings', 'is required');
    // sizes and quality (0: the encoder's default) are the stage's to check
    const format = fromProtoFormat(settings.format);
    const images = await stage.decode(
      { latents: latents.result(), format, width: settings.width, height: settings.height, quality: settings.quality || undefined },
      {
        signal: scope.signal,
        requestId: scope.requestId,
        onTile: withTiles ? async (tile) => { for (const value of tileMessages(tile)) await send({ $case: 'tile', value }); } : undefined,
      },
    );
    for (const [index, image] of images.entries()) {
      for (const value of imageChunks(image, index)) await send({ $case: 'image', value });
      host.metrics.images.inc({ service, format });
    }
  };
  host.addService(DECODER_SERVICE, DecoderService, {
    getInfo: host.unary('GetInfo', async () => slot.get().info()),
    decode: host.bidiStream<DecodeRequest, ImageChunk>('Decode', (requests, scope, out) =>
      decodeCall(
        requests,
        scope,
        async (event) => {
          if (event?.$case === 'image') await out.write(event.value);
        },
        false,
      ),
    ),
    decodeTiles: host.bidiStream<DecodeRequest, DecodeEvent>('DecodeTiles', (requests, scope, out) => decodeCall(requests, scope, (event) => out.write({ event }), true)),
  });
}

/** A small decode through the whole network and the PNG encoder. */
export async function warmUpDecoder(stage: DecoderStage): Promise<void> {
  const info = stage.info();
  const side = 4;
  await stage.decode({
    latents: tensor(new Float32Array(info.latentChannels * side * side), [1, info.latentChannels, side, side]),
    format: 'png',
    width: side * info.spatialScale,
    height: side * info.spatialScale,
  });
}
