// What a client learns when a request breaks something or is not a request at all: an internal failure (the
// decoder's ONNX Runtime worker gone) is logged with its cause and the request id, and the client gets a generic
// INTERNAL carrying that id; bytes that do not decode as the method's message, or strings that are not UTF-8, are
// INVALID_ARGUMENT naming `request` instead of grpc-js's INTERNAL.
import http2 from 'node:http2';
import path from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { DecoderClient, type DecodeRequest } from '../../services/common/gen/sana/v1/decoder.ts';
import { DType } from '../../services/common/gen/sana/v1/tensor.ts';
import { internalErrorMessage, ServiceHost } from '../../services/common/grpc-server.ts';
import { INVALID_FIELD_KEY } from '../../services/common/grpc-status.ts';
import { StageSlot } from '../../services/common/stage-slot.ts';
import type { DecoderStage } from '../../services/common/stages.ts';
import { addDecoderService } from '../../services/decoder/server.ts';
import { LocalDecoder } from '../../services/decoder/stage.ts';
import { RemoteStages } from '../../services/gateway/remote-stages.ts';
import { addGenerationService } from '../../services/gateway/server.ts';
import { closedPort } from '../helpers/ports.ts';
import { tempDir } from '../helpers/tmp.ts';

const logLines: Record<string, unknown>[] = [];
const logSink = new Writable({
  write(chunk: Buffer, _enc, done) {
    for (const line of chunk.toString('utf8').split('\n')) if (line) logLines.push(JSON.parse(line));
    done();
  },
});

let host: ServiceHost;
let decoder: LocalDecoder;
/** a gateway whose stages are down: requests that fail validation never need them */
let gateway: ServiceHost;
let stages: RemoteStages;

beforeAll(async () => {
  const modelDir = tempDir('hostile');
  writeRandomCheckpoint('tiny', modelDir);
  host = new ServiceHost({ name: 'decoder', host: '127.0.0.1', port: 0, admission: { maxInFlight: 1, maxQueue: 1 }, logger: pino({ level: 'info' }, logSink) });
  const slot = new StageSlot<DecoderStage>('decoder');
  addDecoderService(host, slot);
  await host.listen();
  decoder = await LocalDecoder.load(path.join(modelDir, 'vae'));
  slot.set(decoder);
  const down = `127.0.0.1:${await closedPort()}`;
  gateway = new ServiceHost({ name: 'gateway', host: '127.0.0.1', port: 0, admission: { maxInFlight: 1, maxQueue: 1 }, logger: pino({ level: 'silent' }) });
  stages = new RemoteStages({ textEncoder: [down], denoiser: [down], decoder: [down] });
  addGenerationService(gateway, stages);
  await gateway.listen();
});

afterAll(async () => {
  await host?.shutdown();
  await decoder?.close();
  await gateway?.shutdown();
  stages?.close();
});

/** A Decode call with `messages`; resolves with its final status. */
function decode(messages: DecodeRequest[], requestId: string): Promise<grpc.StatusObject> {
  const client = new DecoderClient(host.address, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  metadata.set('x-request-id', requestId);
  const call = client.decode(metadata);
  return new Promise((resolve) => {
    call.on('data', () => {});
    call.on('error', () => {});
    call.on('status', (s: grpc.StatusObject) => {
      client.close();
      resolve(s);
    });
    for (const m of messages) call.write(m);
    call.end();
  });
}

/** One raw gRPC call: the 5-byte prefix and `body` as the only message; resolves with grpc-status and its fields. */
function rawCall(address: string, methodPath: string, body: Buffer): Promise<{ code: number; details: string; field?: string }> {
  const session = http2.connect(`http://${address}`);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(body.length, 1);
  return new Promise((resolve, reject) => {
    const stream = session.request({ ':method': 'POST', ':path': methodPath, 'content-type': 'application/grpc', te: 'trailers' });
    let answer: { code: number; details: string; field?: string } | undefined;
    const read = (h: http2.IncomingHttpHeaders) => {
      if (h['grpc-status'] !== undefined) {
        answer = { code: Number(h['grpc-status']), details: decodeURIComponent(String(h['grpc-message'])), field: h[INVALID_FIELD_KEY] as string | undefined };
      }
    };
    stream.on('response', read);
    stream.on('trailers', read);
    stream.on('data', () => {});
    stream.on('close', () => {
      session.close();
      if (answer) resolve(answer);
      else reject(new Error(`no grpc-status on ${methodPath}`));
    });
    stream.end(Buffer.concat([prefix, body]));
  });
}

describe('hostile and failing requests', () => {
  it('sends a generic INTERNAL with the request id and logs the cause under that id', async () => {
    const info = decoder.info();
    const latents = new Float32Array(info.latentChannels * 2 * 2);
    const messages: DecodeRequest[] = [
      { input: { $case: 'settings', value: { format: 1, width: 2 * info.spatialScale, height: 2 * info.spatialScale, quality: 0 } } },
      { input: { $case: 'latents', value: { dtype: DType.DTYPE_FLOAT32, shape: [1, info.latentChannels, 2, 2], offset: 0, data: Buffer.from(latents.buffer) } } },
    ];
    expect((await decode(messages, 'req-works')).code).toBe(grpc.status.OK);

    await decoder.close(); // the model's ONNX Runtime worker is gone: the next run fails inside the stage
    const status = await decode(messages, 'req-broken');
    expect(status.code).toBe(grpc.status.INTERNAL);
    expect(status.details).toBe(internalErrorMessage('req-broken'));
    expect(status.details).not.toMatch(/ONNX|worker/);
    const logged = logLines.find((l) => l.requestId === 'req-broken' && l.msg === 'call failed');
    expect(logged?.level).toBe(50); // pino's error level
    expect((logged?.err as { message: string }).message).toMatch(/ONNX Runtime worker exited/);
  });

  it('answers bytes that are no valid message, and strings that are not UTF-8, with INVALID_ARGUMENT naming request', async () => {
    const garbage = await rawCall(host.address, '/sana.v1.Decoder/Decode', Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]));
    expect(garbage).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, field: 'request' });
    expect(garbage.details).toMatch(/^request: is not a valid Decode request protobuf message \(.+\)$/);
    const info = await rawCall(host.address, '/sana.v1.Decoder/GetInfo', Buffer.from([0x0b]));
    expect(info).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, field: 'request' });
    const health = await rawCall(host.address, '/grpc.health.v1.Health/Check', Buffer.from([0x0f]));
    expect(health).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, field: 'request' });
    // a prompt (GenerateRequest field 1) as an overlong encoding of "/": refused before any stage is called
    const utf8 = await rawCall(gateway.address, '/sana.v1.Generation/Generate', Buffer.from([0x0a, 0x02, 0xc0, 0xaf]));
    expect(utf8).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, field: 'request' });
    expect(utf8.details).toMatch(/^request: is not a valid Generate request protobuf message \(.*UTF-8.*\)$/i);
  });
});
