// TLS and mutual TLS on every gRPC port of `sana serve all` (the gateway and its three loopback stages), with
// certificates made by openssl: a client with a certificate from the trusted CA gets its image; a client without
// one, with one from another CA, or in plaintext is refused by every port; the CLI's flags reach both sides.
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeRandomCheckpoint } from '../../services/cli/checkpoint.ts';
import { startServe, type Serving } from '../../services/cli/serve.ts';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import { ServiceHost } from '../../services/common/grpc-server.ts';
import { channelCredentials, serverCredentials } from '../../services/common/grpc-tls.ts';
import { generateRemote } from '../../services/gateway/client.ts';
import { makeTestCertificates, type TestCertificates } from '../helpers/certs.ts';
import { closedPort } from '../helpers/ports.ts';
import { tempDir } from '../helpers/tmp.ts';
import { loopbackServeConfig } from '../helpers/serve-config.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** The health Check answer at `address` with these credentials, or the status code of the failure. */
function healthCheck(address: string, credentials: grpc.ChannelCredentials): Promise<{ status?: string; code?: grpc.status; details?: string }> {
  const Health = grpc.makeClientConstructor(healthService, 'grpc.health.v1.Health');
  const client = new Health(address, credentials) as unknown as grpc.Client & {
    check(req: { service: string }, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void;
  };
  return new Promise((resolve) =>
    client.check({ service: '' }, { deadline: Date.now() + 5000 }, (e, r) => {
      client.close();
      resolve(e ? { code: e.code, details: e.details } : { status: r!.status });
    }),
  );
}

const root = tempDir('tls');
let certs: TestCertificates;
let serving: Serving;

beforeAll(async () => {
  certs = makeTestCertificates(root);
  const modelDir = path.join(root, 'model');
  writeRandomCheckpoint('tiny', modelDir);
  serving = await startServe(loopbackServeConfig(modelDir, { maxInFlight: 2, maxQueue: 2, tls: { cert: certs.serverCert, key: certs.serverKey, ca: certs.ca, clientCa: certs.ca } }));
  await serving.ready;
});

afterAll(async () => {
  await serving?.close();
});

/** A client with a certificate from the CA the servers trust. */
const trusted = () => channelCredentials({ ca: certs.ca, cert: certs.clientCert, key: certs.clientKey });

describe('mutual TLS on every port of sana serve all', () => {
  it('serves Generate to a client with a certificate from the trusted CA (the gateway reached its stages over mutual TLS)', async () => {
    const result = await generateRemote(serving.address, { prompt: 'a fox', seed: 3, numInferenceSteps: 1 }, {}, { credentials: trusted() });
    expect(result.images).toHaveLength(1);
    expect(Buffer.from(result.images[0].bytes).subarray(0, 8).equals(PNG_SIGNATURE)).toBe(true);
    for (const host of serving.hosts) expect(await healthCheck(host.address, trusted())).toEqual({ status: 'SERVING' });
  });

  it('refuses, on the gateway and on each stage, clients without a certificate, with one from another CA, or in plaintext', async () => {
    const refused = {
      'no client certificate': () => channelCredentials({ ca: certs.ca }),
      'a certificate from another CA': () => channelCredentials({ ca: certs.ca, cert: certs.rogueCert, key: certs.rogueKey }),
      plaintext: () => grpc.credentials.createInsecure(),
    };
    expect(serving.hosts.map((h) => h.options.name).sort()).toEqual(['decoder', 'denoiser', 'gateway', 'text-encoder']);
    for (const host of serving.hosts) {
      for (const [what, credentials] of Object.entries(refused)) {
        const answer = await healthCheck(host.address, credentials());
        expect(answer.code, `${host.options.name}, ${what}: ${answer.details}`).toBe(grpc.status.UNAVAILABLE);
      }
    }
  });
});

describe('TLS configuration', () => {
  it('serves TLS without client certificates when no client CA is given', async () => {
    const host = new ServiceHost({ name: 'tls-only', host: '127.0.0.1', port: 0, admission: { maxInFlight: 1, maxQueue: 0 }, credentials: serverCredentials({ cert: certs.serverCert, key: certs.serverKey }) });
    await host.listen();
    try {
      expect(await healthCheck(host.address, channelCredentials({ ca: certs.ca }))).toEqual({ status: 'NOT_SERVING' });
      expect((await healthCheck(host.address, grpc.credentials.createInsecure())).code).toBe(grpc.status.UNAVAILABLE);
    } finally {
      await host.shutdown();
    }
  });

  it('names the flag of a missing or unpaired file', () => {
    const fail = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        expect(e).toBeInstanceOf(InvalidArgumentError);
        return (e as Error).message;
      }
      throw new Error('expected an error');
    };
    expect(fail(() => serverCredentials({ cert: certs.serverCert }))).toMatch(/^tls-key: --tls-cert and --tls-key go together/);
    expect(fail(() => serverCredentials({ cert: path.join(root, 'nope.pem'), key: certs.serverKey }))).toMatch(/^tls-cert: cannot read .*nope\.pem \(ENOENT\)/);
    expect(fail(() => serverCredentials({ clientCa: certs.ca }))).toMatch(/^tls-client-ca: needs --tls-cert and --tls-key/);
    expect(fail(() => channelCredentials({ cert: certs.clientCert, key: certs.clientKey }))).toMatch(/^tls-ca: is required with a client certificate/);
  });

  it('`sana serve gateway` takes the certificates from SANA_TLS_* and `sana generate --server` from its --tls-* flags', async () => {
    const down = `127.0.0.1:${await closedPort()}`;
    const child = spawn(process.execPath, [path.join(ROOT, 'services/cli/bin.js'), 'serve', 'gateway', '--host', '127.0.0.1', '--port', '0', '--no-metrics', '--text-encoder', down, '--denoiser', down, '--decoder', down], {
      env: { ...process.env, SANA_LOG_LEVEL: 'silent', SANA_TLS_CERT: certs.serverCert, SANA_TLS_KEY: certs.serverKey, SANA_TLS_CLIENT_CA: certs.ca, SANA_TLS_CA: certs.ca },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    try {
      let stderr = '';
      const address = await new Promise<string>((resolve, reject) => {
        child.once('exit', (code) => reject(new Error(`sana serve gateway exited with ${code}:\n${stderr}`)));
        child.stderr!.on('data', (d: Buffer) => {
          stderr += d.toString();
          const m = /^\s+gateway\s+(\S+) /m.exec(stderr);
          if (m && /tls to stages/.test(stderr)) resolve(m[1]);
        });
      });
      expect(stderr).toMatch(/^\s+tls\s+mutual TLS \(client certificates required\)$/m);
      expect(await healthCheck(address, trusted())).toEqual({ status: 'NOT_SERVING' }); // stages down: not serving, but reached over mutual TLS
      expect((await healthCheck(address, channelCredentials({ ca: certs.ca }))).code).toBe(grpc.status.UNAVAILABLE);

      // the CLI client: refused without a certificate, then through to the (down) stages with one
      const generate = (flags: string[]) =>
        promisify(execFile)(process.execPath, [path.join(ROOT, 'services/cli/bin.js'), 'generate', 'a fox', '--server', address, '--steps', '1', '--out', path.join(root, 'cli.png'), ...flags]).then(() => '', (e: { stderr: string }) => e.stderr);
      expect(await generate(['--tls-ca', certs.ca])).toMatch(/UNAVAILABLE|14|connect|handshake|certificate/i);
      expect(await generate(['--tls-ca', certs.ca, '--tls-cert', certs.clientCert, '--tls-key', certs.clientKey])).toMatch(/text-encoder at .* is not reachable/);
      expect(fs.existsSync(path.join(root, 'cli.png'))).toBe(false);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
