// The Denoiser gRPC service: a thin adapter over DenoiserStage.denoise. Inputs arrive as Tensor runs on a client
// stream; step events (with optional previews) and the final latents stream back. A client cancel or an expired
// deadline aborts the signal handed to the stage, which stops before its next step.
import { InvalidArgumentError } from '../common/errors.ts';
import { DenoiserService, type DenoiseRequest, type DenoiseResponse, type DenoiseSettings } from '../common/gen/sana/v1/denoiser.ts';
import type { ServiceHost } from '../common/grpc-server.ts';
import type { StageSlot } from '../common/stage-slot.ts';
import type { DenoiserInfo, DenoiserStage } from '../common/stages.ts';
import { tensor } from '../common/tensor.ts';
import { TensorAssembler, tensorChunks } from '../common/tensor-chunks.ts';
import { LIMITS } from '../common/limits.ts';

export const DENOISER_SERVICE = 'sana.v1.Denoiser';

/** Latent pixels per image at most: the largest side squared, with room for aspect-ratio bins. */
const MAX_LATENT_AREA = 2 * (LIMITS.side.max / 32) ** 2;

function inputAssemblers(info: DenoiserInfo) {
  const rows = LIMITS.images;
  const tokens = LIMITS.maxSequenceLength.max;
  const embeds = (field: string) => new TensorAssembler({ field, type: 'float32', rank: 3, maxBytes: rows * tokens * info.captionChannels * 4, finite: true });
  const mask = (field: string) => new TensorAssembler({ field, type: 'int64', rank: 2, maxBytes: rows * tokens * 8 });
  return {
    promptEmbeds: embeds('prompt_embeds'),
    promptAttentionMask: mask('prompt_attention_mask'),
    negativePromptEmbeds: embeds('negative_prompt_embeds'),
    negativePromptAttentionMask: mask('negative_prompt_attention_mask'),
    latents: new TensorAssembler({ field: 'latents', type: 'float32', rank: 4, maxBytes: rows * info.inChannels * MAX_LATENT_AREA * 4, finite: true }),
  };
}

export function addDenoiserService(host: ServiceHost, slot: StageSlot<DenoiserStage>): void {
  const service = host.options.name;
  host.addService(DENOISER_SERVICE, DenoiserService, {
    getInfo: host.unary('GetInfo', async () => slot.get().info()),
    denoise: host.bidiStream<DenoiseRequest, DenoiseResponse>(
      'Denoise',
      async (requests, scope, out) => {
        const stage = slot.get();
        const inputs = inputAssemblers(stage.info());
        let settings: DenoiseSettings | undefined;
        await requests.readAll(({ input }) => {
          if (!input) throw new InvalidArgumentError('input', 'a DenoiseRequest message must set one field');
          if (input.$case === 'settings') {
            if (settings) throw new InvalidArgumentError('settings', 'was sent twice');
            settings = input.value;
          } else inputs[input.$case].add(input.value);
        });
        if (!settings) throw new InvalidArgumentError('settings', 'is required');
        if (settings.previewEvery > LIMITS.steps.max) {
          throw new InvalidArgumentError('preview_every', `must be at most ${LIMITS.steps.max}, got ${settings.previewEvery}`);
        }
        const guided = inputs.negativePromptEmbeds.started || inputs.negativePromptAttentionMask.started;
        const latents = await stage.denoise(
          {
            promptEmbeds: inputs.promptEmbeds.result(),
            promptMask: inputs.promptAttentionMask.result(),
            negativeEmbeds: guided ? inputs.negativePromptEmbeds.result() : undefined,
            negativeMask: guided ? inputs.negativePromptAttentionMask.result() : undefined,
            latents: inputs.latents.result(),
            numInferenceSteps: settings.numInferenceSteps,
            guidanceScale: settings.guidanceScale,
          },
          {
            signal: scope.signal,
            requestId: scope.requestId,
            previewEvery: settings.previewEvery,
            onStep: (event) => {
              host.metrics.denoiserSteps.inc({ service });
              host.metrics.denoiserStepSeconds.observe({ service }, event.seconds);
              const forwards = stage.forwardStats?.();
              if (forwards) host.metrics.recordForwards(forwards);
              // previews are optional: skipped (and counted) while the client is not keeping up; steps never wait for them
              if (event.latents && !out.offer([...tensorChunks(event.latents)].map((value) => ({ output: { $case: 'preview' as const, value } })))) {
                host.metrics.previewsDropped.inc({ service });
              }
              out.push({ output: { $case: 'step', value: { step: event.step, numInferenceSteps: event.total, timestep: event.timestep, seconds: event.seconds } } });
            },
          },
        );
        for (const value of tensorChunks(latents)) await out.write({ output: { $case: 'latents', value } });
      },
    ),
  });
}

/** One step at the training resolution without guidance. */
export async function warmUpDenoiser(stage: DenoiserStage): Promise<void> {
  const info = stage.info();
  const side = info.sampleSize;
  const tokens = 8;
  await stage.denoise({
    promptEmbeds: tensor(new Float32Array(tokens * info.captionChannels), [1, tokens, info.captionChannels]),
    promptMask: tensor(new BigInt64Array(tokens).fill(1n), [1, tokens]),
    latents: tensor(new Float32Array(info.inChannels * side * side), [1, info.inChannels, side, side]),
    numInferenceSteps: 1,
    guidanceScale: 1,
  });
}
