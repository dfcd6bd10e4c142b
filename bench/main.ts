// `npm run bench -- <stage> [options]`: benchmark tables for each stage. Each stage module parses its own
// options and prints its rows.
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
await (await load()).run(rest);
