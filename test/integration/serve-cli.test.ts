// `sana serve all` as its own process, configured by flags and environment variables, and a Generate call from
// this (separate) process: the image comes back, the bearer token from SANA_AUTH_TOKEN is enforced, and SIGTERM
// drains and exits cleanly.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { callGenerate, healthStatus } from '../helpers/grpc.ts';
import { tempDir } from '../helpers/tmp.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const TOKEN = 'cli-test-token';

let child: ChildProcess;
let stderr = '';
let address = '';

beforeAll(async () => {
  const modelDir = tempDir('serve-cli');
  writeRandomCheckpoint('tiny', modelDir);
  child = spawn(process.execPath, [path.join(ROOT, 'services/cli/bin.js'), 'serve', 'all', '--model', modelDir, '--port', '0', '--metrics-port', '0'], {
    env: { ...process.env, SANA_LOG_LEVEL: 'silent', SANA_AUTH_TOKEN: TOKEN, SANA_MAX_IN_FLIGHT: '3' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  address = await new Promise<string>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`sana serve all exited with ${code}:\n${stderr}`)));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      const ready = /ready; Generation serving on (\S+)/.exec(stderr);
      if (ready) resolve(ready[1]);
    });
  });
});

afterAll(() => {
  if (child.exitCode === null) child.kill('SIGKILL');
});

describe('sana serve all (separate process)', () => {
  it('prints its configuration without the token', () => {
    expect(stderr).toMatch(/sana serve all/);
    expect(stderr).toMatch(/gateway\s+127\.0\.0\.1:\d+ \(in flight ≤ 3, queue ≤ 32\)/);
    expect(stderr).toMatch(/denoiser\s+127\.0\.0\.1:\d+/);
    expect(stderr).toMatch(/auth\s+bearer token required/);
    expect(stderr).not.toContain(TOKEN);
  });

  it('serves Generate to a client in another process, with the bearer token from SANA_AUTH_TOKEN', async () => {
    expect(await healthStatus(address)).toBe('SERVING');
    expect((await callGenerate(address, { prompt: ['a lighthouse'] })).code).toBe(grpc.status.UNAUTHENTICATED);

    const metadata = new grpc.Metadata();
    metadata.set('authorization', `Bearer ${TOKEN}`);
    const outcome = await callGenerate(address, { prompt: ['a lighthouse'], seed: 5n, numInferenceSteps: 3, width: 64, height: 96 }, { metadata });
    expect(outcome.code, outcome.details).toBe(grpc.status.OK);
    const [image] = outcome.images;
    expect(image.format).toBe('png');
    expect([image.width, image.height]).toEqual([64, 96]);
    expect(Buffer.from(image.bytes).subarray(1, 4).toString()).toBe('PNG');
    const summary = outcome.events.at(-1)!.event;
    expect(summary?.$case === 'summary' && summary.value.seed).toBe(5n);
  });

  it('drains and exits 0 on SIGTERM', async () => {
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(stderr).toMatch(/SIGTERM: draining in-flight requests/);
  });
});
