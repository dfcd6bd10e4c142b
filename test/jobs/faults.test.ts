// Faults against a real nats-server, with job workers as separate processes (`sana serve worker`) over real stage
// services: a worker SIGKILLed mid-job, nats-server restarted mid-run, a job that fails on every delivery, and
// results that expire. Every wait is on a condition the system reports, with a generous deadline.
import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { type ServeConfig, startServe, type Serving } from '../../services/cli/serve.ts';
import { Status, StatusError } from '../../services/common/grpc-status.ts';
import { createLogger } from '../../services/common/logging.ts';
import { createRegistry } from '../../services/common/metrics.ts';
import { connectNats, NATS_NAMES, type NatsConnection } from '../../services/common/nats.ts';
import { JobMetrics } from '../../services/gateway/job-metrics.ts';
import { JobQueue, type JobRecord, resultName, retrying, toJobRequest } from '../../services/gateway/job-queue.ts';
import { startJobWorker } from '../../services/gateway/job-worker.ts';
import { loadLocalStages, type LocalStages } from '../../services/cli/local-stages.ts';
import { generate, type GenerateArgs } from '../../services/common/pipeline.ts';
import { RemoteStages, type StageAddresses } from '../../services/gateway/remote-stages.ts';
import { metricValue, waitFor } from '../helpers/jobs.ts';
import { NatsServer } from '../helpers/nats-server.ts';
import { tempDir } from '../helpers/tmp.ts';
import { loopbackServeConfig } from '../helpers/serve-config.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const ACK_WAIT_SECONDS = 3;
const log = createLogger('test', process.env.SANA_TEST_LOG_LEVEL ?? 'silent');

let modelDir: string;
let stagesServing: Serving;
let stageAddresses: StageAddresses;
let local: LocalStages;

function stageServeConfig(role: 'all' | 'denoiser'): ServeConfig {
  return loopbackServeConfig(modelDir, { role, maxInFlight: 4, maxQueue: 16, shutdownGraceSeconds: 0 });
}

/** Stage clients as a worker uses them: connected (their shapes known) before the first job. */
async function connectedStages(addresses: StageAddresses): Promise<RemoteStages> {
  const stages = new RemoteStages(addresses);
  await stages.connect();
  return stages;
}

beforeAll(async () => {
  modelDir = tempDir('jobs-faults');
  writeRandomCheckpoint('tiny', modelDir);
  // the stage services the workers call (`sana serve all` without NATS: its gateway is unused here)
  stagesServing = await startServe(stageServeConfig('all'));
  await stagesServing.ready;
  const address = (name: string) => [stagesServing.hosts.find((h) => h.options.name === name)!.address];
  stageAddresses = { textEncoder: address('text-encoder'), denoiser: address('denoiser'), decoder: address('decoder') };
  local = await loadLocalStages(modelDir);
});

afterAll(async () => {
  await stagesServing?.close();
  await local?.close();
});

/** `sana serve worker` as its own process; resolves once it pulls jobs. */
async function spawnWorker(natsUrl: string): Promise<ChildProcess & { workerId: string }> {
  const child = spawn(
    process.execPath,
    [
      path.join(ROOT, 'services/cli/bin.js'), 'serve', 'worker', '--nats', natsUrl, '--no-metrics', '--job-ack-wait', String(ACK_WAIT_SECONDS),
      '--text-encoder', stageAddresses.textEncoder[0], '--denoiser', stageAddresses.denoiser[0], '--decoder', stageAddresses.decoder[0],
    ],
    { env: { ...process.env, SANA_LOG_LEVEL: 'silent' }, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  const workerId = await new Promise<string>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`sana serve worker exited with ${code}:\n${stderr}`)));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      const ready = /ready; worker (\S+) pulling/.exec(stderr);
      if (ready) resolve(ready[1]);
    });
  });
  return Object.assign(child, { workerId });
}

function kill(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  return exited;
}

async function submit(queue: JobQueue, args: GenerateArgs, key?: string): Promise<string> {
  // while the broker restarts a submit fails; the client retries with the same key
  return (await retrying(() => queue.submit(toJobRequest(args, BigInt(args.seed!)), key), 'submit', 60_000)).id;
}

async function record(queue: JobQueue, id: string): Promise<JobRecord> {
  return retrying(() => queue.get(id), 'get', 60_000);
}

async function resultObjects(queue: JobQueue, id: string): Promise<number> {
  const all = await queue.results.list();
  return all.filter((o) => o.name.startsWith(`${id}/`)).length;
}

describe('workers over a real nats-server', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let queue: JobQueue;
  const workers: ChildProcess[] = [];

  beforeAll(async () => {
    nats = await NatsServer.start();
    nc = await connectNats(nats.url, 'test');
    queue = await JobQueue.open(nc, { ackWaitSeconds: ACK_WAIT_SECONDS });
    workers.push(...(await Promise.all([spawnWorker(nats.url), spawnWorker(nats.url)])));
  });

  afterAll(async () => {
    await Promise.all(workers.map((w) => kill(w)));
    await nc?.close();
    await nats?.close();
  });

  it('redelivers the job of a SIGKILLed worker to another, which completes it once', async () => {
    const args = { prompt: 'a worker dies under me', seed: 11, numInferenceSteps: 150, width: 256, height: 256, useResolutionBinning: false };
    const id = await submit(queue, args);
    await waitFor(async () => (await record(queue, id)).step >= 3, 120_000, 'job running');
    const holder = (await record(queue, id)).worker;
    const victim = workers.find((w) => (w as ChildProcess & { workerId: string }).workerId === holder)!;
    expect(victim, `worker ${holder}`).toBeDefined();
    await kill(victim);

    await waitFor(async () => (await record(queue, id)).state === 'succeeded', 180_000, 'job succeeded');
    const done = await record(queue, id);
    expect(done.attempts).toBe(2);
    expect(done.completions).toBe(1);
    expect(done.worker).not.toBe(holder);
    expect(await resultObjects(queue, id)).toBe(1);
    const reference = await generate(local, args);
    const [image] = await queue.result(id);
    expect(Buffer.from(image.bytes).equals(Buffer.from(reference.images[0].bytes))).toBe(true);
    workers.push(await spawnWorker(nats.url));
  });

  it('loses no accepted job when nats-server restarts mid-run', async () => {
    const jobs = Array.from({ length: 8 }, (_, i) => ({ prompt: `restart job ${i}`, seed: 100 + i, numInferenceSteps: 30, width: 128, height: 128, useResolutionBinning: false }));
    const ids: string[] = [];
    for (const [i, args] of jobs.slice(0, 5).entries()) ids.push(await submit(queue, args, `restart-${i}`));
    await waitFor(async () => (await record(queue, ids[0])).state !== 'queued', 120_000, 'first job started');
    await nats.restart();
    for (const [i, args] of jobs.slice(5).entries()) ids.push(await submit(queue, args, `restart-${i + 5}`));

    await waitFor(async () => {
      const states = await Promise.all(ids.map(async (id) => (await record(queue, id)).state));
      return states.every((s) => s === 'succeeded');
    }, 240_000, 'every job succeeded');
    for (const id of ids) {
      expect((await record(queue, id)).completions).toBe(1);
      expect(await resultObjects(queue, id)).toBe(1);
    }
    expect(new Set(ids).size).toBe(jobs.length);
    expect((await queue.depth()).pending).toBe(0);
  });
});

describe('failing jobs and expiring results', () => {
  let nats: NatsServer;
  let nc: NatsConnection;
  let queue: JobQueue;
  const registry = createRegistry();

  beforeAll(async () => {
    nats = await NatsServer.start();
    nc = await connectNats(nats.url, 'test');
    queue = await JobQueue.open(nc, { ackWaitSeconds: ACK_WAIT_SECONDS, maxDeliver: 3, resultTtlSeconds: 2 });
  });

  afterAll(async () => {
    await nc?.close();
    await nats?.close();
  });

  it('dead-letters a job that fails on every delivery, with the reason in its status', async () => {
    // a worker whose denoiser went away after the worker reached it: every attempt fails with UNAVAILABLE
    const denoiser = await startServe(stageServeConfig('denoiser'));
    await denoiser.ready;
    const stages = await connectedStages({ ...stageAddresses, denoiser: [denoiser.address] });
    await denoiser.close();
    const metrics = new JobMetrics(registry, 'worker', queue);
    const worker = await startJobWorker(queue, stages, { log, metrics, retryDelaySeconds: 0.2 });
    try {
      const id = await submit(queue, { prompt: 'poison', seed: 1, numInferenceSteps: 2 });
      await waitFor(async () => (await record(queue, id)).state === 'failed', 120_000, 'job failed');
      const failed = await record(queue, id);
      expect(failed.attempts).toBe(3);
      expect(failed.error).toMatch(/^failed 3 times \(max deliver 3\); last error: denoiser: /);

      const dead = await queue.jsm.streams.getMessage(NATS_NAMES.stream, { last_by_subj: NATS_NAMES.deadLetterSubject });
      expect(dead?.header.get('Sana-Job-Id')).toBe(id);
      expect(dead?.header.get('Sana-Deliveries')).toBe('3');
      expect(queue.parseMessage(dead!.data).request.prompt).toEqual(['poison']);
      expect(await metricValue(registry, 'sana_job_dead_letters_total', {})).toBe(1);
      expect(await metricValue(registry, 'sana_job_redeliveries_total', {})).toBe(2);
      expect((await queue.depth()).pending).toBe(0);
    } finally {
      await worker.stop();
      stages.close();
    }
  });

  it('fails a request that reaches a worker invalid at its first delivery, without retrying it', async () => {
    const worker = await startJobWorker(queue, await connectedStages(stageAddresses), { log });
    try {
      // queued without the Jobs service's check (as by a gateway of another version): the pipeline rejects it
      const id = await submit(queue, { prompt: 'zero steps', seed: 1, numInferenceSteps: 0 });
      await waitFor(async () => (await record(queue, id)).state === 'failed', 120_000, 'job failed');
      const failed = await record(queue, id);
      expect(failed.attempts).toBe(1);
      expect(failed.error).toMatch(/^num_inference_steps: must be an integer in \[1, 1000\], got 0/);
    } finally {
      await worker.stop();
    }
  });

  it('answers NOT_FOUND for the images once the result TTL has passed', async () => {
    const worker = await startJobWorker(queue, await connectedStages(stageAddresses), { log });
    try {
      const id = await submit(queue, { prompt: 'short-lived', seed: 3, numInferenceSteps: 1 });
      await waitFor(async () => (await record(queue, id)).state === 'succeeded', 120_000, 'job succeeded');
      // right after the job the images may already be gone on a slow machine: only the expiry is certain
      await waitFor(async () => (await queue.result(id).then(() => false, () => true)), 60_000, 'result expired');
      const error = await queue.result(id).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StatusError);
      expect((error as StatusError).code).toBe(Status.NOT_FOUND);
      expect((error as StatusError).message).toMatch(/expired/);
      expect((await record(queue, id)).state).toBe('succeeded'); // the record outlives the images
      // and the server really removed them
      await waitFor(async () => (await queue.results.info(resultName(id, 0))) === null, 60_000, 'object removed by the TTL');
    } finally {
      await worker.stop();
    }
  });
});
