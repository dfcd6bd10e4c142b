// gRPC client plumbing for calling stage services: channel options (message limits, keepalive, round_robin),
// a pool that balances over several addresses, request-id metadata, and stream helpers that honour
// back-pressure and cancel the call when the caller's AbortSignal fires.
import { once } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { CancelledError } from './errors.ts';
import { fromServiceError } from './grpc-status.ts';
import { REQUEST_ID_KEY } from './logging.ts';
import { MAX_MESSAGE_BYTES } from './tensor-chunks.ts';

export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
  'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  // a dns:/// target that resolves to several pods (a headless Service) spreads calls over all of them
  'grpc.service_config': JSON.stringify({ loadBalancingConfig: [{ round_robin: {} }] }),
  // a restarted stage is found again within seconds, not after minutes of exponential backoff
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 5_000,
};

type ClientConstructor<C extends grpc.Client> = new (address: string, credentials: grpc.ChannelCredentials, options?: Partial<grpc.ClientOptions>) => C;

/**
 * Clients for one stage's addresses. Each address may itself resolve to several servers (round_robin inside its
 * channel); across addresses calls rotate, skipping channels that are known to be failing.
 */
export class ClientPool<C extends grpc.Client> {
  readonly clients: C[];
  private next = 0;

  constructor(
    readonly stage: string,
    readonly addresses: string[],
    Client: ClientConstructor<C>,
    credentials = grpc.credentials.createInsecure(),
  ) {
    if (addresses.length === 0) throw new Error(`no address configured for the ${stage}`);
    this.clients = addresses.map((a) => new Client(a, credentials, CHANNEL_OPTIONS));
  }

  pick(): C {
    const n = this.clients.length;
    for (let k = 0; k < n; k++) {
      const client = this.clients[(this.next + k) % n];
      if (client.getChannel().getConnectivityState(true) !== grpc.connectivityState.TRANSIENT_FAILURE) {
        this.next = (this.next + k + 1) % n;
        return client;
      }
    }
    // all failing: try the next one anyway, which fails fast with UNAVAILABLE
    return this.clients[this.next++ % n];
  }

  close(): void {
    for (const c of this.clients) c.close();
  }
}

export function requestMetadata(requestId?: string): grpc.Metadata {
  const metadata = new grpc.Metadata();
  if (requestId) metadata.set(REQUEST_ID_KEY, requestId);
  return metadata;
}

/** Cancels `call` when `signal` aborts; returns the function that stops watching. */
function cancelOnAbort(call: { cancel(): void }, signal?: AbortSignal): () => void {
  if (!signal) return () => {};
  const onAbort = () => call.cancel();
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  return () => signal.removeEventListener('abort', onAbort);
}

/**
 * Reads a response stream to its end. Messages go to `onMessage` (an error it throws cancels the call); a
 * failed call becomes the error `fromServiceError` makes; an aborted signal becomes a CancelledError.
 */
export function readResponses<T>(call: grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<unknown, T>, stage: string, onMessage: (message: T) => void, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let settled = false;
    const settle = (error?: Error) => {
      if (settled) return;
      settled = true;
      stopWatching();
      if (error) reject(error);
      else resolve();
    };
    const stopWatching = cancelOnAbort(call, signal);
    call.on('data', (message: T) => {
      if (settled) return;
      try {
        onMessage(message);
      } catch (e) {
        call.cancel();
        settle(e as Error);
      }
    });
    call.on('end', () => settle());
    call.on('error', (e: grpc.ServiceError) => {
      if (signal?.aborted) settle(signal.reason instanceof Error ? signal.reason : new CancelledError(`${stage} call cancelled`));
      else settle(fromServiceError(e, stage));
    });
  });
}

/** Writes the messages with back-pressure, then half-closes. Stops early when the call ends or is cancelled. */
export async function writeRequests<T>(call: grpc.ClientWritableStream<T> | grpc.ClientDuplexStream<T, unknown>, messages: Iterable<T>, signal?: AbortSignal): Promise<void> {
  const ended = new AbortController();
  const onClose = () => ended.abort();
  call.once('error', onClose);
  call.once('close', onClose);
  const stop = signal ? AbortSignal.any([signal, ended.signal]) : ended.signal;
  try {
    for (const message of messages) {
      if (stop.aborted) return;
      if (!call.write(message)) {
        try {
          await once(call, 'drain', { signal: stop });
        } catch {
          return; // the call failed or was cancelled: readResponses reports why
        }
      }
    }
    call.end();
  } finally {
    call.off('error', onClose);
    call.off('close', onClose);
  }
}

/** Runs a unary call as a promise, with a deadline in seconds. */
export function unaryCall<Req, Res>(
  stage: string,
  invoke: (request: Req, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (e: grpc.ServiceError | null, r?: Res) => void) => grpc.ClientUnaryCall,
  request: Req,
  deadlineSeconds: number,
  requestId?: string,
): Promise<Res> {
  return new Promise((resolve, reject) => {
    invoke(request, requestMetadata(requestId), { deadline: Date.now() + deadlineSeconds * 1000 }, (e, r) => {
      if (e) reject(fromServiceError(e, stage));
      else resolve(r as Res);
    });
  });
}

