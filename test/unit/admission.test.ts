// Admission control: bounded in-flight requests, a bounded FIFO queue, RESOURCE_EXHAUSTED beyond it, and
// cancelled waiters leaving the queue.
import { describe, expect, it } from 'vitest';
import { Admission } from '../../services/common/admission.ts';
import { CancelledError } from '../../services/common/errors.ts';
import { Status, StatusError } from '../../services/common/grpc-status.ts';

describe('admission', () => {
  it('runs up to maxInFlight, queues up to maxQueue in order, and refuses the rest', async () => {
    const depths: number[] = [];
    const admission = new Admission({ maxInFlight: 2, maxQueue: 2 }, (d) => depths.push(d));
    const r1 = await admission.acquire();
    const r2 = await admission.acquire();
    const order: number[] = [];
    const w3 = admission.acquire().then((r) => (order.push(3), r));
    const w4 = admission.acquire().then((r) => (order.push(4), r));
    expect(admission.queued).toBe(2);
    const refused = await admission.acquire().catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(StatusError);
    expect((refused as StatusError).code).toBe(Status.RESOURCE_EXHAUSTED);

    r1();
    r1(); // releasing twice frees one slot only
    const r3 = await w3;
    expect(order).toEqual([3]);
    expect(admission.inFlight).toBe(2);
    r2();
    const r4 = await w4;
    expect(order).toEqual([3, 4]);
    r3();
    r4();
    expect(admission.inFlight).toBe(0);
    expect(depths).toEqual([1, 2, 1, 0]);
  });

  it('drops a waiter whose signal aborts and refuses an already aborted one', async () => {
    const admission = new Admission({ maxInFlight: 1, maxQueue: 1 });
    const release = await admission.acquire();
    const controller = new AbortController();
    const waiting = admission.acquire(controller.signal);
    controller.abort();
    await expect(waiting).rejects.toBeInstanceOf(CancelledError);
    expect(admission.queued).toBe(0);
    await expect(admission.acquire(controller.signal)).rejects.toBeInstanceOf(CancelledError);
    release();
    expect(admission.inFlight).toBe(0);
  });

  it('on close refuses the waiting and later requests with UNAVAILABLE; running ones keep their slots', async () => {
    const admission = new Admission({ maxInFlight: 1, maxQueue: 2 });
    const release = await admission.acquire();
    const waiting = [admission.acquire(), admission.acquire()];
    admission.close('shutting down');
    for (const w of [...waiting, admission.acquire()]) {
      const e = await w.catch((x: unknown) => x);
      expect(e).toBeInstanceOf(StatusError);
      expect([(e as StatusError).code, (e as StatusError).message]).toEqual([Status.UNAVAILABLE, 'shutting down']);
    }
    expect([admission.queued, admission.inFlight]).toEqual([0, 1]);
    release();
    expect(admission.inFlight).toBe(0);
  });
});
