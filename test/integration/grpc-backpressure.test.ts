// Back-pressure on response streams, on a real server and client over loopback: a handler writing 40 MiB of image
// chunks to a client that stops reading must wait for it (not buffer everything), every byte must arrive in order,
// and a client that cancels while the handler waits must release it.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GenerationService, type GenerateRequest, type GenerateResponse } from '../../services/common/gen/sana/v1/generation.ts';
import { ServiceHost } from '../../services/common/grpc-server.ts';
import { createRegistry } from '../../services/common/metrics.ts';
import { CHUNK_BYTES, imageChunks } from '../../services/common/tensor-chunks.ts';
import { callGenerate } from '../helpers/grpc.ts';

const IMAGE = { bytes: Uint8Array.from({ length: 40 * CHUNK_BYTES }, (_, i) => (i * 31 + (i >> 12)) & 255), width: 4096, height: 4096, format: 'png' as const };

describe('response stream back-pressure', () => {
  let host: ServiceHost;
  const writes: { finishedAt: number; failed?: string }[] = [];

  beforeAll(async () => {
    host = new ServiceHost({ name: 'backpressure', host: '127.0.0.1', port: 0, registry: createRegistry(), admission: { maxInFlight: 4, maxQueue: 0 } });
    // the Generation service's wire format with a handler that only streams bytes: the transport under test
    host.addService('sana.v1.Generation', GenerationService, {
      generate: host.serverStream<GenerateRequest, GenerateResponse>(
        'Generate',
        async (_req, _scope, out) => {
          const record: (typeof writes)[number] = { finishedAt: 0 };
          writes.push(record);
          try {
            for (const value of imageChunks(IMAGE, 0)) await out.write({ event: { $case: 'image', value } });
          } catch (e) {
            record.failed = (e as Error).message;
            throw e;
          } finally {
            record.finishedAt = performance.now();
          }
        },
        { admit: true },
      ),
    });
    await host.listen();
  });

  afterAll(() => host.shutdown());

  it('waits for a paused client and delivers every byte in order', async () => {
    let resumedAt = 0;
    const outcome = await callGenerate(host.address, {}, {
      onStart: (call) => {
        call.pause();
        setTimeout(() => {
          resumedAt = performance.now();
          call.resume();
        }, 500);
      },
    });
    expect(outcome.code, outcome.details).toBe(grpc.status.OK);
    expect(Buffer.from(outcome.images[0].bytes).equals(Buffer.from(IMAGE.bytes))).toBe(true);
    // the handler could not finish writing 40 MiB before the client read again
    expect(writes[0].finishedAt).toBeGreaterThan(resumedAt);
  });

  it('releases a handler blocked on a full stream when the client cancels', async () => {
    const outcome = await callGenerate(host.address, {}, {
      onStart: (call) => {
        call.pause();
        setTimeout(() => call.cancel(), 300);
      },
    });
    expect(outcome.code).toBe(grpc.status.CANCELLED);
    const deadline = Date.now() + 5000;
    while (!writes[1]?.finishedAt && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(writes[1].failed).toBe('cancelled by the client');
    const inFlight = (await host.metrics.inFlight.get()).values.find((v) => v.labels.method === 'Generate');
    expect(inFlight?.value).toBe(0);
  });
});
