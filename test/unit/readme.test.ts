import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { configReferenceMarkdown } from '../../src/config/reference.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { scripts: Record<string, string>; kvx: { nodeFlags: string[] } };

describe('README', () => {
  it('has the configuration reference generated from the schema (npx tsx scripts/config-reference.ts --write)', () => {
    const start = readme.indexOf('<!-- config-reference:start -->\n') + '<!-- config-reference:start -->\n'.length;
    const end = readme.indexOf('\n<!-- config-reference:end -->');
    expect(readme.slice(start, end)).to.equal(configReferenceMarkdown());
  });

  it('gives a newcomer exactly two set-up commands, one to run the proxy and one to run the tests', () => {
    const quickstart = /## Quickstart[\s\S]*?```sh\n([\s\S]*?)```/.exec(readme)?.[1] ?? '';
    const commands = quickstart.split('\n').filter((l) => l.trim() !== '');
    expect(commands).to.have.length(2);
    expect(commands[0]).to.match(/^npm ci && npm run proxy /);
    expect(commands[1]).to.match(/^npm ci && npm test\b/);
  });

  it('runs the proxy from npm with the Node flags it ships with', () => {
    expect(pkg.scripts['proxy']).to.include(`node ${pkg.kvx.nodeFlags.join(' ')} dist/cli/kvx-proxy.js`);
  });

  it('names only npm scripts that exist', () => {
    for (const [, name] of readme.matchAll(/npm run ([a-z:-]+)/g)) expect(pkg.scripts, `npm run ${name}`).to.have.property(name!);
  });
});
