// Prometheus metrics (prom-client) and their HTTP endpoint. Every service registers the same metric names with
// its own `service` label, so one registry can serve the four services of `sana serve all` and the dashboards
// query one set of names in every layout.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { EmbeddingCacheStats, ForwardStats } from './stages.ts';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry, type Metric } from 'prom-client';

export const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
const STEP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

/** A registry with the default process metrics (CPU, memory, event-loop lag, GC, handles). */
export function createRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return registry;
}

export function metric<M extends Metric>(registry: Registry, name: string, make: () => M): M {
  return (registry.getSingleMetric(name) as M | undefined) ?? make();
}

/** The metrics of one service, labelled with its name. */
export class ServiceMetrics {
  readonly requests: Counter<'service' | 'method' | 'code'>;
  readonly requestSeconds: Histogram<'service' | 'method' | 'code'>;
  readonly inFlight: Gauge<'service' | 'method'>;
  readonly queueDepth: Gauge<'service'>;
  readonly queueSeconds: Histogram<'service'>;
  readonly modelLoadSeconds: Gauge<'service'>;
  readonly warmupSeconds: Gauge<'service'>;
  readonly ready: Gauge<'service'>;
  readonly denoiserStepSeconds: Histogram<'service'>;
  readonly denoiserSteps: Counter<'service'>;
  readonly gatewayStageSeconds: Histogram<'service' | 'stage'>;
  readonly images: Counter<'service' | 'format'>;
  readonly embeddingCacheLookups: Counter<'service' | 'result'>;
  readonly embeddingCacheBytes: Gauge<'service'>;
  readonly previewsDropped: Counter<'service'>;
  readonly executionSeconds: Histogram<'service'>;
  readonly denoiserForwards: Counter<'service'>;
  readonly denoiserForwardRows: Counter<'service'>;
  private cacheSeen = { hits: 0, misses: 0 };
  private forwardsSeen = { forwards: 0, rows: 0 };

  constructor(
    readonly registry: Registry,
    readonly service: string,
  ) {
    const registers = [registry];
    this.requests = metric(registry, 'sana_grpc_requests_total', () => new Counter({
      name: 'sana_grpc_requests_total',
      help: 'gRPC calls finished, by service, method and status code',
      labelNames: ['service', 'method', 'code'],
      registers,
    }));
    this.requestSeconds = metric(registry, 'sana_grpc_request_duration_seconds', () => new Histogram({
      name: 'sana_grpc_request_duration_seconds',
      help: 'gRPC call latency from arrival to status, by service, method and status code',
      labelNames: ['service', 'method', 'code'],
      buckets: LATENCY_BUCKETS,
      registers,
    }));
    this.inFlight = metric(registry, 'sana_grpc_requests_in_flight', () => new Gauge({
      name: 'sana_grpc_requests_in_flight',
      help: 'gRPC calls being handled now',
      labelNames: ['service', 'method'],
      registers,
    }));
    this.queueDepth = metric(registry, 'sana_queue_depth', () => new Gauge({
      name: 'sana_queue_depth',
      help: 'requests waiting for admission (beyond the in-flight limit)',
      labelNames: ['service'],
      registers,
    }));
    this.queueSeconds = metric(registry, 'sana_queue_wait_seconds', () => new Histogram({
      name: 'sana_queue_wait_seconds',
      help: 'seconds admitted requests waited in the queue',
      labelNames: ['service'],
      buckets: LATENCY_BUCKETS,
      registers,
    }));
    this.modelLoadSeconds = metric(registry, 'sana_model_load_seconds', () => new Gauge({
      name: 'sana_model_load_seconds',
      help: 'seconds the service took to load its model',
      labelNames: ['service'],
      registers,
    }));
    this.warmupSeconds = metric(registry, 'sana_model_warmup_seconds', () => new Gauge({
      name: 'sana_model_warmup_seconds',
      help: 'seconds the warm-up request took after loading',
      labelNames: ['service'],
      registers,
    }));
    this.ready = metric(registry, 'sana_ready', () => new Gauge({
      name: 'sana_ready',
      help: '1 when the service is loaded, warmed up and serving',
      labelNames: ['service'],
      registers,
    }));
    this.denoiserStepSeconds = metric(registry, 'sana_denoiser_step_seconds', () => new Histogram({
      name: 'sana_denoiser_step_seconds',
      help: 'seconds per denoising step (one transformer forward and one solver update)',
      labelNames: ['service'],
      buckets: STEP_BUCKETS,
      registers,
    }));
    this.denoiserSteps = metric(registry, 'sana_denoiser_steps_total', () => new Counter({
      name: 'sana_denoiser_steps_total',
      help: 'denoising steps computed',
      labelNames: ['service'],
      registers,
    }));
    this.gatewayStageSeconds = metric(registry, 'sana_gateway_stage_seconds', () => new Histogram({
      name: 'sana_gateway_stage_seconds',
      help: 'seconds per pipeline stage as the gateway sees it (stage work plus transport)',
      labelNames: ['service', 'stage'],
      buckets: LATENCY_BUCKETS,
      registers,
    }));
    this.images = metric(registry, 'sana_images_total', () => new Counter({
      name: 'sana_images_total',
      help: 'images delivered, by format',
      labelNames: ['service', 'format'],
      registers,
    }));
    this.embeddingCacheLookups = metric(registry, 'sana_embedding_cache_lookups_total', () => new Counter({
      name: 'sana_embedding_cache_lookups_total',
      help: "text embedding cache lookups, by result (hit: the prompt's embedding was reused)",
      labelNames: ['service', 'result'],
      registers,
    }));
    this.embeddingCacheBytes = metric(registry, 'sana_embedding_cache_bytes', () => new Gauge({
      name: 'sana_embedding_cache_bytes',
      help: 'bytes of embeddings the text encoder cache holds',
      labelNames: ['service'],
      registers,
    }));
    this.previewsDropped = metric(registry, 'sana_previews_dropped_total', () => new Counter({
      name: 'sana_previews_dropped_total',
      help: "latent previews skipped because the receiving stream was full (the step's progress event is still sent)",
      labelNames: ['service'],
      registers,
    }));
    this.executionSeconds = metric(registry, 'sana_execution_seconds', () => new Histogram({
      name: 'sana_execution_seconds',
      help: 'seconds admitted requests spent executing (after their queue wait), by service',
      labelNames: ['service'],
      buckets: LATENCY_BUCKETS,
      registers,
    }));
    this.denoiserForwards = metric(registry, 'sana_denoiser_forwards_total', () => new Counter({
      name: 'sana_denoiser_forwards_total',
      help: 'transformer forwards run (with step-level batching one forward serves several requests)',
      labelNames: ['service'],
      registers,
    }));
    this.denoiserForwardRows = metric(registry, 'sana_denoiser_forward_rows_total', () => new Counter({
      name: 'sana_denoiser_forward_rows_total',
      help: 'batch rows of all transformer forwards (a guided image is two rows); rows / forwards = mean batch size',
      labelNames: ['service'],
      registers,
    }));
    this.ready.set({ service }, 0);
    this.queueDepth.set({ service }, 0);
  }

  /** Brings the forward counters up to the denoiser's running totals. */
  recordForwards(stats: ForwardStats): void {
    const { service } = this;
    this.denoiserForwards.inc({ service }, stats.forwards - this.forwardsSeen.forwards);
    this.denoiserForwardRows.inc({ service }, stats.rows - this.forwardsSeen.rows);
    this.forwardsSeen = { forwards: stats.forwards, rows: stats.rows };
  }

  /** Brings the cache metrics up to the stage's running totals. */
  recordEmbeddingCache(stats: EmbeddingCacheStats): void {
    const { service } = this;
    this.embeddingCacheLookups.inc({ service, result: 'hit' }, stats.hits - this.cacheSeen.hits);
    this.embeddingCacheLookups.inc({ service, result: 'miss' }, stats.misses - this.cacheSeen.misses);
    this.embeddingCacheBytes.set({ service }, stats.bytes);
    this.cacheSeen = { hits: stats.hits, misses: stats.misses };
  }
}

export interface MetricsServer {
  port: number;
  close(): Promise<void>;
}

/** Serves `GET /metrics` in the Prometheus text format. */
export async function startMetricsServer(registry: Registry, host: string, port: number): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404).end('not found; metrics are at /metrics\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (e: Error) => res.writeHead(500).end(`${e.message}\n`),
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
