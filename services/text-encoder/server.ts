// The TextEncoder gRPC service: a thin adapter over TextEncoderStage.encode. Embeddings and masks stream back
// as bounded Tensor runs.
import { InvalidArgumentError } from '../common/errors.ts';
import { TextEncoderService, type EncodeRequest, type EncodeResponse } from '../common/gen/sana/v1/text_encoder.ts';
import type { ServiceHost } from '../common/grpc-server.ts';
import { StageSlot } from '../common/stage-slot.ts';
import type { TextEncoderStage } from '../common/stages.ts';
import { tensorChunks } from '../common/tensor-chunks.ts';
import { LIMITS } from '../common/limits.ts';

export const TEXT_ENCODER_SERVICE = 'sana.v1.TextEncoder';

function validate(req: EncodeRequest): void {
  if (req.prompt.length === 0) throw new InvalidArgumentError('prompt', 'at least one prompt is required');
  if (req.prompt.length > LIMITS.prompts) throw new InvalidArgumentError('prompt', `at most ${LIMITS.prompts} prompts per call, got ${req.prompt.length}`);
  for (const p of req.prompt) {
    const bytes = Buffer.byteLength(p, 'utf8');
    if (bytes > LIMITS.promptBytes) throw new InvalidArgumentError('prompt', `is ${bytes} bytes; the limit is ${LIMITS.promptBytes}`);
  }
  const { min, max } = LIMITS.maxSequenceLength;
  if (req.maxSequenceLength < min || req.maxSequenceLength > max) {
    throw new InvalidArgumentError('max_sequence_length', `must be an integer in [${min}, ${max}], got ${req.maxSequenceLength}`);
  }
}

export function addTextEncoderService(host: ServiceHost, slot: StageSlot<TextEncoderStage>): void {
  host.addService(TEXT_ENCODER_SERVICE, TextEncoderService, {
    getInfo: host.unary('GetInfo', async () => slot.get().info()),
    encode: host.serverStream<EncodeRequest, EncodeResponse>(
      'Encode',
      async (req, scope, out) => {
        const stage = slot.get();
        validate(req);
        const { embeds, mask } = await stage.encode(
          {
            prompts: req.prompt,
            useComplexHumanInstruction: req.useComplexHumanInstruction,
            complexHumanInstruction: req.complexHumanInstruction.length > 0 ? req.complexHumanInstruction : undefined,
            maxSequenceLength: req.maxSequenceLength,
          },
          { signal: scope.signal, requestId: scope.requestId },
        );
        const cache = stage.cacheStats?.();
        if (cache) host.metrics.recordEmbeddingCache(cache);
        for (const value of tensorChunks(embeds)) await out.write({ output: { $case: 'promptEmbeds', value } });
        for (const value of tensorChunks(mask)) await out.write({ output: { $case: 'promptAttentionMask', value } });
      },
    ),
  });
}

/** One short request through the whole model, so the first real request does not pay for first-run setup. */
export async function warmUpTextEncoder(stage: TextEncoderStage): Promise<void> {
  await stage.encode({ prompts: ['a photo of a cat'], useComplexHumanInstruction: true, maxSequenceLength: 300 });
}
