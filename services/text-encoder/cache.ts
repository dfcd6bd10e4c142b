// A least-recently-used cache of prompt embeddings, bounded by bytes, keyed by (prompt, options): repeated prompts
// and the empty negative prompt are encoded once. Counters feed the service's metrics.

export interface CachedEmbedding {
  /** [max_sequence_length, hidden_size] float32 */
  embeds: Float32Array;
  /** [max_sequence_length] int64 */
  mask: BigInt64Array;
}

/** What LocalTextEncoder needs of a second cache level (the NATS one: shared-cache.ts): lookups by key, and stores. */
export interface SharedEmbeddingCache {
  get(key: string): Promise<CachedEmbedding | undefined>;
  /** stores in the background; a failure only costs a later miss */
  set(key: string, value: CachedEmbedding): void;
}

export interface CacheKeyParts {
  prompt: string;
  /** the instruction text, or null when none is used */
  chi: string | null;
  maxSequenceLength: number;
}

export interface CacheStats {
  hits: number;
  misses: number;
  evictions: number;
  entries: number;
  bytes: number;
  maxBytes: number;
}

/** One string per distinct input: JSON keeps the parts apart whatever characters the prompt holds. */
export function cacheKey(parts: CacheKeyParts): string {
  return JSON.stringify([parts.prompt, parts.chi, parts.maxSequenceLength]);
}

function sizeOf(e: CachedEmbedding): number {
  return e.embeds.byteLength + e.mask.byteLength;
}

export class EmbeddingCache {
  // a Map iterates in insertion order: re-inserting on use keeps the least recently used first
  private readonly entries = new Map<string, CachedEmbedding>();
  private bytes = 0;
  private hits = 0;
  private misses = 0;
  private evictions = 0;

  /** @param maxBytes 0 disables caching */
  constructor(readonly maxBytes: number) {
    if (!Number.isFinite(maxBytes) || maxBytes < 0) throw new RangeError(`cache size must be a non-negative number of bytes, got ${maxBytes}`);
  }

  /** The entry for `key` (counted as a hit and made most recent), or undefined (counted as a miss). */
  get(key: string): CachedEmbedding | undefined {
    const e = this.entries.get(key);
    if (!e) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.entries.delete(key);
    this.entries.set(key, e);
    return e;
  }

  has(key: string): boolean {
    return this.entries.has(key);
  }

  /** Stores an entry, evicting the least recently used ones to stay within maxBytes; one larger than that is not kept. */
  set(key: string, value: CachedEmbedding): void {
    const size = sizeOf(value);
    const old = this.entries.get(key);
    if (old) {
      this.entries.delete(key);
      this.bytes -= sizeOf(old);
    }
    if (size > this.maxBytes) return;
    while (this.bytes + size > this.maxBytes) {
      const [oldestKey, oldest] = this.entries.entries().next().value as [string, CachedEmbedding];
      this.entries.delete(oldestKey);
      this.bytes -= sizeOf(oldest);
      this.evictions++;
    }
    this.entries.set(key, value);
    this.bytes += size;
  }

  stats(): CacheStats {
    return { hits: this.hits, misses: this.misses, evictions: this.evictions, entries: this.entries.size, bytes: this.bytes, maxBytes: this.maxBytes };
  }
}
