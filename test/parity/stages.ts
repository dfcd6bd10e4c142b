// The stages the parity suite knows, how each finds its groups in golden.json and how it checks them. A group
// no stage owns, or one whose check fails or checks nothing, fails the suite.
import type { Golden } from './golden.ts';

export interface ParityResult {
  tensor: string;
  metric: 'max_rel_err' | 'max_abs_err';
  value: number;
  limit: number;
}

export interface Stage {
  name: string;
  /** the groups of this stage present in the golden (group names may contain dots) */
  groups(golden: Golden): string[];
  check(golden: Golden, group: string): Promise<ParityResult[]>;
}

/** Groups named `<prefix>...` that own a tensor `<group>.<outputSuffix>`. */
export function groupsByOutput(golden: Golden, prefix: string, outputSuffix: string): string[] {
  return Object.keys(golden.json.tensors)
    .filter((n) => n.startsWith(prefix) && n.endsWith(`.${outputSuffix}`))
    .map((n) => n.slice(0, -(outputSuffix.length + 1)));
}

export const FLOAT_LIMIT = 1e-4;
