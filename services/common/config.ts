// Checkpoint config files (config.json, scheduler_config.json) validated with zod. Unknown keys are tolerated;
// a missing or ill-typed key is an error that names the file and the key.
import fs from 'node:fs';
import { z } from 'zod';

export class ConfigError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'ConfigError';
  }
}

export function parseConfig<S extends z.ZodType>(file: string, raw: unknown, schema: S): z.infer<S> {
  const result = schema.safeParse(raw);
  if (result.success) return result.data;
  const problems = result.error.issues.map((issue) => {
    const key = issue.path.length > 0 ? issue.path.join('.') : '(top level)';
    return `key "${key}": ${issue.message}`;
  });
  throw new ConfigError(file, problems.join('; '));
}

/**
 * JSON as Python's json module writes it: bare Infinity / -Infinity / NaN (e.g. lambda_min_clipped) become
 * the strings "Infinity" / "-Infinity" / "NaN", which `pyFloat` turns back into numbers.
 */
export function parsePythonJson(text: string): unknown {
  return JSON.parse(text.replace(/(?<=[:\[,]\s*)(-?Infinity|NaN)(?=\s*[,\]}])/g, '"$1"'));
}

/** Reads and validates a config.json; `overrides` (config keys) replace what the file says. */
export function loadConfig<S extends z.ZodType>(file: string, schema: S, overrides: Record<string, unknown> = {}): z.infer<S> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, `cannot read: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parsePythonJson(text);
  } catch (e) {
    throw new ConfigError(file, `not valid JSON: ${(e as Error).message}`);
  }
  const withOverrides = Object.keys(overrides).length > 0 && typeof raw === 'object' && raw !== null && !Array.isArray(raw) ? { ...raw, ...overrides } : raw;
  return parseConfig(file, withOverrides, schema);
}

/** A float key that Python may have written as Infinity / -Infinity / NaN. */
export const pyFloat = z.union([z.number(), z.enum(['Infinity', '-Infinity', 'NaN']).transform((s) => Number(s))]);

/** Rejects a config value this implementation does not support, naming the key. */
export function unsupported(file: string, key: string, value: unknown, why: string): never {
  throw new ConfigError(file, `key "${key}" = ${JSON.stringify(value)} is not supported: ${why}`);
}
