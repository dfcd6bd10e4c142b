// 10× the admission capacity of `sana serve all` (its running + queued limits, read from the configuration it
// printed) in concurrent Generate calls: the excess is refused with RESOURCE_EXHAUSTED naming the limits, every
// accepted call completes with its image, and the process is still serving afterwards. The figures (latency,
// memory) come from `npm run bench -- overload`; this test checks the behaviour only.
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { overload, OVERLOAD_REQUEST } from '../fuzz/overload.ts';
import { callGenerate } from '../helpers/grpc.ts';
import { startServeProcess, type ServedProcess } from '../helpers/serve-process.ts';
import { tempDir } from '../helpers/tmp.ts';

let target: ServedProcess;

beforeAll(async () => {
  const modelDir = path.join(tempDir('overload'), 'model');
  writeRandomCheckpoint('tiny', modelDir);
  target = await startServeProcess(modelDir, ['--max-in-flight', '2', '--max-queue', '3']);
});

afterAll(async () => {
  await target?.stop();
});

describe('overload', () => {
  it('refuses the excess of 10× the admission capacity with RESOURCE_EXHAUSTED and completes every accepted call', async () => {
    const capacity = target.limits.maxInFlight + target.limits.maxQueue;
    expect(capacity).toBe(5); // the flags above, as the running service reports them
    const figures = await overload(target, 10);

    expect(figures.calls).toBe(50);
    expect(Object.keys(figures.codes).sort()).toEqual(['OK', 'RESOURCE_EXHAUSTED']);
    // calls arriving after a slot frees up may still be admitted: at least the capacity is accepted
    expect(figures.codes.OK).toBeGreaterThanOrEqual(capacity);
    expect(figures.codes.RESOURCE_EXHAUSTED).toBeGreaterThan(0);
    expect(figures.completed).toBe(figures.codes.OK);
    expect(figures.refusal).toMatch(/^server busy: \d+ requests running and \d+ waiting \(limits 2 and 3\); retry later$/);
    expect(target.exited).toBeUndefined();

    // and the next normal call is served
    const after = await callGenerate(target.gateway, OVERLOAD_REQUEST);
    expect(after.code, after.details).toBe(grpc.status.OK);
  });
});
