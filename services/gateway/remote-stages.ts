// The three stage interfaces implemented by gRPC clients, so the gateway runs the very same generate() as the
// in-process pipeline. Tensors go out and come back as bounded Tensor runs; a cancelled AbortSignal cancels the
// call, which aborts the stage's own signal on the other side.
import type * as grpc from '@grpc/grpc-js';
import { type DecodeEvent, DecoderClient, type DecodeRequest } from '../common/gen/sana/v1/decoder.ts';
import { DenoiserClient, type DenoiseRequest, type DenoiseResponse } from '../common/gen/sana/v1/denoiser.ts';
import type { ImageChunk } from '../common/gen/sana/v1/image.ts';
import { TextEncoderClient, type EncodeResponse } from '../common/gen/sana/v1/text_encoder.ts';
import { ClientPool, readResponses, requestMetadata, unaryCall, writeRequests } from '../common/grpc-client.ts';
import { Status, StatusError } from '../common/grpc-status.ts';
import { QUEUED_SECONDS_KEY } from '../common/logging.ts';
import type {
  DecodeContext,
  DecodedImage,
  DecodeRequest as StageDecodeRequest,
  DecoderInfo,
  DecoderStage,
  DenoiseContext,
  DenoiseRequest as StageDenoiseRequest,
  DenoiserInfo,
  DenoiserStage,
  EncodeRequest,
  EncodeResult,
  StageContext,
  StepEvent,
  TextEncoderInfo,
  TextEncoderStage,
} from '../common/stages.ts';
import type { HostTensor } from '../common/tensor.ts';
import { fromTileMessage, ImageAssembler, TensorAssembler, tensorChunks, toProtoFormat } from '../common/tensor-chunks.ts';
import { MAX_IMAGE_BYTES } from '../common/limits.ts';

/** Seconds a GetInfo call may take before the stage counts as unreachable. */
const INFO_DEADLINE_SECONDS = 5;

/** Stage info fetched once per gateway (every replica of a stage serves the same model). */
abstract class RemoteStage<C extends grpc.Client, I> {
  protected cachedInfo: I | undefined;
  private connecting: Promise<void> | undefined;

  constructor(
    readonly pool: ClientPool<C>,
    private readonly fetchInfo: (client: C) => Promise<I>,
  ) {}

  get stageName(): string {
    return this.pool.stage;
  }

  get ready(): boolean {
    return this.cachedInfo !== undefined;
  }

  /**
   * Runs one call on a replica; when it fails with UNAVAILABLE before any answer arrived (the replica is down
   * or still loading its model), tries the next replica, each at most once. `answered` marks that a response
   * arrived, after which the work may not be repeated.
   */
  protected async onSomeReplica<T>(attempt: (client: C, answered: () => void) => Promise<T>, signal?: AbortSignal): Promise<T> {
    for (let tries = 1; ; tries++) {
      let gotAnswer = false;
      try {
        return await attempt(this.pool.pick(), () => (gotAnswer = true));
      } catch (e) {
        const unavailable = e instanceof StatusError && e.code === Status.UNAVAILABLE;
        if (!unavailable || gotAnswer || tries >= this.pool.clients.length || signal?.aborted) throw e;
      }
    }
  }

  /**
   * Fetches the stage's info unless known; an unreachable stage is UNAVAILABLE naming its addresses. Calls
   * while one is under way share it.
   */
  connect(): Promise<void> {
    if (this.cachedInfo) return Promise.resolve();
    this.connecting ??= this.onSomeReplica((client) => this.fetchInfo(client)).then(
      (info) => {
        this.cachedInfo = info;
        this.connecting = undefined;
      },
      (e: Error) => {
        this.connecting = undefined;
        throw new StatusError(Status.UNAVAILABLE, `${this.stageName} at ${this.pool.addresses.join(', ')} is not reachable: ${e.message}`);
      },
    );
    return this.connecting;
  }

  info(): I {
    if (!this.cachedInfo) throw new StatusError(Status.UNAVAILABLE, `${this.stageName} has not been reached yet`);
    return this.cachedInfo;
  }

  close(): void {
    this.pool.close();
  }
}

export class RemoteTextEncoder extends RemoteStage<TextEncoderClient, TextEncoderInfo> implements TextEncoderStage {
  constructor(addresses: string[], credentials?: grpc.ChannelCredentials) {
    const pool = new ClientPool('text-encoder', addresses, TextEncoderClient, credentials);
    super(pool, (c) => unaryCall(pool.stage, c.getInfo.bind(c), {}, INFO_DEADLINE_SECONDS));
  }

  async encode(request: EncodeRequest, ctx: StageContext = {}): Promise<EncodeResult> {
    return this.onSomeReplica(async (client, answered) => {
      // what the request asks for bounds what a replica may send back (a misbehaving one cannot make us allocate more)
      const rows = request.prompts.length * request.maxSequenceLength;
      const embeds = new TensorAssembler({ field: 'prompt_embeds', type: 'float32', rank: 3, maxBytes: rows * this.info().hiddenSize * 4 });
      const mask = new TensorAssembler({ field: 'prompt_attention_mask', type: 'int64', rank: 2, maxBytes: rows * 8 });
      const call = client.encode(
        {
          prompt: request.prompts,
          useComplexHumanInstruction: request.useComplexHumanInstruction,
          complexHumanInstruction: request.complexHumanInstruction ?? [],
          maxSequenceLength: request.maxSequenceLength,
        },
        requestMetadata(ctx.requestId),
      );
      reportQueue(call, ctx);
      await readResponses(
        call,
        this.stageName,
        ({ output }: EncodeResponse) => {
          answered();
          if (output?.$case === 'promptEmbeds') embeds.add(output.value);
          else if (output?.$case === 'promptAttentionMask') mask.add(output.value);
        },
        ctx.signal,
      );
      return { embeds: embeds.result(), mask: mask.result() };
    }, ctx.signal);
  }
}

export class RemoteDenoiser extends RemoteStage<DenoiserClient, DenoiserInfo> implements DenoiserStage {
  constructor(addresses: string[], credentials?: grpc.ChannelCredentials) {
    const pool = new ClientPool('denoiser', addresses, DenoiserClient, credentials);
    super(pool, (c) => unaryCall(pool.stage, c.getInfo.bind(c), {}, INFO_DEADLINE_SECONDS));
  }

  async denoise(request: StageDenoiseRequest, ctx: DenoiseContext = {}): Promise<HostTensor<Float32Array>> {
    return this.onSomeReplica(async (client, answered) => {
      // previews and the result have the shape of the latents sent
      const maxBytes = request.latents.data.byteLength;
      const previewAssembler = () => new TensorAssembler({ field: 'preview', type: 'float32', rank: 4, maxBytes });
      let preview = previewAssembler();
      const latents = new TensorAssembler({ field: 'latents', type: 'float32', rank: 4, maxBytes });
      const call = client.denoise(requestMetadata(ctx.requestId));
      reportQueue(call, ctx);
      const received = readResponses(
        call,
        this.stageName,
        ({ output }: DenoiseResponse) => {
          answered();
          if (output?.$case === 'preview') preview.add(output.value);
          else if (output?.$case === 'latents') latents.add(output.value);
          else if (output?.$case === 'step') {
            const s = output.value;
            const event: StepEvent = { step: s.step, total: s.numInferenceSteps, timestep: s.timestep, seconds: s.seconds };
            if (preview.complete) event.latents = preview.result();
            preview = previewAssembler();
            ctx.onStep?.(event);
          }
        },
        ctx.signal,
      );
      await Promise.all([writeRequests(call, denoiseMessages(request, ctx.previewEvery ?? 0), ctx.signal), received]);
      return latents.result();
    }, ctx.signal);
  }
}

/** Passes the stage's admission wait (its trailing metadata, which arrives before the stream's end) to the caller. */
function reportQueue(call: grpc.ClientReadableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>, ctx: StageContext): void {
  if (!ctx.onQueued) return;
  call.once('status', (status: grpc.StatusObject) => {
    const value = status.metadata.get(QUEUED_SECONDS_KEY)[0];
    if (value !== undefined) ctx.onQueued?.(Number(value));
  });
}

function* denoiseMessages(request: StageDenoiseRequest, previewEvery: number): Generator<DenoiseRequest> {
  yield { input: { $case: 'settings', value: { numInferenceSteps: request.numInferenceSteps, guidanceScale: request.guidanceScale, previewEvery } } };
  for (const value of tensorChunks(request.latents)) yield { input: { $case: 'latents', value } };
  for (const value of tensorChunks(request.promptEmbeds)) yield { input: { $case: 'promptEmbeds', value } };
  for (const value of tensorChunks(request.promptMask)) yield { input: { $case: 'promptAttentionMask', value } };
  if (request.negativeEmbeds) for (const value of tensorChunks(request.negativeEmbeds)) yield { input: { $case: 'negativePromptEmbeds', value } };
  if (request.negativeMask) for (const value of tensorChunks(request.negativeMask)) yield { input: { $case: 'negativePromptAttentionMask', value } };
}

export class RemoteDecoder extends RemoteStage<DecoderClient, DecoderInfo> implements DecoderStage {
  constructor(addresses: string[], credentials?: grpc.ChannelCredentials) {
    const pool = new ClientPool('decoder', addresses, DecoderClient, credentials);
    super(pool, (c) => unaryCall(pool.stage, c.getInfo.bind(c), {}, INFO_DEADLINE_SECONDS));
  }

  async decode(request: StageDecodeRequest, ctx: DecodeContext = {}): Promise<DecodedImage[]> {
    return this.onSomeReplica(async (client, answered) => {
      const images = new ImageAssembler(MAX_IMAGE_BYTES);
      const { onTile } = ctx;
      // DecodeTiles only when the caller wants the tiles: Decode's plain chunk stream otherwise
      const call = onTile ? client.decodeTiles(requestMetadata(ctx.requestId)) : client.decode(requestMetadata(ctx.requestId));
      reportQueue(call, ctx);
      const onMessage = onTile
        ? ({ event }: DecodeEvent) => {
            answered();
            if (event?.$case === 'image') images.add(event.value);
            else if (event?.$case === 'tile') void onTile(fromTileMessage(event.value));
          }
        : (chunk: ImageChunk) => (answered(), images.add(chunk));
      const received = readResponses(call as grpc.ClientDuplexStream<DecodeRequest, unknown>, this.stageName, onMessage as (m: unknown) => void, ctx.signal);
      await Promise.all([writeRequests(call as grpc.ClientDuplexStream<DecodeRequest, unknown>, decodeMessages(request), ctx.signal), received]);
      return images.result();
    }, ctx.signal);
  }
}

function* decodeMessages(request: StageDecodeRequest): Generator<DecodeRequest> {
  const settings = { format: toProtoFormat(request.format), width: request.width, height: request.height, quality: request.quality ?? 0 };
  yield { input: { $case: 'settings', value: settings } };
  for (const value of tensorChunks(request.latents)) yield { input: { $case: 'latents', value } };
}

export interface StageAddresses {
  textEncoder: string[];
  denoiser: string[];
  decoder: string[];
}

/** The pipeline's three stages over gRPC. */
export class RemoteStages {
  readonly textEncoder: RemoteTextEncoder;
  readonly denoiser: RemoteDenoiser;
  readonly decoder: RemoteDecoder;

  /** `credentials`: TLS or mutual TLS towards the stages (grpc-tls.ts); plaintext when absent */
  constructor(
    readonly addresses: StageAddresses,
    credentials?: grpc.ChannelCredentials,
  ) {
    this.textEncoder = new RemoteTextEncoder(addresses.textEncoder, credentials);
    this.denoiser = new RemoteDenoiser(addresses.denoiser, credentials);
    this.decoder = new RemoteDecoder(addresses.decoder, credentials);
  }

  private get all() {
    return [this.textEncoder, this.denoiser, this.decoder];
  }

  get ready(): boolean {
    return this.all.every((s) => s.ready);
  }

  /** Reaches every stage not reached yet (their info); throws UNAVAILABLE naming the first that fails. */
  async connect(): Promise<void> {
    await Promise.all(this.all.map((s) => s.connect()));
  }

  close(): void {
    for (const s of this.all) s.close();
  }
}
