// The one place where errors become gRPC statuses (servers) and gRPC statuses become errors again (clients),
// so a bad field reported by a stage reaches the public client as the same INVALID_ARGUMENT.
import { Metadata, status as Status, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { ConfigError } from './config.ts';
import { CancelledError, InvalidArgumentError } from './errors.ts';

export { Status };

/** An error that already knows its gRPC status (overload, auth, an unreachable stage, a relayed stage error). */
export class StatusError extends Error {
  constructor(
    readonly code: Status,
    message: string,
  ) {
    super(message);
    this.name = 'StatusError';
  }
}

/** Trailing metadata key that names the offending field of an INVALID_ARGUMENT, for programs to read. */
export const INVALID_FIELD_KEY = 'sana-invalid-field';

function isServiceError(e: unknown): e is ServiceError {
  return e instanceof Error && typeof (e as Partial<ServiceError>).code === 'number' && 'details' in e;
}

/** The status a server sends for an error thrown by a handler or a stage. */
export function toStatus(error: unknown): Partial<StatusObject> & { code: Status; details: string } {
  if (error instanceof InvalidArgumentError) {
    const metadata = new Metadata();
    metadata.set(INVALID_FIELD_KEY, error.field);
    return { code: Status.INVALID_ARGUMENT, details: error.message, metadata };
  }
  if (error instanceof CancelledError) return { code: Status.CANCELLED, details: error.message };
  if (error instanceof StatusError) return { code: error.code, details: error.message };
  if (isServiceError(error)) return { code: error.code, details: error.details, metadata: error.metadata };
  if (error instanceof ConfigError) return { code: Status.FAILED_PRECONDITION, details: error.message };
  if (error instanceof Error && error.name === 'AbortError') return { code: Status.CANCELLED, details: 'cancelled' };
  return { code: Status.INTERNAL, details: error instanceof Error ? error.message : String(error) };
}

/**
 * The error a stage client raises for a failed call: INVALID_ARGUMENT becomes InvalidArgumentError again (same
 * field, same message), CANCELLED a CancelledError, and everything else a StatusError that names the stage.
 */
export function fromServiceError(error: ServiceError, stage: string): Error {
  const details = error.details || error.message;
  if (error.code === Status.INVALID_ARGUMENT) {
    const field = error.metadata?.get(INVALID_FIELD_KEY)[0];
    if (typeof field === 'string' && details.startsWith(`${field}: `)) {
      return new InvalidArgumentError(field, details.slice(field.length + 2));
    }
    return new StatusError(Status.INVALID_ARGUMENT, details);
  }
  if (error.code === Status.CANCELLED) return new CancelledError(`${stage}: ${details}`);
  return new StatusError(error.code, `${stage}: ${details}`);
}

export function statusName(code: Status): string {
  return Status[code] ?? String(code);
}
