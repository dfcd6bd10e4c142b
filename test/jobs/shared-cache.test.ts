// The text encoder's shared second-level embedding cache on a real nats-server: two `sana serve text-encoder
// --nats` replicas, and a prompt encoded by the first is a hit on the second, with the very same numbers.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Registry } from 'prom-client';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { startServe, type Serving } from '../../services/cli/serve.ts';
import { createRegistry } from '../../services/common/metrics.ts';
import type { EncodeRequest } from '../../services/common/stages.ts';
import { RemoteTextEncoder } from '../../services/gateway/remote-stages.ts';
import { decodeEmbedding, encodeEmbedding } from '../../services/text-encoder/shared-cache.ts';
import { metricValue, waitFor } from '../helpers/jobs.ts';
import { NatsServer } from '../helpers/nats-server.ts';
import { tempDir } from '../helpers/tmp.ts';
import { loopbackServeConfig } from '../helpers/serve-config.ts';

let nats: NatsServer;
const replicas: { serving: Serving; registry: Registry; client: RemoteTextEncoder }[] = [];

async function startReplica(modelDir: string) {
  const registry = createRegistry();
  const config = loopbackServeConfig(modelDir, { role: 'text-encoder', maxInFlight: 2, shutdownGraceSeconds: 0, nats: nats.url });
  const serving = await startServe(config, { registry });
  await serving.ready;
  const client = new RemoteTextEncoder([serving.address]);
  await client.connect();
  return { serving, registry, client };
}

beforeAll(async () => {
  nats = await NatsServer.start();
  const modelDir = tempDir('shared-cache');
  writeRandomCheckpoint('tiny', modelDir);
  replicas.push(await startReplica(modelDir), await startReplica(modelDir));
});

afterAll(async () => {
  for (const r of replicas) {
    r.client.close();
    await r.serving.close();
  }
  await nats?.close();
});

const level1 = (r: Registry, result: string) => metricValue(r, 'sana_embedding_cache_lookups_total', { result });
const level2 = (r: Registry, result: string) => metricValue(r, 'sana_embedding_shared_cache_lookups_total', { result });

describe('shared embedding cache (NATS KV)', () => {
  it('stores embeddings exactly: float32 values and the int64 mask round-trip bit for bit', () => {
    const embeds = Float32Array.from({ length: 6 * 4 }, (_, i) => Math.sin(i) * 1e-3 + (i === 5 ? -0 : 0));
    const mask = BigInt64Array.from([1n, 1n, 1n, 0n, 0n, 0n]);
    // as the KV client hands values back: a Node Buffer, whose slice() is a view of a larger pool
    const back = decodeEmbedding(Buffer.concat([Buffer.alloc(3), encodeEmbedding({ embeds, mask })]).subarray(3))!;
    expect(Buffer.from(back.embeds.buffer, back.embeds.byteOffset, back.embeds.byteLength).equals(Buffer.from(embeds.buffer))).toBe(true);
    expect([...back.mask]).toEqual([...mask]);
    expect(decodeEmbedding(encodeEmbedding({ embeds, mask }).subarray(0, 40))).toBeUndefined();
  });

  it('gives the second replica a hit for a prompt the first encoded', async () => {
    const [a, b] = replicas;
    const request: EncodeRequest = { prompts: ['a lighthouse in a storm, oil painting'], useComplexHumanInstruction: true, maxSequenceLength: 300 };
    const stored = () => metricValue(a.registry, 'sana_embedding_shared_cache_writes_total', { result: 'stored' });
    const storedBefore = await stored();
    const first = await a.client.encode(request);
    expect(await level2(a.registry, 'miss')).toBeGreaterThanOrEqual(1);
    await waitFor(async () => (await stored()) > storedBefore, 30_000, 'the first replica stored the embedding');

    const hitsBefore = await level2(b.registry, 'hit');
    const second = await b.client.encode(request);
    expect(await level2(b.registry, 'hit')).toBe(hitsBefore + 1);
    expect(Buffer.from(second.embeds.data.buffer, second.embeds.data.byteOffset, second.embeds.data.byteLength).equals(
      Buffer.from(first.embeds.data.buffer, first.embeds.data.byteOffset, first.embeds.data.byteLength),
    )).toBe(true);
    expect([...second.mask.data]).toEqual([...first.mask.data]);

    // now in its first level: the shared one is not asked again
    const l1HitsBefore = await level1(b.registry, 'hit');
    await b.client.encode(request);
    expect(await level1(b.registry, 'hit')).toBe(l1HitsBefore + 1);
    expect(await level2(b.registry, 'hit')).toBe(hitsBefore + 1);
  });
});
