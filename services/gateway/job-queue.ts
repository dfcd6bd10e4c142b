// Durable asynchronous jobs on NATS JetStream, as plain async functions that the Jobs gRPC service, the workers,
// the CLI and the tests share:
//
//   Submit ─► KV `sana-jobs` record (queued) ─► stream SANA_JOBS, subject sana.jobs.queue (Nats-Msg-Id = job id)
//   worker ◄─ durable pull consumer `sana-workers` (explicit ack, ack wait kept alive by working(), max deliver)
//     ├─ record: running, step i of n ──► progress events on sana.progress.<id> (Watch)
//     ├─ images ─► Object Store `sana-results` (TTL) ─► record: succeeded ─► ack
//     └─ last delivery failed ─► record: failed with the reason ─► sana.jobs.dead
//
// The record is the truth about a job; every change to it is a compare-and-set on its KV revision, so a cancel,
// a worker and a redelivery racing on the same job never overwrite each other.
import crypto from 'node:crypto';
import { AckPolicy, DiscardPolicy, type JetStreamClient, type JetStreamManager, jetstream, jetstreamManager, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import { type KV, type KvEntry, Kvm } from '@nats-io/kv';
import { type ObjectStore, Objm } from '@nats-io/obj';
import { headers } from '@nats-io/transport-node';
import { z } from 'zod';
import { InvalidArgumentError } from '../common/errors.ts';
import { Status, StatusError } from '../common/grpc-status.ts';
import { FORMATS } from '../common/limits.ts';
import { NATS_NAMES, type NatsConnection } from '../common/nats.ts';
import type { DecodedImage, ImageFormat } from '../common/stages.ts';
import type { GenerateArgs, GenerateResult } from '../common/pipeline.ts';

export interface JobQueueOptions {
  /** seconds a worker may go without a heartbeat before its job is redelivered (default 30) */
  ackWaitSeconds: number;
  /** deliveries of a job before it is dead-lettered (default 5: a worker stopped by a scale-down gives its job back, too) */
  maxDeliver: number;
  /** seconds within which a repeated Nats-Msg-Id is dropped (default 600) */
  duplicateWindowSeconds: number;
  /** seconds finished jobs' images are kept (default 1 day) */
  resultTtlSeconds: number;
  /** seconds job records are kept (default 7 days; at least the result TTL) */
  recordTtlSeconds: number;
  /** most bytes of images kept; the oldest go first (default 10 GiB) */
  resultMaxBytes: number;
}

export const JOB_QUEUE_DEFAULTS: JobQueueOptions = {
  ackWaitSeconds: 30,
  maxDeliver: 5,
  duplicateWindowSeconds: 600,
  resultTtlSeconds: 24 * 3600,
  recordTtlSeconds: 7 * 24 * 3600,
  resultMaxBytes: 10 * 2 ** 30,
};

export const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];
export const TERMINAL_STATES: readonly JobState[] = ['succeeded', 'failed', 'cancelled'];

const nanos = (seconds: number) => Math.round(seconds * 1e9);

/** GenerateArgs as JSON: the seed as a decimal string, no initial latents. */
const JobRequestSchema = z.object({
  prompt: z.array(z.string()),
  negativePrompt: z.string().optional(),
  numInferenceSteps: z.number().optional(),
  guidanceScale: z.number().optional(),
  height: z.number().optional(),
  width: z.number().optional(),
  numImagesPerPrompt: z.number().optional(),
  seed: z.string().regex(/^\d+$/),
  useResolutionBinning: z.boolean().optional(),
  maxSequenceLength: z.number().optional(),
  complexHumanInstruction: z.union([z.array(z.string()), z.literal(false)]).optional(),
  format: z.enum(FORMATS as [ImageFormat, ...ImageFormat[]]).optional(),
  quality: z.number().optional(),
});
export type JobRequest = z.infer<typeof JobRequestSchema>;

/** What a queue message carries. */
const JobMessageSchema = z.object({ id: z.string(), request: JobRequestSchema });
export type JobMessage = z.infer<typeof JobMessageSchema>;

const TimingsSchema = z.object({
  encodeSeconds: z.number(),
  denoiseSeconds: z.number(),
  decodeSeconds: z.number(),
  totalSeconds: z.number(),
  // each stage's queue wait (records written before these existed read as 0)
  encodeQueuedSeconds: z.number().default(0),
  denoiseQueuedSeconds: z.number().default(0),
  decodeQueuedSeconds: z.number().default(0),
});

/** A job's record in the `sana-jobs` bucket. Times are Unix milliseconds. */
const JobRecordSchema = z.object({
  id: z.string(),
  state: z.enum(JOB_STATES),
  submittedAt: z.number(),
  startedAt: z.number().optional(),
  finishedAt: z.number().optional(),
  /** deliveries so far */
  attempts: z.number(),
  step: z.number(),
  numInferenceSteps: z.number(),
  error: z.string().optional(),
  cancelRequested: z.boolean().optional(),
  /** the worker that runs (or ran) it, and when it last said it is alive */
  worker: z.string().optional(),
  heartbeatAt: z.number().optional(),
  /** how many times a worker finished it (more than one would mean the work ran twice to the end) */
  completions: z.number().optional(),
  summary: z
    .object({ seed: z.string(), width: z.number(), height: z.number(), numImages: z.number(), formats: z.array(z.enum(FORMATS as [ImageFormat, ...ImageFormat[]])), timings: TimingsSchema })
    .optional(),
  resultExpiresAt: z.number().optional(),
});
export type JobRecord = z.infer<typeof JobRecordSchema>;

/** A progress event of a running job, as published on its progress subject. */
export type JobProgressEvent =
  | { kind: 'progress'; step: number; total: number; timestep: number; seconds: number }
  | { kind: 'stage'; stage: 'encode' | 'denoise' | 'decode'; seconds: number };

export type JobWatchEvent = { kind: 'status'; record: JobRecord } | JobProgressEvent;

export function toJobRequest(args: GenerateArgs, seed: bigint): JobRequest {
  if (args.latents) throw new InvalidArgumentError('latents', 'jobs draw their initial noise from the seed');
  const { latents: _, seed: __, prompt, ...rest } = args;
  return { ...rest, prompt: typeof prompt === 'string' ? [prompt] : prompt, seed: seed.toString() };
}

export function fromJobRequest(request: JobRequest): GenerateArgs {
  return { ...request, seed: BigInt(request.seed) };
}

const encode = (value: unknown) => new TextEncoder().encode(JSON.stringify(value));

/** The same idempotency key always names the same job. */
export function jobIdForKey(key: string): string {
  return `k${crypto.createHash('sha256').update(key).digest('hex').slice(0, 32)}`;
}

const JOB_ID = /^[A-Za-z0-9_-]{1,64}$/;

function checkJobId(id: string): void {
  if (!JOB_ID.test(id)) throw new InvalidArgumentError('id', `must be 1 to 64 letters, digits, '-' or '_', got ${JSON.stringify(id.slice(0, 80))}`);
}

const notFound = (id: string) => new StatusError(Status.NOT_FOUND, `no job ${id} (unknown, or its record expired)`);

/** Retries `fn` until it succeeds or `deadline` passes: NATS calls fail while the broker restarts. */
export async function retrying<T>(fn: () => Promise<T>, what: string, deadlineMs = 120_000, signal?: AbortSignal): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
    try {
      return await fn();
    } catch (e) {
      if (Date.now() + delay > end || signal?.aborted) throw new Error(`${what}: ${(e as Error).message}`, { cause: e });
      await new Promise((resolve) => setTimeout(resolve, delay));
    }
  }
}

/** The job stream, consumer and buckets, created when missing and brought to `options` when present. */
export class JobQueue {
  private constructor(
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
    readonly jsm: JetStreamManager,
    readonly records: KV,
    readonly results: ObjectStore,
    readonly options: JobQueueOptions,
  ) {}

  static async open(nc: NatsConnection, options: Partial<JobQueueOptions> = {}): Promise<JobQueue> {
    const given = Object.fromEntries(Object.entries(options).filter(([, v]) => v !== undefined));
    const o: JobQueueOptions = { ...JOB_QUEUE_DEFAULTS, ...given };
    const jsm = await jetstreamManager(nc);
    const stream = {
      name: NATS_NAMES.stream,
      subjects: [NATS_NAMES.streamSubjects],
      retention: RetentionPolicy.Workqueue,
      storage: StorageType.File,
      discard: DiscardPolicy.Old,
      duplicate_window: nanos(o.duplicateWindowSeconds),
    };
    await jsm.streams.info(NATS_NAMES.stream).then(
      () => jsm.streams.update(NATS_NAMES.stream, { subjects: stream.subjects, duplicate_window: stream.duplicate_window }),
      () => jsm.streams.add(stream),
    );
    const consumer = {
      durable_name: NATS_NAMES.consumer,
      filter_subject: NATS_NAMES.workSubject,
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(o.ackWaitSeconds),
      max_deliver: o.maxDeliver,
      max_ack_pending: 10_000,
    };
    await jsm.consumers.info(NATS_NAMES.stream, NATS_NAMES.consumer).then(
      () => jsm.consumers.update(NATS_NAMES.stream, NATS_NAMES.consumer, { ack_wait: consumer.ack_wait, max_deliver: consumer.max_deliver, max_ack_pending: consumer.max_ack_pending }),
      () => jsm.consumers.add(NATS_NAMES.stream, consumer),
    );
    const records = await new Kvm(nc).create(NATS_NAMES.jobsBucket, {
      history: 1,
      ttl: Math.max(o.recordTtlSeconds, o.resultTtlSeconds) * 1000,
      storage: StorageType.File,
    });
    const results = await new Objm(nc).create(NATS_NAMES.resultsBucket, { ttl: nanos(o.resultTtlSeconds), max_bytes: o.resultMaxBytes, storage: StorageType.File });
    return new JobQueue(nc, jetstream(nc), jsm, records, results, o);
  }

  // ---- records ----

  async read(id: string): Promise<{ record: JobRecord; revision: number } | undefined> {
    const entry: KvEntry | null = await this.records.get(id);
    if (!entry || entry.operation !== 'PUT') return undefined;
    return { record: JobRecordSchema.parse(entry.json()), revision: entry.revision };
  }

  async get(id: string): Promise<JobRecord> {
    checkJobId(id);
    const found = await this.read(id);
    if (!found) throw notFound(id);
    return found.record;
  }

  /**
   * Changes a record by compare-and-set, re-reading on a conflict. `change` returns the new record, or undefined
   * to leave it as it is; the result is the record as stored (undefined when there is none).
   */
  async mutate(id: string, change: (record: JobRecord) => JobRecord | undefined): Promise<JobRecord | undefined> {
    for (;;) {
      const found = await this.read(id);
      if (!found) return undefined;
      const next = change(found.record);
      if (!next) return found.record;
      try {
        await this.records.update(id, encode(next), found.revision);
        return next;
      } catch (e) {
        const now = await this.read(id);
        if (now && now.revision !== found.revision) continue; // someone else changed it first: apply ours to theirs
        throw e;
      }
    }
  }

  // ---- the API ----

  /**
   * Queues a job; with an idempotency key, a repeated submit returns the first job's id. The record is written
   * before the message so a worker always finds it; the message id dedups a publish repeated after a failure.
   */
  async submit(request: JobRequest, idempotencyKey?: string): Promise<{ id: string; duplicate: boolean }> {
    if (idempotencyKey !== undefined && (idempotencyKey.length === 0 || Buffer.byteLength(idempotencyKey) > 128)) {
      throw new InvalidArgumentError('idempotency_key', 'must be 1 to 128 bytes');
    }
    const id = idempotencyKey ? jobIdForKey(idempotencyKey) : crypto.randomUUID();
    const record: JobRecord = { id, state: 'queued', submittedAt: Date.now(), attempts: 0, step: 0, numInferenceSteps: request.numInferenceSteps ?? 20 };
    let duplicate = false;
    try {
      await this.records.create(id, encode(record));
    } catch (e) {
      const existing = await this.read(id);
      if (!existing) throw e;
      duplicate = true;
      // a submit that failed after writing the record: publish again (a copy inside the window is dropped)
      if (existing.record.state !== 'queued') return { id, duplicate };
    }
    const message: JobMessage = { id, request };
    await this.js.publish(NATS_NAMES.workSubject, encode(message), { msgID: id });
    return { id, duplicate };
  }

  /** A queued job is cancelled at once; a running one is asked to stop (its worker watches the record). */
  async cancel(id: string): Promise<JobRecord> {
    checkJobId(id);
    let finished: JobState | undefined;
    const record = await this.mutate(id, (r) => {
      if (TERMINAL_STATES.includes(r.state)) {
        finished = r.state;
        return undefined;
      }
      if (r.state === 'queued') return { ...r, state: 'cancelled', finishedAt: Date.now(), cancelRequested: true };
      return r.cancelRequested ? undefined : { ...r, cancelRequested: true };
    });
    if (!record) throw notFound(id);
    if (finished) throw new StatusError(Status.FAILED_PRECONDITION, `job ${id} already ${finished}`);
    return record;
  }

  /** The record now, then its changes and the progress events, until the job finishes or `signal` aborts. */
  async *watch(id: string, signal?: AbortSignal): AsyncGenerator<JobWatchEvent> {
    checkJobId(id);
    const events = new EventQueue<JobWatchEvent | Error>();
    const sub = this.nc.subscribe(NATS_NAMES.progressSubject(id), {
      callback: (err, msg) => events.push(err ?? ({ ...(msg.json() as JobProgressEvent) })),
    });
    const watcher = await this.records.watch({ key: id });
    const onAbort = () => events.close();
    signal?.addEventListener('abort', onAbort, { once: true });
    void (async () => {
      for await (const entry of watcher) {
        if (entry.operation !== 'PUT') events.push(notFound(id));
        else events.push({ kind: 'status', record: JobRecordSchema.parse(entry.json()) });
      }
    })().catch((e: Error) => events.push(e));
    try {
      // the watcher delivers the current value first; nothing at all means there is no such job
      const first = await this.read(id);
      if (!first) throw notFound(id);
      for (;;) {
        const e = await events.next();
        if (e === undefined) return;
        if (e instanceof Error) throw e;
        yield e;
        if (e.kind === 'status' && TERMINAL_STATES.includes(e.record.state)) return;
      }
    } finally {
      signal?.removeEventListener('abort', onAbort);
      sub.unsubscribe();
      watcher.stop();
    }
  }

  /** The images of a succeeded job. */
  async result(id: string): Promise<DecodedImage[]> {
    const record = await this.get(id);
    if (record.state !== 'succeeded' || !record.summary) {
      throw new StatusError(Status.FAILED_PRECONDITION, `job ${id} is ${record.state}${record.error ? ` (${record.error})` : ''}; only a succeeded job has images`);
    }
    const { summary } = record;
    const expired = () => {
      const when = record.resultExpiresAt ? ` at ${new Date(record.resultExpiresAt).toISOString()}` : '';
      return new StatusError(Status.NOT_FOUND, `the images of job ${id} expired${when} (results are kept ${this.options.resultTtlSeconds} s)`);
    };
    // the server removes an object's chunks and description one by one when its TTL passes: past the job's
    // expiry time, or with any piece gone, the images count as expired (a partly removed object is never read)
    if (record.resultExpiresAt !== undefined && Date.now() >= record.resultExpiresAt) throw expired();
    const images: DecodedImage[] = [];
    for (let i = 0; i < summary.numImages; i++) {
      const info = await this.results.info(resultName(id, i));
      if (!info || info.deleted) throw expired();
      const bytes = await withTimeout(this.results.getBlob(resultName(id, i)), READ_TIMEOUT_MS, `reading the images of job ${id}`).catch((e: Error) => {
        if (/digest|corrupt/i.test(e.message)) return null;
        throw e;
      });
      if (!bytes) throw expired();
      images.push({ bytes, width: summary.width, height: summary.height, format: summary.formats[i] });
    }
    return images;
  }

  /** Jobs waiting for a worker, and jobs a worker holds now. */
  async depth(): Promise<{ pending: number; inProgress: number }> {
    const info = await this.jsm.consumers.info(NATS_NAMES.stream, NATS_NAMES.consumer);
    return { pending: info.num_pending, inProgress: info.num_ack_pending };
  }

  // ---- for workers ----

  parseMessage(data: Uint8Array): JobMessage {
    return JobMessageSchema.parse(JSON.parse(new TextDecoder().decode(data)));
  }

  publishProgress(id: string, event: JobProgressEvent): void {
    this.nc.publish(NATS_NAMES.progressSubject(id), encode(event));
  }

  /** Stores the images under the job's id; a rerun replaces them (one object per image, never two). */
  async storeResult(id: string, result: GenerateResult): Promise<void> {
    for (const [i, image] of result.images.entries()) {
      await this.results.putBlob({ name: resultName(id, i), metadata: { format: image.format } }, image.bytes);
    }
  }

  async publishDeadLetter(id: string, reason: string, deliveries: number, payload: Uint8Array): Promise<void> {
    const h = headers();
    h.set('Sana-Job-Id', id);
    h.set('Sana-Reason', reason.slice(0, 1024).replace(/[\r\n]+/g, ' '));
    h.set('Sana-Deliveries', String(deliveries));
    await this.js.publish(NATS_NAMES.deadLetterSubject, payload, { headers: h, msgID: id === 'unknown' ? undefined : `dead-${id}` });
  }

  /**
   * After the server gave up on a message (max deliveries, no ack): records the job failed, moves the message to
   * the dead letters and removes it from the queue. Returns the job id, or undefined when already handled.
   */
  async failExhausted(seq: number, deliveries: number): Promise<string | undefined> {
    const stored = await this.jsm.streams.getMessage(NATS_NAMES.stream, { seq }).catch(() => null);
    if (!stored) return undefined; // another worker moved it already
    let id = 'unknown';
    try {
      id = this.parseMessage(stored.data).id;
    } catch {
      // unreadable: dead-lettered as is
    }
    const error = `no worker finished it in ${deliveries} deliveries (workers died or stopped heartbeating)`;
    let handled = false; // a worker failed (or finished) it on its last delivery already
    await this.mutate(id, (r) => {
      handled = TERMINAL_STATES.includes(r.state);
      return handled ? undefined : { ...r, state: 'failed', finishedAt: Date.now(), error };
    });
    if (!handled) await this.publishDeadLetter(id, error, deliveries, stored.data);
    await this.jsm.streams.deleteMessage(NATS_NAMES.stream, seq, false);
    return handled ? undefined : id;
  }
}

/** A read whose chunks the TTL removes under it would wait for them forever. */
const READ_TIMEOUT_MS = 60_000;

function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StatusError(Status.UNAVAILABLE, `${what} took over ${ms / 1000} s`)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

export function resultName(id: string, index: number): string {
  return `${id}/${index}`;
}

/** A small unbounded queue that an async loop awaits; close() ends it. */
class EventQueue<T> {
  private readonly items: T[] = [];
  private waiting: ((value: T | undefined) => void) | undefined;
  private closed = false;

  push(item: T): void {
    if (this.closed) return;
    if (this.waiting) {
      const wake = this.waiting;
      this.waiting = undefined;
      wake(item);
    } else this.items.push(item);
  }

  close(): void {
    this.closed = true;
    this.waiting?.(undefined);
    this.waiting = undefined;
  }

  next(): Promise<T | undefined> {
    if (this.items.length > 0) return Promise.resolve(this.items.shift());
    if (this.closed) return Promise.resolve(undefined);
    return new Promise((resolve) => (this.waiting = resolve));
  }
}
