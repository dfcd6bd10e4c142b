// `sana serve <text-encoder|denoiser|decoder|gateway|all>`: runs one service per process (Kubernetes) or all four
// in one process on loopback ports over the same gRPC code path (the embedded default). Flags and SANA_*
// environment variables configure it; the configuration is printed to stderr at start, logs go to stdout.
import path from 'node:path';
import { Command, InvalidArgumentError as CommanderArgumentError, Option } from 'commander';
import type { Registry } from 'prom-client';
import type { AdmissionLimits } from '../common/admission.ts';
import { InvalidArgumentError } from '../common/errors.ts';
import { ServiceHost } from '../common/grpc-server.ts';
import { type Int8Options, type Precision, PRECISIONS } from '../common/int8-recipe.ts';
import { createLogger, type Logger } from '../common/logging.ts';
import { createRegistry, startMetricsServer, type MetricsServer } from '../common/metrics.ts';
import { channelCredentials, describeTls, serverCredentials, type TlsFiles } from '../common/grpc-tls.ts';
import type { SessionOptions } from '../common/ort-session.ts';
import { bringUp, StageSlot } from '../common/stage-slot.ts';
import { type BudgetSettings, gatewayInFlight, type StageName, stageBudget, stageThreads } from '../common/compute-budget.ts';
import type { DecoderStage, DenoiserStage, TextEncoderStage } from '../common/stages.ts';
import type { TilingOptions } from '../decoder/tiling.ts';
import { connectNats, type NatsConnection } from '../common/nats.ts';
import { JobMetrics } from '../gateway/job-metrics.ts';
import { JobQueue, type JobQueueOptions } from '../gateway/job-queue.ts';
import { startJobWorker, type JobWorker } from '../gateway/job-worker.ts';
import { addJobsService } from '../gateway/jobs-server.ts';
import { DEVICES, type Device } from '../denoiser/device.ts';
import { RemoteStages, type StageAddresses } from '../gateway/remote-stages.ts';
import { addGenerationService, connectInBackground } from '../gateway/server.ts';
import { embeddingModelKey, KvEmbeddingCache } from '../text-encoder/shared-cache.ts';
import { defaultModelDir } from './generate.ts';
import { describeTiling, int8FromFlags, int8Options, nonNegativeInt, positiveInt, tilingFromFlags, tilingOptions } from './args.ts';

export const ROLES = ['text-encoder', 'denoiser', 'decoder', 'gateway', 'worker', 'all'] as const;
export type Role = (typeof ROLES)[number];
type StageRole = Exclude<Role, 'gateway' | 'worker' | 'all'>;

/** Default gRPC and metrics ports per role, so the four can also run side by side on one machine. */
const DEFAULT_PORTS: Record<Role, { grpc: number; metrics: number }> = {
  all: { grpc: 50051, metrics: 9464 },
  gateway: { grpc: 50051, metrics: 9464 },
  'text-encoder': { grpc: 50052, metrics: 9465 },
  denoiser: { grpc: 50053, metrics: 9466 },
  decoder: { grpc: 50054, metrics: 9467 },
  worker: { grpc: 0, metrics: 9468 }, // a worker serves no gRPC
};

export interface ServeConfig {
  role: Role;
  /** pipeline checkpoint folder in the diffusers layout (stage roles and all) */
  model?: string;
  host: string;
  port: number;
  metricsHost: string;
  /** -1: no metrics endpoint */
  metricsPort: number;
  /** stage addresses for the gateway role */
  stages: StageAddresses;
  /** requests each service handles at once; default: from its execution capacity (services/common/compute-budget.ts) */
  maxInFlight?: number;
  maxQueue: number;
  authToken?: string;
  /** ONNX Runtime intra-op threads per session (default: the split of services/common/compute-budget.ts) */
  threads?: number;
  /** the decoder's tiling of large images (default DEFAULT_TILING); false decodes them whole */
  tiling?: TilingOptions | false;
  /** per-stage intra-op threads, overriding `threads` */
  stageThreads?: Partial<Record<StageName, number>>;
  /** the denoiser's step-level batch bound in rows (0: off); default DEFAULT_BATCH_ROWS */
  batchRows?: number;
  /** milliseconds an idle denoiser waits to fill a batch; default 0 */
  batchWaitMs?: number;
  /** arithmetic of the text encoder and denoiser (the decoder runs fp32); default fp32 */
  precision?: Precision;
  /** the denoiser's int8 calibration (smoothing, outlier split) under precision int8 */
  int8?: Partial<Int8Options>;
  /** the denoiser's transformer engine: cpu (ONNX Runtime) or cuda (the kernels/ addon) */
  device?: Device;
  /** certificates for TLS / mutual TLS on every gRPC port and the gateway's stage clients; none: plaintext */
  tls?: TlsFiles;
  /** false: ONNX Runtime returns tensor memory after each run instead of keeping its arena's high-water mark */
  memoryArena?: boolean;
  shutdownGraceSeconds: number;
  /** NATS server URL(s): the Jobs API on the gateway, the workers, the shared embedding cache; none without it */
  nats?: string;
  /** the job queue's settings (gateway, worker, all) */
  jobs?: Partial<JobQueueOptions>;
  /** worker (and all with --nats): jobs run at once */
  jobConcurrency?: number;
  /** text-encoder (and all with --nats): the shared embedding cache's TTL and byte bound */
  sharedCache?: { ttlSeconds?: number; maxBytes?: number };
}

/**
 * Step-level batching is off by default: on CPU it measured slower than interleaving requests (SANA-600M, 512 px,
 * 8 concurrent: 0.86× the images/s), since a batch-2 forward already runs the GEMMs near the machine's peak and the
 * batcher does its host work between forwards. `--batch-rows 16` (eight guided images) turns it on.
 */
export const DEFAULT_BATCH_ROWS = 0;

function budgetSettings(config: ServeConfig): BudgetSettings {
  return { threads: config.threads, stageThreads: config.stageThreads, maxInFlight: config.maxInFlight, batchRows: config.batchRows ?? DEFAULT_BATCH_ROWS };
}

export interface Serving {
  config: ServeConfig;
  hosts: ServiceHost[];
  /** where clients reach the served role (the gateway in `all`) */
  address: string;
  metricsPort?: number;
  /** resolves once health reports SERVING (models loaded and warmed up, stages reached) */
  ready: Promise<void>;
  /** the job worker of `worker` (and of `all` with --nats), once it pulls */
  worker?: JobWorker;
  close(): Promise<void>;
}

interface Closable {
  close?: () => Promise<void> | void;
}

/** One stage service: listening (NOT_SERVING) at once, SERVING when its model is loaded and warmed up. */
async function startStage(role: StageRole, config: ServeConfig, host: string, port: number, shared: Shared) {
  if (!config.model) throw new Error(`sana serve ${config.role}: --model (or SANA_MODEL) is required`);
  const modelDir = config.model;
  // on demand: the gateway role never loads the stage folders (ONNX Runtime, the tokenizer, sharp)
  const { addTextEncoderService, warmUpTextEncoder, LocalTextEncoder, addDenoiserService, warmUpDenoiser, LocalDenoiser, addDecoderService, warmUpDecoder, LocalDecoder } =
    await import('./stage-services.ts');
  const budget = stageBudget(role, budgetSettings(config), config.role === 'all');
  const admission: AdmissionLimits = { maxInFlight: budget.maxInFlight, maxQueue: config.maxQueue };
  const service = new ServiceHost({
    name: role,
    host,
    port,
    registry: shared.registry,
    logger: shared.logger?.child({ service: role }),
    admission,
    shutdownGraceSeconds: config.shutdownGraceSeconds,
    credentials: serverCredentials(config.tls ?? {}),
  });
  const session: SessionOptions = { intraOpThreads: budget.intraOpThreads, allowSpinning: false, ...(config.memoryArena === false ? { memoryArena: false } : {}) };
  const precision = { precision: config.precision ?? 'fp32' } as const;
  const batchRows = config.batchRows ?? DEFAULT_BATCH_ROWS;
  const batching = batchRows > 0 ? { maxRows: batchRows, maxWaitMs: config.batchWaitMs ?? 0 } : undefined;
  let loading: Promise<Closable> | undefined;
  const serve = async <S extends object>(
    what: string,
    add: (host: ServiceHost, slot: StageSlot<S>) => void,
    load: () => Promise<S>,
    warmUp: (stage: S) => Promise<void>,
  ) => {
    const slot = new StageSlot<S>(what);
    add(service, slot);
    await service.listen();
    const ready: Promise<unknown> = bringUp(service, slot, () => {
      const stage = load();
      loading = stage as Promise<Closable>;
      return stage;
    }, warmUp);
    return { ready }; // wrapped: awaiting serve() waits for listen(), not for the model
  };
  const { ready } =
    role === 'text-encoder'
      ? await serve<TextEncoderStage>('text encoder', addTextEncoderService, () => LocalTextEncoder.load(modelDir, { ...session, ...precision, sharedCache: shared.sharedCache }), warmUpTextEncoder)
      : role === 'denoiser'
        ? await serve<DenoiserStage>('denoiser', addDenoiserService, () => LocalDenoiser.load(modelDir, { ...session, ...precision, int8: config.int8, batching, device: config.device }), warmUpDenoiser)
        : await serve<DecoderStage>('decoder', addDecoderService, () => LocalDecoder.load(path.join(modelDir, 'vae'), { ...session, tiling: config.tiling }), warmUpDecoder);
  // closing while the model still loads waits for it, so its ONNX Runtime workers do not outlive the service
  return { service, ready, closeModel: async () => (await loading?.catch(() => undefined))?.close?.() };
}

interface Shared {
  registry: Registry;
  logger?: Logger;
  sharedCache?: KvEmbeddingCache;
}

/**
 * Starts the role's servers and returns once they listen; `ready` tells when they serve. One metrics registry
 * (and endpoint) serves all services of the process; `logger` replaces the per-service stdout loggers.
 */
export async function startServe(config: ServeConfig, options: { registry?: Registry; logger?: Logger } = {}): Promise<Serving> {
  const shared: Shared = { registry: options.registry ?? createRegistry(), logger: options.logger };
  const { registry } = shared;
  const hosts: ServiceHost[] = [];
  const closers: (() => Promise<unknown> | void)[] = [];
  let ready: Promise<void>;
  let address: string;
  let metrics: MetricsServer | undefined;
  let nc: NatsConnection | undefined;
  let worker: JobWorker | undefined;
  const log = shared.logger ?? createLogger(config.role);
  try {
    if (config.metricsPort >= 0) {
      metrics = await startMetricsServer(registry, config.metricsHost, config.metricsPort);
      closers.push(() => metrics!.close());
    }
    if (config.nats) {
      nc = await connectNats(config.nats, `sana-${config.role}`).catch((e: Error) => {
        throw new Error(`cannot reach NATS at ${config.nats}: ${e.message}`);
      });
      const conn = nc;
      closers.push(async () => {
        await shared.sharedCache?.flush();
        await conn.drain().catch(() => conn.close());
      });
      if ((config.role === 'text-encoder' || config.role === 'all') && config.model) {
        shared.sharedCache = await KvEmbeddingCache.open(nc, {
          modelKey: `${embeddingModelKey(path.join(config.model, 'text_encoder'), path.join(config.model, 'tokenizer'))}/${config.precision ?? 'fp32'}`,
          ...config.sharedCache,
          registry,
          log,
        });
      }
    }
    const queue = nc && config.role !== 'text-encoder' && config.role !== 'denoiser' && config.role !== 'decoder' ? await JobQueue.open(nc, config.jobs) : undefined;
    const jobMetrics = queue && new JobMetrics(registry, config.role === 'worker' ? 'worker' : 'gateway', queue);
    /** Pulls jobs once `stages` answer; stopped (running jobs drained for the grace period) on close. */
    const startWorker = (stages: RemoteStages, stagesReady: Promise<unknown>) => {
      let closing = false;
      const started = stagesReady.then(async () => {
        if (closing) return;
        worker = await startJobWorker(queue!, stages, { concurrency: config.jobConcurrency, metrics: jobMetrics, log: log.child({ service: 'worker' }) });
      });
      closers.unshift(async () => {
        closing = true;
        await started.catch(() => undefined);
        await worker?.stop(config.shutdownGraceSeconds);
      });
      return started;
    };
    // the stage clients (gateway, worker): TLS when a CA is given, presenting this process's certificate (mutual TLS)
    const { cert, key, ca } = config.tls ?? {};
    if (config.role === 'all' && cert && !ca) {
      throw new InvalidArgumentError('tls-ca', 'is required by `sana serve all` with --tls-cert: the gateway verifies its loopback stages with it');
    }
    const stageCredentials = channelCredentials(ca ? { ca, cert, key } : {});
    if (config.role === 'worker') {
      const stages = new RemoteStages(config.stages, stageCredentials);
      const giveUp = new AbortController();
      closers.push(() => stages.close());
      ready = startWorker(stages, connectStages(stages, log, giveUp.signal));
      closers.unshift(() => giveUp.abort()); // first: the worker's closer waits for the stages to answer
      address = '';
    } else if (config.role === 'gateway' || config.role === 'all') {
      let stageAddresses = config.stages;
      let stagesReady: Promise<unknown> = Promise.resolve();
      if (config.role === 'all') {
        const { checkModelDir } = await import('./stage-services.ts');
        checkModelDir(config.model ?? ''); // names the missing component folders before anything starts
        // the three stages on loopback ports of this process; the gateway reaches them over gRPC like any other
        const starting = (['text-encoder', 'denoiser', 'decoder'] as const).map((role) => startStage(role, config, '127.0.0.1', 0, shared));
        // the stages that did start are closed below when another one fails
        for (const s of await Promise.allSettled(starting)) {
          if (s.status === 'fulfilled') {
            hosts.push(s.value.service);
            closers.push(() => s.value.service.shutdown(), s.value.closeModel);
          }
        }
        const started = await Promise.all(starting);
        const [te, dn, dc] = started.map((s) => [s.service.address]);
        stageAddresses = { textEncoder: te, denoiser: dn, decoder: dc };
        stagesReady = Promise.all(started.map((s) => s.ready));
      }
      const gateway = new ServiceHost({
        name: 'gateway',
        host: config.host,
        port: config.port,
        registry,
        logger: shared.logger?.child({ service: 'gateway' }),
        admission: { maxInFlight: gatewayInFlight(budgetSettings(config), config.role === 'all'), maxQueue: config.maxQueue },
        shutdownGraceSeconds: config.shutdownGraceSeconds,
        credentials: serverCredentials(config.tls ?? {}),
      });
      const stages = new RemoteStages(stageAddresses, stageCredentials);
      addGenerationService(gateway, stages, { authToken: config.authToken });
      if (queue) addJobsService(gateway, stages, queue, { authToken: config.authToken, metrics: jobMetrics });
      await gateway.listen();
      hosts.unshift(gateway);
      let connecting: { stop(): void; ready: Promise<void> } | undefined;
      let closing = false;
      ready = stagesReady.then(() => {
        if (closing) return;
        connecting = connectInBackground(gateway, stages);
        return connecting.ready;
      });
      // `all` with --nats is a whole async deployment in one process: it runs a worker too
      if (queue && config.role === 'all') ready = startWorker(stages, ready);
      // the gateway stops first (drains its requests), then the stages it was calling
      closers.unshift(
        () => {
          closing = true;
          connecting?.stop();
        },
        () => gateway.shutdown(),
        () => stages.close(),
      );
      address = gateway.address;
    } else {
      const s = await startStage(config.role, config, config.host, config.port, shared);
      hosts.push(s.service);
      closers.push(() => s.service.shutdown(), s.closeModel);
      ready = s.ready.then(() => undefined);
      address = s.service.address;
    }
  } catch (e) {
    for (const close of closers) await close();
    throw e;
  }
  ready.catch(() => {}); // callers that never await `ready` must not crash the process on a failed load
  return {
    config,
    hosts,
    address,
    metricsPort: metrics?.port,
    ready,
    get worker() {
      return worker;
    },
    close: async () => {
      for (const close of closers) await close();
    },
  };
}

/** Reaches the stages, retrying every second until they answer (a worker may start before them). */
async function connectStages(stages: RemoteStages, log: Logger, signal: AbortSignal): Promise<void> {
  let lastError = '';
  while (!signal.aborted) {
    try {
      return await stages.connect();
    } catch (e) {
      if ((e as Error).message !== lastError) log.warn({ err: (e as Error).message }, 'stages not reachable yet; retrying');
      lastError = (e as Error).message;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }
}

// ---- the command ----

function port(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0 || n > 65535) throw new CommanderArgumentError(`expected a port in [0, 65535], got "${value}"`);
  return n;
}

function addressList(value: string): string[] {
  const list = value.split(',').map((a) => a.trim()).filter(Boolean);
  if (list.length === 0) throw new CommanderArgumentError('expected one or more comma-separated addresses');
  return list;
}

function describeConfig(config: ServeConfig, serving: Serving, defaultModel: boolean): string[] {
  const lines = [`sana serve ${config.role}`];
  const row = (key: string, value: unknown) => lines.push(`  ${key.padEnd(16)} ${value}`);
  if (config.model) row('model', path.resolve(config.model) + (defaultModel ? ' (the default: tiny random weights, noise images)' : ''));
  for (const h of serving.hosts) {
    row(h.options.name, `${h.options.host}:${h.port} (in flight ≤ ${h.options.admission.maxInFlight}, queue ≤ ${h.options.admission.maxQueue})`);
  }
  if (config.role === 'gateway' || config.role === 'worker') {
    row('text-encoder at', config.stages.textEncoder.join(', '));
    row('denoiser at', config.stages.denoiser.join(', '));
    row('decoder at', config.stages.decoder.join(', '));
  }
  if (config.role === 'gateway' || config.role === 'all') row('auth', config.authToken ? 'bearer token required' : 'off');
  row('nats', config.nats ? `${config.nats} (${describeNatsUse(config.role)})` : 'off');
  if (config.nats && (config.role === 'worker' || config.role === 'all')) row('job concurrency', config.jobConcurrency ?? 1);
  row('tls', describeTls(config.tls ?? {}));
  if (config.role === 'gateway' || config.role === 'all' || config.role === 'worker') row('tls to stages', config.tls?.ca ? `verified with ${config.tls.ca}${config.tls.cert ? ', client certificate presented' : ''}` : 'off (plaintext)');
  row('metrics', serving.metricsPort !== undefined ? `http://${config.metricsHost}:${serving.metricsPort}/metrics` : 'off');
  if (config.role !== 'gateway' && config.role !== 'worker') {
    const settings = budgetSettings(config);
    const stages = config.role === 'all' ? (['text-encoder', 'denoiser', 'decoder'] as const) : [config.role];
    row('threads', stages.map((s) => `${s} ${stageThreads(s, settings, config.role === 'all')}`).join(', ') + ' (spinning off)');
    row('memory arena', config.memoryArena === false ? 'off' : 'on');
    const calibration = config.precision === 'int8' ? [config.int8?.smoothAlpha != null && `smoothing α ${config.int8.smoothAlpha}`, config.int8?.outlierRatio != null && `outlier split > ${config.int8.outlierRatio}× median`].filter(Boolean) : [];
    row('precision', `${config.precision ?? 'fp32'}${calibration.length > 0 ? ` (denoiser: ${calibration.join(', ')})` : ''}${config.role === 'decoder' || config.role === 'all' ? ' (decoder fp32)' : ''}`);
  }
  if (config.role === 'denoiser' || config.role === 'all') row('device', config.device ?? 'cpu');
  if (config.role === 'all' || config.role === 'denoiser') {
    const rows = config.batchRows ?? DEFAULT_BATCH_ROWS;
    row('batching', rows > 0 ? `step-level, ≤ ${rows} rows per forward, max wait ${config.batchWaitMs ?? 0} ms` : 'off');
  }
  if (config.role !== 'gateway' && config.role !== 'worker' && config.tiling !== undefined) row('tiling', describeTiling(config.tiling));
  row('log level', process.env.SANA_LOG_LEVEL ?? 'info');
  row('shutdown grace', `${config.shutdownGraceSeconds} s`);
  return lines;
}

function describeNatsUse(role: Role): string {
  const uses: Record<Role, string> = {
    'text-encoder': 'shared embedding cache',
    denoiser: 'unused',
    decoder: 'unused',
    gateway: 'Jobs API',
    worker: 'pulls jobs',
    all: 'Jobs API, a worker, shared embedding cache',
  };
  return uses[role];
}

export function registerServe(program: Command): void {
  const serve = program
    .command('serve')
    .description('run the gRPC services: one stage, the gateway, or all four in one process')
    .addArgument(program.createArgument('<role>', `one of ${ROLES.join(', ')}`).choices(ROLES))
    .addOption(new Option('--model <dir>', 'pipeline checkpoint folder (diffusers layout); default: the tiny random-weight checkpoint').env('SANA_MODEL'))
    .addOption(new Option('--host <host>', 'address to listen on').env('SANA_HOST'))
    .addOption(new Option('--port <n>', 'gRPC port (0: any free port); default 50051 gateway/all, 50052 text-encoder, 50053 denoiser, 50054 decoder').env('SANA_PORT').argParser(port))
    .addOption(new Option('--metrics-host <host>', 'address of the Prometheus endpoint').env('SANA_METRICS_HOST').default('0.0.0.0'))
    .addOption(new Option('--metrics-port <n>', 'Prometheus /metrics port (0: any free port); default 9464 gateway/all, 9465-9467 stages').env('SANA_METRICS_PORT').argParser(port))
    .addOption(new Option('--no-metrics', 'no metrics endpoint'))
    .addOption(new Option('--text-encoder <addresses>', 'gateway: text-encoder addresses, comma-separated (e.g. dns:///sana-text-encoder:50052)').env('SANA_TEXT_ENCODER_ADDRESS').argParser(addressList).default(['127.0.0.1:50052']))
    .addOption(new Option('--denoiser <addresses>', 'gateway: denoiser addresses, comma-separated').env('SANA_DENOISER_ADDRESS').argParser(addressList).default(['127.0.0.1:50053']))
    .addOption(new Option('--decoder <addresses>', 'gateway: decoder addresses, comma-separated').env('SANA_DECODER_ADDRESS').argParser(addressList).default(['127.0.0.1:50054']))
    .addOption(new Option('--max-in-flight <n>', 'requests each service handles at once (default: its execution capacity; gateway alone: 4)').env('SANA_MAX_IN_FLIGHT').argParser(positiveInt))
    .addOption(new Option('--max-queue <n>', 'requests waiting beyond those; more get RESOURCE_EXHAUSTED').env('SANA_MAX_QUEUE').argParser(nonNegativeInt).default(32))
    .addOption(new Option('--auth-token <token>', 'gateway: require "authorization: Bearer <token>" on Generate').env('SANA_AUTH_TOKEN'))
    .addOption(new Option('--threads <n>', 'ONNX Runtime threads per session (default: all cores; in `all` the text encoder and decoder get half)').env('SANA_THREADS').argParser(positiveInt))
    .addOption(new Option('--text-encoder-threads <n>', 'threads of the text encoder session (overrides --threads)').env('SANA_TEXT_ENCODER_THREADS').argParser(positiveInt))
    .addOption(new Option('--denoiser-threads <n>', 'threads of the denoiser session (overrides --threads)').env('SANA_DENOISER_THREADS').argParser(positiveInt))
    .addOption(new Option('--decoder-threads <n>', 'threads of the decoder session (overrides --threads)').env('SANA_DECODER_THREADS').argParser(positiveInt))
    .addOption(new Option('--batch-rows <n>', `denoiser: rows per step-level batched forward (a guided image is 2; 0: batching off)`).env('SANA_BATCH_ROWS').argParser(nonNegativeInt).default(DEFAULT_BATCH_ROWS))
    .addOption(new Option('--batch-wait-ms <n>', 'denoiser: milliseconds an idle batcher waits for more requests before its first forward').env('SANA_BATCH_WAIT_MS').argParser(nonNegativeInt).default(0))
    .addOption(new Option('--precision <p>', 'text encoder and denoiser arithmetic: W8A8 int8 or fp32 (the decoder runs fp32)').env('SANA_PRECISION').choices([...PRECISIONS]).default('fp32'))
    .addOption(new Option('--device <device>', 'denoiser transformer engine: cpu (ONNX Runtime) or cuda (fused kernels: W8A8 with --precision int8, split bf16 with fp32; env SANA_CUDA_MODE=int8|bf16 overrides)').env('SANA_DEVICE').choices([...DEVICES]).default('cpu'))
    .addOption(new Option('--tls-cert <file>', 'PEM certificate chain: serve TLS on every gRPC port (and, with --tls-ca, present it to the stages for mutual TLS)').env('SANA_TLS_CERT'))
    .addOption(new Option('--tls-key <file>', 'PEM private key of --tls-cert').env('SANA_TLS_KEY'))
    .addOption(new Option('--tls-client-ca <file>', 'PEM CA: require client certificates signed by it (mutual TLS)').env('SANA_TLS_CLIENT_CA'))
    .addOption(new Option('--tls-ca <file>', 'gateway: PEM CA that signed the stages\' certificates; turns on TLS towards the stages').env('SANA_TLS_CA'))
    .addOption(new Option('--memory-arena <on|off>', 'off: ONNX Runtime frees tensor memory after each run (RSS follows the live set) instead of keeping its high-water mark').env('SANA_MEMORY_ARENA').choices(['on', 'off']).default('on'))
    .addOption(new Option('--shutdown-grace <seconds>', 'on SIGTERM, seconds in-flight requests may finish').env('SANA_SHUTDOWN_GRACE_SECONDS').argParser(nonNegativeInt).default(30))
    .addOption(new Option('--nats <url>', 'NATS server(s), e.g. nats://nats:4222: Jobs API (gateway), job pulling (worker), shared embedding cache (text-encoder)').env('SANA_NATS'))
    .addOption(new Option('--job-concurrency <n>', 'worker: jobs run at once').env('SANA_JOB_CONCURRENCY').argParser(positiveInt).default(1))
    .addOption(new Option('--job-ack-wait <seconds>', 'seconds without a worker heartbeat before a job is redelivered').env('SANA_JOB_ACK_WAIT').argParser(positiveInt))
    .addOption(new Option('--job-max-deliver <n>', 'deliveries of a job before it fails to the dead letters').env('SANA_JOB_MAX_DELIVER').argParser(positiveInt))
    .addOption(new Option('--job-result-ttl <seconds>', 'seconds the images of finished jobs are kept').env('SANA_JOB_RESULT_TTL').argParser(positiveInt))
    .addOption(new Option('--shared-cache-ttl <seconds>', 'text-encoder: seconds an embedding stays in the shared cache').env('SANA_SHARED_CACHE_TTL').argParser(positiveInt))
    .addOption(new Option('--shared-cache-mb <n>', 'text-encoder: MiB the shared embedding cache holds').env('SANA_SHARED_CACHE_MB').argParser(positiveInt))
    .action(async (role: Role, opts: {
      model?: string; host?: string; port?: number; metricsHost: string; metricsPort?: number; metrics: boolean;
      textEncoder: string[]; denoiser: string[]; decoder: string[]; maxInFlight?: number; maxQueue: number;
      authToken?: string; threads?: number; textEncoderThreads?: number; denoiserThreads?: number; decoderThreads?: number;
      batchRows: number; batchWaitMs: number; shutdownGrace: number; tiling: boolean; tileSize?: number; tileOverlap?: number;
      precision: Precision; device: Device; int8Smooth?: number; int8Outliers?: number;
      nats?: string; jobConcurrency: number; jobAckWait?: number; jobMaxDeliver?: number; jobResultTtl?: number;
      sharedCacheTtl?: number; sharedCacheMb?: number;
      memoryArena: 'on' | 'off'; tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsClientCa?: string;
    }) => {
      if (role === 'worker' && !opts.nats) throw new CommanderArgumentError('sana serve worker needs --nats <url> (or SANA_NATS)');
      const defaultModel = role !== 'gateway' && role !== 'worker' && !opts.model;
      const config: ServeConfig = {
        role,
        // like `sana generate`, the embedded default is the tiny random-weight checkpoint (noise images)
        model: role === 'gateway' || role === 'worker' ? undefined : (opts.model ?? defaultModelDir()),
        host: opts.host ?? (role === 'all' ? '127.0.0.1' : '0.0.0.0'),
        port: opts.port ?? DEFAULT_PORTS[role].grpc,
        metricsHost: opts.metricsHost,
        metricsPort: opts.metrics ? (opts.metricsPort ?? DEFAULT_PORTS[role].metrics) : -1,
        stages: { textEncoder: opts.textEncoder, denoiser: opts.denoiser, decoder: opts.decoder },
        maxInFlight: opts.maxInFlight,
        maxQueue: opts.maxQueue,
        authToken: opts.authToken,
        threads: opts.threads,
        tiling: tilingFromFlags(opts),
        stageThreads: { 'text-encoder': opts.textEncoderThreads, denoiser: opts.denoiserThreads, decoder: opts.decoderThreads },
        batchRows: opts.batchRows,
        batchWaitMs: opts.batchWaitMs,
        precision: opts.precision,
        int8: int8FromFlags(opts),
        device: opts.device,
        memoryArena: opts.memoryArena === 'on',
        tls: { cert: opts.tlsCert, key: opts.tlsKey, ca: opts.tlsCa, clientCa: opts.tlsClientCa },
        shutdownGraceSeconds: opts.shutdownGrace,
        nats: opts.nats,
        jobs: { ackWaitSeconds: opts.jobAckWait, maxDeliver: opts.jobMaxDeliver, resultTtlSeconds: opts.jobResultTtl },
        jobConcurrency: opts.jobConcurrency,
        sharedCache: { ttlSeconds: opts.sharedCacheTtl, maxBytes: opts.sharedCacheMb && opts.sharedCacheMb * 2 ** 20 },
      };
      const serving = await startServe(config);
      for (const line of describeConfig(config, serving, defaultModel)) console.error(line);
      const log = createLogger('serve');
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = true;
        console.error(`sana serve: ${signal}: draining in-flight requests (up to ${config.shutdownGraceSeconds} s)`);
        serving.close().then(() => process.exit(0), (e: Error) => {
          log.error({ err: e }, 'shutdown failed');
          process.exit(1);
        });
      };
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.once('SIGINT', () => stop('SIGINT'));
      try {
        await serving.ready;
      } catch (e) {
        console.error(`sana serve: failed to start: ${(e as Error).message}`);
        await serving.close();
        process.exit(1);
      }
      if (config.role === 'worker') console.error(`sana serve: ready; worker ${serving.worker?.id} pulling jobs from ${config.nats}`);
      else console.error(`sana serve: ready; ${config.role === 'all' || config.role === 'gateway' ? 'Generation' : config.role} serving on ${serving.address}`);
    });
  for (const option of [...tilingOptions(), ...int8Options()]) serve.addOption(option);
}
