// The embedding cache: least-recently-used eviction bounded by bytes, hit/miss/eviction counters, keys.
import { describe, expect, test } from 'vitest';
import { cacheKey, type CachedEmbedding, EmbeddingCache } from '../../services/text-encoder/cache.ts';

/** An entry of msl·hidden floats + msl int64s: (4·hidden + 8)·msl bytes. */
function entry(msl: number, hidden: number, fill = 0): CachedEmbedding {
  return { embeds: new Float32Array(msl * hidden).fill(fill), mask: new BigInt64Array(msl).fill(1n) };
}

describe('embedding cache', () => {
  const bytesPer = (4 * 8 + 8) * 10; // msl 10, hidden 8 → 400 bytes

  test('counts hits and misses and returns the stored entry', () => {
    const cache = new EmbeddingCache(10 * bytesPer);
    expect(cache.get('a')).toBeUndefined();
    const a = entry(10, 8, 1);
    cache.set('a', a);
    expect(cache.get('a')).toBe(a);
    expect(cache.get('a')).toBe(a);
    expect(cache.get('b')).toBeUndefined();
    expect(cache.stats()).toEqual({ hits: 2, misses: 2, evictions: 0, entries: 1, bytes: bytesPer, maxBytes: 10 * bytesPer });
  });

  test('evicts the least recently used entries to stay within its byte budget', () => {
    const cache = new EmbeddingCache(3 * bytesPer);
    for (const k of ['a', 'b', 'c']) cache.set(k, entry(10, 8));
    cache.get('a'); // a is now the most recent: b is the oldest
    cache.set('d', entry(10, 8));
    expect(cache.has('b')).toBe(false);
    expect(['a', 'c', 'd'].every((k) => cache.has(k))).toBe(true);
    cache.set('e', entry(20, 8)); // two entries' worth: evicts c and a
    expect(cache.has('c') || cache.has('a')).toBe(false);
    expect(cache.has('d') && cache.has('e')).toBe(true);
    expect(cache.stats()).toMatchObject({ evictions: 3, entries: 2, bytes: 3 * bytesPer });
  });

  test('replacing a key updates its size; an entry larger than the budget is not kept; 0 disables', () => {
    const cache = new EmbeddingCache(3 * bytesPer);
    cache.set('a', entry(10, 8));
    cache.set('a', entry(20, 8));
    expect(cache.stats()).toMatchObject({ entries: 1, bytes: 2 * bytesPer, evictions: 0 });
    cache.set('huge', entry(40, 8));
    expect(cache.has('huge')).toBe(false);
    expect(cache.has('a')).toBe(true);
    const off = new EmbeddingCache(0);
    off.set('a', entry(1, 1));
    expect(off.stats()).toMatchObject({ entries: 0, bytes: 0 });
    expect(() => new EmbeddingCache(-1)).toThrow(RangeError);
  });

  test('keys separate prompt, instruction and length, whatever the characters', () => {
    const k = (prompt: string, chi: string | null, msl = 300) => cacheKey({ prompt, chi, maxSequenceLength: msl });
    const keys = [k('a', null), k('a', ''), k('a', 'x'), k('a', null, 10), k('a","x', null), k('a', '","x'), k('', null)];
    expect(new Set(keys).size).toBe(keys.length);
    expect(k('a cat', 'chi')).toBe(k('a cat', 'chi'));
  });
});
