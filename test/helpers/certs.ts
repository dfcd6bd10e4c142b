// Test certificates made with the openssl CLI: a CA, a server certificate for 127.0.0.1/localhost and a client
// certificate signed by it, and a client certificate from another CA that the servers must refuse.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

export interface TestCertificates {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** signed by a CA the servers do not trust */
  rogueCert: string;
  rogueKey: string;
}

function openssl(dir: string, args: string[]): void {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

/** A self-signed CA (`name`.pem, `name`.key). */
function makeCa(dir: string, name: string): void {
  openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
    '-subj', `/CN=${name}`, '-keyout', `${name}.key`, '-out', `${name}.pem`]);
}

/** A leaf certificate (`name`.pem, `name`.key) signed by the CA `ca`, with the given subjectAltName. */
function makeLeaf(dir: string, name: string, ca: string, altNames: string): void {
  openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', `/CN=${name}`,
    '-keyout', `${name}.key`, '-out', `${name}.csr`]);
  fs.writeFileSync(path.join(dir, `${name}.ext`), `subjectAltName=${altNames}\n`);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.pem`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '2',
    '-extfile', `${name}.ext`, '-out', `${name}.pem`]);
}

export function makeTestCertificates(dir: string): TestCertificates {
  makeCa(dir, 'ca');
  makeCa(dir, 'rogue-ca');
  makeLeaf(dir, 'server', 'ca', 'IP:127.0.0.1,DNS:localhost');
  makeLeaf(dir, 'client', 'ca', 'DNS:sana-client');
  makeLeaf(dir, 'rogue', 'rogue-ca', 'DNS:sana-client');
  const at = (file: string) => path.join(dir, file);
  return {
    ca: at('ca.pem'),
    serverCert: at('server.pem'),
    serverKey: at('server.key'),
    clientCert: at('client.pem'),
    clientKey: at('client.key'),
    rogueCert: at('rogue.pem'),
    rogueKey: at('rogue.key'),
  };
}
