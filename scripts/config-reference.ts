// Prints the generated reference tables of the docs, or with --write replaces each between its markers: the
// configuration reference (docs/configuration.md) and the flag tables of both programs (docs/configuration.md,
// docs/launcher.md). test/unit/readme.test.ts checks that the docs hold what this writes.
import { readFileSync, writeFileSync } from 'node:fs';
import { flagReferenceMarkdown } from '../src/cli/flags.js';
import { configReferenceMarkdown } from '../src/config/reference.js';

const BLOCKS = [
  { doc: 'docs/configuration.md', marker: 'config-reference', text: configReferenceMarkdown() },
  { doc: 'docs/configuration.md', marker: 'flags:kvx-proxy', text: flagReferenceMarkdown('kvx-proxy') },
  { doc: 'docs/launcher.md', marker: 'flags:kvx-launch', text: flagReferenceMarkdown('kvx-launch') },
];

for (const { doc, marker, text } of BLOCKS) {
  if (!process.argv.includes('--write')) {
    process.stdout.write(`${doc} (${marker}):\n${text}\n\n`);
    continue;
  }
  const start = `<!-- ${marker}:start -->`;
  const end = `<!-- ${marker}:end -->`;
  const current = readFileSync(doc, 'utf8');
  const from = current.indexOf(start);
  const to = current.indexOf(end);
  if (from === -1 || to === -1) throw new Error(`${doc} lacks the ${start} … ${end} markers`);
  writeFileSync(doc, `${current.slice(0, from + start.length)}\n${text}\n${current.slice(to)}`);
}
