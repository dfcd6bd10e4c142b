// gRPC bootstrap shared by every service: server options, health (NOT_SERVING until the model is loaded and
// warmed up), reflection, admission control, metrics and request-scoped logs, and the call wrappers that turn a
// plain async function into a handler with cancellation, deadlines, back-pressure and status mapping.
import crypto from 'node:crypto';
import { once } from 'node:events';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import type { Registry } from 'prom-client';
import { configureTextEncoding, getTextEncoding } from '@bufbuild/protobuf/wire';
import { Admission, type AdmissionLimits } from './admission.ts';
import { CancelledError, InvalidArgumentError } from './errors.ts';
import { Status, statusName, toStatus } from './grpc-status.ts';
import { createLogger, QUEUED_SECONDS_KEY, REQUEST_ID_KEY, type Logger } from './logging.ts';
import { createRegistry, ServiceMetrics } from './metrics.ts';
import { MAX_MESSAGE_BYTES } from './tensor-chunks.ts';

export const PROTO_ROOT = fileURLToPath(new URL('../../proto', import.meta.url));
export const PROTO_FILES = ['sana/v1/generation.proto', 'sana/v1/text_encoder.proto', 'sana/v1/denoiser.proto', 'sana/v1/decoder.proto', 'sana/v1/jobs.proto'];
export const HEALTH_SERVICE = 'grpc.health.v1.Health';

/** Server options: the default 4 MiB message limit in both directions (chunking needs no more); keepalive to find dead peers. */
export const SERVER_OPTIONS: grpc.ServerOptions = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.http2.min_ping_interval_without_data_ms': 10_000,
  // recycle connections now and then so DNS-based clients spread over new replicas; calls keep 10 minutes
  'grpc.max_connection_age_ms': 5 * 60_000,
  'grpc.max_connection_age_grace_ms': 10 * 60_000,
};

// proto3 strings are UTF-8: a message with malformed UTF-8 in a string field fails to decode (INVALID_ARGUMENT)
// instead of reaching the model with U+FFFD in it
const textEncoding = getTextEncoding();
configureTextEncoding({ ...textEncoding, decodeUtf8: (bytes) => textEncoding.decodeUtf8(bytes, true) });

/** A request message that did not decode; the handler turns it into INVALID_ARGUMENT instead of grpc-js's INTERNAL. */
class MalformedRequest {
  constructor(
    readonly type: string,
    readonly reason: string,
  ) {}
}

/** Throws INVALID_ARGUMENT for a request that did not decode. */
function checkDecoded(message: unknown): void {
  if (message instanceof MalformedRequest) {
    throw new InvalidArgumentError('request', `is not a valid ${message.type} protobuf message (${message.reason})`);
  }
}

/** The service definition with request decoders that return a MalformedRequest instead of throwing. */
function tolerantDecoders(definition: grpc.ServiceDefinition): grpc.ServiceDefinition {
  return Object.fromEntries(
    Object.entries(definition).map(([name, method]) => {
      const type = method.path.split('/').at(-1) + ' request';
      const requestDeserialize = (bytes: Buffer) => {
        try {
          return method.requestDeserialize(bytes);
        } catch (e) {
          return new MalformedRequest(type, e instanceof Error ? e.message : String(e));
        }
      };
      return [name, { ...method, requestDeserialize }];
    }),
  );
}

/** Handlers of unary and server-streaming calls that answer INVALID_ARGUMENT for a request that did not decode. */
function refuseMalformed(implementation: grpc.UntypedServiceImplementation): grpc.UntypedServiceImplementation {
  return Object.fromEntries(
    Object.entries(implementation).map(([name, handler]) => [
      name,
      (call: { request?: unknown; emit(event: 'error', status: unknown): void }, callback?: (status: unknown) => void) => {
        try {
          checkDecoded(call.request);
        } catch (e) {
          const status = toStatus(e);
          return callback ? callback(status) : call.emit('error', status);
        }
        return (handler as (...args: unknown[]) => unknown)(call, callback);
      },
    ]),
  );
}

let reflectionDefinition: protoLoader.PackageDefinition | undefined;

/** Our protos plus health, parsed once, as reflection describes them to grpcurl and friends. */
function reflectionPackage(): protoLoader.PackageDefinition {
  reflectionDefinition ??= protoLoader.loadSync([...PROTO_FILES, 'health/v1/health.proto'], {
    keepCase: true, // field names as the .proto spells them (snake_case), not camelCased
    includeDirs: [PROTO_ROOT, path.resolve(path.dirname(healthProtoPath), '../..')],
  });
  return reflectionDefinition;
}

export interface ServiceHostOptions {
  /** the `service` label of metrics and logs: text-encoder, denoiser, decoder, gateway */
  name: string;
  host: string;
  /** 0 picks a free port */
  port: number;
  /** shared with the other services of the process (sana serve all) or the service's own */
  registry?: Registry;
  logger?: Logger;
  admission: AdmissionLimits;
  /** seconds a graceful shutdown waits for in-flight calls */
  shutdownGraceSeconds?: number;
  /** TLS or mutual TLS (see grpc-tls.ts); plaintext when absent */
  credentials?: grpc.ServerCredentials;
}

/** What a call handler gets besides its request. */
export interface CallScope {
  requestId: string;
  /** aborted when the client cancels, the deadline passes or the server shuts down */
  signal: AbortSignal;
  log: Logger;
  /** the client's deadline (ms since epoch), or Infinity */
  deadline: number;
  /** seconds the call waited for admission */
  queuedSeconds: number;
}

/** Streaming calls are the model work: each takes an admission slot (RESOURCE_EXHAUSTED when the queue is full). */
export interface StreamOptions<Req> {
  /** cheap checks before admission (auth, request shape): what it throws fails the call without queueing */
  precheck?: (request: Req, metadata: grpc.Metadata) => void;
  /** false: no admission slot (calls that only read state, such as watching a job); default true */
  admit?: boolean;
}

/** Writes to a response stream. */
export interface ResponseWriter<T> {
  /** writes and, when the stream's buffer is full, waits for the client to read (back-pressure) */
  write(message: T): Promise<void>;
  /** writes all the messages only when the buffer has room now (optional data such as previews); says whether it did */
  offer(messages: Iterable<T>): boolean;
  /** writes regardless of back-pressure; only for small messages of bounded number (progress events) */
  push(message: T): void;
}

/** What a client sees of an internal error: no internals, only the id under which the server logged them. */
export function internalErrorMessage(requestId: string): string {
  return `internal error (request id ${requestId}); the server log has the details`;
}

type AnyCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

export class ServiceHost {
  readonly server: grpc.Server;
  readonly health = new HealthImplementation({ '': 'NOT_SERVING' });
  readonly registry: Registry;
  readonly metrics: ServiceMetrics;
  readonly log: Logger;
  readonly admission: Admission;
  private stopping = false;
  private readonly serviceNames: string[] = [];
  private readonly shutdownController = new AbortController();
  private boundPort = 0;

  constructor(readonly options: ServiceHostOptions) {
    this.server = new grpc.Server(SERVER_OPTIONS);
    this.registry = options.registry ?? createRegistry();
    this.metrics = new ServiceMetrics(this.registry, options.name);
    this.log = options.logger ?? createLogger(options.name);
    this.admission = new Admission(options.admission, (depth) => this.metrics.queueDepth.set({ service: options.name }, depth));
    // health comes with its own handlers: they get the same tolerant decoders, and refuse what did not decode
    this.health.addToServer({
      addService: (definition: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation) =>
        this.server.addService(tolerantDecoders(definition), refuseMalformed(implementation)),
    } as grpc.Server);
  }

  get port(): number {
    return this.boundPort;
  }

  /** host:port that clients on this machine can dial */
  get address(): string {
    const host = this.options.host === '0.0.0.0' || this.options.host === '::' ? '127.0.0.1' : this.options.host;
    return `${host.includes(':') ? `[${host}]` : host}:${this.boundPort}`;
  }

  /** Adds a service (by its full proto name, e.g. sana.v1.Denoiser); health reports it NOT_SERVING until ready. */
  addService(fullName: string, definition: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): void {
    this.server.addService(tolerantDecoders(definition), implementation);
    this.serviceNames.push(fullName);
    this.health.setStatus(fullName, 'NOT_SERVING');
  }

  async listen(): Promise<number> {
    new ReflectionService(reflectionPackage(), { services: [...this.serviceNames, HEALTH_SERVICE] }).addToServer(this.server);
    const { host, port } = this.options;
    const bindHost = host.includes(':') ? `[${host}]` : host;
    this.boundPort = await new Promise<number>((resolve, reject) =>
      this.server.bindAsync(`${bindHost}:${port}`, this.options.credentials ?? grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    return this.boundPort;
  }

  /** Health and the readiness gauge: SERVING once the model is loaded and warmed up. */
  setServing(serving: boolean): void {
    if (serving && this.stopping) return; // a model that finishes loading during shutdown does not revive it
    const status = serving ? 'SERVING' : 'NOT_SERVING';
    for (const name of ['', ...this.serviceNames]) this.health.setStatus(name, status);
    this.metrics.ready.set({ service: this.options.name }, serving ? 1 : 0);
  }

  /** Stops taking calls, lets in-flight calls finish for the grace period, then cancels what is left. */
  async shutdown(): Promise<void> {
    this.setServing(false);
    this.stopping = true;
    this.admission.close(`${this.options.name} is shutting down; retry on another replica`);
    const graceMs = (this.options.shutdownGraceSeconds ?? 30) * 1000;
    await new Promise<void>((resolve) => {
      const force = setTimeout(() => {
        this.shutdownController.abort(new CancelledError('server shutting down'));
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(force);
        resolve();
      });
    });
  }

  // ---- call wrappers ----

  private scope(call: AnyCall, method: string): { scope: CallScope; done: () => void } {
    const given = call.metadata.get(REQUEST_ID_KEY)[0];
    const requestId = typeof given === 'string' && given.length > 0 && given.length <= 128 ? given : crypto.randomUUID();
    const controller = new AbortController();
    const deadlineValue = call.getDeadline();
    const deadline = deadlineValue instanceof Date ? deadlineValue.getTime() : Number(deadlineValue);
    const onCancel = () =>
      controller.abort(new CancelledError(Date.now() >= deadline ? 'deadline exceeded' : 'cancelled by the client'));
    const onShutdown = () => controller.abort(this.shutdownController.signal.reason);
    const events = call as unknown as NodeJS.EventEmitter; // every call kind emits 'cancelled'
    events.on('cancelled', onCancel);
    this.shutdownController.signal.addEventListener('abort', onShutdown, { once: true });
    const responseMetadata = new grpc.Metadata();
    responseMetadata.set(REQUEST_ID_KEY, requestId);
    call.sendMetadata(responseMetadata);
    return {
      scope: { requestId, signal: controller.signal, log: this.log.child({ requestId, method }), deadline, queuedSeconds: 0 },
      done: () => {
        events.off('cancelled', onCancel);
        this.shutdownController.signal.removeEventListener('abort', onShutdown);
      },
    };
  }

  /** Runs `work` with metrics, logs, admission (when `admit`) and the status of whatever it throws. */
  private async track(
    call: AnyCall,
    method: string,
    admit: boolean,
    precheck: (() => void) | undefined,
    work: (scope: CallScope) => Promise<void>,
    fail: (status: ReturnType<typeof toStatus>) => void,
  ): Promise<void> {
    const service = this.options.name;
    const started = performance.now();
    const { scope, done } = this.scope(call, method);
    this.metrics.inFlight.inc({ service, method });
    let code = Status.OK;
    try {
      precheck?.();
      let release: (() => void) | undefined;
      if (admit) {
        const waitStart = performance.now();
        release = await this.admission.acquire(scope.signal);
        scope.queuedSeconds = (performance.now() - waitStart) / 1000;
        this.metrics.queueSeconds.observe({ service }, scope.queuedSeconds);
      }
      const executionStart = performance.now();
      try {
        await work(scope);
      } finally {
        release?.();
        if (admit) this.metrics.executionSeconds.observe({ service }, (performance.now() - executionStart) / 1000);
      }
    } catch (error) {
      const status = toStatus(error);
      code = status.code;
      if (scope.signal.aborted && Date.now() >= scope.deadline) code = Status.DEADLINE_EXCEEDED;
      if (code === Status.INTERNAL || code === Status.UNKNOWN) {
        // the details stay in the log; the client gets the request id to quote
        scope.log.error({ err: error }, 'call failed');
        status.code = Status.INTERNAL;
        status.details = internalErrorMessage(scope.requestId);
        status.metadata = undefined;
      }
      if (!scope.signal.aborted) fail(status); // a cancelled call already has its status
    } finally {
      done();
      const seconds = (performance.now() - started) / 1000;
      const codeName = statusName(code);
      this.metrics.inFlight.dec({ service, method });
      this.metrics.requests.inc({ service, method, code: codeName });
      this.metrics.requestSeconds.observe({ service, method, code: codeName }, seconds);
      scope.log.info({ code: codeName, seconds: Number(seconds.toFixed(4)) }, 'call finished');
    }
  }

  unary<Req, Res>(method: string, handler: (request: Req, scope: CallScope) => Promise<Res>, options: Pick<StreamOptions<Req>, 'precheck'> = {}): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      let response: Res | undefined;
      const precheck = options.precheck;
      void this.track(
        call as AnyCall,
        method,
        false,
        precheck && (() => precheck(call.request, call.metadata)),
        async (scope) => {
          checkDecoded(call.request);
          response = await handler(call.request, scope);
        },
        (status) => callback(status as grpc.ServiceError),
      ).then(() => {
        if (response !== undefined) callback(null, response);
      });
    };
  }

  serverStream<Req, Res>(
    method: string,
    handler: (request: Req, scope: CallScope, out: ResponseWriter<Res>) => Promise<void>,
    options: StreamOptions<Req> = {},
  ): grpc.handleServerStreamingCall<Req, Res> {
    return (call) => {
      let ok = false;
      let queued = 0;
      const precheck = options.precheck;
      void this.track(
        call as AnyCall,
        method,
        options.admit ?? true,
        () => {
          checkDecoded(call.request);
          precheck?.(call.request, call.metadata);
        },
        async (scope) => {
          queued = scope.queuedSeconds;
          await handler(call.request, scope, responseWriter(call, scope.signal));
          ok = true;
        },
        (status) => call.emit('error', status),
      ).then(() => {
        if (ok) call.end(queueTrailer(queued));
      });
    };
  }

  bidiStream<Req, Res>(
    method: string,
    handler: (requests: RequestReader<Req>, scope: CallScope, out: ResponseWriter<Res>) => Promise<void>,
  ): grpc.handleBidiStreamingCall<Req, Res> {
    return (call) => {
      let ok = false;
      let queued = 0;
      void this.track(
        call as AnyCall,
        method,
        true,
        undefined,
        async (scope) => {
          queued = scope.queuedSeconds;
          await handler(new RequestReader(call, scope.signal), scope, responseWriter(call, scope.signal));
          ok = true;
        },
        (status) => call.emit('error', status),
      ).then(() => {
        if (ok) call.end(queueTrailer(queued));
      });
    };
  }
}

/** Tells the caller how long its call waited for admission, so it can split queue from execution time. */
function queueTrailer(seconds: number): grpc.Metadata {
  const metadata = new grpc.Metadata();
  metadata.set(QUEUED_SECONDS_KEY, seconds.toFixed(6));
  return metadata;
}

function responseWriter<T>(call: grpc.ServerWritableStream<unknown, T> | grpc.ServerDuplexStream<unknown, T>, signal: AbortSignal): ResponseWriter<T> {
  return {
    async write(message) {
      if (signal.aborted) throw signal.reason;
      if (!call.write(message)) await once(call, 'drain', { signal }).catch(() => { throw signal.reason ?? new CancelledError(); });
    },
    offer(messages) {
      if (signal.aborted || call.writableNeedDrain) return false;
      for (const message of messages) call.write(message);
      return true;
    },
    push(message) {
      if (!signal.aborted) call.write(message);
    },
  };
}

/** Reads a client stream to its end, one message at a time, giving up when the call is cancelled. */
export class RequestReader<T> {
  constructor(
    private readonly call: grpc.ServerDuplexStream<T, unknown>,
    private readonly signal: AbortSignal,
  ) {}

  /** Calls `onMessage` for each message until the client half-closes; an error thrown by it fails the call. */
  readAll(onMessage: (message: T) => void): Promise<void> {
    const { call, signal } = this;
    return new Promise<void>((resolve, reject) => {
      const cleanup = () => {
        call.off('data', onData);
        call.off('end', onEnd);
        call.off('error', onError);
        signal.removeEventListener('abort', onAbort);
      };
      const onData = (message: T) => {
        try {
          checkDecoded(message);
          onMessage(message);
        } catch (e) {
          cleanup();
          call.pause();
          reject(e);
        }
      };
      const onEnd = () => {
        cleanup();
        resolve();
      };
      const onError = (e: Error) => {
        cleanup();
        reject(e);
      };
      const onAbort = () => {
        cleanup();
        reject(signal.reason);
      };
      if (signal.aborted) return reject(signal.reason);
      call.on('data', onData);
      call.once('end', onEnd);
      call.once('error', onError);
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }
}
