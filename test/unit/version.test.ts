import { readFileSync } from 'node:fs';
import { expect } from 'chai';
import { VERSION } from '../../src/version.js';

describe('VERSION', () => {
  it('is the version in package.json (the standalone executable cannot read package.json)', () => {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    expect(VERSION).to.equal(pkg.version);
  });
});
