/**
 * Reads YAML the way PyYAML's SafeLoader does (the reader of the KFP SDK, the Vertex AI SDK and kedro-vertexai),
 * so a spec those tools accept loads here with the same values:
 *
 * - YAML 1.1 implicit types exactly as PyYAML resolves them: `yes`/`no`/`on`/`off` are booleans, `0777` is octal,
 *   `1:30` sexagesimal, `1_000` an int, `1e5` (no dot, no exponent sign) a string, `08` a string; merge keys work
 *   and a repeated key keeps its last value. Timestamps stay strings (PyYAML makes them datetimes, which no JSON
 *   request can carry).
 * - Quoted scalars whose continuation lines are indented no deeper than their parent (hand-edited specs, e.g. a
 *   single-quoted shell script continued in the column of the sequence dash). YAML 1.2 refuses them; PyYAML does
 *   not check the indentation of quoted continuation lines at all. Since a quoted scalar drops the leading
 *   whitespace of every continuation line, indenting those lines further changes no value: they are re-indented
 *   and the text parsed again, and each repair is reported as a warning.
 */
import YAML from 'yaml';
import type { ScalarTag } from 'yaml';

export interface YamlRead {
  documents: unknown[];
  /** What was read differently from a strict YAML 1.2 parser, for the caller to print. */
  warnings: string[];
}

export class YamlReadError extends Error {
  constructor(
    message: string,
    readonly line?: number,
  ) {
    super(message);
  }
}

const scalar = (tag: string, test: RegExp, resolve: (s: string) => unknown): ScalarTag => ({ tag, default: true, test, resolve });

const sexagesimal = (text: string): number => {
  let value = 0;
  for (const part of text.split(':')) value = value * 60 + Number(part);
  return value;
};

/** SafeLoader's implicit resolvers (yaml/resolver.py) with SafeConstructor's conversions (yaml/constructor.py). */
const PYYAML_SCALARS: ScalarTag[] = [
  scalar('tag:yaml.org,2002:null', /^(?:~|null|Null|NULL)?$/, () => null),
  scalar('tag:yaml.org,2002:bool', /^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$/, (s) => /^(?:yes|true|on)$/i.test(s)),
  scalar('tag:yaml.org,2002:int', /^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$/, (s) => {
    let text = s.replace(/_/g, '');
    let sign = 1;
    if (text[0] === '-' || text[0] === '+') {
      if (text[0] === '-') sign = -1;
      text = text.slice(1);
    }
    if (text === '0') return 0;
    if (text.startsWith('0b')) return sign * parseInt(text.slice(2), 2);
    if (text.startsWith('0x')) return sign * parseInt(text.slice(2), 16);
    if (text.startsWith('0')) return sign * parseInt(text, 8);
    if (text.includes(':')) return sign * sexagesimal(text);
    return sign * Number(text);
  }),
  scalar(
    'tag:yaml.org,2002:float',
    /^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/,
    (s) => {
      let text = s.replace(/_/g, '').toLowerCase();
      let sign = 1;
      if (text[0] === '-' || text[0] === '+') {
        if (text[0] === '-') sign = -1;
        text = text.slice(1);
      }
      if (text === '.inf') return sign * Infinity;
      if (text === '.nan') return Number.NaN;
      if (text.includes(':')) return sign * sexagesimal(text);
      return sign * Number(text);
    },
  ),
];

const OPTIONS = {
  schema: 'failsafe',
  customTags: PYYAML_SCALARS,
  merge: true,
  uniqueKeys: false,
  version: '1.1',
} as const;

/** Anchors are rare in specs; this bounds what an alias bomb can expand to. */
const MAX_ALIAS_COUNT = 1000;

/** Bounds the repair loop: one round per broken quoted scalar. */
const MAX_REPAIRS = 10_000;

export function readYaml(text: string): YamlRead {
  const warnings: string[] = [];
  let current = text;
  let docs = YAML.parseAllDocuments(current, OPTIONS);
  let lastOffset = -1;
  for (let round = 0; round < MAX_REPAIRS && firstError(docs) !== undefined; round++) {
    const repair = repairQuotedScalar(current, lastOffset);
    if (repair === undefined) break;
    lastOffset = repair.offset;
    current = repair.text;
    warnings.push(
      `line ${repair.line}: a quoted string continues on lines indented no deeper than its parent, which YAML 1.2 refuses; read as PyYAML reads it (indent those lines to silence this)`,
    );
    docs = YAML.parseAllDocuments(current, OPTIONS);
  }
  const error = firstError(docs);
  if (error !== undefined) {
    // A repair only indents lines, so the line is the same in the text as given; the column may not be.
    throw new YamlReadError(`${error.message.split(' at line ')[0]!.split('\n')[0]} (line ${error.linePos?.[0]?.line ?? '?'})`, error.linePos?.[0]?.line);
  }
  const documents = (Array.isArray(docs) ? docs : [docs]).map((d) => d.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) as unknown);
  return { documents, warnings };
}

function firstError(docs: ReturnType<typeof YAML.parseAllDocuments>): YAML.YAMLError | undefined {
  const list = Array.isArray(docs) ? docs : [docs];
  for (const d of list) if (d.errors.length > 0) return d.errors[0];
  return undefined;
}

/**
 * Finds the first quoted scalar (after `after`) that the lexer cut short at an under-indented line, and indents
 * its continuation lines to the column of its opening quote. Undefined when there is none, or when the scalar
 * is not closed anywhere or holds a document marker line (PyYAML refuses both too).
 */
function repairQuotedScalar(text: string, after: number): { text: string; offset: number; line: number } | undefined {
  let found: { offset: number; quote: string } | undefined;
  for (const token of new YAML.Parser().parse(text)) {
    visitScalars(token, (q) => {
      if (found === undefined && q.offset > after && !isClosed(q.source)) found = { offset: q.offset, quote: q.source[0]! };
    });
    if (found !== undefined) break;
  }
  if (found === undefined) return undefined;
  const end = closingQuote(text, found.offset, found.quote);
  if (end === -1) return undefined;
  const lineStart = text.lastIndexOf('\n', found.offset - 1) + 1;
  const column = found.offset - lineStart;
  const body = text.slice(found.offset, end + 1);
  const lines = body.split('\n');
  for (let i = 1; i < lines.length; i++) {
    if (/^(?:---|\.\.\.)(?:[ \t\r]|$)/.test(lines[i]!)) return undefined;
  }
  const fixed = lines.map((line, i) => {
    if (i === 0 || /^[ \t\r]*$/.test(line)) return line;
    const indent = /^ */.exec(line)![0].length;
    return indent > column ? line : ' '.repeat(column + 1 - indent) + line;
  });
  const line = text.slice(0, found.offset).split('\n').length;
  return { text: text.slice(0, found.offset) + fixed.join('\n') + text.slice(end + 1), offset: found.offset, line };
}

type QuotedScalar = { offset: number; source: string };

function visitScalars(node: YAML.CST.Token | undefined, each: (s: QuotedScalar) => void): void {
  if (node === undefined) return;
  switch (node.type) {
    case 'double-quoted-scalar':
    case 'single-quoted-scalar':
      each(node);
      return;
    case 'document':
      visitScalars(node.value, each);
      return;
    case 'block-map':
    case 'block-seq':
    case 'flow-collection':
      for (const item of node.items) {
        if ('key' in item) visitScalars(item.key ?? undefined, each);
        visitScalars(item.value, each);
      }
      return;
    default:
      return;
  }
}

/** Whether a quoted scalar's source ends with its own closing quote (not an escaped or doubled one). */
function isClosed(source: string): boolean {
  const end = closingQuote(source, 0, source[0]!);
  return end === source.length - 1;
}

/** Index of the quote closing the scalar opened at `start`, with YAML's escaping rules; -1 when unclosed. */
function closingQuote(text: string, start: number, quote: string): number {
  for (let i = start + 1; i < text.length; i++) {
    const c = text[i];
    if (quote === '"' && c === '\\') {
      i++;
      continue;
    }
    if (c === quote) {
      if (quote === "'" && text[i + 1] === "'") {
        i++;
        continue;
      }
      return i;
    }
  }
  return -1;
}
