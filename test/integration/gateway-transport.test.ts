// The gateway's transport on its own (no model needed): health before the stages are reached, reflection as
// grpcurl uses it, bearer-token auth, fast UNAVAILABLE when stages are down, and the Prometheus endpoint.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { ServiceHost } from '../../services/common/grpc-server.ts';
import { createRegistry, startMetricsServer, type MetricsServer } from '../../services/common/metrics.ts';
import { RemoteStages } from '../../services/gateway/remote-stages.ts';
import { addGenerationService, GENERATION_SERVICE } from '../../services/gateway/server.ts';
import { callGenerate, fileContainingSymbol, healthStatus, listServices } from '../helpers/grpc.ts';
import { closedPort } from '../helpers/ports.ts';

const TOKEN = 'test-token-123';
const bearer = (token: string) => {
  const m = new grpc.Metadata();
  m.set('authorization', `Bearer ${token}`);
  return m;
};

describe('gateway transport (stages down)', () => {
  let host: ServiceHost;
  let stages: RemoteStages;
  let metrics: MetricsServer;

  beforeAll(async () => {
    const down = `127.0.0.1:${await closedPort()}`;
    host = new ServiceHost({ name: 'gateway', host: '127.0.0.1', port: 0, registry: createRegistry(), admission: { maxInFlight: 2, maxQueue: 2 } });
    stages = new RemoteStages({ textEncoder: [down], denoiser: [down], decoder: [down] });
    addGenerationService(host, stages, { authToken: TOKEN });
    await host.listen();
    metrics = await startMetricsServer(host.registry, '127.0.0.1', 0);
  });

  afterAll(async () => {
    await host.shutdown();
    stages.close();
    await metrics.close();
  });

  it('reports NOT_SERVING until the stages have been reached', async () => {
    expect(await healthStatus(host.address)).toBe('NOT_SERVING');
    expect(await healthStatus(host.address, GENERATION_SERVICE)).toBe('NOT_SERVING');
  });

  it('lists and describes its services through server reflection', async () => {
    expect(await listServices(host.address)).toEqual(['grpc.health.v1.Health', 'sana.v1.Generation']);
    const files = await fileContainingSymbol(host.address, 'sana.v1.Generation');
    // proto-loader (which reflection builds on) serves one file per package, sana_v1.proto
    const generation = files.find((f) => f.service.some((s) => s.name === 'Generation'))!;
    expect(generation.package).toBe('sana.v1');
    const method = generation.service.find((s) => s.name === 'Generation')!.method[0];
    expect(method).toMatchObject({ name: 'Generate', inputType: '.sana.v1.GenerateRequest', outputType: '.sana.v1.GenerateResponse', serverStreaming: true });
    const request = generation.messageType.find((m) => m.name === 'GenerateRequest')!;
    expect(request.field.map((f) => f.name)).toEqual(expect.arrayContaining(['prompt', 'negative_prompt', 'num_inference_steps', 'guidance_scale', 'height', 'width', 'num_images_per_prompt', 'seed']));
    // every message a call needs is in the answer, so a client can encode requests and decode responses
    expect(generation.messageType.map((m) => m.name)).toEqual(expect.arrayContaining(['GenerateResponse', 'ImageChunk', 'Tensor', 'GenerateSummary']));
  });

  it('refuses calls without the right bearer token before anything else', async () => {
    const missing = await callGenerate(host.address, { prompt: ['a cat'] });
    expect(missing.code).toBe(grpc.status.UNAUTHENTICATED);
    const wrong = await callGenerate(host.address, { prompt: ['a cat'] }, { metadata: bearer('nope') });
    expect(wrong.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(wrong.details).toBe('invalid bearer token');
  });

  it('answers UNAVAILABLE quickly, naming the stage, when the stages are down', async () => {
    const outcome = await callGenerate(host.address, { prompt: ['a cat'] }, { metadata: bearer(TOKEN), deadline: Date.now() + 30_000 });
    expect(outcome.code).toBe(grpc.status.UNAVAILABLE);
    expect(outcome.details).toMatch(/^(text-encoder|denoiser|decoder) at 127\.0\.0\.1:\d+ is not reachable/);
    expect(outcome.seconds).toBeLessThan(3);
  });

  it('exports request counts by method and code, readiness and process metrics over HTTP', async () => {
    const scrape = async () => (await fetch(`http://127.0.0.1:${metrics.port}/metrics`)).text();
    const count = async (code: string) => {
      const line = new RegExp(`^sana_grpc_requests_total\\{service="gateway",method="Generate",code="${code}"\\} (\\d+)$`, 'm').exec(await scrape());
      return line ? Number(line[1]) : 0;
    };
    const [unauthenticated, unavailable] = [await count('UNAUTHENTICATED'), await count('UNAVAILABLE')];
    await callGenerate(host.address, { prompt: ['a cat'] });
    await callGenerate(host.address, { prompt: ['a cat'] }, { metadata: bearer(TOKEN) });
    expect([await count('UNAUTHENTICATED'), await count('UNAVAILABLE')]).toEqual([unauthenticated + 1, unavailable + 1]);
    const text = await scrape();
    expect(text).toMatch(/sana_grpc_request_duration_seconds_bucket\{le="0.005",service="gateway",method="Generate",code="UNAUTHENTICATED"\}/);
    expect(text).toMatch(/sana_ready\{service="gateway"\} 0/);
    expect(text).toMatch(/sana_queue_depth\{service="gateway"\} 0/);
    expect(text).toMatch(/process_cpu_seconds_total/);
    expect((await fetch(`http://127.0.0.1:${metrics.port}/other`)).status).toBe(404);
  });
});
