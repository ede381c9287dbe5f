import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import YAML from 'yaml';
import type { KvxError } from '../../src/errors.js';
import { parseSpec } from '../../src/vertex/spec.js';
import { YamlReadError, readYaml } from '../../src/vertex/yaml.js';

const fixture = (p: string) => fileURLToPath(new URL(`../fixtures/${p}`, import.meta.url));
const text = (p: string) => readFileSync(fixture(p), 'utf8');

/** PyYAML's reading, as dumped to JSON (timestamps and non-finite floats tagged, since JSON has neither). */
function pyyaml(p: string): unknown {
  return JSON.parse(text(p));
}

describe('vertex: YAML read as PyYAML reads it', () => {
  it('resolves plain scalars with YAML 1.1 rules exactly as PyYAML does', () => {
    const [doc] = readYaml(text('yaml/pyyaml-scalars.yaml')).documents as [Record<string, unknown>];
    const expected = pyyaml('yaml/pyyaml-scalars.json') as Record<string, unknown[]>;
    const ours = JSON.parse(JSON.stringify(doc, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? { float: v > 0 ? 'inf' : v < 0 ? '-inf' : 'nan' } : v))) as Record<string, unknown>;
    // Timestamps stay text: a request cannot carry PyYAML's datetime.
    const strings = expected['strings']!.map((v, i) => (typeof v === 'object' && v !== null && 'timestamp' in v ? (['2001-12-14', '2001-12-14t21:59:43.10-05:00'][i - 3] ?? v) : v));
    expect(ours).to.deep.equal({ ...expected, strings });
  });

  it('reads the hand-edited spec a strict YAML 1.2 parser refuses, with the values PyYAML reads', () => {
    const source = text('kfp/pyyaml-only.yaml');
    expect(YAML.parseAllDocuments(source)[0]!.errors.length, 'the yaml package alone refuses it').to.be.above(0);
    const read = readYaml(source);
    expect(read.documents).to.have.length(1);
    expect(read.documents[0]).to.deep.equal(pyyaml('kfp/pyyaml-only.pyyaml.json'));
    expect(read.warnings).to.have.length(3);
    expect(read.warnings[0]).to.match(/^line 23: a quoted string continues on lines indented no deeper than its parent/);
  });

  it('refuses what PyYAML refuses: an unclosed quote, a document marker inside a quoted string, a multi-line key', () => {
    for (const bad of ['a: "x\n', 'x: "a\n---\nb"\n', 'x:\n  "multi\n  key": 1\n', 'a:\n  b: x\n  c\n']) {
      expect(() => readYaml(bad), JSON.stringify(bad)).to.throw(YamlReadError);
    }
  });

  it('reports where the text is wrong, not where a repair left it', () => {
    try {
      readYaml('a:\n  - "one\n  two"\n  - [1, 2\n');
      expect.fail('expected an error');
    } catch (err) {
      expect(err).to.be.instanceOf(YamlReadError);
      // The unclosed flow sequence (found at the end of the text), not the repairable quoted string on line 2.
      expect((err as YamlReadError).line).to.equal(5);
      expect((err as YamlReadError).message).to.match(/end with a \]/);
    }
  });

  it('uses the pipeline document of a multi-document file and says what it ignored', () => {
    const loaded = parseSpec(text('kfp/multi-document.yaml'), 'multi-document.yaml');
    expect(loaded.spec.pipelineInfo.name).to.equal('with-platform-spec');
    expect(loaded.warnings).to.deep.equal(['multi-document.yaml: document 2 of 2 ignored: a KFP platform spec (platforms: kubernetes), which Vertex AI does not use']);
    // Pipeline second: still found.
    const [first, second] = text('kfp/multi-document.yaml').split('\n---\n') as [string, string];
    const swapped = parseSpec(`${second}\n---\n${first}`, 'swapped.yaml');
    expect(swapped.spec.pipelineInfo.name).to.equal('with-platform-spec');
    expect(swapped.warnings[0]).to.match(/document 1 of 2 ignored: a KFP platform spec/);
    const twice = (() => {
      try {
        parseSpec(`${first}\n---\n${first}`, 'twice.yaml');
      } catch (err) {
        return err as KvxError;
      }
      return undefined;
    })();
    expect(twice?.message).to.match(/holds 2 pipeline documents \(documents 1, 2\)/);
  });

  it('loads every spec of the shared corpus with the same values as JSON.parse where it is JSON', () => {
    const json = text('kfp/jobjson-runtime-defaults.json');
    expect(readYaml(json).documents[0]).to.deep.equal(JSON.parse(json));
  });
});
