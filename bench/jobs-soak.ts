// `npm run soak:jobs -- [--jobs 200] [--workers 2] [--kill-every 10] [--ack-wait 5]`: durability soak of the job
// queue (not part of CI). A real nats-server with file storage, the stage services and a gateway with the Jobs
// API in this process, and `sana serve worker` processes; tiny jobs are submitted through the gRPC API with
// idempotency keys (a failed submit is retried with the same key) while a worker is SIGKILLed every few seconds
// (and started again) and nats-server is restarted once. At the end it prints the counts: every submitted job
// must have succeeded once, with no duplicate and nothing lost.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { writeRandomCheckpoint } from '../services/cli/checkpoint.ts';
import { startServe } from '../services/cli/serve.ts';
import { connectNats } from '../services/common/nats.ts';
import { JobQueue, retrying } from '../services/gateway/job-queue.ts';
import { JobsClient } from '../services/gateway/jobs-client.ts';
import { NatsServer } from '../test/helpers/nats-server.ts';
import { loopbackServeConfig } from '../test/helpers/serve-config.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const { values: opts } = parseArgs({
  options: {
    jobs: { type: 'string', default: '200' },
    workers: { type: 'string', default: '2' },
    'kill-every': { type: 'string', default: '10' },
    'ack-wait': { type: 'string', default: '5' },
    'submit-seconds': { type: 'string', default: '60' },
  },
});
const JOBS = Number(opts.jobs);
const WORKERS = Number(opts.workers);
const KILL_EVERY_MS = Number(opts['kill-every']) * 1000;
const ACK_WAIT = Number(opts['ack-wait']);
const SUBMIT_MS = Number(opts['submit-seconds']) * 1000;

process.env.SANA_LOG_LEVEL ??= 'warn'; // the services of this process log only what goes wrong
const t0 = Date.now();
const say = (line: string) => console.error(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${line}`);

const nats = await NatsServer.start();
const workDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sana-soak-'));
const modelDir = path.join(workDir, 'model');
writeRandomCheckpoint('tiny', modelDir);
const base = loopbackServeConfig(modelDir, { maxInFlight: 8, maxQueue: 64 });
const stages = await startServe({ ...base, role: 'all' });
await stages.ready;
const address = (name: string) => [stages.hosts.find((h) => h.options.name === name)!.address];
const stageAddresses = { textEncoder: address('text-encoder'), denoiser: address('denoiser'), decoder: address('decoder') };
const gateway = await startServe({ ...base, role: 'gateway', model: undefined, stages: stageAddresses, nats: nats.url, jobs: { ackWaitSeconds: ACK_WAIT } });
await gateway.ready;
say(`nats-server ${nats.url}, gateway ${gateway.address}`);

// ---- workers, SIGKILLed in turn and started again ----
const workers: (ChildProcess | undefined)[] = new Array(WORKERS).fill(undefined);
let kills = 0;
function startWorker(slot: number): void {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'services/cli/bin.js'), 'serve', 'worker', '--nats', nats.url, '--no-metrics', '--job-ack-wait', String(ACK_WAIT),
      '--text-encoder', stageAddresses.textEncoder[0], '--denoiser', stageAddresses.denoiser[0], '--decoder', stageAddresses.decoder[0]],
    { env: { ...process.env, SANA_LOG_LEVEL: 'silent' }, stdio: 'ignore' },
  );
  workers[slot] = child;
}
for (let i = 0; i < WORKERS; i++) startWorker(i);
let stopChaos = false;
const killer = (async () => {
  for (let turn = 0; !stopChaos; turn++) {
    await new Promise((r) => setTimeout(r, KILL_EVERY_MS));
    if (stopChaos) break;
    const slot = turn % WORKERS;
    const victim = workers[slot]!;
    const exited = new Promise((r) => victim.once('exit', r));
    victim.kill('SIGKILL');
    await exited;
    kills++;
    say(`SIGKILLed worker ${slot} (pid ${victim.pid}); starting it again`);
    startWorker(slot);
  }
})();

// ---- submissions, spread over SUBMIT_MS; nats-server restarts halfway ----
const client = new JobsClient(gateway.address);
const ids = new Map<string, string>(); // idempotency key → job id
let submitRetries = 0;
let restarted = false;
const restart = (async () => {
  await new Promise((r) => setTimeout(r, SUBMIT_MS / 2));
  say('restarting nats-server');
  await nats.restart();
  restarted = true;
  say('nats-server is back');
})();
for (let i = 0; i < JOBS; i++) {
  const key = `soak-${i}`;
  const args = { prompt: `soak job ${i}`, seed: i, numInferenceSteps: 2, width: 64, height: 64, useResolutionBinning: false };
  const id = await retrying(async () => {
    try {
      return await client.submit(args, key);
    } catch (e) {
      submitRetries++;
      throw e;
    }
  }, `submit ${key}`, 300_000);
  ids.set(key, id);
  await new Promise((r) => setTimeout(r, SUBMIT_MS / JOBS));
}
await restart;
say(`submitted ${ids.size} jobs (${submitRetries} submit retries); waiting for them to finish`);

// ---- wait until every job is final, then count ----
const nc = await connectNats(nats.url, 'soak');
const queue = await JobQueue.open(nc, { ackWaitSeconds: ACK_WAIT });
const final = ['succeeded', 'failed', 'cancelled'];
const deadline = Date.now() + 15 * 60_000;
let records = await Promise.all([...ids.values()].map((id) => queue.read(id)));
while (records.some((r) => !r || !final.includes(r.record.state)) && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 1000));
  records = await Promise.all([...ids.values()].map((id) => retrying(() => queue.read(id), 'read')));
}
stopChaos = true;
await killer;
const objects = await queue.results.list();
const objectsPerJob = new Map<string, number>();
for (const o of objects) objectsPerJob.set(o.name.split('/')[0], (objectsPerJob.get(o.name.split('/')[0]) ?? 0) + 1);
const keys = await queue.records.keys();
let recordCount = 0;
for await (const _ of keys) recordCount++;
const succeeded = records.filter((r) => r?.record.state === 'succeeded');
const counts = {
  submitted: JOBS,
  'distinct job ids': new Set(ids.values()).size,
  'job records in KV': recordCount,
  succeeded: succeeded.length,
  failed: records.filter((r) => r?.record.state === 'failed').length,
  cancelled: records.filter((r) => r?.record.state === 'cancelled').length,
  lost: records.filter((r) => !r || !final.includes(r.record.state)).length,
  'duplicates (completed twice)': succeeded.filter((r) => (r!.record.completions ?? 0) > 1).length,
  'duplicates (extra result objects)': [...objectsPerJob.values()].filter((n) => n > 1).length,
  'jobs with a redelivery': records.filter((r) => (r?.record.attempts ?? 0) > 1).length,
  'worker SIGKILLs': kills,
  'nats-server restarts': restarted ? 1 : 0,
  'submit retries': submitRetries,
  'wall seconds': Math.round((Date.now() - t0) / 1000),
};
for (const r of records) {
  if (r && r.record.state !== 'succeeded') console.log(`job ${r.record.id} ${r.record.state} after ${r.record.attempts} attempt(s): ${r.record.error}`);
}
console.log('| count | value |\n| --- | ---: |');
for (const [k, v] of Object.entries(counts)) console.log(`| ${k} | ${v} |`);
const ok = counts.succeeded === JOBS && counts.lost === 0 && counts['duplicates (completed twice)'] === 0 && counts['duplicates (extra result objects)'] === 0 && counts['distinct job ids'] === JOBS && recordCount === JOBS;
console.log(ok ? 'SOAK PASSED: submitted = succeeded, 0 duplicates, 0 lost' : 'SOAK FAILED');

for (const w of workers) w?.kill('SIGKILL');
client.close();
await nc.close();
await gateway.close();
await stages.close();
await nats.close();
fs.rmSync(workDir, { recursive: true, force: true });
process.exit(ok ? 0 : 1);
