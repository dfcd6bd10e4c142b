// A real nats-server (Debian's `nats-server` package) with JetStream on a free loopback port and file storage in
// a temporary folder, for tests and the soak script. restart() stops it and starts it again on the same port and
// folder, as a pod restart does: what JetStream had stored is still there.
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { closedPort } from './ports.ts';

export class NatsServer {
  private process: ChildProcess | undefined;
  private output = '';

  private constructor(
    readonly port: number,
    readonly storeDir: string,
  ) {}

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<NatsServer> {
    const server = new NatsServer(await closedPort(), fs.mkdtempSync(path.join(os.tmpdir(), 'sana-nats-')));
    await server.launch();
    return server;
  }

  private async launch(): Promise<void> {
    // Debian installs it in /usr/sbin, which is not on every user's PATH
    const bin = process.env.NATS_SERVER_BIN ?? (fs.existsSync('/usr/sbin/nats-server') ? '/usr/sbin/nats-server' : 'nats-server');
    this.output = '';
    const child = spawn(bin, ['-js', '-a', '127.0.0.1', '-p', String(this.port), '-sd', this.storeDir], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.process = child;
    child.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
    const exited = new Promise<never>((_, reject) => {
      child.once('error', (e) => reject(new Error(`cannot start ${bin}: ${e.message} (apt-get install nats-server)`)));
      child.once('exit', (code) => reject(new Error(`nats-server exited with ${code}:\n${this.output}`)));
    });
    exited.catch(() => {});
    // ready when JetStream says so (it restores its streams from disk first) and the port accepts
    const end = Date.now() + 60_000;
    while (!this.output.includes('Server is ready')) {
      if (Date.now() > end) throw new Error(`nats-server did not become ready:\n${this.output}`);
      await Promise.race([new Promise((r) => setTimeout(r, 20)), exited]);
    }
    await new Promise<void>((resolve, reject) => {
      const socket = net.connect(this.port, '127.0.0.1', () => {
        socket.end();
        resolve();
      });
      socket.once('error', reject);
    });
  }

  /** Stops the server: SIGTERM (a clean shutdown) or SIGKILL. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const child = this.process;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await exited;
    this.process = undefined;
  }

  async restart(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.stop(signal);
    await this.launch();
  }

  async close(): Promise<void> {
    await this.stop();
    fs.rmSync(this.storeDir, { recursive: true, force: true });
  }
}
