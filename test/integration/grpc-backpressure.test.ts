// Back-pressure on response streams, on a real server over loopback: a handler writing 96 MiB of image chunks to a
// client that does not read must wait for it (not buffer everything), every byte must arrive in order once the
// client reads, and a client that cancels while the handler waits must release it. The client is a plain HTTP/2
// gRPC call (test/helpers/grpc.ts unreadGenerate), so "not reading" is HTTP/2 flow control itself. Waiting is
// observed, not timed: a write that does not complete within one macrotask is waiting for the stream to drain.
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type GenerateRequest, type GenerateResponse, GenerationService } from '../../services/common/gen/sana/v1/generation.ts';
import { ServiceHost } from '../../services/common/grpc-server.ts';
import { createRegistry } from '../../services/common/metrics.ts';
import { CHUNK_BYTES, ImageAssembler, imageChunks } from '../../services/common/tensor-chunks.ts';
import { readToEnd, unreadGenerate } from '../helpers/grpc.ts';

const CHUNKS = 96;
const IMAGE = { bytes: Uint8Array.from({ length: CHUNKS * CHUNK_BYTES }, (_, i) => (i * 31 + (i >> 12)) & 255), width: 4096, height: 4096, format: 'png' as const };

interface HandlerRecord {
  chunks: number;
  /** chunks written when a write first had to wait for the client */
  waitedAt: Promise<number>;
  finished: Promise<string | undefined>;
}

describe('response stream back-pressure', () => {
  let host: ServiceHost;
  const handlers: HandlerRecord[] = [];
  const nextHandler: ((r: HandlerRecord) => void)[] = [];
  const handler = (i: number) =>
    new Promise<HandlerRecord>((resolve) => {
      if (handlers[i]) resolve(handlers[i]);
      else nextHandler[i] = resolve;
    });

  beforeAll(async () => {
    host = new ServiceHost({ name: 'backpressure', host: '127.0.0.1', port: 0, registry: createRegistry(), admission: { maxInFlight: 4, maxQueue: 0 } });
    // the Generation service's wire format with a handler that only streams bytes: the transport under test
    host.addService('sana.v1.Generation', GenerationService, {
      generate: host.serverStream<GenerateRequest, GenerateResponse>('Generate', async (_req, _scope, out) => {
        let waited!: (chunks: number) => void;
        let finished!: (failure: string | undefined) => void;
        const record: HandlerRecord = { chunks: 0, waitedAt: new Promise((r) => (waited = r)), finished: new Promise((r) => (finished = r)) };
        const i = handlers.push(record) - 1;
        nextHandler[i]?.(record);
        try {
          for (const value of imageChunks(IMAGE, 0)) {
            let done = false;
            const write = out.write({ event: { $case: 'image', value } }).finally(() => (done = true));
            await new Promise(setImmediate); // a write the stream took resolves within microtasks
            if (!done) waited(record.chunks);
            await write;
            record.chunks++;
          }
          finished(undefined);
        } catch (e) {
          finished((e as Error).message);
          throw e;
        }
      }),
    });
    await host.listen();
  });

  afterAll(() => host.shutdown());

  it('waits for a client that does not read, then delivers every byte in order', async () => {
    const { stream, session } = unreadGenerate(host.address);
    const record = await handler(0);
    // the handler had to wait for the client far short of the image: what is buffered is bounded
    expect(await record.waitedAt).toBeLessThan(CHUNKS / 2);
    const { messages, status } = await readToEnd(stream);
    session.close();
    expect(status).toBe('0');
    expect(await record.finished).toBeUndefined();
    const images = new ImageAssembler(1 << 30);
    for (const m of messages) if (m.event?.$case === 'image') images.add(m.event.value);
    expect(Buffer.from(images.result()[0].bytes).equals(Buffer.from(IMAGE.bytes))).toBe(true);
    expect(record.chunks).toBe(CHUNKS);
  });

  it('releases a handler blocked on a full stream when the client cancels', async () => {
    const { stream, session } = unreadGenerate(host.address);
    const record = await handler(1);
    expect(await record.waitedAt).toBeLessThan(CHUNKS / 2);
    stream.close(http2.constants.NGHTTP2_CANCEL);
    expect(await record.finished).toBe('cancelled by the client');
    session.close();
    // the host counts the call finished once the handler's rejection has travelled up (a few ticks later)
    const inFlight = async () => (await host.metrics.inFlight.get()).values.find((v) => v.labels.method === 'Generate')?.value;
    while ((await inFlight()) !== 0) await new Promise(setImmediate);
  });
});
