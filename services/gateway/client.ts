// The public Generation API from the client's side, with the in-process pipeline's shape: the same arguments,
// the same progress callbacks and the same result, so `sana generate --server` works like `sana generate`.
import * as grpc from '@grpc/grpc-js';
import { CHANNEL_OPTIONS, readResponses } from '../common/grpc-client.ts';
import { MAX_IMAGE_BYTES } from '../common/limits.ts';
import { GenerationClient, Stage, type GenerateRequest, type GenerateSummary } from '../common/gen/sana/v1/generation.ts';
import { ImageAssembler, toProtoFormat } from '../common/tensor-chunks.ts';
import type { GenerateArgs, GenerateContext, GenerateResult } from '../common/pipeline.ts';

/** The request for the pipeline's arguments (the inverse of the gateway's toGenerateArgs). */
export function toGenerateRequest(args: GenerateArgs): GenerateRequest {
  const chi = args.complexHumanInstruction;
  return {
    prompt: typeof args.prompt === 'string' ? [args.prompt] : args.prompt,
    negativePrompt: args.negativePrompt ?? '',
    numInferenceSteps: args.numInferenceSteps,
    guidanceScale: args.guidanceScale,
    height: args.height,
    width: args.width,
    numImagesPerPrompt: args.numImagesPerPrompt,
    seed: args.seed === undefined ? undefined : BigInt(args.seed),
    useResolutionBinning: args.useResolutionBinning,
    maxSequenceLength: args.maxSequenceLength,
    useComplexHumanInstruction: chi === false || (Array.isArray(chi) && chi.length === 0) ? false : undefined,
    complexHumanInstruction: Array.isArray(chi) ? chi : [],
    format: toProtoFormat(args.format ?? 'png'),
    quality: args.quality,
    previewEvery: 0,
  };
}

const STAGE_NAMES: Partial<Record<Stage, 'encode' | 'denoise' | 'decode'>> = { [Stage.STAGE_ENCODE]: 'encode', [Stage.STAGE_DENOISE]: 'denoise', [Stage.STAGE_DECODE]: 'decode' };

export interface RemoteOptions {
  /** sent as `authorization: Bearer <token>` */
  token?: string;
  /** TLS or mutual TLS towards the gateway (grpc-tls.ts); plaintext when absent */
  credentials?: grpc.ChannelCredentials;
}

/**
 * Calls Generate on the gateway at `address` and collects the streamed images. A failed call throws what the
 * stage clients throw (InvalidArgumentError for INVALID_ARGUMENT, CancelledError, StatusError otherwise).
 */
export async function generateRemote(address: string, args: GenerateArgs, ctx: Pick<GenerateContext, 'signal' | 'onStep' | 'onStage'> = {}, options: RemoteOptions = {}): Promise<GenerateResult> {
  const client = new GenerationClient(address, options.credentials ?? grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
  const metadata = new grpc.Metadata();
  if (options.token) metadata.set('authorization', `Bearer ${options.token}`);
  const images = new ImageAssembler(MAX_IMAGE_BYTES);
  let summary: GenerateSummary | undefined;
  try {
    const call = client.generate(toGenerateRequest(args), metadata);
    await readResponses(
      call,
      'gateway',
      ({ event }) => {
        if (event?.$case === 'progress') {
          const p = event.value;
          ctx.onStep?.({ step: p.step - 1, total: p.numInferenceSteps, timestep: p.timestep, seconds: p.seconds });
        } else if (event?.$case === 'stageFinished') {
          const stage = STAGE_NAMES[event.value.stage];
          if (stage) ctx.onStage?.(stage, event.value.seconds);
        } else if (event?.$case === 'image') images.add(event.value);
        else if (event?.$case === 'summary') summary = event.value;
      },
      ctx.signal,
    );
  } finally {
    client.close();
  }
  if (!summary) throw new Error(`the gateway at ${address} ended the stream without a summary`);
  const t = summary.timings;
  return {
    images: images.result(),
    seed: summary.seed,
    width: summary.width,
    height: summary.height,
    timings: {
      encodeSeconds: t?.encodeSeconds ?? 0,
      denoiseSeconds: t?.denoiseSeconds ?? 0,
      decodeSeconds: t?.decodeSeconds ?? 0,
      totalSeconds: t?.totalSeconds ?? 0,
      encodeQueuedSeconds: t?.encodeQueuedSeconds ?? 0,
      denoiseQueuedSeconds: t?.denoiseQueuedSeconds ?? 0,
      decodeQueuedSeconds: t?.decodeQueuedSeconds ?? 0,
    },
  };
}
