// The job worker (`sana serve worker`): each free slot pulls one job from the durable consumer, drives the same
// generate() as the Generate call over the stage services, stores the images and acknowledges. While a job runs
// the worker keeps its delivery alive with working() heartbeats, publishes progress and watches the record for
// a cancel. A worker that dies leaves its job unacknowledged: JetStream redelivers it to another after the ack
// wait, and the rerun (same seed) replaces the same result objects, so a job completes once.
import os from 'node:os';
import type { JsMsg } from '@nats-io/jetstream';
import { jetstream } from '@nats-io/jetstream';
import type { Consumer } from '@nats-io/jetstream';
import { CancelledError, InvalidArgumentError } from '../common/errors.ts';
import { Status, StatusError } from '../common/grpc-status.ts';
import type { Logger } from '../common/logging.ts';
import { NATS_NAMES } from '../common/nats.ts';
import type { JobMetrics } from './job-metrics.ts';
import { fromJobRequest, type JobMessage, type JobQueue, type JobRecord, retrying, TERMINAL_STATES } from './job-queue.ts';
import { generate, type GenerateResult, type PipelineStages } from '../common/pipeline.ts';

export interface JobWorkerOptions {
  /** jobs run at once (default 1) */
  concurrency?: number;
  /** names the worker in job records and logs (default host:pid) */
  workerId?: string;
  /** seconds before a failed attempt is delivered again (default 2) */
  retryDelaySeconds?: number;
  metrics?: JobMetrics;
  log: Logger;
}

export interface JobWorker {
  readonly id: string;
  /** jobs running now */
  readonly running: number;
  /** Stops pulling; running jobs go back to the queue at once (nak) unless they finish within `graceSeconds`. */
  stop(graceSeconds?: number): Promise<void>;
}

/** An error that retrying cannot fix: the request itself is bad. */
function isPermanent(e: unknown): boolean {
  return e instanceof InvalidArgumentError || (e instanceof StatusError && e.code === Status.INVALID_ARGUMENT);
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });

export async function startJobWorker(queue: JobQueue, stages: PipelineStages, options: JobWorkerOptions): Promise<JobWorker> {
  const id = options.workerId ?? `${os.hostname()}:${process.pid}`;
  const concurrency = options.concurrency ?? 1;
  const retryDelayMs = (options.retryDelaySeconds ?? 2) * 1000;
  const { log, metrics } = options;
  const stopping = new AbortController();
  /** aborted when the grace period of stop() is over: running jobs give their delivery back */
  const giveBack = new AbortController();
  const heartbeatMs = Math.max(250, (queue.options.ackWaitSeconds * 1000) / 4);
  /** ids of the jobs this worker runs now */
  const running = new Set<string>();
  const consumer: Consumer = await jetstream(queue.nc).consumers.get(NATS_NAMES.stream, NATS_NAMES.consumer);
  const stopped = new Promise<null>((resolve) => stopping.signal.addEventListener('abort', () => resolve(null), { once: true }));

  /**
   * While the record says another live worker (or this one, in another slot) runs the job, keeps this delivery
   * alive and waits. 'run' when this worker should run it: nobody runs it, or the runner's heartbeat did not
   * move for a whole ack wait (it died); 'done' when it finished meanwhile; 'give-back' when this worker stops.
   */
  async function awaitOtherWorker(jobId: string, msg: JsMsg): Promise<'run' | 'done' | 'give-back'> {
    let seen: number | undefined;
    let since = Date.now();
    for (;;) {
      const found = await retrying(() => queue.read(jobId), `job ${jobId}: read`);
      const r = found?.record;
      if (r && TERMINAL_STATES.includes(r.state)) return 'done';
      if (!r || r.state !== 'running' || (r.worker === id && !running.has(jobId))) return 'run';
      const ackWaitMs = queue.options.ackWaitSeconds * 1000;
      // a runner writes its heartbeat every quarter ack wait: one older than an ack wait (or one that did not
      // move while this worker watched for an ack wait, whatever the clocks say) is a dead runner's
      if (!running.has(jobId) && r.heartbeatAt !== undefined && Date.now() - r.heartbeatAt > ackWaitMs) return 'run';
      if (r.heartbeatAt !== seen) {
        seen = r.heartbeatAt;
        since = Date.now();
      } else if (Date.now() - since > ackWaitMs && !running.has(jobId)) return 'run';
      msg.working();
      await sleep(heartbeatMs, stopping.signal);
      if (stopping.signal.aborted) return 'give-back';
    }
  }

  /** Runs one delivery to its end: acknowledged, given back (nak) or terminated to the dead letters. */
  async function handle(msg: JsMsg): Promise<void> {
    const deliveries = msg.info.deliveryCount;
    let job: JobMessage;
    try {
      job = queue.parseMessage(msg.data);
    } catch (e) {
      // unreadable: no retry can help and no record can be found; keep it for inspection
      log.error({ err: (e as Error).message, seq: msg.seq }, 'unreadable job message: dead-lettered');
      await queue.publishDeadLetter('unknown', `unreadable job message: ${(e as Error).message}`, deliveries, msg.data);
      metrics?.deadLetters.inc({ service: metrics.service });
      msg.term();
      return;
    }
    const jobLog = log.child({ job: job.id, deliveries });

    // a redelivery while another worker still runs the job (its heartbeat lapsed during a broker restart, say):
    // hold the delivery until that worker finishes, or take the job over once its heartbeats stop
    const turn = await awaitOtherWorker(job.id, msg);
    if (turn !== 'run') {
      if (turn === 'done') msg.ack();
      else msg.nak();
      return;
    }

    // claim: a finished or cancelled job is only acknowledged (a redelivery after its worker finished it)
    const started = Date.now();
    let firstStart = false;
    let skip: 'done' | 'cancelled' | undefined;
    const claimed = await retrying(
      () =>
        queue.mutate(job.id, (r) => {
          skip = undefined;
          if (TERMINAL_STATES.includes(r.state)) return (skip = 'done'), undefined;
          if (r.cancelRequested) return (skip = 'cancelled'), { ...r, state: 'cancelled', finishedAt: Date.now() };
          firstStart = r.startedAt === undefined;
          return { ...r, state: 'running', attempts: r.attempts + 1, startedAt: started, heartbeatAt: started, step: 0, worker: id };
        }),
      `job ${job.id}: claim`,
    );
    // from here on the record is updated before every ack: an ack lost on the way only brings a redelivery
    // that finds the job finished
    if (!claimed || skip) {
      if (!claimed) jobLog.warn('job record missing (expired?): dropped');
      if (skip === 'cancelled') metrics?.finish('cancelled', 0);
      msg.ack();
      return;
    }
    running.add(job.id);
    if (firstStart) metrics?.waitSeconds.observe({ service: metrics.service }, (started - claimed.submittedAt) / 1000);
    if (deliveries > 1) metrics?.redeliveries.inc({ service: metrics.service });
    jobLog.info('job started');

    // the job's own abort: a cancel on the record, or the worker giving the delivery back at shutdown
    const abort = new AbortController();
    const onGiveBack = () => abort.abort(new CancelledError('worker shutting down'));
    giveBack.signal.addEventListener('abort', onGiveBack, { once: true });
    const heartbeat = setInterval(() => {
      msg.working();
      void queue.mutate(job.id, (r) => (r.state === 'running' && r.worker === id ? { ...r, heartbeatAt: Date.now() } : undefined)).catch(() => undefined);
    }, heartbeatMs);
    const watcher = await queue.records.watch({ key: job.id }).catch(() => undefined);
    void (async () => {
      for await (const entry of watcher ?? []) {
        if (entry.operation === 'PUT' && (entry.json() as JobRecord).cancelRequested) abort.abort(new CancelledError('cancelled by request'));
      }
    })().catch(() => undefined);

    let lastStepWrite = 0;
    const finish = async (state: 'succeeded' | 'failed' | 'cancelled' | 'queued', change: (r: JobRecord) => JobRecord) => {
      await retrying(() => queue.mutate(job.id, (r) => (TERMINAL_STATES.includes(r.state) && state !== 'succeeded' ? undefined : change(r))), `job ${job.id}: record ${state}`);
    };
    try {
      let result: GenerateResult;
      try {
        result = await generate(stages, fromJobRequest(job.request), {
          signal: abort.signal,
          requestId: job.id,
          onStep: (e) => {
            msg.working();
            queue.publishProgress(job.id, { kind: 'progress', step: e.step + 1, total: e.total, timestep: e.timestep, seconds: e.seconds });
            // the record's step: at most every 250 ms (and the last), off the job's path
            const now = Date.now();
            if (now - lastStepWrite >= 250 || e.step + 1 === e.total) {
              lastStepWrite = now;
              void queue.mutate(job.id, (r) => (r.state === 'running' && r.worker === id ? { ...r, step: e.step + 1, numInferenceSteps: e.total } : undefined)).catch(() => undefined);
            }
          },
          onStage: (stage, seconds) => queue.publishProgress(job.id, { kind: 'stage', stage, seconds }),
        });
      } catch (e) {
        const seconds = (Date.now() - started) / 1000;
        const reason = (e as Error).message;
        if (abort.signal.aborted && giveBack.signal.aborted) {
          await finish('queued', (r) => ({ ...r, state: 'queued', step: 0, error: `attempt ${deliveries}: ${reason}` }));
          msg.nak();
          jobLog.info('job given back (worker shutting down)');
        } else if (abort.signal.aborted) {
          await finish('cancelled', (r) => ({ ...r, state: 'cancelled', finishedAt: Date.now() }));
          msg.ack();
          metrics?.finish('cancelled', seconds);
          jobLog.info('job cancelled');
        } else if (isPermanent(e) || deliveries >= queue.options.maxDeliver) {
          const error = isPermanent(e) ? reason : `failed ${deliveries} times (max deliver ${queue.options.maxDeliver}); last error: ${reason}`;
          await finish('failed', (r) => ({ ...r, state: 'failed', finishedAt: Date.now(), error }));
          if (!isPermanent(e)) {
            await retrying(() => queue.publishDeadLetter(job.id, error, deliveries, msg.data), `job ${job.id}: dead letter`);
            metrics?.deadLetters.inc({ service: metrics.service });
          }
          msg.term(error.slice(0, 256));
          metrics?.finish('failed', seconds);
          jobLog.warn({ err: reason }, 'job failed');
        } else {
          await finish('queued', (r) => ({ ...r, state: 'queued', step: 0, error: `attempt ${deliveries} failed: ${reason}` }));
          msg.nak(retryDelayMs);
          jobLog.warn({ err: reason }, 'job attempt failed; retrying');
        }
        return;
      }
      // images first, then the record, then the ack: a crash anywhere in between reruns the job to the same end.
      // The expiry time is counted from before the store, so it passes before the server removes any piece.
      const storedAt = Date.now();
      await retrying(() => queue.storeResult(job.id, result), `job ${job.id}: store result`);
      await finish('succeeded', (r) => ({
        ...r,
        state: 'succeeded',
        finishedAt: Date.now(),
        step: r.numInferenceSteps,
        completions: (r.completions ?? 0) + 1,
        error: undefined,
        cancelRequested: undefined,
        summary: {
          seed: result.seed.toString(),
          width: result.width,
          height: result.height,
          numImages: result.images.length,
          formats: result.images.map((image) => image.format),
          timings: result.timings,
        },
        resultExpiresAt: storedAt + queue.options.resultTtlSeconds * 1000,
      }));
      msg.ack();
      metrics?.finish('succeeded', (Date.now() - started) / 1000);
      jobLog.info({ seconds: (Date.now() - started) / 1000 }, 'job succeeded');
    } finally {
      clearInterval(heartbeat);
      running.delete(job.id);
      watcher?.stop();
      giveBack.signal.removeEventListener('abort', onGiveBack);
    }
  }

  /** One slot: pull a job when free, run it, repeat until stopping. */
  async function slot(): Promise<void> {
    while (!stopping.signal.aborted) {
      let msg: JsMsg | null;
      try {
        const pull = consumer.next({ expires: 5000 });
        msg = await Promise.race([pull, stopped]);
        if (stopping.signal.aborted) {
          // a job that arrives after the worker stopped waiting goes straight back
          void pull.then((late) => late?.nak(), () => undefined);
          return;
        }
      } catch (e) {
        // broker restarting or unreachable: try again shortly
        log.debug({ err: (e as Error).message }, 'pull failed; retrying');
        await sleep(500, stopping.signal);
        continue;
      }
      if (!msg) continue;
      try {
        await handle(msg);
      } catch (e) {
        // NATS stayed unreachable past every retry: the delivery is left to time out and be redelivered
        log.error({ err: (e as Error).message }, 'job handling failed; it will be redelivered');
      }
    }
  }

  // a job whose every delivery timed out (its workers died on it) gets no failure from a worker: the server's
  // max-deliveries advisory goes to one worker of the group, which records the failure and dead-letters it
  const advisories = queue.nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.${NATS_NAMES.stream}.${NATS_NAMES.consumer}`, {
    queue: `${NATS_NAMES.consumer}-advisories`,
    callback: (err, msg) => {
      if (err) return;
      const { stream_seq: seq, deliveries } = msg.json<{ stream_seq: number; deliveries: number }>();
      queue.failExhausted(seq, deliveries).then(
        (jobId) => {
          if (!jobId) return;
          metrics?.deadLetters.inc({ service: metrics.service });
          metrics?.finish('failed', 0);
          log.warn({ job: jobId, deliveries }, 'job exhausted its deliveries: failed and dead-lettered');
        },
        (e: Error) => log.error({ err: e.message, seq }, 'could not dead-letter an exhausted job'),
      );
    },
  });

  const slots = Array.from({ length: concurrency }, () => slot());
  log.info({ worker: id, concurrency }, 'job worker pulling');
  return {
    id,
    get running() {
      return running.size;
    },
    async stop(graceSeconds = 0) {
      stopping.abort();
      const grace = setTimeout(() => giveBack.abort(), graceSeconds * 1000);
      await Promise.all(slots);
      clearTimeout(grace);
      advisories.unsubscribe();
    },
  };
}
