// Limits of a generation request, shared by the gateway, the stage servers and the CLI. Each is enforced with
// an InvalidArgumentError (gRPC INVALID_ARGUMENT) naming the field and the limit.
import { InvalidArgumentError } from './errors.ts';
import type { ImageFormat } from './stages.ts';

export const LIMITS = {
  promptBytes: 64 * 1024,
  prompts: 16,
  numImagesPerPrompt: 16,
  images: 16,
  steps: { min: 1, max: 1000 },
  guidanceScale: { min: 0, max: 100 },
  side: { min: 32, max: 4096 },
  maxSequenceLength: { min: 2, max: 1024 },
  seedExclusive: 2n ** 64n,
  quality: { min: 1, max: 100 },
} as const;

/** the largest encoded image a client accepts: a 4096² RGBA PNG that did not compress, plus headers */
export const MAX_IMAGE_BYTES = LIMITS.side.max * LIMITS.side.max * 4 + (1 << 20);

export const FORMATS: readonly ImageFormat[] = ['png', 'jpeg', 'webp'];

/** `value` when it is an integer in [min, max]; otherwise an InvalidArgumentError naming the field and the range. */
export function intInRange(field: string, value: number, min: number, max: number): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidArgumentError(field, `must be an integer in [${min}, ${max}], got ${value}`);
  }
  return value;
}

