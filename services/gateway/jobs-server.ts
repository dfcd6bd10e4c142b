// The public Jobs service (sana.v1.Jobs): a thin adapter from gRPC to the job queue's plain async functions.
// Served by the gateway when it runs with --nats; Submit checks a request exactly as Generate does.
import type * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError } from '../common/errors.ts';
import { Stage } from '../common/gen/sana/v1/generation.ts';
import type { ImageChunk } from '../common/gen/sana/v1/image.ts';
import { JobsService, JobState, type JobEvent, type JobId, type JobStatus, type SubmitJobRequest } from '../common/gen/sana/v1/jobs.ts';
import type { ServiceHost } from '../common/grpc-server.ts';
import { Status, StatusError } from '../common/grpc-status.ts';
import { LIMITS } from '../common/limits.ts';
import { imageChunks } from '../common/tensor-chunks.ts';
import type { JobMetrics } from './job-metrics.ts';
import { type JobQueue, type JobRecord, toJobRequest } from './job-queue.ts';
import { validateGenerateArgs } from '../common/pipeline.ts';
import { bearerCheck, type GatewayStages, toGenerateArgs } from './server.ts';

export const JOBS_SERVICE = 'sana.v1.Jobs';

const STATES: Record<JobRecord['state'], JobState> = {
  queued: JobState.JOB_STATE_QUEUED,
  running: JobState.JOB_STATE_RUNNING,
  succeeded: JobState.JOB_STATE_SUCCEEDED,
  failed: JobState.JOB_STATE_FAILED,
  cancelled: JobState.JOB_STATE_CANCELLED,
};

const STAGES = { encode: Stage.STAGE_ENCODE, denoise: Stage.STAGE_DENOISE, decode: Stage.STAGE_DECODE } as const;

const seconds = (ms: number | undefined) => (ms ?? 0) / 1000;

export function toJobStatus(r: JobRecord): JobStatus {
  const s = r.summary;
  return {
    id: r.id,
    state: STATES[r.state],
    step: r.step,
    numInferenceSteps: r.numInferenceSteps,
    submittedAt: seconds(r.submittedAt),
    startedAt: seconds(r.startedAt),
    finishedAt: seconds(r.finishedAt),
    attempts: r.attempts,
    error: r.error ?? '',
    cancelRequested: r.cancelRequested ?? false,
    summary: s && {
      seed: BigInt(s.seed),
      width: s.width,
      height: s.height,
      numImages: s.numImages,
      timings: s.timings,
      requestId: r.id,
      queuedSeconds: seconds((r.startedAt ?? r.submittedAt) - r.submittedAt),
    },
    resultExpiresAt: seconds(r.resultExpiresAt),
  };
}

/** Errors of the broker (down, restarting, timing out) reach clients as UNAVAILABLE: retrying is right. */
async function brokered<T>(work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (e) {
    if (e instanceof StatusError || e instanceof InvalidArgumentError) throw e;
    throw new StatusError(Status.UNAVAILABLE, `job queue (NATS) unavailable: ${(e as Error).message}`);
  }
}

export interface JobsServiceOptions {
  /** when set, every call requires `authorization: Bearer <token>` */
  authToken?: string;
  metrics?: JobMetrics;
}

export function addJobsService(host: ServiceHost, stages: GatewayStages, queue: JobQueue, options: JobsServiceOptions = {}): void {
  const authorize = options.authToken ? bearerCheck(options.authToken) : undefined;
  const precheck = authorize && ((_req: unknown, metadata: grpc.Metadata) => authorize(metadata));
  const metrics = options.metrics;

  host.addService(JOBS_SERVICE, JobsService, {
    submit: host.unary<SubmitJobRequest, JobId>(
      'Submit',
      async (req) => {
        if (!req.request) throw new InvalidArgumentError('request', 'is required');
        const args = toGenerateArgs(req.request);
        // the model's default size is known once the stages answered; the worker checks again with it
        const side = stages.ready ? stages.denoiser.info().sampleSize * stages.decoder.info().spatialScale : LIMITS.side.min;
        const { seed } = validateGenerateArgs(args, side);
        // the seed is fixed now, so a redelivered job computes the very same images
        const { id, duplicate } = await brokered(() => queue.submit(toJobRequest(args, seed), req.idempotencyKey || undefined));
        metrics?.submitted.inc({ service: metrics.service, duplicate: String(duplicate) });
        return { id };
      },
      { precheck },
    ),
    get: host.unary<JobId, JobStatus>('Get', async (req) => toJobStatus(await brokered(() => queue.get(req.id))), { precheck }),
    cancel: host.unary<JobId, JobStatus>('Cancel', async (req) => toJobStatus(await brokered(() => queue.cancel(req.id))), { precheck }),
    watch: host.serverStream<JobId, JobEvent>(
      'Watch',
      async (req, scope, out) => {
        for await (const e of queue.watch(req.id, scope.signal)) {
          if (e.kind === 'status') await out.write({ event: { $case: 'status', value: toJobStatus(e.record) } });
          else if (e.kind === 'progress') {
            await out.write({ event: { $case: 'progress', value: { step: e.step, numInferenceSteps: e.total, timestep: e.timestep, seconds: e.seconds } } });
          } else await out.write({ event: { $case: 'stageFinished', value: { stage: STAGES[e.stage], seconds: e.seconds } } });
        }
      },
      { precheck, admit: false },
    ),
    result: host.serverStream<JobId, ImageChunk>(
      'Result',
      async (req, _scope, out) => {
        const images = await brokered(() => queue.result(req.id));
        for (const [index, image] of images.entries()) {
          for (const chunk of imageChunks(image, index)) await out.write(chunk);
        }
      },
      { precheck, admit: false },
    ),
  });
}
