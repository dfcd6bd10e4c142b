// `npm run bench -- serve --preset tiny --concurrency 1,2,8`: the served pipeline under load, with the denoiser's
// step-level batching off and then on (one server each, one after the other). `sana serve all` runs in a child
// process (its own event loop, as in production); this process is the client. Per concurrency level: images/s,
// client-seen p50/p99 latency, mean batch rows per denoiser forward, each stage's mean queue wait and execution
// time per request, and the gateway's own overhead per request (gateway handler time minus the time spent inside
// the stage services), all from the servers' Prometheus metrics. The first row is the in-process generate() on
// the same checkpoint, run alternately with the served concurrency-1 requests of the batching-off server: the
// baseline the served rows are compared with.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { GenerationClient, type GenerateRequest } from '../services/common/gen/sana/v1/generation.ts';
import { warmUpDecoder } from '../services/decoder/server.ts';
import { warmUpDenoiser } from '../services/denoiser/server.ts';
import { loadLocalStages, type LocalStages } from '../services/cli/local-stages.ts';
import { generate } from '../services/common/pipeline.ts';
import { warmUpTextEncoder } from '../services/text-encoder/server.ts';
import { cachedRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { median, printTable, quantile } from './util.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Starts `sana serve all` and waits for its "ready" line; returns the gateway and metrics addresses. */
async function startServer(modelDir: string, flags: string[]): Promise<{ child: ChildProcess; gateway: string; metrics: string }> {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'services/cli/bin.js'), 'serve', 'all', '--model', modelDir, '--port', '0', '--metrics-host', '127.0.0.1', '--metrics-port', '0', ...flags],
    { env: { ...process.env, SANA_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'inherit', 'pipe'] },
  );
  let stderr = '';
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`sana serve all exited (${code}):\n${stderr}`)));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      const ready = /ready; Generation serving on (\S+)/.exec(stderr);
      const metrics = /metrics\s+(http:\S+)/.exec(stderr);
      if (ready && metrics) resolve({ child, gateway: ready[1], metrics: metrics[1] });
    });
  });
}

interface Split {
  /** summed seconds in the gateway's Generate handler (admission wait included) */
  gateway: number;
  /** summed seconds waiting for admission at the gateway */
  queue: number;
  /** summed seconds in the stage services' Encode, Denoise and Decode handlers */
  stages: number;
  /** per stage service: summed admission wait and execution seconds */
  stageQueue: Record<StageService, number>;
  stageExecution: Record<StageService, number>;
  /** denoiser forwards and their rows */
  forwards: number;
  rows: number;
}

const STAGE_SERVICES = ['text-encoder', 'denoiser', 'decoder'] as const;
type StageService = (typeof STAGE_SERVICES)[number];
const SHORT: Record<StageService, string> = { 'text-encoder': 'te', denoiser: 'dn', decoder: 'dc' };

/** Sums of the histograms that split a request's time, scraped from the server's /metrics. */
async function scrape(url: string): Promise<Split> {
  const text = await (await fetch(url)).text();
  const sum = (metric: string, labels: Record<string, string>) => {
    let total = 0;
    for (const line of text.split('\n')) {
      if (!line.startsWith(`${metric}{`)) continue;
      const [, labelText, value] = /^[^{]+\{([^}]*)\} (\S+)$/.exec(line) ?? [];
      if (labelText === undefined) continue;
      if (Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) total += Number(value);
    }
    return total;
  };
  const handler = (service: string, method: string) => sum('sana_grpc_request_duration_seconds_sum', { service, method });
  return {
    gateway: handler('gateway', 'Generate'),
    queue: sum('sana_queue_wait_seconds_sum', { service: 'gateway' }),
    stages: handler('text-encoder', 'Encode') + handler('denoiser', 'Denoise') + handler('decoder', 'Decode'),
    stageQueue: Object.fromEntries(STAGE_SERVICES.map((service) => [service, sum('sana_queue_wait_seconds_sum', { service })])) as Record<StageService, number>,
    stageExecution: Object.fromEntries(STAGE_SERVICES.map((service) => [service, sum('sana_execution_seconds_sum', { service })])) as Record<StageService, number>,
    forwards: sum('sana_denoiser_forwards_total', { service: 'denoiser' }),
    rows: sum('sana_denoiser_forward_rows_total', { service: 'denoiser' }),
  };
}

function generateOnce(client: GenerationClient, request: GenerateRequest): Promise<number> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const call = client.generate(request);
    call.on('data', () => {});
    call.on('error', reject);
    call.on('end', () => resolve((performance.now() - started) / 1000));
  });
}

export async function run(argv: string[]): Promise<void> {
  const opts = new Command('bench serve')
    .option('--preset <name>', 'pipeline preset (random weights)', 'tiny')
    .option('--concurrency <list>', 'concurrent clients, comma-separated', '1,2,8')
    .option('--requests <n>', 'requests per level (default: max(16, 4 × concurrency))')
    .option('--steps <n>', 'num_inference_steps per request', '20')
    .option('--max-in-flight <n>', "every service's in-flight limit (default: the server's, from each stage's capacity)")
    .option('--batch-rows <n>', "the denoiser's batch bound when batching is on (default: the server's)")
    .option('--json', 'one JSON object per row')
    .parse(argv, { from: 'user' })
    .opts<{ preset: string; concurrency: string; requests?: string; steps: string; maxInFlight?: string; batchRows?: string; json?: boolean }>();
  const levels = opts.concurrency.split(',').map(Number);
  const steps = Number(opts.steps);
  const modelDir = cachedRandomCheckpoint(opts.preset);
  // every request has its own prompt, so the text encoder's embedding cache never answers for the model
  let promptCount = 0;
  const request = (i: number): GenerateRequest => ({
    prompt: [`a watercolor painting of a lighthouse, variation ${promptCount++}`],
    negativePrompt: '',
    numInferenceSteps: steps,
    seed: BigInt(i),
    complexHumanInstruction: [],
    format: 0,
    previewEvery: 0,
  });
  const rows: Record<string, string | number>[] = [];

  const common = ['--max-queue', String(Math.max(...levels))];
  if (opts.maxInFlight) common.push('--max-in-flight', opts.maxInFlight);
  const levelRequests = (concurrency: number) => (opts.requests ? Number(opts.requests) : Math.max(16, 4 * concurrency));
  const servedRow = (batching: string, concurrency: number, total: number, wall: number, latencies: number[], before: Split, after: Split) => {
    const gatewaySeconds = (after.gateway - before.gateway - (after.queue - before.queue)) / total;
    const stageSeconds = (after.stages - before.stages) / total;
    const overhead = gatewaySeconds - stageSeconds;
    const row: Record<string, string | number> = {
      layout: 'served',
      batching,
      concurrency,
      requests: total,
      images_per_s: total / wall,
      p50_s: median(latencies),
      p99_s: quantile(latencies, 0.99),
      batch_rows: (after.rows - before.rows) / (after.forwards - before.forwards),
      queue_s: (after.queue - before.queue) / total,
    };
    for (const service of STAGE_SERVICES) {
      row[`${SHORT[service]}_queue_s`] = (after.stageQueue[service] - before.stageQueue[service]) / total;
      row[`${SHORT[service]}_exec_s`] = (after.stageExecution[service] - before.stageExecution[service]) / total;
    }
    row.overhead_ms = overhead * 1000;
    row.overhead_pct = `${((100 * overhead) / gatewaySeconds).toFixed(1)}%`;
    return row;
  };
  let baselineRps = 0;
  const sum = (v: number[]) => v.reduce((a, b) => a + b, 0);
  for (const batching of ['off', 'on'] as const) {
    const flags = batching === 'off' ? ['--batch-rows', '0'] : opts.batchRows ? ['--batch-rows', opts.batchRows] : [];
    const server = await startServer(modelDir, [...common, ...flags]);
    const client = new GenerationClient(server.gateway, grpc.credentials.createInsecure());
    let local: LocalStages | undefined;
    try {
      await generateOnce(client, request(0)); // the server's channel and stages
      // the batching-off server's concurrency-1 row is the one run alternately with the in-process pipeline
      const levelsHere = levels.filter((c) => batching === 'on' || c !== 1);
      if (batching === 'off') {
        local = await loadLocalStages(modelDir);
        // the in-process stages warmed with the servers' own warm-up requests (they change later timings: a small
        // decode first makes the tiny decoder's later ones faster)
        await warmUpTextEncoder(local.textEncoder);
        await warmUpDenoiser(local.denoiser);
        await warmUpDecoder(local.decoder);
        await generate(local, { prompt: 'warm-up', numInferenceSteps: steps, seed: 0 });

        // one request at a time, in-process and served alternately, so the shared machine's noise hits both alike
        const total = levelRequests(1);
        const inProcess: number[] = [];
        const served: number[] = [];
        const before = await scrape(server.metrics);
        for (let i = 0; i < total; i++) {
          const t0 = performance.now();
          await generate(local, { prompt: request(i).prompt[0], numInferenceSteps: steps, seed: i });
          inProcess.push((performance.now() - t0) / 1000);
          served.push(await generateOnce(client, request(i)));
        }
        const after = await scrape(server.metrics);
        baselineRps = total / sum(inProcess);
        rows.push({ layout: 'in-process', batching: 'off', concurrency: 1, requests: total, images_per_s: baselineRps, p50_s: median(inProcess), p99_s: quantile(inProcess, 0.99) });
        rows.push(servedRow(batching, 1, total, sum(served), served, before, after));
        await local.close();
        local = undefined;
      }
      for (const concurrency of levelsHere) {
        const total = levelRequests(concurrency);
        const before = await scrape(server.metrics);
        const latencies: number[] = [];
        let next = 0;
        const started = performance.now();
        await Promise.all(
          Array.from({ length: concurrency }, async () => {
            while (next < total) latencies.push(await generateOnce(client, request(next++)));
          }),
        );
        rows.push(servedRow(batching, concurrency, total, (performance.now() - started) / 1000, latencies, before, await scrape(server.metrics)));
      }
    } finally {
      await local?.close();
      client.close();
      server.child.kill('SIGTERM');
      await new Promise((resolve) => server.child.once('exit', resolve));
    }
  }
  if (!opts.json) {
    for (const r of rows) r.vs_in_process = `${((r.images_per_s as number) / baselineRps).toFixed(2)}x`;
    // batching on against off at the same concurrency
    for (const r of rows.filter((row) => row.batching === 'on')) {
      const off = rows.find((o) => o.layout === 'served' && o.batching === 'off' && o.concurrency === r.concurrency)!;
      r.on_vs_off = `${((r.images_per_s as number) / (off.images_per_s as number)).toFixed(2)}x`;
    }
  }
  printTable(rows, Boolean(opts.json));
  if (!opts.json) {
    console.log(
      `preset ${opts.preset}, ${steps} steps, default resolution, PNG; in-flight limits ${opts.maxInFlight ?? "from each stage's capacity"}. ` +
        'overhead = gateway handler time (after admission) minus the stage services\' handler time, per request; ' +
        'queue_s = mean wait for admission at the gateway, te/dn/dc_queue_s and _exec_s = mean admission wait and execution per request ' +
        'at the text encoder, denoiser and decoder; batch_rows = mean rows per denoiser forward (a guided image is 2); ' +
        'p99 is the slowest request when a level has under 100; on_vs_off = images/s with batching against without at the same concurrency; ' +
        'vs_in_process = requests/s relative to the in-process row (concurrency 1 rows ran alternately, request by request).',
    );
  }
}
