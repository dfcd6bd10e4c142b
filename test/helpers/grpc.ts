// Real gRPC clients for tests: health, server reflection (as grpcurl uses it), and a Generate call collected into
// its events, reassembled images and final status.
import http2 from 'node:http2';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { service as healthService } from 'grpc-health-check';
import { GenerateRequest, GenerateResponse, GenerationClient } from '../../services/common/gen/sana/v1/generation.ts';
import type { DecodedImage } from '../../services/common/stages.ts';
import { ImageAssembler } from '../../services/common/tensor-chunks.ts';

const require = createRequire(import.meta.url);

export function healthStatus(address: string, service = ''): Promise<string> {
  const Health = grpc.makeClientConstructor(healthService, 'grpc.health.v1.Health');
  const client = new Health(address, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    check(req: { service: string }, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: { status: string }) => void): void;
  };
  return new Promise((resolve, reject) =>
    client.check({ service }, { deadline: Date.now() + 5000 }, (e, r) => {
      client.close();
      if (e) reject(e);
      else resolve(r!.status);
    }),
  );
}

interface ReflectionResponse {
  listServicesResponse?: { service: { name: string }[] };
  fileDescriptorResponse?: { fileDescriptorProto: Buffer[] };
  errorResponse?: { errorCode: number; errorMessage: string };
}

/** One request on the server reflection stream (grpc.reflection.v1), as grpcurl sends it. */
function reflect(address: string, request: Record<string, string>): Promise<ReflectionResponse> {
  const protoDir = path.join(path.dirname(require.resolve('@grpc/reflection')), '../proto');
  const definition = protoLoader.loadSync('grpc/reflection/v1/reflection.proto', { includeDirs: [protoDir] });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { reflection: { v1: { ServerReflection: new (a: string, c: grpc.ChannelCredentials) => grpc.Client & { ServerReflectionInfo(): grpc.ClientDuplexStream<unknown, ReflectionResponse> } } } };
  };
  const client = new pkg.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (r: ReflectionResponse) => {
      resolve(r);
      call.end();
    });
    call.on('error', reject);
    call.on('end', () => client.close());
    call.write(request);
  });
}

export async function listServices(address: string): Promise<string[]> {
  const r = await reflect(address, { listServices: '' });
  return r.listServicesResponse!.service.map((s) => s.name).sort();
}

export async function fileContainingSymbol(address: string, symbol: string): Promise<FileDescriptorProto[]> {
  const r = await reflect(address, { fileContainingSymbol: symbol });
  if (r.errorResponse) throw new Error(r.errorResponse.errorMessage);
  return r.fileDescriptorResponse!.fileDescriptorProto.map((b) => fromBinary(FileDescriptorProtoSchema, b));
}

export interface GenerateOutcome {
  events: GenerateResponse[];
  images: DecodedImage[];
  /** the gRPC status code (0 = OK) and its message */
  code: grpc.status;
  details: string;
  metadata?: grpc.Metadata;
  /** seconds from the call to its status */
  seconds: number;
}

/** Calls Generate and collects everything; `onEvent` may cancel the call. */
export function callGenerate(
  address: string,
  request: Partial<GenerateRequest>,
  options: {
    metadata?: grpc.Metadata;
    deadline?: number;
    onStart?: (call: grpc.ClientReadableStream<GenerateResponse>) => void;
    onEvent?: (e: GenerateResponse, call: grpc.ClientReadableStream<GenerateResponse>) => void;
  } = {},
): Promise<GenerateOutcome> {
  const client = new GenerationClient(address, grpc.credentials.createInsecure());
  const started = performance.now();
  const events: GenerateResponse[] = [];
  const images = new ImageAssembler(1 << 30);
  // a malformed image stream fails the call with the reason instead of throwing inside a listener (a hang)
  return new Promise((resolve, reject) => {
    const call = client.generate(
      { prompt: [], negativePrompt: '', complexHumanInstruction: [], format: 0, previewEvery: 0, ...request },
      options.metadata ?? new grpc.Metadata(),
      options.deadline !== undefined ? { deadline: options.deadline } : {},
    );
    options.onStart?.(call);
    call.on('data', (e: GenerateResponse) => {
      events.push(e);
      try {
        if (e.event?.$case === 'image') images.add(e.event.value);
      } catch (error) {
        call.cancel();
        reject(error);
      }
      options.onEvent?.(e, call);
    });
    call.on('error', () => {}); // the status event below reports it
    call.on('status', (s: grpc.StatusObject) => {
      client.close();
      try {
        resolve({ events, images: s.code === 0 ? images.result() : [], code: s.code, details: s.details, metadata: s.metadata, seconds: (performance.now() - started) / 1000 });
      } catch (error) {
        reject(error);
      }
    });
  });
}

/**
 * Generate as raw HTTP/2 with its response paused: nothing is read until the caller resumes the stream, so "not
 * reading" is HTTP/2 flow control itself (grpc-js's client keeps reading into its own buffers while paused).
 */
export function unreadGenerate(address: string, request: Partial<GenerateRequest> = {}): { stream: http2.ClientHttp2Stream; session: http2.ClientHttp2Session } {
  const session = http2.connect(`http://${address}`);
  const stream = session.request({ ':method': 'POST', ':path': '/sana.v1.Generation/Generate', 'content-type': 'application/grpc', te: 'trailers' });
  stream.pause();
  const body = GenerateRequest.encode(GenerateRequest.fromPartial(request)).finish();
  const frame = Buffer.alloc(5 + body.length); // gRPC message: uncompressed flag, big-endian length, bytes
  frame.writeUInt32BE(body.length, 1);
  Buffer.from(body).copy(frame, 5);
  stream.end(frame);
  return { stream, session };
}

/** Resumes an unread stream and reads it to its end: its messages and grpc-status. */
export async function readToEnd(stream: http2.ClientHttp2Stream): Promise<{ messages: GenerateResponse[]; status: string | undefined }> {
  const parts: Buffer[] = [];
  stream.on('data', (d: Buffer) => parts.push(d));
  const trailers = new Promise<http2.IncomingHttpHeaders>((resolve) => stream.on('trailers', resolve));
  await new Promise((resolve) => stream.on('end', resolve).resume());
  const body = Buffer.concat(parts);
  const messages: GenerateResponse[] = [];
  for (let at = 0; at < body.length; ) {
    const length = body.readUInt32BE(at + 1);
    messages.push(GenerateResponse.decode(body.subarray(at + 5, at + 5 + length)));
    at += 5 + length;
  }
  return { messages, status: (await trailers)['grpc-status'] as string | undefined };
}
