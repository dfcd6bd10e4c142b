// `sana serve all --precision int8` on the tiny random checkpoint: every stage's GetInfo says which arithmetic it
// runs (text encoder and denoiser int8, decoder fp32), over real gRPC on loopback.
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { startServe, type Serving } from '../../services/cli/serve.ts';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { DecoderClient } from '../../services/common/gen/sana/v1/decoder.ts';
import { DenoiserClient } from '../../services/common/gen/sana/v1/denoiser.ts';
import { TextEncoderClient } from '../../services/common/gen/sana/v1/text_encoder.ts';
import { tempDir } from '../helpers/tmp.ts';
import { loopbackServeConfig } from '../helpers/serve-config.ts';

const root = tempDir('serve-precision');
process.env.SANA_CACHE_DIR = `${root}/cache`;
let serving: Serving;

beforeAll(async () => {
  const model = `${root}/tiny`;
  writeRandomCheckpoint('tiny', model);
  serving = await startServe(loopbackServeConfig(model, { maxInFlight: 1, maxQueue: 1, precision: 'int8', shutdownGraceSeconds: 0 }));
  await serving.ready;
});

afterAll(async () => {
  await serving?.close();
});

type InfoClient = grpc.Client & { getInfo(req: object, cb: (e: grpc.ServiceError | null, info: { precision: string }) => void): void };

async function precisionOf(name: string, Client: new (address: string, credentials: grpc.ChannelCredentials) => InfoClient): Promise<string> {
  const client = new Client(serving.hosts.find((h) => h.options.name === name)!.address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) => client.getInfo({}, (e, info) => (e ? reject(e) : resolve(info.precision))));
  } finally {
    client.close();
  }
}

test('GetInfo reports int8 for the text encoder and denoiser, fp32 for the decoder', async () => {
  expect(await precisionOf('text-encoder', TextEncoderClient as never)).toBe('int8');
  expect(await precisionOf('denoiser', DenoiserClient as never)).toBe('int8');
  expect(await precisionOf('decoder', DecoderClient as never)).toBe('fp32');
});
