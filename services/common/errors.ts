// Errors that carry their meaning to every adapter: the gRPC servers map them to status codes, the CLI to
// exit codes.

/** A request field is out of range or malformed (gRPC INVALID_ARGUMENT, CLI exit 2). */
export class InvalidArgumentError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`);
    this.name = 'InvalidArgumentError';
  }
}

/** The work was cancelled by its caller (gRPC CANCELLED). */
export class CancelledError extends Error {
  constructor(message = 'cancelled') {
    super(message);
    this.name = 'CancelledError';
  }
}
