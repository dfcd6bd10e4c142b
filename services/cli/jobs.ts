// `sana jobs <submit|get|watch|cancel|result>`: the durable job API of a gateway that runs with --nats.
import fs from 'node:fs';
import path from 'node:path';
import { type Command, Option } from 'commander';
import { InvalidArgumentError } from '../common/errors.ts';
import { LIMITS } from '../common/limits.ts';
import { JobsClient, JobState, type JobEvent, type JobStatus } from '../gateway/jobs-client.ts';
import { validateGenerateArgs } from '../common/pipeline.ts';
import { addGenerateOptions, generateArgsFromOptions, type GenerateOptions, outputPaths } from './generate.ts';

interface ServerOptions {
  server: string;
  token?: string;
}

const STATE_NAMES: Record<JobState, string> = {
  [JobState.JOB_STATE_UNSPECIFIED]: 'unknown',
  [JobState.JOB_STATE_QUEUED]: 'queued',
  [JobState.JOB_STATE_RUNNING]: 'running',
  [JobState.JOB_STATE_SUCCEEDED]: 'succeeded',
  [JobState.JOB_STATE_FAILED]: 'failed',
  [JobState.JOB_STATE_CANCELLED]: 'cancelled',
  [JobState.UNRECOGNIZED]: 'unknown',
};

/** One line per fact, as `sana jobs get` prints it. */
export function describeJob(s: JobStatus): string[] {
  const time = (t: number) => (t > 0 ? new Date(t * 1000).toISOString() : '-');
  const lines = [`job ${s.id}: ${STATE_NAMES[s.state]}${s.cancelRequested && s.state === JobState.JOB_STATE_RUNNING ? ' (cancel requested)' : ''}`];
  lines.push(`  step       ${s.step}/${s.numInferenceSteps}`, `  attempts   ${s.attempts}`);
  lines.push(`  submitted  ${time(s.submittedAt)}`, `  started    ${time(s.startedAt)}`, `  finished   ${time(s.finishedAt)}`);
  if (s.error) lines.push(`  error      ${s.error}`);
  if (s.summary) {
    const t = s.summary.timings;
    lines.push(`  seed       ${s.summary.seed}, ${s.summary.width}×${s.summary.height}, ${s.summary.numImages} image(s)`);
    if (t) lines.push(`  timings    encode ${t.encodeSeconds.toFixed(2)} s, denoise ${t.denoiseSeconds.toFixed(2)} s, decode ${t.decodeSeconds.toFixed(2)} s`);
    lines.push(`  result     kept until ${time(s.resultExpiresAt)}`);
  }
  return lines;
}

async function withClient<T>(opts: ServerOptions, use: (client: JobsClient) => Promise<T>): Promise<T> {
  const client = new JobsClient(opts.server, opts.token ?? process.env.SANA_AUTH_TOKEN);
  try {
    return await use(client);
  } finally {
    client.close();
  }
}

/** Exit status of a finished job: 0 succeeded, 1 failed, 130 cancelled. */
function exitCodeOf(s: JobStatus): number {
  return s.state === JobState.JOB_STATE_SUCCEEDED ? 0 : s.state === JobState.JOB_STATE_CANCELLED ? 130 : 1;
}

function printEvent(e: JobEvent): void {
  if (e.event?.$case === 'progress') console.error(`denoise: step ${e.event.value.step}/${e.event.value.numInferenceSteps} (${e.event.value.seconds.toFixed(2)} s)`);
  else if (e.event?.$case === 'status') console.error(describeJob(e.event.value)[0]);
}

export function registerJobs(program: Command): void {
  const jobs = program.command('jobs').description('durable asynchronous jobs on a gateway that runs with --nats');
  const server = (c: Command) =>
    c
      .addOption(new Option('--server <address>', 'the gateway (e.g. 127.0.0.1:50051)').env('SANA_SERVER').makeOptionMandatory())
      .option('--token <token>', 'bearer token (default: SANA_AUTH_TOKEN)');

  addGenerateOptions(jobs.command('submit').description('queue a generation; prints the job id').argument('<prompt>', 'the text prompt'))
    .option('--key <key>', 'idempotency key: the same key gives the same job')
    .action(async (prompt: string, opts: GenerateOptions & { key?: string }) => {
      if (!opts.server) throw new InvalidArgumentError('server', 'give the gateway with --server ADDRESS');
      if (opts.model) throw new InvalidArgumentError('model', 'the gateway uses its own model; leave out --model');
      const args = generateArgsFromOptions(prompt, opts);
      validateGenerateArgs(args, LIMITS.side.min);
      console.log(await withClient({ server: opts.server, token: opts.token }, (c) => c.submit(args, opts.key)));
    });

  server(jobs.command('get').description('print the job state, progress and timings').argument('<id>')).action(async (id: string, opts: ServerOptions) => {
    for (const line of describeJob(await withClient(opts, (c) => c.get(id)))) console.log(line);
  });

  server(jobs.command('watch').description('follow the job until it finishes (exit 0 succeeded, 1 failed, 130 cancelled)').argument('<id>')).action(
    async (id: string, opts: ServerOptions) => {
      const final = await withClient(opts, (c) => c.watch(id, printEvent));
      for (const line of describeJob(final)) console.log(line);
      process.exitCode = exitCodeOf(final);
    },
  );

  server(jobs.command('cancel').description('cancel a queued or running job').argument('<id>')).action(async (id: string, opts: ServerOptions) => {
    for (const line of describeJob(await withClient(opts, (c) => c.cancel(id)))) console.log(line);
  });

  server(jobs.command('result').description('write the images of a succeeded job').argument('<id>'))
    .requiredOption('--out <file>', 'output image path (several images: FILE-0.png, FILE-1.png, ...)')
    .option('--wait', 'wait for the job to finish first')
    .action(async (id: string, opts: ServerOptions & { out: string; wait?: boolean }) => {
      const outDir = path.dirname(path.resolve(opts.out));
      if (!fs.existsSync(outDir)) throw new InvalidArgumentError('out', `folder ${outDir} does not exist`);
      const images = await withClient(opts, async (c) => {
        if (opts.wait) await c.watch(id, printEvent);
        return c.result(id);
      });
      const paths = outputPaths(opts.out, images.length, images[0]?.format ?? 'png');
      images.forEach((img, i) => fs.writeFileSync(paths[i], img.bytes));
      for (const p of paths) console.log(`wrote ${p}`);
    });
}
