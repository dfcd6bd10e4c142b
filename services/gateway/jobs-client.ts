// The Jobs API from the client's side (`sana generate --async`, `sana jobs ...`, the soak script, tests).
import * as grpc from '@grpc/grpc-js';
import { CHANNEL_OPTIONS, readResponses } from '../common/grpc-client.ts';
import { fromServiceError } from '../common/grpc-status.ts';
import { JobsClient as JobsGrpcClient, type JobEvent, type JobStatus } from '../common/gen/sana/v1/jobs.ts';
import { MAX_IMAGE_BYTES } from '../common/limits.ts';
import type { DecodedImage } from '../common/stages.ts';
import { ImageAssembler } from '../common/tensor-chunks.ts';
import { toGenerateRequest } from './client.ts';
import type { GenerateArgs } from '../common/pipeline.ts';

export { JobState, type JobEvent, type JobStatus } from '../common/gen/sana/v1/jobs.ts';

const UNARY_DEADLINE_SECONDS = 30;

export class JobsClient {
  private readonly client: JobsGrpcClient;
  private readonly metadata = new grpc.Metadata();

  /** `token` is sent as `authorization: Bearer <token>` */
  constructor(readonly address: string, token?: string) {
    this.client = new JobsGrpcClient(address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS);
    if (token) this.metadata.set('authorization', `Bearer ${token}`);
  }

  private unary<Req, Res>(
    invoke: (req: Req, md: grpc.Metadata, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: Res) => void) => grpc.ClientUnaryCall,
    request: Req,
  ): Promise<Res> {
    return new Promise((resolve, reject) =>
      invoke.call(this.client, request, this.metadata, { deadline: Date.now() + UNARY_DEADLINE_SECONDS * 1000 }, (e, r) => (e ? reject(fromServiceError(e, 'gateway')) : resolve(r as Res))),
    );
  }

  async submit(args: GenerateArgs, idempotencyKey = ''): Promise<string> {
    const { id } = await this.unary(this.client.submit, { request: toGenerateRequest(args), idempotencyKey });
    return id;
  }

  get(id: string): Promise<JobStatus> {
    return this.unary(this.client.get, { id });
  }

  cancel(id: string): Promise<JobStatus> {
    return this.unary(this.client.cancel, { id });
  }

  /** Calls `onEvent` for the status now and every event until the job finishes; returns its final status. */
  async watch(id: string, onEvent: (e: JobEvent) => void = () => {}, signal?: AbortSignal): Promise<JobStatus> {
    let last: JobStatus | undefined;
    await readResponses(
      this.client.watch({ id }, this.metadata),
      'gateway',
      (e) => {
        if (e.event?.$case === 'status') last = e.event.value;
        onEvent(e);
      },
      signal,
    );
    if (!last) throw new Error(`the gateway at ${this.address} ended the watch of job ${id} without a status`);
    return last;
  }

  async result(id: string, signal?: AbortSignal): Promise<DecodedImage[]> {
    const images = new ImageAssembler(MAX_IMAGE_BYTES);
    await readResponses(this.client.result({ id }, this.metadata), 'gateway', (chunk) => images.add(chunk), signal);
    return images.result();
  }

  close(): void {
    this.client.close();
  }
}
