// `npm run bench -- overload [--multiple 10] [--model DIR] [-- extra sana serve flags]`: `sana serve all` in its
// own process (the tiny random checkpoint by default), first exactly its admission capacity (running + queued,
// read from its printed configuration) of concurrent Generate calls, then `multiple` times that. Prints per load:
// how the calls ended, the accepted calls' latency, how fast the excess was refused, and the served process's
// peak RSS; the ratio of the two peaks is what the excess costs in memory.
import { Command } from 'commander';
import { cachedRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { overload, type OverloadFigures } from '../test/fuzz/overload.ts';
import { startServeProcess } from '../test/helpers/serve-process.ts';
import { RETURN_FREED_MEMORY } from '../test/fuzz/fuzz.ts';
import { median, printTable } from './util.ts';

function quantile(values: number[], q: number): number {
  if (values.length === 0) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)];
}

export async function run(argv: string[]): Promise<void> {
  const program = new Command('overload')
    .option('--multiple <n>', 'calls at once, in multiples of the admission capacity', '10')
    .option('--model <dir>', 'pipeline checkpoint folder (default: the tiny random-weight checkpoint)')
    .argument('[serveFlags...]', 'extra flags for sana serve all (e.g. --max-in-flight 2)')
    .parse(argv, { from: 'user' });
  const opts = program.opts<{ multiple: string; model?: string }>();
  const multiple = Number(opts.multiple);
  if (!Number.isInteger(multiple) || multiple < 1) throw new Error(`--multiple must be a positive integer, got ${opts.multiple}`);
  const target = await startServeProcess(opts.model ?? cachedRandomCheckpoint('tiny'), ['--memory-arena', 'off', ...program.args], RETURN_FREED_MEMORY);
  try {
    const loads: [string, OverloadFigures][] = [];
    for (const m of [1, multiple]) loads.push([`${m}× (${m * (target.limits.maxInFlight + target.limits.maxQueue)} calls)`, await overload(target, m)]);
    const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);
    console.log(`sana serve all: admission ≤ ${target.limits.maxInFlight} running + ≤ ${target.limits.maxQueue} queued at the gateway`);
    printTable(
      loads.map(([load, f]) => ({
        load,
        OK: f.codes.OK ?? 0,
        RESOURCE_EXHAUSTED: f.codes.RESOURCE_EXHAUSTED ?? 0,
        other: f.calls - (f.codes.OK ?? 0) - (f.codes.RESOURCE_EXHAUSTED ?? 0),
        completed: f.completed,
        'accepted p50 s': median(f.acceptedSeconds).toFixed(2),
        'accepted p99 s': quantile(f.acceptedSeconds, 0.99).toFixed(2),
        'refused p50 ms': f.refusedSeconds.length > 0 ? (median(f.refusedSeconds) * 1000).toFixed(1) : '-',
        'refused max ms': f.refusedSeconds.length > 0 ? (Math.max(...f.refusedSeconds) * 1000).toFixed(1) : '-',
        'RSS before MiB': mib(f.rss.before),
        'RSS peak MiB': mib(f.rss.peak),
        'RSS after MiB': mib(f.rss.after),
        'wall s': f.wallSeconds.toFixed(1),
      })),
      false,
    );
    const [[, full], [, over]] = loads;
    console.log(`peak RSS at ${multiple}× over peak RSS at 1×: ${(over.rss.peak / full.rss.peak).toFixed(2)}`);
    if (over.refusal) console.log(`a refusal: ${over.refusal}`);
    if (target.exited) console.log(`the served process exited: ${target.exited}`);
  } finally {
    await target.stop();
  }
}
