// Prometheus metrics of the durable job queue, exported by the gateway (submits, queue depth) and the workers
// (waits, durations, outcomes, redeliveries, dead letters). Queue depth is read from the consumer on scrape, so
// every replica reports the same number and KEDA's nats-jetstream trigger and the dashboards agree.
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS, metric } from '../common/metrics.ts';
import type { JobQueue, JobState } from './job-queue.ts';

export class JobMetrics {
  readonly submitted: Counter<'service' | 'duplicate'>;
  readonly queueDepth: Gauge<'service'>;
  readonly inProgress: Gauge<'service'>;
  readonly waitSeconds: Histogram<'service'>;
  readonly durationSeconds: Histogram<'service' | 'state'>;
  readonly finished: Counter<'service' | 'state'>;
  readonly redeliveries: Counter<'service'>;
  readonly deadLetters: Counter<'service'>;

  constructor(
    registry: Registry,
    readonly service: string,
    queue?: JobQueue,
  ) {
    const registers = [registry];
    this.submitted = metric(registry, 'sana_jobs_submitted_total', () => new Counter({
      name: 'sana_jobs_submitted_total',
      help: 'jobs submitted, by whether the idempotency key named an existing job',
      labelNames: ['service', 'duplicate'],
      registers,
    }));
    // read from JetStream on scrape; a broker that does not answer leaves the last value
    const depth = async (pick: 'pending' | 'inProgress', gauge: Gauge<'service'>) => {
      if (!queue) return;
      const d = await queue.depth().catch(() => undefined);
      if (d) gauge.set({ service }, d[pick]);
    };
    this.queueDepth = metric(registry, 'sana_jobs_queue_depth', () => new Gauge({
      name: 'sana_jobs_queue_depth',
      help: 'jobs waiting for a worker (the consumer sana-workers: pending messages)',
      labelNames: ['service'],
      registers,
      collect() {
        return depth('pending', this);
      },
    }));
    this.inProgress = metric(registry, 'sana_jobs_in_progress', () => new Gauge({
      name: 'sana_jobs_in_progress',
      help: 'jobs a worker holds now (delivered, not yet acknowledged)',
      labelNames: ['service'],
      registers,
      collect() {
        return depth('inProgress', this);
      },
    }));
    this.waitSeconds = metric(registry, 'sana_job_wait_seconds', () => new Histogram({
      name: 'sana_job_wait_seconds',
      help: 'seconds from submit to the first start on a worker',
      labelNames: ['service'],
      buckets: LATENCY_BUCKETS,
      registers,
    }));
    this.durationSeconds = metric(registry, 'sana_job_duration_seconds', () => new Histogram({
      name: 'sana_job_duration_seconds',
      help: 'seconds a worker spent on a job attempt, by how it ended',
      labelNames: ['service', 'state'],
      buckets: LATENCY_BUCKETS,
      registers,
    }));
    this.finished = metric(registry, 'sana_jobs_finished_total', () => new Counter({
      name: 'sana_jobs_finished_total',
      help: 'jobs that reached a final state on this worker',
      labelNames: ['service', 'state'],
      registers,
    }));
    this.redeliveries = metric(registry, 'sana_job_redeliveries_total', () => new Counter({
      name: 'sana_job_redeliveries_total',
      help: 'job deliveries after the first (a worker died, timed out or a stage failed)',
      labelNames: ['service'],
      registers,
    }));
    this.deadLetters = metric(registry, 'sana_job_dead_letters_total', () => new Counter({
      name: 'sana_job_dead_letters_total',
      help: 'jobs sent to sana.jobs.dead after their last allowed delivery failed',
      labelNames: ['service'],
      registers,
    }));
    this.queueDepth.set({ service }, 0);
    this.inProgress.set({ service }, 0);
  }

  finish(state: JobState, seconds: number): void {
    this.finished.inc({ service: this.service, state });
    this.durationSeconds.observe({ service: this.service, state }, seconds);
  }
}
