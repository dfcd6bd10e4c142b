// TLS and mutual TLS for every gRPC port and every client of one, from PEM files (Kubernetes mounts Secrets as
// files). Plaintext stays the default on loopback. A server with a client CA requires and verifies client
// certificates; a client with a CA verifies the server and, given its own certificate and key, presents them.
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { InvalidArgumentError } from './errors.ts';

/** PEM file paths as the flags and SANA_* variables name them. */
export interface TlsFiles {
  /** this side's certificate chain (--tls-cert): the server's, or the client's for mutual TLS */
  cert?: string;
  /** the private key of `cert` (--tls-key) */
  key?: string;
  /** client: the CA that signed the servers' certificates (--tls-ca); setting it turns TLS on for clients */
  ca?: string;
  /** server: the CA that signed client certificates (--tls-client-ca); setting it requires one (mutual TLS) */
  clientCa?: string;
}

/** A misconfiguration names its flag (CLI exit 2). */
function read(flag: string, file: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (e) {
    throw new InvalidArgumentError(flag, `cannot read ${file} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

/** cert and key come as a pair */
function keyPair(files: TlsFiles): { cert: Buffer; key: Buffer } | undefined {
  if (!files.cert !== !files.key) throw new InvalidArgumentError('tls-key', '--tls-cert and --tls-key go together: give both or neither');
  return files.cert && files.key ? { cert: read('tls-cert', files.cert), key: read('tls-key', files.key) } : undefined;
}

/** Server credentials: plaintext without a certificate; TLS with one; mutual TLS with a client CA as well. */
export function serverCredentials(files: TlsFiles): grpc.ServerCredentials {
  const pair = keyPair(files);
  if (!pair) {
    if (files.clientCa) throw new InvalidArgumentError('tls-client-ca', 'needs --tls-cert and --tls-key: mutual TLS is TLS first');
    return grpc.ServerCredentials.createInsecure();
  }
  const clientCa = files.clientCa ? read('tls-client-ca', files.clientCa) : null;
  return grpc.ServerCredentials.createSsl(clientCa, [{ cert_chain: pair.cert, private_key: pair.key }], clientCa !== null);
}

/** Client credentials: plaintext without a CA; TLS verifying the server with one; presenting `cert` when given. */
export function channelCredentials(files: TlsFiles): grpc.ChannelCredentials {
  const pair = keyPair(files);
  if (!files.ca) {
    if (pair) throw new InvalidArgumentError('tls-ca', 'is required with a client certificate (--tls-cert): the CA that signed the server certificates');
    return grpc.credentials.createInsecure();
  }
  return grpc.credentials.createSsl(read('tls-ca', files.ca), pair?.key ?? null, pair?.cert ?? null);
}

/** One line for the printed configuration. */
export function describeTls(files: TlsFiles): string {
  if (!files.cert) return 'off (plaintext)';
  return files.clientCa ? 'mutual TLS (client certificates required)' : 'TLS';
}
