// A checkpoint read through a model's tensor-shape contract: every read is shape-checked and recorded, so the
// tensors a configured model never read can be reported — they mean an option this implementation lacks (or a
// config.json that does not match the weights), never something to skip silently.
import { type Checkpoint, CheckpointError } from './safetensors.ts';

export class CheckpointWeights {
  private readonly used = new Set<string>();

  constructor(
    readonly ckpt: Checkpoint,
    /** every tensor the configured model reads, with its shape */
    readonly shapes: Map<string, number[]>,
  ) {}

  shape(name: string): number[] {
    const shape = this.shapes.get(name);
    if (!shape) throw new Error(`internal: ${name} is not part of the model`);
    return shape;
  }

  /** The tensor as float32, checked against its contract shape. */
  read(name: string): Float32Array {
    this.used.add(name);
    return this.ckpt.readF32(name, this.shape(name));
  }

  /** Records a tensor the model checks but does not compute with (e.g. batch-norm bookkeeping), shape-checked. */
  expect(name: string): void {
    this.used.add(name);
    this.ckpt.expectShape(name, this.shape(name));
  }

  /** Throws naming the first checkpoint tensor never read; `ignore` names tensors that belong to no model of ours. */
  assertAllUsed(model: string, ignore: (name: string) => boolean = () => false): void {
    const unused = this.ckpt.names.filter((n) => !this.used.has(n) && !ignore(n));
    if (unused.length > 0) {
      throw new CheckpointError(
        this.ckpt.source,
        unused[0],
        `${unused.length} tensor(s) not used by the configured ${model} (${unused.slice(0, 4).join(', ')}${unused.length > 4 ? ', …' : ''}): the checkpoint uses an option this implementation does not support, or config.json does not match it`,
      );
    }
  }
}
