// `npm run fuzz -- --count N [--seed S] [--concurrency C] [--model DIR]`: the fuzzer against a real `sana serve all`
// (tiny random checkpoint by default); prints the answers per RPC and status, the memory of the served process
// and the checks after the storm; exits 1 when any answer fails the verdict.
import { Command } from 'commander';
import { cachedRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { campaign, IDLE_WAIT_MS, RSS_BACK_TO_BASELINE, rssBackToBaseline, summarize } from './fuzz.ts';

const program = new Command('fuzz')
  .option('--count <n>', 'requests to send', '10000')
  .option('--seed <n>', 'seed of the run (each case i is reproducible from it)', '1')
  .option('--concurrency <n>', 'calls in flight at once', '16')
  .option('--model <dir>', 'pipeline checkpoint folder (default: the tiny random-weight checkpoint)')
  .parse();
const opts = program.opts<{ count: string; seed: string; concurrency: string; model?: string }>();
const count = Number(opts.count);
const seed = Number(opts.seed);
const concurrency = Number(opts.concurrency);
for (const [name, value] of Object.entries({ count, seed, concurrency })) {
  if (!Number.isSafeInteger(value) || value < (name === 'seed' ? 0 : 1)) {
    console.error(`fuzz: --${name} must be a ${name === 'seed' ? 'non-negative' : 'positive'} integer`);
    process.exit(2);
  }
}

const result = await campaign(opts.model ?? cachedRandomCheckpoint('tiny'), {
  count,
  seed,
  concurrency,
  onProgress: (done) => {
    if (done % 1000 === 0) console.error(`fuzz: ${done}/${count}`);
  },
});

const { codes, rows } = summarize(result.outcomes);
const width = Math.max(...codes.map((c) => c.length), 6);
console.log(`fuzz: ${count} requests, seed ${seed}, ${concurrency} in flight, ${result.seconds.toFixed(1)} s; gateway admission ≤ ${result.limits.maxInFlight} running, ≤ ${result.limits.maxQueue} queued`);
console.log(['rpc'.padEnd(12), 'total'.padStart(6), ...codes.map((c) => c.padStart(width)), 'failures'.padStart(9)].join(' '));
for (const row of [...rows, { rpc: 'all', total: result.outcomes.length, counts: Object.fromEntries(codes.map((c) => [c, result.outcomes.filter((o) => o.code === c).length])), failures: result.outcomes.filter((o) => o.failure).length }]) {
  console.log([row.rpc.padEnd(12), String(row.total).padStart(6), ...codes.map((c) => String(row.counts[c]).padStart(width)), String(row.failures).padStart(9)].join(' '));
}
const mib = (bytes: number) => `${(bytes / 2 ** 20).toFixed(0)} MiB`;
const { rss } = result;
const rssBack = rssBackToBaseline(rss);
console.log(`served process RSS: ${mib(rss.baseline)} before, ${mib(rss.peak)} peak, ${mib(rss.after)} after once idle (embedding cache ${mib(rss.cacheBaseline)} before, ${mib(rss.cacheAfter)} after)`);
console.log(`RSS less the embedding cache: ${((rss.after - rss.cacheAfter) / (rss.baseline - rss.cacheBaseline)).toFixed(2)}× the baseline (${rssBack ? 'back' : 'NOT back'}; limit ${RSS_BACK_TO_BASELINE}×)`);
console.log(`in flight after the storm: ${result.idleSeconds === undefined ? `calls still running after ${IDLE_WAIT_MS / 1000} s (STUCK)` : `idle after ${result.idleSeconds.toFixed(1)} s`}`);
console.log(`crashes: ${result.crashed ? `1 (exited: ${result.crashed})` : 0}`);
console.log(`reference Generate after the storm: ${result.generateStillCorrect ? 'byte-identical' : 'DIFFERENT OR FAILED'}`);
const slowest = result.outcomes.map((o, i) => ({ ...o, index: i })).sort((a, b) => (b.seconds ?? 0) - (a.seconds ?? 0)).slice(0, 5);
console.log(`slowest: ${slowest.map((o) => `case ${o.index} ${o.rpc} ${o.code} ${o.seconds?.toFixed(1)} s`).join('; ')}`);
const failures = result.outcomes.map((o, i) => ({ ...o, index: i })).filter((o) => o.failure);
for (const f of failures.slice(0, 20)) console.log(`  case ${f.index} (${f.rpc}): ${f.failure}`);
process.exit(failures.length > 0 || result.crashed || !result.generateStillCorrect || !rssBack || result.idleSeconds === undefined ? 1 : 0);
