// The four services of `sana serve all` on loopback ports with the tiny random checkpoint: real gRPC servers, real
// ORT sessions. Generate must give the in-process pipeline's exact PNG; cancellation, deadlines, validation,
// overload, a stage going down, request-id propagation and metrics are checked on the running services.
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServe, type Serving } from '../../services/cli/serve.ts';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { ImageFormat } from '../../services/common/gen/sana/v1/image.ts';
import { Stage, type GenerateRequest } from '../../services/common/gen/sana/v1/generation.ts';
import { ServiceHost } from '../../services/common/grpc-server.ts';
import { INVALID_FIELD_KEY } from '../../services/common/grpc-status.ts';
import { CancelledError, InvalidArgumentError } from '../../services/common/errors.ts';
import { createRegistry } from '../../services/common/metrics.ts';
import { bringUp, StageSlot } from '../../services/common/stage-slot.ts';
import type { DenoiserStage } from '../../services/common/stages.ts';
import { addDenoiserService, warmUpDenoiser } from '../../services/denoiser/server.ts';
import { LocalDenoiser } from '../../services/denoiser/stage.ts';
import { loadLocalStages } from '../../services/cli/local-stages.ts';
import { generate, type PipelineStages } from '../../services/common/pipeline.ts';
import { RemoteStages } from '../../services/gateway/remote-stages.ts';
import { addGenerationService } from '../../services/gateway/server.ts';
import { callGenerate, healthStatus, listServices, readToEnd, unreadGenerate } from '../helpers/grpc.ts';
import { tempDir } from '../helpers/tmp.ts';
import { loopbackServeConfig } from '../helpers/serve-config.ts';

/** A request that denoises for many seconds: 1000 steps at 1024 × 1024 (32 × 32 latents). */
const LONG_REQUEST: Partial<GenerateRequest> = { prompt: ['a cat'], seed: 1n, numInferenceSteps: 1000, width: 1024, height: 1024, useResolutionBinning: false };

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** JSON log lines, captured from a real pino logger. */
const logLines: Record<string, unknown>[] = [];
const logSink = new Writable({
  write(chunk: Buffer, _enc, done) {
    for (const line of chunk.toString('utf8').split('\n')) if (line) logLines.push(JSON.parse(line));
    done();
  },
});

let modelDir: string;
let serving: Serving;
let local: PipelineStages & { close?: () => Promise<void> };
const registry = createRegistry();

const host = (name: string) => serving.hosts.find((h) => h.options.name === name)!;
const gateway = () => serving.address;

async function metricValue(name: string, labels: Record<string, string>): Promise<number> {
  const metric = registry.getSingleMetric(name);
  if (!metric) return 0;
  const { values } = await metric.get();
  const match = values.find((v) => Object.entries(labels).every(([k, val]) => v.labels[k] === val) && !('le' in v.labels));
  return match?.value ?? 0;
}

async function waitFor(condition: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > end) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

beforeAll(async () => {
  modelDir = tempDir('serve');
  writeRandomCheckpoint('tiny', modelDir);
  serving = await startServe(loopbackServeConfig(modelDir, { metricsPort: 0, maxInFlight: 2, maxQueue: 1 }), { registry, logger: pino({ level: 'info' }, logSink) });
  await serving.ready;
  local = await loadLocalStages(modelDir);
});

afterAll(async () => {
  await serving?.close();
  await local?.close?.();
});

describe('sana serve all', () => {
  it('reports SERVING on every service and lists each one through reflection', async () => {
    for (const h of serving.hosts) expect(await healthStatus(h.address)).toBe('SERVING');
    expect(await healthStatus(gateway(), 'sana.v1.Generation')).toBe('SERVING');
    expect(await listServices(host('denoiser').address)).toEqual(['grpc.health.v1.Health', 'sana.v1.Denoiser']);
    expect(await listServices(host('text-encoder').address)).toEqual(['grpc.health.v1.Health', 'sana.v1.TextEncoder']);
    expect(await listServices(host('decoder').address)).toEqual(['grpc.health.v1.Health', 'sana.v1.Decoder']);
  });

  it('Generate streams progress, previews, stage timings and a PNG byte-identical to the in-process pipeline', async () => {
    const request: Partial<GenerateRequest> = { prompt: ['a red fox in the snow'], seed: 42n, numInferenceSteps: 4, previewEvery: 2 };
    const metadata = new grpc.Metadata();
    metadata.set('x-request-id', 'req-e2e-1');
    const served = await callGenerate(gateway(), request, { metadata });
    expect(served.code, served.details).toBe(grpc.status.OK);

    const reference = await generate(local, { prompt: 'a red fox in the snow', seed: 42, numInferenceSteps: 4 });
    expect(served.images).toHaveLength(1);
    const png = Buffer.from(served.images[0].bytes);
    expect(png.subarray(0, 8).equals(PNG_SIGNATURE)).toBe(true);
    expect(png.equals(Buffer.from(reference.images[0].bytes))).toBe(true);
    expect([served.images[0].width, served.images[0].height]).toEqual([reference.width, reference.height]);

    const kinds = served.events.map((e) => e.event!.$case);
    const progress = served.events.flatMap((e) => (e.event?.$case === 'progress' ? [e.event.value] : []));
    expect(progress.map((p) => p.step)).toEqual([1, 2, 3, 4]);
    expect(progress.every((p) => p.numInferenceSteps === 4 && p.seconds > 0)).toBe(true);
    const previewSteps = served.events.flatMap((e) => (e.event?.$case === 'preview' ? [e.event.value.step] : []));
    expect([...new Set(previewSteps)]).toEqual([2, 4]);
    const finished = served.events.flatMap((e) => (e.event?.$case === 'stageFinished' ? [e.event.value.stage] : []));
    expect(finished).toEqual([Stage.STAGE_ENCODE, Stage.STAGE_DENOISE, Stage.STAGE_DECODE]);
    expect(kinds.at(-1)).toBe('summary');
    const last = served.events.at(-1)!.event;
    const summary = last?.$case === 'summary' ? last.value : undefined;
    expect(summary).toMatchObject({ seed: 42n, numImages: 1, width: reference.width, height: reference.height, requestId: 'req-e2e-1' });
    const t = summary!.timings!;
    expect(t.totalSeconds).toBeGreaterThanOrEqual(t.encodeSeconds + t.denoiseSeconds + t.decodeSeconds - 1e-6);

    // the request id travelled through every stage's log lines
    const services = new Set(logLines.filter((l) => l.requestId === 'req-e2e-1' && l.msg === 'call finished').map((l) => l.service));
    expect([...services].sort()).toEqual(['decoder', 'denoiser', 'gateway', 'text-encoder']);
  });

  it('reuses the embedding of a repeated prompt, and the metrics say so', async () => {
    const lookups = (result: string) => metricValue('sana_embedding_cache_lookups_total', { service: 'text-encoder', result });
    const request: Partial<GenerateRequest> = { prompt: ['a prompt asked twice'], seed: 3n, numInferenceSteps: 1 };
    const missesBefore = await lookups('miss');
    expect((await callGenerate(gateway(), request)).code).toBe(grpc.status.OK);
    const misses = await lookups('miss');
    expect(misses).toBeGreaterThan(missesBefore); // the new prompt (and the empty negative prompt unless cached)
    const hits = await lookups('hit');
    expect((await callGenerate(gateway(), request)).code).toBe(grpc.status.OK);
    expect(await lookups('miss')).toBe(misses);
    expect(await lookups('hit')).toBe(hits + 2); // prompt and negative prompt
    expect(await metricValue('sana_embedding_cache_bytes', { service: 'text-encoder' })).toBeGreaterThan(0);
  });

  it('delivers JPEG and several images per prompt, in order, as the in-process pipeline does', async () => {
    const served = await callGenerate(gateway(), { prompt: ['a', 'b'], seed: 7n, numInferenceSteps: 2, numImagesPerPrompt: 2, format: ImageFormat.IMAGE_FORMAT_JPEG, quality: 80 });
    expect(served.code, served.details).toBe(grpc.status.OK);
    const reference = await generate(local, { prompt: ['a', 'b'], seed: 7, numInferenceSteps: 2, numImagesPerPrompt: 2, format: 'jpeg', quality: 80 });
    expect(served.images.map((i) => i.format)).toEqual(['jpeg', 'jpeg', 'jpeg', 'jpeg']);
    expect(served.images.map((i) => Buffer.from(i.bytes).toString('base64'))).toEqual(reference.images.map((i) => Buffer.from(i.bytes).toString('base64')));
  });

  it.each([
    ['prompt', 'no prompt', { prompt: [] }],
    ['prompt', '17 prompts', { prompt: Array.from({ length: 17 }, () => 'x') }],
    ['prompt', 'a prompt over 64 KiB', { prompt: ['x'.repeat(64 * 1024 + 1)] }],
    ['negative_prompt', 'over 64 KiB', { negativePrompt: 'x'.repeat(64 * 1024 + 1) }],
    ['num_inference_steps', '0', { numInferenceSteps: 0 }],
    ['num_inference_steps', '1001', { numInferenceSteps: 1001 }],
    ['guidance_scale', '100.5', { guidanceScale: 100.5 }],
    ['guidance_scale', 'NaN', { guidanceScale: Number.NaN }],
    ['height', '4097', { height: 4097 }],
    ['height', '16', { height: 16 }],
    ['width', '100 without binning', { width: 100, useResolutionBinning: false }],
    ['num_images_per_prompt', '0', { numImagesPerPrompt: 0 }],
    ['num_images_per_prompt', '2 prompts x 9', { prompt: ['a', 'b'], numImagesPerPrompt: 9 }],
    ['max_sequence_length', '1', { maxSequenceLength: 1 }],
    ['max_sequence_length', '1025', { maxSequenceLength: 1025 }],
    ['format', 'unknown enum value 9', { format: 9 as ImageFormat }],
    ['quality', '0', { quality: 0 }],
    ['quality', '101', { quality: 101 }],
    ['preview_every', '1001', { previewEvery: 1001 }],
  ] as [string, string, Partial<GenerateRequest>][])('rejects %s = %s with INVALID_ARGUMENT naming the field', async (field, _what, bad) => {
    const outcome = await callGenerate(gateway(), { prompt: ['a cat'], ...bad });
    expect(outcome.code, outcome.details).toBe(grpc.status.INVALID_ARGUMENT);
    expect(outcome.details.startsWith(`${field}: `), outcome.details).toBe(true);
    expect(outcome.metadata?.get(INVALID_FIELD_KEY)).toEqual([field]);
  });

  it('stops denoising before the step after the cancel', async () => {
    // the stage checks its signal before every step: a cancel during step 3's event is the last step
    const abort = new AbortController();
    const steps: number[] = [];
    const run = generate(local, { prompt: 'a cat', seed: 1, numInferenceSteps: 1000, width: 1024, height: 1024, useResolutionBinning: false }, {
      signal: abort.signal,
      onStep: (e) => {
        steps.push(e.step + 1);
        if (e.step + 1 === 3) abort.abort(new CancelledError());
      },
    });
    await expect(run).rejects.toBeInstanceOf(CancelledError);
    expect(steps).toEqual([1, 2, 3]);
  });

  it('carries a client cancel through the gateway to the denoiser, which stops', async () => {
    const steps = () => metricValue('sana_denoiser_steps_total', { service: 'denoiser' });
    const cancelled = () => metricValue('sana_grpc_requests_total', { service: 'denoiser', method: 'Denoise', code: 'CANCELLED' });
    const [stepsBefore, cancelledBefore] = [await steps(), await cancelled()];
    const outcome = await callGenerate(gateway(), LONG_REQUEST, {
      onEvent: (e, call) => {
        if (e.event?.$case === 'progress' && e.event.value.step === 3) call.cancel();
      },
    });
    expect(outcome.code).toBe(grpc.status.CANCELLED);
    // the denoiser's own call ends CANCELLED (the signal, not a timer) and computed far fewer than the steps asked for
    await waitFor(async () => (await cancelled()) === cancelledBefore + 1);
    await waitFor(async () => (await metricValue('sana_grpc_requests_in_flight', { service: 'denoiser', method: 'Denoise' })) === 0);
    expect((await steps()) - stepsBefore).toBeLessThan(LONG_REQUEST.numInferenceSteps!);
  });

  it('returns DEADLINE_EXCEEDED when the deadline passes, and the denoiser stops', async () => {
    // the prompt's embedding is cached by the test before, so the deadline falls in denoising; the assertions
    // hold wherever it falls
    const stepsBefore = await metricValue('sana_denoiser_steps_total', { service: 'denoiser' });
    const outcome = await callGenerate(gateway(), LONG_REQUEST, { deadline: Date.now() + 3000 });
    expect(outcome.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    await waitFor(async () => (await metricValue('sana_grpc_requests_in_flight', { service: 'denoiser', method: 'Denoise' })) === 0);
    expect((await metricValue('sana_denoiser_steps_total', { service: 'denoiser' })) - stepsBefore).toBeLessThan(LONG_REQUEST.numInferenceSteps!);
  });

  it('refuses requests beyond the in-flight limit and the queue with RESOURCE_EXHAUSTED', async () => {
    // limits: 2 in flight, 1 waiting; the fourth concurrent request is refused at once
    const admission = host('gateway').admission;
    const calls: Promise<Awaited<ReturnType<typeof callGenerate>>>[] = [];
    const started: grpc.ClientReadableStream<unknown>[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        calls.push(callGenerate(gateway(), { ...LONG_REQUEST, seed: BigInt(i) }, { onStart: (call) => started.push(call) }));
        await waitFor(async () => admission.inFlight + admission.queued === i + 1); // running or queued before the next arrives
      }
      const refused = await callGenerate(gateway(), { ...LONG_REQUEST, seed: 3n });
      expect(refused.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(refused.details).toMatch(/server busy: 2 requests running and 1 waiting/);
      expect(await metricValue('sana_queue_depth', { service: 'gateway' })).toBe(1);
    } finally {
      for (const c of started) c.cancel();
    }
    expect((await Promise.all(calls)).map((o) => o.code)).toEqual([grpc.status.CANCELLED, grpc.status.CANCELLED, grpc.status.CANCELLED]);
    // a client-side cancel completes at once; the server sees it a moment later and empties its queue
    await waitFor(async () => (await metricValue('sana_queue_depth', { service: 'gateway' })) === 0);
    await waitFor(async () => (await metricValue('sana_grpc_requests_in_flight', { service: 'gateway', method: 'Generate' })) === 0);
  });

  it('skips previews a client does not read, counts every skip, and still sends every step', async () => {
    const steps = 60;
    const dropped = async () =>
      (await metricValue('sana_previews_dropped_total', { service: 'gateway' })) + (await metricValue('sana_previews_dropped_total', { service: 'denoiser' }));
    const denoised = () => metricValue('sana_denoiser_steps_total', { service: 'denoiser' });
    // the requests the test before cancelled may still be ending their current step at the denoiser
    await waitFor(async () => (await metricValue('sana_grpc_requests_in_flight', { service: 'denoiser', method: 'Denoise' })) === 0);
    const [droppedBefore, stepsBefore] = [await dropped(), await denoised()];
    const { stream, session } = unreadGenerate(gateway(), { ...LONG_REQUEST, numInferenceSteps: steps, previewEvery: 1 });
    // every step is computed while the client reads nothing: previews that do not fit are skipped, not queued
    await waitFor(async () => (await denoised()) === stepsBefore + steps, 60_000);
    const { messages, status } = await readToEnd(stream);
    session.close();
    expect(status).toBe('0');
    const progress = messages.flatMap((m) => (m.event?.$case === 'progress' ? [m.event.value.step] : []));
    expect(progress).toEqual(Array.from({ length: steps }, (_, i) => i + 1));
    const previewed = new Set(messages.flatMap((m) => (m.event?.$case === 'preview' ? [m.event.value.step] : [])));
    const skipped = (await dropped()) - droppedBefore;
    expect(skipped).toBeGreaterThan(0);
    expect(previewed.size + skipped).toBe(steps);
  });

  it('ignores the negative prompt without guidance (as SanaPipeline does); the denoiser refuses negative tensors then', async () => {
    const args = { prompt: 'a cat', seed: 5, numInferenceSteps: 2, guidanceScale: 1 };
    const plain = await generate(local, args);
    const withNegative = await generate(local, { ...args, negativePrompt: 'blurry, low quality' });
    expect(Buffer.from(withNegative.images[0].bytes).equals(Buffer.from(plain.images[0].bytes))).toBe(true);

    const embeds = await local.textEncoder.encode({ prompts: ['a cat'], useComplexHumanInstruction: false, maxSequenceLength: 8 });
    const info = local.denoiser.info();
    const latents = { type: 'float32' as const, dims: [1, info.inChannels, 4, 4], data: new Float32Array(info.inChannels * 16) };
    const request = { promptEmbeds: embeds.embeds, promptMask: embeds.mask, latents, numInferenceSteps: 1, negativeEmbeds: embeds.embeds, negativeMask: embeds.mask };
    const refusal = local.denoiser.denoise({ ...request, guidanceScale: 1 });
    await expect(refusal).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(refusal).rejects.toThrow(/^negative_prompt_embeds: must not be sent with guidance_scale 1/);
    expect((await local.denoiser.denoise({ ...request, guidanceScale: 2 })).dims).toEqual(latents.dims);
  });

  it('keeps a stage NOT_SERVING until its model is warm, retries elsewhere meanwhile, then balances over both', async () => {
    const second = new ServiceHost({ name: 'denoiser-2', host: '127.0.0.1', port: 0, registry, admission: { maxInFlight: 2, maxQueue: 2 } });
    const slot = new StageSlot<DenoiserStage>('denoiser');
    addDenoiserService(second, slot);
    await second.listen();
    const stages = new RemoteStages({ textEncoder: [host('text-encoder').address], denoiser: [host('denoiser').address, second.address], decoder: [host('decoder').address] });
    const gatewayB = new ServiceHost({ name: 'gateway-2', host: '127.0.0.1', port: 0, registry: createRegistry(), admission: { maxInFlight: 2, maxQueue: 2 } });
    addGenerationService(gatewayB, stages);
    await gatewayB.listen();
    try {
      expect(await healthStatus(second.address)).toBe('NOT_SERVING');
      // the replica still loading answers UNAVAILABLE before any work: the gateway retries on the other one
      const early = await callGenerate(gatewayB.address, { prompt: ['a cat'], numInferenceSteps: 2 });
      expect(early.code, early.details).toBe(grpc.status.OK);
      expect(await metricValue('sana_grpc_requests_total', { service: 'denoiser-2', method: 'Denoise', code: 'UNAVAILABLE' })).toBe(1);

      await bringUp(second, slot, () => LocalDenoiser.load(modelDir), warmUpDenoiser);
      expect(await healthStatus(second.address)).toBe('SERVING');
      const served = (service: string) => metricValue('sana_grpc_requests_total', { service, method: 'Denoise', code: 'OK' });
      const before = [await served('denoiser'), await served('denoiser-2')];
      for (let i = 0; i < 4; i++) {
        const outcome = await callGenerate(gatewayB.address, { prompt: ['a cat'], seed: BigInt(i), numInferenceSteps: 2 });
        expect(outcome.code, outcome.details).toBe(grpc.status.OK);
      }
      expect([(await served('denoiser')) - before[0], (await served('denoiser-2')) - before[1]]).toEqual([2, 2]);
    } finally {
      await gatewayB.shutdown();
      stages.close();
      await second.shutdown();
      await (slot.loaded ? (slot.get() as LocalDenoiser).close() : undefined);
    }
  });

  it('answers UNAVAILABLE quickly when a stage goes down after the gateway reached it', async () => {
    // a second denoiser server and a gateway of its own, so the shared services stay up
    const denoiserHost = new ServiceHost({ name: 'denoiser-b', host: '127.0.0.1', port: 0, registry: createRegistry(), admission: { maxInFlight: 2, maxQueue: 2 } });
    const slot = new StageSlot<DenoiserStage>('denoiser');
    slot.set(await LocalDenoiser.load(modelDir));
    addDenoiserService(denoiserHost, slot);
    await denoiserHost.listen();
    const stages = new RemoteStages({ textEncoder: [host('text-encoder').address], denoiser: [denoiserHost.address], decoder: [host('decoder').address] });
    const gatewayB = new ServiceHost({ name: 'gateway-b', host: '127.0.0.1', port: 0, registry: createRegistry(), admission: { maxInFlight: 2, maxQueue: 2 } });
    addGenerationService(gatewayB, stages);
    await gatewayB.listen();
    try {
      const ok = await callGenerate(gatewayB.address, { prompt: ['a cat'], seed: 3n, numInferenceSteps: 2 });
      expect(ok.code, ok.details).toBe(grpc.status.OK);
      denoiserHost.server.forceShutdown();
      const down = await callGenerate(gatewayB.address, { prompt: ['a cat'], seed: 3n, numInferenceSteps: 2 }, { deadline: Date.now() + 30_000 });
      expect(down.code).toBe(grpc.status.UNAVAILABLE);
      expect(down.details).toMatch(/^denoiser: /);
      expect(down.seconds).toBeLessThan(3);
    } finally {
      await gatewayB.shutdown();
      stages.close();
      await (slot.get() as LocalDenoiser).close();
    }
  });

  it('exports per-step latency, model load and warm-up times and request metrics over HTTP', async () => {
    const text = await (await fetch(`http://127.0.0.1:${serving.metricsPort}/metrics`)).text();
    for (const service of ['text-encoder', 'denoiser', 'decoder']) {
      expect(text).toMatch(new RegExp(`sana_model_load_seconds\\{service="${service}"\\} [0-9.e-]+`));
      expect(text).toMatch(new RegExp(`sana_model_warmup_seconds\\{service="${service}"\\} [0-9.e-]+`));
      expect(text).toMatch(new RegExp(`sana_ready\\{service="${service}"\\} 1`));
    }
    expect(text).toMatch(/sana_denoiser_step_seconds_count\{service="denoiser"\} [1-9]/);
    expect(text).toMatch(/sana_grpc_requests_total\{service="gateway",method="Generate",code="OK"\} [1-9]/);
    expect(text).toMatch(/sana_grpc_requests_total\{service="gateway",method="Generate",code="INVALID_ARGUMENT"\} [1-9]/);
    expect(text).toMatch(/sana_grpc_requests_total\{service="text-encoder",method="Encode",code="OK"\} [1-9]/);
    expect(text).toMatch(/sana_gateway_stage_seconds_count\{service="gateway",stage="denoise"\} [1-9]/);
    expect(text).toMatch(/sana_images_total\{service="gateway",format="png"\} [1-9]/);
  });
});
