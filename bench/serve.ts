// `npm run bench -- serve --preset tiny --concurrency 1,4,16`: the served pipeline under load. `sana serve all`
// runs in a child process (its own event loop, as in production); this process is the client. Per concurrency
// level: requests/s, client-seen p50/p99 latency, and the gateway's own overhead per request (gateway handler
// time minus the time spent inside the stage services, from the servers' Prometheus histograms). The first row
// is the in-process generate() on the same checkpoint, the baseline the served rows are compared with.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { GenerationClient, type GenerateRequest } from '../services/common/gen/sana/v1/generation.ts';
import { generate, loadLocalStages } from '../services/gateway/pipeline.ts';
import { benchCheckpoint } from './checkpoints.ts';
import { median, printTable } from './util.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

function quantile(values: number[], q: number): number {
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
}

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

/** Sums of the histograms that split a request's time, scraped from the server's /metrics. */
async function scrape(url: string) {
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
  const modelDir = benchCheckpoint(opts.preset);
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

  // baseline: the same pipeline in this process, one request at a time
  const local = await loadLocalStages(modelDir);
  const baselineRuns: number[] = [];
  await generate(local, { prompt: 'warm-up', numInferenceSteps: steps, seed: 0 });
  const baselineCount = 8;
  const baselineStart = performance.now();
  for (let i = 0; i < baselineCount; i++) {
    const t0 = performance.now();
    await generate(local, { prompt: request(i).prompt[0], numInferenceSteps: steps, seed: i });
    baselineRuns.push((performance.now() - t0) / 1000);
  }
  const baselineRps = baselineCount / ((performance.now() - baselineStart) / 1000);
  await local.close?.();
  rows.push({ layout: 'in-process', concurrency: 1, requests: baselineCount, req_per_s: baselineRps, p50_s: median(baselineRuns), p99_s: quantile(baselineRuns, 0.99), in_stages_s: '', overhead_ms: '', overhead_pct: '', queue_s: '' });

  const maxInFlight = Number(opts.maxInFlight);
  const server = await startServer(modelDir, maxInFlight, Math.max(...levels));
  const client = new GenerationClient(server.gateway, grpc.credentials.createInsecure());
  try {
    await generateOnce(client, request(0)); // warm the channel and the stages
    for (const concurrency of levels) {
      const total = opts.requests ? Number(opts.requests) : Math.max(16, 4 * concurrency);
      const before = await scrape(server.metrics);
      const latencies: number[] = [];
      let next = 0;
      const started = performance.now();
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          while (next < total) latencies.push(await generateOnce(client, request(next++)));
        }),
      );
      const wall = (performance.now() - started) / 1000;
      const after = await scrape(server.metrics);
      const gatewaySeconds = (after.gateway - before.gateway - (after.queue - before.queue)) / total;
      const stageSeconds = (after.stages - before.stages) / total;
      const overhead = gatewaySeconds - stageSeconds;
      rows.push({
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
      });
    }
  } finally {
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
        'vs_in_process = requests/s relative to the in-process row.',
    );
  }
}
