// Prints the configuration reference table, or with --write replaces it in docs/configuration.md.
import { readFileSync, writeFileSync } from 'node:fs';
import { configReferenceMarkdown } from '../src/config/reference.js';

const DOC = 'docs/configuration.md';
const START = '<!-- config-reference:start -->';
const END = '<!-- config-reference:end -->';
const table = configReferenceMarkdown();
if (process.argv.includes('--write')) {
  const readme = readFileSync(DOC, 'utf8');
  const from = readme.indexOf(START);
  const to = readme.indexOf(END);
  if (from === -1 || to === -1) throw new Error(`${DOC} lacks the ${START} … ${END} markers`);
  writeFileSync(DOC, `${readme.slice(0, from + START.length)}\n${table}\n${readme.slice(to)}`);
} else {
  process.stdout.write(table + '\n');
}
