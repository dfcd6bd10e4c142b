// `npm run bench -- serve --preset tiny --concurrency 1,4,16`: the served pipeline under load. `sana serve all`
// runs in a child process (its own event loop, as in production); this process is the client. Per concurrency
// level: requests/s, client-seen p50/p99 latency, and the gateway's own overhead per request (gateway handler
// time minus the time spent inside the stage services, from the servers' Prometheus histograms). The first row
// is the in-process generate() on the same checkpoint, run alternately with the served concurrency-1 requests:
// the baseline the served rows are compared with.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { GenerationClient, type GenerateRequest } from '../services/common/gen/sana/v1/generation.ts';
import { warmUpDecoder } from '../services/decoder/server.ts';
import { warmUpDenoiser } from '../services/denoiser/server.ts';
import { generate, loadLocalStages, type LocalStages } from '../services/gateway/pipeline.ts';
import { warmUpTextEncoder } from '../services/text-encoder/server.ts';
import { cachedRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { median, printTable, quantile } from './util.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** Starts `sana serve all` and waits for its "ready" line; returns the gateway and metrics addresses. */
async function startServer(modelDir: string, maxInFlight: number, maxQueue: number): Promise<{ child: ChildProcess; gateway: string; metrics: string }> {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'services/cli/bin.js'), 'serve', 'all', '--model', modelDir, '--port', '0', '--metrics-host', '127.0.0.1', '--metrics-port', '0',
      '--max-in-flight', String(maxInFlight), '--max-queue', String(maxQueue)],
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
}

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
    .option('--concurrency <list>', 'concurrent clients, comma-separated', '1,4,16')
    .option('--requests <n>', 'requests per level (default: max(16, 4 × concurrency))')
    .option('--steps <n>', 'num_inference_steps per request', '20')
    .option('--max-in-flight <n>', "the gateway's in-flight limit", '4')
    .option('--json', 'one JSON object per row')
    .parse(argv, { from: 'user' })
    .opts<{ preset: string; concurrency: string; requests?: string; steps: string; maxInFlight: string; json?: boolean }>();
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

  const maxInFlight = Number(opts.maxInFlight);
  const server = await startServer(modelDir, maxInFlight, Math.max(...levels));
  const client = new GenerationClient(server.gateway, grpc.credentials.createInsecure());
  let local: LocalStages | undefined;
  const levelRequests = (concurrency: number) => (opts.requests ? Number(opts.requests) : Math.max(16, 4 * concurrency));
  const servedRow = (concurrency: number, total: number, wall: number, latencies: number[], before: Split, after: Split) => {
    const gatewaySeconds = (after.gateway - before.gateway - (after.queue - before.queue)) / total;
    const stageSeconds = (after.stages - before.stages) / total;
    const overhead = gatewaySeconds - stageSeconds;
    return {
      layout: 'served',
      concurrency,
      requests: total,
      req_per_s: total / wall,
      p50_s: median(latencies),
      p99_s: quantile(latencies, 0.99),
      in_stages_s: stageSeconds,
      overhead_ms: overhead * 1000,
      overhead_pct: `${((100 * overhead) / gatewaySeconds).toFixed(1)}%`,
      queue_s: (after.queue - before.queue) / total,
    };
  };
  let baselineRps = 0;
  try {
    local = await loadLocalStages(modelDir);
    // warm both: the server's channel and stages, and the in-process stages with the servers' own warm-up
    // requests (they change later timings: a small decode first makes the tiny decoder's later ones faster)
    await generateOnce(client, request(0));
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
    const sum = (v: number[]) => v.reduce((a, b) => a + b, 0);
    baselineRps = total / sum(inProcess);
    rows.push({ layout: 'in-process', concurrency: 1, requests: total, req_per_s: baselineRps, p50_s: median(inProcess), p99_s: quantile(inProcess, 0.99), in_stages_s: '', overhead_ms: '', overhead_pct: '', queue_s: '' });
    rows.push(servedRow(1, total, sum(served), served, before, after));

    for (const concurrency of levels.filter((c) => c !== 1)) {
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
      rows.push(servedRow(concurrency, total, (performance.now() - started) / 1000, latencies, before, await scrape(server.metrics)));
    }
  } finally {
    await local?.close();
    client.close();
    server.child.kill('SIGTERM');
  }
  if (!opts.json) {
    for (const r of rows) r.vs_in_process = `${((r.req_per_s as number) / baselineRps).toFixed(2)}x`;
  }
  printTable(rows, Boolean(opts.json));
  if (!opts.json) {
    console.log(
      `preset ${opts.preset}, ${steps} steps, default resolution, PNG; gateway in-flight limit ${maxInFlight}. ` +
        'overhead = gateway handler time (after admission) minus the stage services\' handler time, per request; ' +
        'queue_s = mean wait for admission; p99 is the slowest request when a level has under 100; ' +
        'vs_in_process = requests/s relative to the in-process row (concurrency 1 rows ran alternately, request by request).',
    );
  }
}
