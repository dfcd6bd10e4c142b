// `sana serve <text-encoder|denoiser|decoder|gateway|all>`: runs one service per process (Kubernetes) or all four
// in one process on loopback ports over the same gRPC code path (the embedded default). Flags and SANA_*
// environment variables configure it; the configuration is printed to stderr at start, logs go to stdout.
import path from 'node:path';
import { Command, InvalidArgumentError as CommanderArgumentError, Option } from 'commander';
import type { Registry } from 'prom-client';
import type { AdmissionLimits } from '../common/admission.ts';
import { InvalidArgumentError } from '../common/errors.ts';
import { ServiceHost } from '../common/grpc-server.ts';
import { createLogger, type Logger } from '../common/logging.ts';
import { createRegistry, startMetricsServer, type MetricsServer } from '../common/metrics.ts';
import { channelCredentials, describeTls, serverCredentials, type TlsFiles } from '../common/tls.ts';
import type { SessionOptions } from '../common/ort-session.ts';
import { bringUp, StageSlot } from '../common/stage-slot.ts';
import type { DecoderStage, DenoiserStage, TextEncoderStage } from '../common/stages.ts';
import { addDecoderService, warmUpDecoder } from '../decoder/server.ts';
import { LocalDecoder } from '../decoder/stage.ts';
import { addDenoiserService, warmUpDenoiser } from '../denoiser/server.ts';
import { LocalDenoiser } from '../denoiser/stage.ts';
import { checkModelDir } from '../gateway/pipeline.ts';
import { RemoteStages, type StageAddresses } from '../gateway/remote-stages.ts';
import { addGenerationService, connectInBackground } from '../gateway/server.ts';
import { addTextEncoderService, warmUpTextEncoder } from '../text-encoder/server.ts';
import { LocalTextEncoder } from '../text-encoder/stage.ts';
import { defaultModelDir } from './generate.ts';
import { nonNegativeInt, positiveInt } from './args.ts';

export const ROLES = ['text-encoder', 'denoiser', 'decoder', 'gateway', 'all'] as const;
export type Role = (typeof ROLES)[number];
type StageRole = Exclude<Role, 'gateway' | 'all'>;

/** Default gRPC and metrics ports per role, so the four can also run side by side on one machine. */
const DEFAULT_PORTS: Record<Role, { grpc: number; metrics: number }> = {
  all: { grpc: 50051, metrics: 9464 },
  gateway: { grpc: 50051, metrics: 9464 },
  'text-encoder': { grpc: 50052, metrics: 9465 },
  denoiser: { grpc: 50053, metrics: 9466 },
  decoder: { grpc: 50054, metrics: 9467 },
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
  maxInFlight: number;
  maxQueue: number;
  authToken?: string;
  /** ONNX Runtime intra-op threads per session (default: all cores) */
  threads?: number;
  /** certificates for TLS / mutual TLS on every gRPC port and the gateway's stage clients; none: plaintext */
  tls?: TlsFiles;
  /** false: ONNX Runtime returns tensor memory after each run instead of keeping its arena's high-water mark */
  memoryArena?: boolean;
  shutdownGraceSeconds: number;
}

export interface Serving {
  config: ServeConfig;
  hosts: ServiceHost[];
  /** where clients reach the served role (the gateway in `all`) */
  address: string;
  metricsPort?: number;
  /** resolves once health reports SERVING (models loaded and warmed up, stages reached) */
  ready: Promise<void>;
  close(): Promise<void>;
}

interface Closable {
  close?: () => Promise<void> | void;
}

/** One stage service: listening (NOT_SERVING) at once, SERVING when its model is loaded and warmed up. */
async function startStage(role: StageRole, config: ServeConfig, host: string, port: number, shared: Shared, admission: AdmissionLimits) {
  if (!config.model) throw new Error(`sana serve ${config.role}: --model (or SANA_MODEL) is required`);
  const modelDir = config.model;
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
  const session: SessionOptions = { ...(config.threads ? { intraOpThreads: config.threads } : {}), ...(config.memoryArena === false ? { memoryArena: false } : {}) };
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
      ? await serve<TextEncoderStage>('text encoder', addTextEncoderService, () => LocalTextEncoder.load(modelDir, session), warmUpTextEncoder)
      : role === 'denoiser'
        ? await serve<DenoiserStage>('denoiser', addDenoiserService, () => LocalDenoiser.load(modelDir, session), warmUpDenoiser)
        : await serve<DecoderStage>('decoder', addDecoderService, () => LocalDecoder.load(path.join(modelDir, 'vae'), session), warmUpDecoder);
  // closing while the model still loads waits for it, so its ONNX Runtime workers do not outlive the service
  return { service, ready, closeModel: async () => (await loading?.catch(() => undefined))?.close?.() };
}

interface Shared {
  registry: Registry;
  logger?: Logger;
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
  const limits = { maxInFlight: config.maxInFlight, maxQueue: config.maxQueue };
  let ready: Promise<void>;
  let address: string;
  let metrics: MetricsServer | undefined;
  try {
    if (config.metricsPort >= 0) {
      metrics = await startMetricsServer(registry, config.metricsHost, config.metricsPort);
      closers.push(() => metrics!.close());
    }
    if (config.role === 'gateway' || config.role === 'all') {
      // the gateway's stage clients: TLS when a CA is given, presenting the gateway's certificate (mutual TLS)
      const { cert, key, ca } = config.tls ?? {};
      if (config.role === 'all' && cert && !ca) {
        throw new InvalidArgumentError('tls-ca', 'is required by `sana serve all` with --tls-cert: the gateway verifies its loopback stages with it');
      }
      const stageCredentials = channelCredentials(ca ? { ca, cert, key } : {});
      let stageAddresses = config.stages;
      let stagesReady: Promise<unknown> = Promise.resolve();
      if (config.role === 'all') {
        checkModelDir(config.model ?? ''); // names the missing component folders before anything starts
        // the three stages on loopback ports of this process; the gateway reaches them over gRPC like any other
        const starting = (['text-encoder', 'denoiser', 'decoder'] as const).map((role) => startStage(role, config, '127.0.0.1', 0, shared, limits));
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
        admission: limits,
        shutdownGraceSeconds: config.shutdownGraceSeconds,
        credentials: serverCredentials(config.tls ?? {}),
      });
      const stages = new RemoteStages(stageAddresses, stageCredentials);
      addGenerationService(gateway, stages, { authToken: config.authToken });
      await gateway.listen();
      hosts.unshift(gateway);
      let connecting: { stop(): void; ready: Promise<void> } | undefined;
      let closing = false;
      ready = stagesReady.then(() => {
        if (closing) return;
        connecting = connectInBackground(gateway, stages);
        return connecting.ready;
      });
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
      const s = await startStage(config.role, config, config.host, config.port, shared, limits);
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
    close: async () => {
      for (const close of closers) await close();
    },
  };
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
  if (config.role === 'gateway') {
    row('text-encoder at', config.stages.textEncoder.join(', '));
    row('denoiser at', config.stages.denoiser.join(', '));
    row('decoder at', config.stages.decoder.join(', '));
  }
  if (config.role === 'gateway' || config.role === 'all') row('auth', config.authToken ? 'bearer token required' : 'off');
  row('tls', describeTls(config.tls ?? {}));
  if (config.role === 'gateway' || config.role === 'all') row('tls to stages', config.tls?.ca ? `verified with ${config.tls.ca}${config.tls.cert ? ', client certificate presented' : ''}` : 'off (plaintext)');
  row('metrics', serving.metricsPort !== undefined ? `http://${config.metricsHost}:${serving.metricsPort}/metrics` : 'off');
  row('threads', config.threads ?? 'all cores');
  row('memory arena', config.memoryArena === false ? 'off' : 'on');
  row('log level', process.env.SANA_LOG_LEVEL ?? 'info');
  row('shutdown grace', `${config.shutdownGraceSeconds} s`);
  return lines;
}

export function registerServe(program: Command): void {
  program
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
    .addOption(new Option('--max-in-flight <n>', 'requests handled at once').env('SANA_MAX_IN_FLIGHT').argParser(positiveInt).default(4))
    .addOption(new Option('--max-queue <n>', 'requests waiting beyond those; more get RESOURCE_EXHAUSTED').env('SANA_MAX_QUEUE').argParser(nonNegativeInt).default(32))
    .addOption(new Option('--auth-token <token>', 'gateway: require "authorization: Bearer <token>" on Generate').env('SANA_AUTH_TOKEN'))
    .addOption(new Option('--threads <n>', 'ONNX Runtime threads per session (default: all cores)').env('SANA_THREADS').argParser(positiveInt))
    .addOption(new Option('--tls-cert <file>', 'PEM certificate chain: serve TLS on every gRPC port (and, with --tls-ca, present it to the stages for mutual TLS)').env('SANA_TLS_CERT'))
    .addOption(new Option('--tls-key <file>', 'PEM private key of --tls-cert').env('SANA_TLS_KEY'))
    .addOption(new Option('--tls-client-ca <file>', 'PEM CA: require client certificates signed by it (mutual TLS)').env('SANA_TLS_CLIENT_CA'))
    .addOption(new Option('--tls-ca <file>', 'gateway: PEM CA that signed the stages\' certificates; turns on TLS towards the stages').env('SANA_TLS_CA'))
    .addOption(new Option('--memory-arena <on|off>', 'off: ONNX Runtime frees tensor memory after each run (RSS follows the live set) instead of keeping its high-water mark').env('SANA_MEMORY_ARENA').choices(['on', 'off']).default('on'))
    .addOption(new Option('--shutdown-grace <seconds>', 'on SIGTERM, seconds in-flight requests may finish').env('SANA_SHUTDOWN_GRACE_SECONDS').argParser(nonNegativeInt).default(30))
    .action(async (role: Role, opts: {
      model?: string; host?: string; port?: number; metricsHost: string; metricsPort?: number; metrics: boolean;
      textEncoder: string[]; denoiser: string[]; decoder: string[]; maxInFlight: number; maxQueue: number;
      authToken?: string; threads?: number; memoryArena: 'on' | 'off'; shutdownGrace: number;
      tlsCert?: string; tlsKey?: string; tlsCa?: string; tlsClientCa?: string;
    }) => {
      const defaultModel = role !== 'gateway' && !opts.model;
      const config: ServeConfig = {
        role,
        // like `sana generate`, the embedded default is the tiny random-weight checkpoint (noise images)
        model: role === 'gateway' ? undefined : (opts.model ?? defaultModelDir()),
        host: opts.host ?? (role === 'all' ? '127.0.0.1' : '0.0.0.0'),
        port: opts.port ?? DEFAULT_PORTS[role].grpc,
        metricsHost: opts.metricsHost,
        metricsPort: opts.metrics ? (opts.metricsPort ?? DEFAULT_PORTS[role].metrics) : -1,
        stages: { textEncoder: opts.textEncoder, denoiser: opts.denoiser, decoder: opts.decoder },
        maxInFlight: opts.maxInFlight,
        maxQueue: opts.maxQueue,
        authToken: opts.authToken,
        threads: opts.threads,
        memoryArena: opts.memoryArena === 'on',
        tls: { cert: opts.tlsCert, key: opts.tlsKey, ca: opts.tlsCa, clientCa: opts.tlsClientCa },
        shutdownGraceSeconds: opts.shutdownGrace,
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
      console.error(`sana serve: ready; ${config.role === 'all' || config.role === 'gateway' ? 'Generation' : config.role} serving on ${serving.address}`);
    });
}
