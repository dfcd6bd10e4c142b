// The second level of the embedding cache, shared by every text-encoder replica: a NATS KV bucket whose key is
// a hash of (model, prompt, options) and whose value is the embedding and its mask. A prompt encoded by one
// replica is a hit on all the others; the bucket's TTL and byte bound keep it from growing without end. The
// first level (cache.ts) stays in front of it, so a replica asks the bucket only for prompts it has not seen.
import crypto from 'node:crypto';
import path from 'node:path';
import { StorageType } from '@nats-io/jetstream';
import { type KV, Kvm } from '@nats-io/kv';
import { Counter, type Registry } from 'prom-client';
import { contentHash } from '../common/compile-cache.ts';
import type { Logger } from '../common/logging.ts';
import { metric } from '../common/metrics.ts';
import { NATS_NAMES, type NatsConnection } from '../common/nats.ts';
import { Checkpoint } from '../common/safetensors.ts';
import type { CachedEmbedding, SharedEmbeddingCache } from './cache.ts';

export interface KvEmbeddingCacheOptions {
  /** identifies the model (weights, config, tokenizer) and its precision: embeddings of different ones never mix */
  modelKey: string;
  /** seconds an entry lives (default 1 day) */
  ttlSeconds?: number;
  /** bytes the bucket holds at most; the oldest entries go first (default 1 GiB) */
  maxBytes?: number;
  registry?: Registry;
  /** the `service` label of the metrics */
  service?: string;
  log?: Logger;
}

const MAGIC = 0x31434553; // "SEC1"
const HEADER_BYTES = 12;

/** [magic, max_sequence_length, hidden_size] u32, then the embeddings float32 and the mask int64, little-endian. */
export function encodeEmbedding(e: CachedEmbedding): Uint8Array {
  const msl = e.mask.length;
  const out = new Uint8Array(HEADER_BYTES + e.embeds.byteLength + e.mask.byteLength);
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint32(4, msl, true);
  view.setUint32(8, e.embeds.length / msl, true);
  out.set(new Uint8Array(e.embeds.buffer, e.embeds.byteOffset, e.embeds.byteLength), HEADER_BYTES);
  out.set(new Uint8Array(e.mask.buffer, e.mask.byteOffset, e.mask.byteLength), HEADER_BYTES + e.embeds.byteLength);
  return out;
}

/** The embedding in `bytes`, or undefined when they are not one (another writer's format, a truncated value). */
export function decodeEmbedding(bytes: Uint8Array): CachedEmbedding | undefined {
  if (bytes.byteLength < HEADER_BYTES) return undefined;
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const msl = view.getUint32(4, true);
  const hidden = view.getUint32(8, true);
  if (view.getUint32(0, true) !== MAGIC || bytes.byteLength !== HEADER_BYTES + msl * hidden * 4 + msl * 8) return undefined;
  const copy = new Uint8Array(bytes.subarray(HEADER_BYTES)); // a copy of its own (a Buffer's slice is a view), aligned
  return { embeds: new Float32Array(copy.buffer, 0, msl * hidden), mask: new BigInt64Array(copy.buffer, msl * hidden * 4, msl) };
}

/** A hash of the text encoder's config, weights and tokenizer files (hashed once per file, then remembered). */
export function embeddingModelKey(textEncoderDir: string, tokenizerDir?: string): string {
  const files = [path.join(textEncoderDir, 'config.json'), ...Checkpoint.open(textEncoderDir, 'model').files];
  if (tokenizerDir) files.push(path.join(tokenizerDir, 'tokenizer.json'), path.join(tokenizerDir, 'tokenizer_config.json'));
  const h = crypto.createHash('sha256');
  for (const f of files) h.update(`${path.basename(f)}:${contentHash(f)}\n`);
  return h.digest('hex').slice(0, 32);
}

export class KvEmbeddingCache implements SharedEmbeddingCache {
  private readonly lookups: Counter<'service' | 'result'>;
  private readonly writes: Counter<'service' | 'result'>;
  private readonly service: string;
  private readonly pending = new Set<Promise<unknown>>();

  private constructor(
    readonly kv: KV,
    private readonly maxValueBytes: number,
    private readonly options: KvEmbeddingCacheOptions,
  ) {
    const registers = options.registry ? [options.registry] : [];
    const registry = options.registry;
    this.service = options.service ?? 'text-encoder';
    const lookups = () => new Counter({
      name: 'sana_embedding_shared_cache_lookups_total',
      help: 'lookups in the shared (NATS KV) embedding cache after a first-level miss, by result (hit, miss, error)',
      labelNames: ['service', 'result'] as const,
      registers,
    });
    const writes = () => new Counter({
      name: 'sana_embedding_shared_cache_writes_total',
      help: 'embeddings stored in the shared cache, by result (stored, too_large for the server max_payload, error)',
      labelNames: ['service', 'result'] as const,
      registers,
    });
    this.lookups = registry ? metric(registry, 'sana_embedding_shared_cache_lookups_total', lookups) : lookups();
    this.writes = registry ? metric(registry, 'sana_embedding_shared_cache_writes_total', writes) : writes();
  }

  static async open(nc: NatsConnection, options: KvEmbeddingCacheOptions): Promise<KvEmbeddingCache> {
    const kv = await new Kvm(nc).create(NATS_NAMES.embeddingsBucket, {
      history: 1,
      ttl: (options.ttlSeconds ?? 24 * 3600) * 1000,
      max_bytes: options.maxBytes ?? 2 ** 30,
      storage: StorageType.File,
    });
    // a KV value is one message: it must fit the server's max_payload with room for the headers
    const maxPayload = nc.info?.max_payload ?? 1 << 20;
    return new KvEmbeddingCache(kv, maxPayload - 4096, options);
  }

  /** KV keys allow a limited alphabet: the hash of (model, first-level key) in hex. */
  private kvKey(key: string): string {
    return crypto.createHash('sha256').update(this.options.modelKey).update('\0').update(key).digest('hex');
  }

  async get(key: string): Promise<CachedEmbedding | undefined> {
    const labels = (result: string) => ({ service: this.service, result });
    try {
      const entry = await this.kv.get(this.kvKey(key));
      const value = entry && entry.operation === 'PUT' ? decodeEmbedding(entry.value) : undefined;
      this.lookups.inc(labels(value ? 'hit' : 'miss'));
      return value;
    } catch (e) {
      // the shared level is an optimisation: a broker that does not answer is a miss, not a failed request
      this.lookups.inc(labels('error'));
      this.options.log?.warn({ err: (e as Error).message }, 'shared embedding cache lookup failed');
      return undefined;
    }
  }

  set(key: string, value: CachedEmbedding): void {
    const bytes = encodeEmbedding(value);
    if (bytes.byteLength > this.maxValueBytes) {
      this.writes.inc({ service: this.service, result: 'too_large' });
      return;
    }
    const put = this.kv.put(this.kvKey(key), bytes).then(
      () => this.writes.inc({ service: this.service, result: 'stored' }),
      (e: Error) => {
        this.writes.inc({ service: this.service, result: 'error' });
        this.options.log?.warn({ err: e.message }, 'shared embedding cache write failed');
      },
    );
    this.pending.add(put);
    void put.finally(() => this.pending.delete(put));
  }

  /** Waits for the stores under way (at shutdown, so a replica's last encodes still reach the others). */
  async flush(): Promise<void> {
    await Promise.all([...this.pending]);
  }
}
