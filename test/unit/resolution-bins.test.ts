// SANA resolution binning against the reference's own answers (test/fixtures/resolution-bins/reference.json,
// made by running diffusers' classify_height_width_bin and resize_and_crop_tensor, see make_reference.py).
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../services/common/errors.ts';
import {
  ASPECT_RATIO_1024_BIN,
  ASPECT_RATIO_2048_BIN,
  ASPECT_RATIO_4096_BIN,
  ASPECT_RATIO_512_BIN,
  type AspectRatioBins,
  binForSampleSize,
  classifyHeightWidthBin,
  resizeBackGeometry,
} from '../../services/common/resolution-bins.ts';

interface ReferenceCase {
  table: string;
  height: number;
  width: number;
  bin: [number, number];
  output: { height: number; width: number; resized?: [number, number]; top?: number | null; left?: number | null };
}
const FIXTURE = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures', 'resolution-bins', 'reference.json');
const reference = JSON.parse(fs.readFileSync(FIXTURE, 'utf8')) as { tables: Record<string, [string, number, number][]>; cases: ReferenceCase[] };

const ours: Record<string, AspectRatioBins> = {
  ASPECT_RATIO_512_BIN,
  ASPECT_RATIO_1024_BIN,
  ASPECT_RATIO_2048_BIN,
  ASPECT_RATIO_4096_BIN,
};

describe('aspect-ratio tables', () => {
  for (const name of Object.keys(ours)) {
    it(`${name} equals the reference table, in the reference's order`, () => {
      expect(ours[name].map((b) => [b.ratio, b.height, b.width])).toEqual(reference.tables[name]);
    });
  }

  it('picks the table from the transformer sample_size as SanaPipeline does', () => {
    expect(binForSampleSize(16)).toBe(ASPECT_RATIO_512_BIN);
    expect(binForSampleSize(32)).toBe(ASPECT_RATIO_1024_BIN);
    expect(binForSampleSize(64)).toBe(ASPECT_RATIO_2048_BIN);
    expect(binForSampleSize(128)).toBe(ASPECT_RATIO_4096_BIN);
    expect(() => binForSampleSize(4)).toThrow(InvalidArgumentError);
    expect(() => binForSampleSize(4)).toThrow(/sample_size 4.*turn resolution binning off/);
  });
});

describe('classifyHeightWidthBin and the resize-back geometry match the reference', () => {
  it(`bins all ${reference.cases.length} requested sizes like classify_height_width_bin`, () => {
    for (const c of reference.cases) {
      expect([c.table, c.height, c.width, classifyHeightWidthBin(c.height, c.width, ours[c.table])]).toEqual([
        c.table,
        c.height,
        c.width,
        { height: c.bin[0], width: c.bin[1] },
      ]);
    }
  });

  it('resizes and crops like resize_and_crop_tensor wherever the reference returns the requested size', () => {
    let compared = 0;
    for (const c of reference.cases) {
      const g = resizeBackGeometry(c.bin[0], c.bin[1], c.height, c.width);
      expect([g.height, g.width]).toEqual([c.height, c.width]);
      const referenceKeepsSize = c.output.height === c.height && c.output.width === c.width;
      if (!referenceKeepsSize) continue;
      compared++;
      if (c.output.resized === undefined) {
        expect(g.needsResize).toBe(false);
        continue;
      }
      expect({ resized: [g.resizedHeight, g.resizedWidth], top: g.top, left: g.left }).toEqual({
        resized: c.output.resized,
        top: c.output.top,
        left: c.output.left,
      });
    }
    expect(compared).toBeGreaterThan(1000);
  });

  it('returns the requested size where the reference collapses to a 1-pixel strip (its truncation bug)', () => {
    const collapsed = reference.cases.filter((c) => c.output.height !== c.height || c.output.width !== c.width);
    expect(collapsed.length).toBeGreaterThan(0);
    for (const c of collapsed) {
      const g = resizeBackGeometry(c.bin[0], c.bin[1], c.height, c.width);
      const [refH, refW] = c.output.resized!;
      // the axis the reference truncated one pixel short is resized to the target itself; the other is unchanged
      expect(g.resizedHeight).toBe(Math.max(refH, c.height));
      expect(g.resizedWidth).toBe(Math.max(refW, c.width));
      expect(g.top + g.height).toBeLessThanOrEqual(g.resizedHeight);
      expect(g.left + g.width).toBeLessThanOrEqual(g.resizedWidth);
      expect(Math.min(g.top, g.left)).toBeGreaterThanOrEqual(0);
    }
    // the documented example: 104 wide from a 736-wide bin (736 · 104/736 = 103.99…)
    expect(resizeBackGeometry(352, 736, 48, 104)).toMatchObject({ resizedWidth: 104, left: 0, width: 104, height: 48 });
  });
});

describe('a 1920x1080 request and validation', () => {
  it('on a 1024 px model: generate at the nearest bin, crop back', () => {
    const bin = classifyHeightWidthBin(1080, 1920, binForSampleSize(32));
    expect([bin.height, bin.width]).toEqual([768, 1344]);
    const back = resizeBackGeometry(bin.height, bin.width, 1080, 1920);
    expect(back).toMatchObject({ needsResize: true, height: 1080, width: 1920 });
    expect(back.resizedWidth).toBeGreaterThanOrEqual(1920);
    expect(back.resizedHeight).toBeGreaterThanOrEqual(1080);
  });

  it('refuses non-positive or fractional sizes, naming the field', () => {
    expect(() => classifyHeightWidthBin(0, 512, ASPECT_RATIO_512_BIN)).toThrow(/height/);
    expect(() => classifyHeightWidthBin(512, 12.5, ASPECT_RATIO_512_BIN)).toThrow(/width/);
    expect(() => resizeBackGeometry(512, 512, -1, 512)).toThrow(InvalidArgumentError);
    expect(() => classifyHeightWidthBin(512, Number.NaN, binForSampleSize(16))).toThrow(InvalidArgumentError);
  });
});
