// The NATS connection every optional NATS feature shares (durable jobs, the shared embedding cache), and the
// names of what they keep on JetStream: one place, so the gateway, the workers, the text encoders and the
// Helm chart's KEDA trigger agree.
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/transport-node';

export type { NatsConnection };

export const NATS_NAMES = {
  /** work-queue stream of jobs; it also keeps the dead letters */
  stream: 'SANA_JOBS',
  streamSubjects: 'sana.jobs.>',
  /** where Submit publishes a job */
  workSubject: 'sana.jobs.queue',
  /** where a job goes after its last allowed delivery failed */
  deadLetterSubject: 'sana.jobs.dead',
  /** durable pull consumer the workers share */
  consumer: 'sana-workers',
  /** KV bucket of job records (state, progress, timings, errors) */
  jobsBucket: 'sana-jobs',
  /** Object Store bucket of finished jobs' images, with a TTL */
  resultsBucket: 'sana-results',
  /** KV bucket of text embeddings shared by every text-encoder replica */
  embeddingsBucket: 'sana-embeddings',
  /** core NATS subject of a job's progress events (not stored: a watcher reads the record first) */
  progressSubject: (jobId: string) => `sana.progress.${jobId}`,
} as const;

/**
 * Connects to `url` (comma-separated servers allowed) and keeps reconnecting for as long as the process lives:
 * a broker restart pauses NATS work instead of ending it.
 */
export async function connectNats(url: string, name: string): Promise<NatsConnection> {
  const servers = url.split(',').map((s) => s.trim()).filter(Boolean);
  return connect({ servers, name, maxReconnectAttempts: -1, reconnectTimeWait: 250, timeout: 10_000 });
}
