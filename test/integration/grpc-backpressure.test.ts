// Back-pressure on response streams, on a real server over loopback: a handler writing 96 MiB of image chunks to a
// client that does not read must wait for it (not buffer everything), every byte must arrive in order once the
// client reads, and a client that cancels while the handler waits must release it. The client is a plain HTTP/2
// gRPC call, so "not reading" is HTTP/2 flow control itself (grpc-js's client keeps reading into its own buffers
// while its stream is paused).
import http2 from 'node:http2';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GenerateRequest, GenerateResponse, GenerationService } from '../../services/common/gen/sana/v1/generation.ts';
import { ServiceHost } from '../../services/common/grpc-server.ts';
import { createRegistry } from '../../services/common/metrics.ts';
import { CHUNK_BYTES, ImageAssembler, imageChunks } from '../../services/common/tensor-chunks.ts';

const CHUNKS = 96;
const IMAGE = { bytes: Uint8Array.from({ length: CHUNKS * CHUNK_BYTES }, (_, i) => (i * 31 + (i >> 12)) & 255), width: 4096, height: 4096, format: 'png' as const };

/** Generate as raw HTTP/2, its response paused: nothing is read until the test resumes the stream. */
function unreadGenerate(address: string): { stream: http2.ClientHttp2Stream; session: http2.ClientHttp2Session } {
  const session = http2.connect(`http://${address}`);
  const stream = session.request({ ':method': 'POST', ':path': '/sana.v1.Generation/Generate', 'content-type': 'application/grpc', te: 'trailers' });
  stream.pause();
  const body = GenerateRequest.encode(GenerateRequest.fromPartial({})).finish();
  const frame = Buffer.alloc(5 + body.length); // gRPC message: uncompressed flag, big-endian length, bytes
  frame.writeUInt32BE(body.length, 1);
  Buffer.from(body).copy(frame, 5);
  stream.end(frame);
  return { stream, session };
}

/** The gRPC messages of a response body. */
function messages(body: Buffer): GenerateResponse[] {
  const out: GenerateResponse[] = [];
  for (let at = 0; at < body.length; ) {
    const length = body.readUInt32BE(at + 1);
    out.push(GenerateResponse.decode(body.subarray(at + 5, at + 5 + length)));
    at += 5 + length;
  }
  return out;
}

describe('response stream back-pressure', () => {
  let host: ServiceHost;
  const writes: { chunks: number; finishedAt: number; failed?: string }[] = [];
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  /** Waits until the handler of call `i` has written nothing for 200 ms (blocked on the client); its count. */
  async function blockedAt(i: number): Promise<number> {
    while (!writes[i]) await sleep(20);
    let last = -1;
    while (writes[i].chunks !== last) {
      last = writes[i].chunks;
      await sleep(200);
    }
    return last;
  }

  beforeAll(async () => {
    host = new ServiceHost({ name: 'backpressure', host: '127.0.0.1', port: 0, registry: createRegistry(), admission: { maxInFlight: 4, maxQueue: 0 } });
    // the Generation service's wire format with a handler that only streams bytes: the transport under test
    host.addService('sana.v1.Generation', GenerationService, {
      generate: host.serverStream<GenerateRequest, GenerateResponse>(
        'Generate',
        async (_req, _scope, out) => {
          const record: (typeof writes)[number] = { chunks: 0, finishedAt: 0 };
          writes.push(record);
          try {
            for (const value of imageChunks(IMAGE, 0)) {
              await out.write({ event: { $case: 'image', value } });
              record.chunks++;
            }
          } catch (e) {
            record.failed = (e as Error).message;
            throw e;
          } finally {
            record.finishedAt = performance.now();
          }
        },
      ),
    });
    await host.listen();
  });

  afterAll(() => host.shutdown());

  it('waits for a client that does not read, then delivers every byte in order', async () => {
    const { stream, session } = unreadGenerate(host.address);
    // the handler stopped far short of the image and has not finished
    expect(await blockedAt(0)).toBeLessThan(CHUNKS / 2);
    expect(writes[0].finishedAt).toBe(0);
    const parts: Buffer[] = [];
    stream.on('data', (d: Buffer) => parts.push(d));
    const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.on('trailers', resolve));
    await new Promise((resolve) => stream.on('end', resolve).resume());
    session.close();
    expect((await trailers)['grpc-status']).toBe('0');
    const images = new ImageAssembler(1 << 30);
    for (const m of messages(Buffer.concat(parts))) if (m.event?.$case === 'image') images.add(m.event.value);
    expect(Buffer.from(images.result()[0].bytes).equals(Buffer.from(IMAGE.bytes))).toBe(true);
    expect(writes[0].chunks).toBe(CHUNKS);
  });

  it('releases a handler blocked on a full stream when the client cancels', async () => {
    const { stream, session } = unreadGenerate(host.address);
    expect(await blockedAt(1)).toBeLessThan(CHUNKS / 2);
    stream.close(http2.constants.NGHTTP2_CANCEL);
    const deadline = Date.now() + 5000;
    while (!writes[1].finishedAt && Date.now() < deadline) await sleep(10);
    session.close();
    expect(writes[1].failed).toBe('cancelled by the client');
    const inFlight = (await host.metrics.inFlight.get()).values.find((v) => v.labels.method === 'Generate');
    expect(inFlight?.value).toBe(0);
  });
});
