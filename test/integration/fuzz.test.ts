// The short fuzz run of CI (`npm run fuzz -- --count 10000` is the long one): a few hundred seeded hostile requests
// against `sana serve all` in its own process. Every answer is a precise status (no INTERNAL or UNKNOWN, every
// INVALID_ARGUMENT names its field), no call stays stuck, the process does not crash, its memory returns to the
// baseline, and a normal Generate afterwards gives the same image as before the storm.
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { campaign, rssBackToBaseline } from '../fuzz/fuzz.ts';
import { tempDir } from '../helpers/tmp.ts';

describe('fuzzing sana serve all', () => {
  it('answers 250 hostile requests on every RPC precisely, without a crash or a leak', async () => {
    const modelDir = path.join(tempDir('fuzz'), 'model');
    writeRandomCheckpoint('tiny', modelDir);
    const result = await campaign(modelDir, { count: 250, seed: 20261202, concurrency: 16 });

    expect(result.outcomes).toHaveLength(250);
    expect(result.outcomes.filter((o) => o.failure).map((o) => `${o.rpc}: ${o.failure}`)).toEqual([]);
    expect(new Set(result.outcomes.map((o) => o.rpc))).toEqual(new Set(['Generate', 'Encode', 'Denoise', 'Decode', 'GetInfo', 'Health', 'raw frames']));
    // the storm was hostile: most requests were refused for a named field, and some got through
    expect(result.outcomes.filter((o) => o.code === 'INVALID_ARGUMENT').length).toBeGreaterThan(60);
    expect(result.outcomes.filter((o) => o.code === 'OK').length).toBeGreaterThan(20);
    expect(result.crashed).toBeUndefined();
    expect(result.idleSeconds, 'calls still in flight long after the storm').toBeDefined();
    expect(result.generateStillCorrect).toBe(true);
    expect(rssBackToBaseline(result.rss), JSON.stringify(result.rss)).toBe(true);
  }, 300_000);
});
