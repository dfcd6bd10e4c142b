// Real gRPC clients for tests: health, server reflection (as grpcurl uses it), and a Generate call collected into
// its events, reassembled images and final status.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { service as healthService } from 'grpc-health-check';
import { GenerationClient, type GenerateRequest, type GenerateResponse } from '../../services/common/gen/sana/v1/generation.ts';
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
