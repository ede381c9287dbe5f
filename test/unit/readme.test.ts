import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { expect } from 'chai';
import { flagReferenceMarkdown } from '../../src/cli/flags.js';
import { configReferenceMarkdown } from '../../src/config/reference.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const configurationDoc = readFileSync(new URL('../../docs/configuration.md', import.meta.url), 'utf8');
const launcherDoc = readFileSync(new URL('../../docs/launcher.md', import.meta.url), 'utf8');

/** The text between `<!-- marker:start -->` and `<!-- marker:end -->`, as scripts/config-reference.ts --write puts it. */
function generated(doc: string, marker: string): string {
  const start = doc.indexOf(`<!-- ${marker}:start -->\n`);
  const end = doc.indexOf(`\n<!-- ${marker}:end -->`);
  expect(start, `<!-- ${marker}:start -->`).to.not.equal(-1);
  return doc.slice(start + `<!-- ${marker}:start -->\n`.length, end);
}
const docs = [readme, readFileSync(new URL('../../bench/README.md', import.meta.url), 'utf8')].concat(
  readdirSync(new URL('../../docs/', import.meta.url)).map((f) => readFileSync(new URL(`../../docs/${f}`, import.meta.url), 'utf8')),
);
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { scripts: Record<string, string>; kvx: { nodeFlags: string[] } };

describe('README', () => {
  it('has the configuration reference in docs/configuration.md generated from the schema (npx tsx scripts/config-reference.ts --write)', () => {
    const start = configurationDoc.indexOf('<!-- config-reference:start -->\n') + '<!-- config-reference:start -->\n'.length;
    const end = configurationDoc.indexOf('\n<!-- config-reference:end -->');
    expect(configurationDoc.slice(start, end)).to.equal(configReferenceMarkdown());
  });

  it('has the flag tables of kvx-proxy and kvx-launch generated from the flag table (npx tsx scripts/config-reference.ts --write)', () => {
    expect(generated(configurationDoc, 'flags:kvx-proxy')).to.equal(flagReferenceMarkdown('kvx-proxy'));
    expect(generated(launcherDoc, 'flags:kvx-launch')).to.equal(flagReferenceMarkdown('kvx-launch'));
  });

  it('gives a newcomer exactly two set-up commands, one to run the main job (the demo) and one to run the tests', () => {
    const quickstart = /## Quickstart[\s\S]*?```sh\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
    const commands = quickstart.split('\n').filter((l) => l.trim() !== '');
    expect(commands).to.have.length(2);
    expect(commands[0]).to.match(/^npm ci && npm run demo\b/);
    expect(commands[1]).to.match(/^npm ci && npm test\b/);
  });

  it('runs the proxy from npm with the Node flags it ships with', () => {
    expect(pkg.scripts['proxy']).to.include(`node ${pkg.kvx.nodeFlags.join(' ')} dist/cli/kvx-proxy.js`);
  });

  it('names only npm scripts that exist, in the README and every document it links', () => {
    for (const doc of docs) for (const [, name] of doc.matchAll(/npm run ([a-z:-]+)/g)) expect(pkg.scripts, `npm run ${name}`).to.have.property(name!);
  });

  it('links only documents and anchors that exist', () => {
    const root = new URL('../../', import.meta.url);
    const files = ['README.md', 'bench/README.md', ...readdirSync(new URL('docs/', root)).map((f) => `docs/${f}`)];
    const slug = (heading: string) => heading.toLowerCase().replace(/[^\w\- ]/g, '').replace(/ /g, '-');
    const anchors = new Map(files.map((f) => [f, new Set([...readFileSync(new URL(f, root), 'utf8').matchAll(/^#+ (.+)$/gm)].map((m) => slug(m[1]!)))]));
    for (const file of files) {
      const text = readFileSync(new URL(file, root), 'utf8');
      for (const [, target] of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        if (/^[a-z]+:/.test(target!)) continue;
        const [pathPart, anchor] = target!.split('#');
        const resolved = pathPart ? new URL(pathPart, new URL(file, root)) : new URL(file, root);
        const rel = resolved.pathname.slice(root.pathname.length);
        expect(existsSync(resolved), `${file} links ${target}`).to.equal(true);
        if (anchor && anchors.has(rel)) expect([...anchors.get(rel)!], `${file} links ${target}`).to.include(anchor);
      }
    }
  });
});
