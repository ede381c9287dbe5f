// Prints the configuration reference table, or with --write replaces it in README.md.
import { readFileSync, writeFileSync } from 'node:fs';
import { configReferenceMarkdown } from '../src/config/reference.js';

const START = '<!-- config-reference:start -->';
const END = '<!-- config-reference:end -->';
const table = configReferenceMarkdown();
if (process.argv.includes('--write')) {
  const readme = readFileSync('README.md', 'utf8');
  const from = readme.indexOf(START);
  const to = readme.indexOf(END);
  if (from === -1 || to === -1) throw new Error(`README.md lacks the ${START} … ${END} markers`);
  writeFileSync('README.md', `${readme.slice(0, from + START.length)}\n${table}\n${readme.slice(to)}`);
} else {
  process.stdout.write(table + '\n');
}
