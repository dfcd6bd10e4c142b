// Admission control: at most `maxInFlight` requests run at once and at most `maxQueue` wait; beyond that a
// request is refused at once with RESOURCE_EXHAUSTED, so overload costs bounded memory and clients can back off.
import { CancelledError } from './errors.ts';
import { Status, StatusError } from './grpc-status.ts';

export interface AdmissionLimits {
  maxInFlight: number;
  maxQueue: number;
}

interface Waiter {
  admit: () => void;
  refuse: (error: Error) => void;
}

export class Admission {
  private running = 0;
  private readonly waiting: Waiter[] = [];
  private closedReason: string | undefined;

  constructor(
    readonly limits: AdmissionLimits,
    /** called whenever the queue length changes (the queue-depth gauge) */
    private readonly onQueueChange: (depth: number) => void = () => {},
  ) {
    if (!(limits.maxInFlight >= 1) || !(limits.maxQueue >= 0)) throw new Error(`invalid admission limits ${JSON.stringify(limits)}`);
  }

  get inFlight(): number {
    return this.running;
  }

  get queued(): number {
    return this.waiting.length;
  }

  /** Waits for a slot; resolves to the function that frees it. Refuses when full; leaves the queue on abort. */
  async acquire(signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted) throw new CancelledError('cancelled while waiting for admission');
    if (this.closedReason) throw new StatusError(Status.UNAVAILABLE, this.closedReason);
    if (this.running < this.limits.maxInFlight) {
      this.running++;
      return this.releaser();
    }
    if (this.waiting.length >= this.limits.maxQueue) {
      throw new StatusError(
        Status.RESOURCE_EXHAUSTED,
        `server busy: ${this.running} requests running and ${this.waiting.length} waiting (limits ${this.limits.maxInFlight} and ${this.limits.maxQueue}); retry later`,
      );
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        admit: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve(this.releaser());
        },
        refuse: (error) => {
          signal?.removeEventListener('abort', onAbort);
          reject(error);
        },
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(waiter);
        if (i >= 0) this.waiting.splice(i, 1);
        this.onQueueChange(this.waiting.length);
        reject(new CancelledError('cancelled while waiting for admission'));
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
      this.onQueueChange(this.waiting.length);
    });
  }

  /**
   * Admits nothing more: waiting and later requests get UNAVAILABLE (retryable elsewhere) instead of starting
   * work that a shutdown would cut off; running requests keep their slots.
   */
  close(reason: string): void {
    this.closedReason = reason;
    const refused = this.waiting.splice(0);
    this.onQueueChange(0);
    for (const waiter of refused) waiter.refuse(new StatusError(Status.UNAVAILABLE, reason));
  }

  private releaser(): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) {
        this.onQueueChange(this.waiting.length);
        next.admit(); // the slot passes straight to the next waiter
      } else this.running--;
    };
  }
}
