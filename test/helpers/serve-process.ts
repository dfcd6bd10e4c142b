// `sana serve all` in a child process (its own event loop and memory, as in production), for the fuzzer and the
// overload figures: the addresses and admission limits it printed at start, its resident memory, its log lines,
// and whether it crashed.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface ServedProcess {
  child: ChildProcess;
  /** the Generation gateway */
  gateway: string;
  /** the loopback stage services inside the process */
  stages: { textEncoder: string; denoiser: string; decoder: string };
  /** the gateway's admission limits as the running service printed them */
  limits: { maxInFlight: number; maxQueue: number };
  /** JSON log lines the process wrote to stdout */
  logs: Record<string, unknown>[];
  /** the process's Prometheus endpoint */
  metricsUrl: string;
  /** the sum over all label sets of a metric on the process's Prometheus endpoint */
  metric(name: string): Promise<number>;
  /** resident set size of the process now, in bytes (Linux /proc) */
  rssBytes(): number;
  /** the exit code or signal when the process ended on its own (a crash), else undefined */
  readonly exited: string | undefined;
  stop(): Promise<void>;
}

/** `host:port (in flight ≤ N, queue ≤ M)` as `sana serve` prints each service. */
const SERVICE_LINE = (name: string) => new RegExp(`^\\s+${name}\\s+(\\S+) \\(in flight ≤ (\\d+), queue ≤ (\\d+)\\)`, 'm');

/** Starts `sana serve all` with the extra flags and environment; resolves once it reports ready. */
export async function startServeProcess(modelDir: string, flags: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<ServedProcess> {
  const child = spawn(
    process.execPath,
    [path.join(ROOT, 'services/cli/bin.js'), 'serve', 'all', '--model', modelDir, '--port', '0', '--metrics-host', '127.0.0.1', '--metrics-port', '0', ...flags],
    { env: { ...process.env, SANA_LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const logs: Record<string, unknown>[] = [];
  let partial = '';
  child.stdout!.on('data', (d: Buffer) => {
    const lines = (partial + d.toString('utf8')).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      try {
        logs.push(JSON.parse(line));
      } catch {
        logs.push({ msg: line });
      }
    }
  });
  let exited: string | undefined;
  let stopping = false;
  const exit = new Promise<void>((resolve) =>
    child.once('exit', (code, signal) => {
      if (!stopping) exited = signal ?? String(code);
      resolve();
    }),
  );
  let stderr = '';
  const started = await new Promise<RegExpExecArray>((resolve, reject) => {
    void exit.then(() => reject(new Error(`sana serve all exited (${exited}):\n${stderr}`)));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      const ready = /ready; Generation serving on (\S+)/.exec(stderr);
      if (ready) resolve(ready);
    });
  });
  const service = (name: string) => {
    const m = SERVICE_LINE(name).exec(stderr);
    if (!m) throw new Error(`sana serve all did not print its ${name} line:\n${stderr}`);
    return { address: m[1], maxInFlight: Number(m[2]), maxQueue: Number(m[3]) };
  };
  const gateway = service('gateway');
  const metricsUrl = /^\s+metrics\s+(http:\S+)/m.exec(stderr)?.[1];
  if (!metricsUrl) throw new Error(`sana serve all did not print its metrics endpoint:\n${stderr}`);
  return {
    child,
    gateway: started[1],
    stages: { textEncoder: service('text-encoder').address, denoiser: service('denoiser').address, decoder: service('decoder').address },
    limits: { maxInFlight: gateway.maxInFlight, maxQueue: gateway.maxQueue },
    logs,
    metricsUrl,
    metric: async (name) => {
      const text = await (await fetch(metricsUrl)).text();
      let sum = 0;
      for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, 'gm'))) sum += Number(m[1]);
      return sum;
    },
    rssBytes: () => {
      const status = fs.readFileSync(`/proc/${child.pid}/status`, 'utf8');
      return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
    },
    get exited() {
      return exited;
    },
    stop: async () => {
      stopping = true;
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exit;
    },
  };
}
