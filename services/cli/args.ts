// Commander argument parsers shared by the `sana` subcommands: a bad value is a usage error (exit 2).
import { InvalidArgumentError as CommanderArgumentError } from 'commander';

export function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n <= 0) throw new CommanderArgumentError(`expected a positive integer, got "${value}"`);
  return n;
}

export function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isSafeInteger(n) || n < 0) throw new CommanderArgumentError(`expected a non-negative integer, got "${value}"`);
  return n;
}
