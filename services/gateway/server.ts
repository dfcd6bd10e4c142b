// The public Generation service: checks auth and the request, admits it (bounded in-flight requests and queue),
// runs the shared generate() over the stage clients, and streams progress, previews, image chunks and a summary.
import crypto from 'node:crypto';
import type * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError } from '../common/errors.ts';
import {
  GenerationService,
  Stage,
  type GenerateRequest,
  type GenerateResponse,
} from '../common/gen/sana/v1/generation.ts';
import type { ServiceHost } from '../common/grpc-server.ts';
import { Status, StatusError } from '../common/grpc-status.ts';
import { fromProtoFormat, imageChunks, tensorChunks, tileMessages } from '../common/tensor-chunks.ts';
import { LIMITS } from '../common/limits.ts';
import { generate, validateGenerateArgs, type GenerateArgs, type PipelineStages } from '../common/pipeline.ts';

export const GENERATION_SERVICE = 'sana.v1.Generation';

/** Stages the gateway can reach (RemoteStages); `connect` fetches what generate() needs to know about them. */
export interface GatewayStages extends PipelineStages {
  readonly ready: boolean;
  connect(): Promise<void>;
}

export interface GatewayOptions {
  /** when set, Generate requires `authorization: Bearer <token>` */
  authToken?: string;
}

const STAGES = { encode: Stage.STAGE_ENCODE, denoise: Stage.STAGE_DENOISE, decode: Stage.STAGE_DECODE } as const;

/** The request in the pipeline's terms (diffusers' argument names in camelCase). */
export function toGenerateArgs(req: GenerateRequest): GenerateArgs {
  return {
    prompt: req.prompt,
    negativePrompt: req.negativePrompt,
    numInferenceSteps: req.numInferenceSteps,
    guidanceScale: req.guidanceScale,
    height: req.height,
    width: req.width,
    numImagesPerPrompt: req.numImagesPerPrompt,
    seed: req.seed,
    useResolutionBinning: req.useResolutionBinning,
    maxSequenceLength: req.maxSequenceLength,
    complexHumanInstruction:
      req.useComplexHumanInstruction === false ? false : req.complexHumanInstruction.length > 0 ? req.complexHumanInstruction : undefined,
    format: fromProtoFormat(req.format),
    quality: req.quality,
  };
}

export function bearerCheck(token: string): (metadata: grpc.Metadata) => void {
  const expected = crypto.createHash('sha256').update(`Bearer ${token}`).digest();
  return (metadata) => {
    const given = metadata.get('authorization')[0];
    if (typeof given !== 'string') throw new StatusError(Status.UNAUTHENTICATED, 'missing "authorization: Bearer <token>" metadata');
    // compare digests in constant time, so neither the token nor its length leaks through timing
    if (!crypto.timingSafeEqual(crypto.createHash('sha256').update(given).digest(), expected)) {
      throw new StatusError(Status.UNAUTHENTICATED, 'invalid bearer token');
    }
  };
}

export function addGenerationService(host: ServiceHost, stages: GatewayStages, options: GatewayOptions = {}): void {
  const service = host.options.name;
  const authorize = options.authToken ? bearerCheck(options.authToken) : undefined;

  /** Rejects a bad request before it takes a queue slot (when the stages' shapes are known). */
  const precheck = (req: GenerateRequest, metadata: grpc.Metadata) => {
    authorize?.(metadata);
    if (req.previewEvery > LIMITS.steps.max) {
      throw new InvalidArgumentError('preview_every', `must be at most ${LIMITS.steps.max}, got ${req.previewEvery}`);
    }
    if (stages.ready) {
      validateGenerateArgs(toGenerateArgs(req), stages.denoiser.info().sampleSize * stages.decoder.info().spatialScale);
    }
  };

  host.addService(GENERATION_SERVICE, GenerationService, {
    generate: host.serverStream<GenerateRequest, GenerateResponse>(
      'Generate',
      async (req, scope, out) => {
        await stages.connect();
        const result = await generate(stages, toGenerateArgs(req), {
          signal: scope.signal,
          requestId: scope.requestId,
          previewEvery: req.previewEvery,
          onStep: (e) => {
            if (e.latents) {
              const step = e.step + 1;
              // optional: skipped (and counted) while the client is not keeping up, so it never stalls the denoiser
              const sent = out.offer([...tensorChunks(e.latents)].map((latents) => ({ event: { $case: 'preview' as const, value: { step, latents } } })));
              if (!sent) host.metrics.previewsDropped.inc({ service });
            }
            out.push({ event: { $case: 'progress', value: { step: e.step + 1, numInferenceSteps: e.total, timestep: e.timestep, seconds: e.seconds } } });
          },
          onTile: req.streamTiles
            ? (tile) => void out.offer([...tileMessages(tile)].map((value) => ({ event: { $case: 'tile' as const, value } })))
            : undefined,
          onStage: (stage, seconds) => {
            host.metrics.gatewayStageSeconds.observe({ service, stage }, seconds);
            out.push({ event: { $case: 'stageFinished', value: { stage: STAGES[stage], seconds } } });
          },
        });
        for (const [index, image] of result.images.entries()) {
          for (const value of imageChunks(image, index)) await out.write({ event: { $case: 'image', value } });
          host.metrics.images.inc({ service, format: image.format });
        }
        await out.write({
          event: {
            $case: 'summary',
            value: {
              seed: result.seed,
              width: result.width,
              height: result.height,
              numImages: result.images.length,
              timings: result.timings,
              requestId: scope.requestId,
              queuedSeconds: scope.queuedSeconds,
            },
          },
        });
      },
      { precheck },
    ),
  });
}

/**
 * Reaches the stages in the background until all answer, then reports SERVING; calls made before that try
 * the stages themselves and fail fast with UNAVAILABLE.
 */
export function connectInBackground(host: ServiceHost, stages: GatewayStages, retrySeconds = 1): { stop(): void; ready: Promise<void> } {
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  let lastError = '';
  const ready = new Promise<void>((resolve) => {
    const attempt = () => {
      if (stopped) return;
      stages.connect().then(
        () => {
          if (stopped) return; // shut down while this attempt was in flight: stay NOT_SERVING
          host.setServing(true);
          host.log.info('all stages reached; serving');
          resolve();
        },
        (e: Error) => {
          if (stopped) return;
          if (e.message !== lastError) host.log.warn({ err: e.message }, 'stages not reachable yet; retrying');
          lastError = e.message;
          timer = setTimeout(attempt, retrySeconds * 1000);
        },
      );
    };
    attempt();
  });
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
    ready,
  };
}
