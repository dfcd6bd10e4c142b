// `npm run bench -- <stage> [options]`: benchmark tables for each stage. Each stage module parses its own
// options and prints its rows.
import { ConfigError } from '../services/common/config.ts';
import { InvalidArgumentError } from '../services/common/errors.ts';
import { CheckpointError } from '../services/common/safetensors.ts';

const stages: Record<string, () => Promise<{ run(argv: string[]): Promise<void> }>> = {
  batching: () => import('./batching.ts'),
  decoder: () => import('./decoder.ts'),
  denoiser: () => import('./denoiser.ts'),
  quality: () => import('./quality.ts'),
  overload: () => import('./overload.ts'),
  serve: () => import('./serve.ts'),
  'text-encoder': () => import('./text-encoder.ts'),
};

const [stage, ...rest] = process.argv.slice(2);
const load = stage ? stages[stage] : undefined;
if (!load) {
  console.error(`usage: npm run bench -- <${Object.keys(stages).join('|')}> [options]`);
  process.exit(2);
}
try {
  await (await load()).run(rest);
} catch (e) {
  // a bad option, config or checkpoint (e.g. a --vae whose latent channels do not match): a message and exit 2
  if (!(e instanceof InvalidArgumentError || e instanceof ConfigError || e instanceof CheckpointError)) throw e;
  console.error(`bench: ${e.message}`);
  process.exit(2);
}
