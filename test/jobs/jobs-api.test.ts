// The Jobs API of `sana serve all --nats` against a real nats-server: submit, watch, get and result give the
// in-process pipeline's exact image; an idempotency key gives one job; a queued and a running job cancel; a bad
// request is refused before it is queued; the job metrics count it all.
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { jetstreamManager } from '@nats-io/jetstream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { startServe, type Serving } from '../../services/cli/serve.ts';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import { StatusError } from '../../services/common/grpc-status.ts';
import { createRegistry } from '../../services/common/metrics.ts';
import { connectNats, NATS_NAMES, type NatsConnection } from '../../services/common/nats.ts';
import { JobsClient, JobState, type JobEvent } from '../../services/gateway/jobs-client.ts';
import { loadLocalStages, type LocalStages } from '../../services/cli/local-stages.ts';
import { generate } from '../../services/common/pipeline.ts';
import { healthStatus, listServices } from '../helpers/grpc.ts';
import { NatsServer } from '../helpers/nats-server.ts';
import { metricValue, waitFor } from '../helpers/jobs.ts';
import { tempDir } from '../helpers/tmp.ts';
import { loopbackServeConfig } from '../helpers/serve-config.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** `sana …` as another process; resolves with its exit code and output. */
async function sana(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [path.join(ROOT, 'services/cli/bin.js'), ...args], { timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    return e as { code: number; stdout: string; stderr: string };
  }
}

/** A job that denoises for many seconds on the tiny model (cancel and queueing need one that is still running). */
const LONG = { prompt: 'a long job', seed: 5, numInferenceSteps: 1000, width: 256, height: 256, useResolutionBinning: false };

let nats: NatsServer;
let nc: NatsConnection;
let serving: Serving;
let client: JobsClient;
let local: LocalStages;

/** The stage addresses of `sana serve all`, for a second gateway. */
const stagesOf = (s: Serving) => {
  const address = (name: string) => [s.hosts.find((h) => h.options.name === name)!.address];
  return { textEncoder: address('text-encoder'), denoiser: address('denoiser'), decoder: address('decoder') };
};
const registry = createRegistry();

beforeAll(async () => {
  nats = await NatsServer.start();
  const modelDir = tempDir('jobs-api');
  writeRandomCheckpoint('tiny', modelDir);
  serving = await startServe(loopbackServeConfig(modelDir, { maxInFlight: 2, nats: nats.url, jobs: { ackWaitSeconds: 10 }, jobConcurrency: 1 }), { registry });
  await serving.ready;
  client = new JobsClient(serving.address);
  nc = await connectNats(nats.url, 'test');
  local = await loadLocalStages(modelDir);
});

afterAll(async () => {
  client?.close();
  await serving?.close();
  await nc?.close();
  await local?.close();
  await nats?.close();
});

describe('Jobs API (sana serve all --nats)', () => {
  it('serves sana.v1.Jobs beside Generation', async () => {
    expect(await listServices(serving.address)).toContain('sana.v1.Jobs');
    expect(await healthStatus(serving.address, 'sana.v1.Jobs')).toBe('SERVING');
  });

  it('runs a submitted job: the watch streams its progress, the result is the in-process PNG', async () => {
    const args = { prompt: 'a red fox in fresh snow', seed: 42, numInferenceSteps: 4 };
    const id = await client.submit(args);
    const events: JobEvent[] = [];
    const final = await client.watch(id, (e) => events.push(e));
    expect(final.state, final.error).toBe(JobState.JOB_STATE_SUCCEEDED);
    // the watch may begin after some steps: what it saw of them is in order and ends at the last one
    const steps = events.flatMap((e) => (e.event?.$case === 'progress' ? [e.event.value.step] : []));
    expect(steps).toEqual([...steps].sort((a, b) => a - b));
    const statuses = events.flatMap((e) => (e.event?.$case === 'status' ? [e.event.value.state] : []));
    expect(statuses.at(-1)).toBe(JobState.JOB_STATE_SUCCEEDED);

    const reference = await generate(local, args);
    const images = await client.result(id);
    expect(images).toHaveLength(1);
    expect(Buffer.from(images[0].bytes).equals(Buffer.from(reference.images[0].bytes))).toBe(true);

    const status = await client.get(id);
    expect(status).toMatchObject({ id, state: JobState.JOB_STATE_SUCCEEDED, step: 4, numInferenceSteps: 4, attempts: 1, error: '' });
    expect(status.summary).toMatchObject({ seed: 42n, numImages: 1, width: reference.width, height: reference.height });
    expect(status.submittedAt).toBeLessThanOrEqual(status.startedAt);
    expect(status.startedAt).toBeLessThanOrEqual(status.finishedAt);
    expect(status.resultExpiresAt).toBeGreaterThan(status.finishedAt);
    expect(await metricValue(registry, 'sana_jobs_finished_total', { state: 'succeeded' })).toBeGreaterThanOrEqual(1);
  });

  it('pins a random seed at submit, so the job reports the seed it used', async () => {
    const id = await client.submit({ prompt: 'no seed given', numInferenceSteps: 1 });
    const final = await client.watch(id);
    expect(final.state, final.error).toBe(JobState.JOB_STATE_SUCCEEDED);
    const again = await generate(local, { prompt: 'no seed given', numInferenceSteps: 1, seed: final.summary!.seed });
    expect(Buffer.from((await client.result(id))[0].bytes).equals(Buffer.from(again.images[0].bytes))).toBe(true);
  });

  it('gives one job for a repeated idempotency key (one message on the queue)', async () => {
    const jsm = await jetstreamManager(nc);
    const before = (await jsm.streams.info(NATS_NAMES.stream)).state.last_seq;
    const args = { prompt: 'submitted twice', seed: 9, numInferenceSteps: 2 };
    const [a, b] = await Promise.all([client.submit(args, 'order-1234'), client.submit(args, 'order-1234')]);
    const c = await client.submit(args, 'order-1234');
    expect(b).toBe(a);
    expect(c).toBe(a);
    expect((await jsm.streams.info(NATS_NAMES.stream)).state.last_seq).toBe(before + 1);
    const final = await client.watch(a);
    expect(final.state).toBe(JobState.JOB_STATE_SUCCEEDED);
    expect(final.attempts).toBe(1);
    expect(await client.submit(args, 'order-1234')).toBe(a); // after it finished, too
    expect(await metricValue(registry, 'sana_jobs_submitted_total', { duplicate: 'true' })).toBeGreaterThanOrEqual(3);
  });

  it('cancels a queued job at once and a running one at its next step', async () => {
    const running = await client.submit(LONG);
    await waitFor(async () => (await client.get(running)).step >= 1, 60_000);
    const queued = await client.submit({ prompt: 'waits behind the long job', seed: 1, numInferenceSteps: 2 });
    expect((await client.get(queued)).state).toBe(JobState.JOB_STATE_QUEUED); // the one worker slot is busy

    const cancelledQueued = await client.cancel(queued);
    expect(cancelledQueued.state).toBe(JobState.JOB_STATE_CANCELLED);

    const asked = await client.cancel(running);
    expect(asked.state).toBe(JobState.JOB_STATE_RUNNING);
    expect(asked.cancelRequested).toBe(true);
    const final = await client.watch(running);
    expect(final.state).toBe(JobState.JOB_STATE_CANCELLED);
    expect(final.step).toBeLessThan(LONG.numInferenceSteps);

    // the worker freed its slot and dropped the cancelled job without running it
    const next = await client.submit({ prompt: 'after the cancels', seed: 2, numInferenceSteps: 1 });
    expect((await client.watch(next)).state).toBe(JobState.JOB_STATE_SUCCEEDED);
    const dropped = await client.get(queued);
    expect(dropped.state).toBe(JobState.JOB_STATE_CANCELLED);
    expect(dropped.startedAt).toBe(0);

    await expect(client.cancel(running)).rejects.toThrow(/already cancelled/);
    await expect(client.result(running)).rejects.toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
  });

  it('requires the bearer token on every Jobs call when the gateway has one', async () => {
    const guarded = await startServe({ ...serving.config, role: 'gateway', model: undefined, authToken: 'jobs-token', stages: stagesOf(serving) });
    const anonymous = new JobsClient(guarded.address);
    const authorized = new JobsClient(guarded.address, 'jobs-token');
    try {
      await expect(anonymous.submit({ prompt: 'x', numInferenceSteps: 1 })).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(anonymous.get('some-job')).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(anonymous.watch('some-job')).rejects.toMatchObject({ code: grpc.status.UNAUTHENTICATED });
      await expect(authorized.get('some-job')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    } finally {
      anonymous.close();
      authorized.close();
      await guarded.close();
    }
  });

  it('sana generate --async prints a job id; sana jobs result --wait writes its image', async () => {
    const root = tempDir('jobs-cli');
    const submitted = await sana(['generate', 'a cli job', '--seed', '4', '--steps', '2', '--async', '--server', serving.address]);
    expect(submitted.code, submitted.stderr).toBe(0);
    const id = submitted.stdout.trim();
    expect(id).toMatch(/^[0-9a-f-]{36}$/);
    const out = path.join(root, 'job.png');
    const fetched = await sana(['jobs', 'result', id, '--wait', '--server', serving.address, '--out', out]);
    expect(fetched.code, fetched.stderr).toBe(0);
    expect(fetched.stdout).toContain(`wrote ${out}`);
    const reference = await generate(local, { prompt: 'a cli job', seed: 4, numInferenceSteps: 2 });
    expect(fs.readFileSync(out).equals(Buffer.from(reference.images[0].bytes))).toBe(true);
    const shown = await sana(['jobs', 'get', id, '--server', serving.address]);
    expect(shown.stdout).toMatch(new RegExp(`job ${id}: succeeded`));
    const missing = await sana(['jobs', 'get', 'no-such-job', '--server', serving.address]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/no job no-such-job/);
  });

  it('refuses a bad request before queueing it, and unknown ids with NOT_FOUND', async () => {
    await expect(client.submit({ prompt: 'x', numInferenceSteps: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(client.submit({ prompt: 'x' }, 'k'.repeat(129))).rejects.toThrow(/idempotency_key/);
    const missing = client.get('no-such-job');
    await expect(missing).rejects.toBeInstanceOf(StatusError);
    await expect(missing).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(client.watch('no-such-job')).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    await expect(client.get('bad id!')).rejects.toThrow(/^id: /);
  });
});
