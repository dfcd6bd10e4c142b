// The `sana` command.
import { Command, Option } from 'commander';
import { nonNegativeInt, positiveInt } from './args.ts';
import { ConfigError } from '../common/config.ts';
import { CancelledError, InvalidArgumentError } from '../common/errors.ts';
import { CheckpointError } from '../common/safetensors.ts';
import { writeRandomCheckpoint } from './checkpoint.ts';
import { registerGenerate } from './generate.ts';
import { registerJobs } from './jobs.ts';
import { PRESETS } from './presets.ts';
import { registerServe } from './serve.ts';

const program = new Command('sana').description('SANA text-to-image serving').showHelpAfterError('(add --help for usage)');
program.exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2)); // usage errors exit 2

const checkpoint = program.command('checkpoint').description('checkpoint tools');
checkpoint
  .command('random')
  .description('write a random-weight checkpoint in the diffusers layout (random weights give noise images)')
  .addOption(new Option('--preset <name>', 'model shapes').choices(Object.keys(PRESETS)).makeOptionMandatory())
  .requiredOption('--out <dir>', 'output folder')
  .addOption(new Option('--dtype <dtype>', 'stored dtype').choices(['F32', 'F16', 'BF16']).default('F32'))
  .option('--shard-mb <n>', 'shard weights into files of at most n MiB', positiveInt)
  .option('--seed <n>', 'weight seed (default 0)', nonNegativeInt)
  .action((opts: { preset: string; out: string; dtype: 'F32' | 'F16' | 'BF16'; shardMb?: number; seed?: number }) => {
    const dirs = writeRandomCheckpoint(opts.preset, opts.out, {
      dtype: opts.dtype,
      maxShardBytes: opts.shardMb ? opts.shardMb * 2 ** 20 : undefined,
      seed: opts.seed,
    });
    for (const d of dirs) console.log(`wrote ${d}`);
  });

registerGenerate(program);
registerServe(program);
registerJobs(program);

try {
  await program.parseAsync(process.argv);
} catch (e) {
  // bad arguments, configs and checkpoints are the user's to fix: a message and exit 2, no stack trace
  const usage = e instanceof InvalidArgumentError || e instanceof ConfigError || e instanceof CheckpointError;
  console.error(`sana: ${(e as Error).message}`);
  if (!usage && process.env.SANA_DEBUG) console.error((e as Error).stack);
  process.exit(usage ? 2 : e instanceof CancelledError ? 130 : 1);
}
