// JSON-lines logs (pino). SANA_LOG_LEVEL sets the level (tests use 'silent'); every line names its service,
// and request-scoped lines carry the request id that travels between services in `x-request-id` metadata.
import { pino, type Logger } from 'pino';

export type { Logger };

/** Metadata key (and HTTP header convention) for the request id. */
export const REQUEST_ID_KEY = 'x-request-id';
/** trailing metadata of a stage's streaming call: seconds it waited for admission before executing */
export const QUEUED_SECONDS_KEY = 'sana-queued-seconds';

export function createLogger(service: string, level = process.env.SANA_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { service }, timestamp: pino.stdTimeFunctions.isoTime });
}
