/**
 * The Dockerfile cannot be built here (no container daemon); .ci/run executes its steps through
 * scripts/ci-docker-build.sh. This checks the Dockerfile keeps the shape those steps and the docs rely on.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { SCHEMA } from '../../src/config/schema.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

interface Instruction {
  op: string;
  args: string;
}

/** Instructions with continuation lines joined and comments dropped. */
function parse(text: string): Instruction[] {
  const joined = text.replace(/\\\n/g, ' ');
  return joined
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '' && !line.startsWith('#'))
    .map((line) => {
      const space = line.indexOf(' ');
      return { op: line.slice(0, space).toUpperCase(), args: line.slice(space + 1).trim() };
    });
}

describe('Dockerfile', () => {
  const instructions = parse(readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'));
  const stages = instructions.filter((i) => i.op === 'FROM');
  const last = instructions.slice(instructions.lastIndexOf(stages.at(-1)!));
  const fieldDefault = (section: 'listen' | 'admin') => {
    const spec = SCHEMA[section];
    if (spec?.kind !== 'object') throw new Error(section);
    const port = spec.fields['port'];
    return port?.kind === 'int' ? port.default : undefined;
  };

  it('builds in one stage and runs from another', () => {
    expect(stages.map((s) => s.args)).to.deep.equal(['${NODE_IMAGE} AS build', '${RUNTIME_IMAGE} AS runtime']);
    expect(last.filter((i) => i.op === 'COPY').map((i) => i.args)).to.deep.equal(['--from=build /out/ /']);
  });

  it('does all its building through scripts/docker-build.sh, which CI runs as plain shell', () => {
    const runs = instructions.filter((i) => i.op === 'RUN').map((i) => JSON.parse(i.args) as string[]);
    expect(runs).to.deep.equal([
      ['bash', 'scripts/docker-build.sh', 'deps'],
      ['bash', 'scripts/docker-build.sh', 'build', '/out'],
    ]);
    const ci = readFileSync(path.join(ROOT, '.ci/run'), 'utf8');
    expect(ci).to.include('bash scripts/ci-docker-build.sh');
    expect(readFileSync(path.join(ROOT, 'scripts/ci-docker-build.sh'), 'utf8')).to.include('bash scripts/docker-build.sh all');
  });

  it('installs dependencies from the lockfile before copying the sources', () => {
    const copies = instructions.filter((i) => i.op === 'COPY' || i.op === 'RUN').map((i) => `${i.op} ${i.args}`);
    expect(copies.indexOf('COPY package.json package-lock.json ./')).to.be.lessThan(copies.indexOf('COPY . .'));
    expect(readFileSync(path.join(ROOT, 'scripts/docker-build.sh'), 'utf8')).to.match(/npm ci --no-audit --no-fund/);
  });

  it('runs as uid 65532 with an array-form entrypoint at the fixed executable path', () => {
    expect(last.find((i) => i.op === 'USER')?.args).to.equal('65532:65532');
    const entrypoint = JSON.parse(last.find((i) => i.op === 'ENTRYPOINT')!.args) as string[];
    expect(entrypoint).to.deep.equal(['/usr/local/bin/kvx-proxy']);
    expect(JSON.parse(last.find((i) => i.op === 'CMD')!.args)).to.deep.equal(['serve']);
    expect(readFileSync(path.join(ROOT, 'scripts/docker-build.sh'), 'utf8')).to.include('cp build/sea/kvx "$out/usr/local/bin/kvx-proxy"');
  });

  it('sets the process environment kvx ships with (package.json kvx.processEnv), as the npm bin gives it itself', () => {
    const { kvx } = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { kvx: { processEnv: Record<string, string> } };
    const env = Object.fromEntries(last.filter((i) => i.op === 'ENV').map((i) => i.args.split('=') as [string, string]));
    expect(env).to.deep.equal(kvx.processEnv);
  });

  it('exposes the default proxy and admin ports and carries OCI labels', () => {
    expect(last.find((i) => i.op === 'EXPOSE')?.args.split(/\s+/).map(Number)).to.deep.equal([fieldDefault('listen'), fieldDefault('admin')]);
    const labels = last.filter((i) => i.op === 'LABEL').map((i) => i.args).join(' ');
    for (const key of ['title', 'description', 'version', 'revision', 'created', 'licenses']) {
      expect(labels).to.include(`org.opencontainers.image.${key}=`);
    }
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string; license: string };
    expect(labels).to.include(`org.opencontainers.image.licenses="${pkg.license}"`);
    expect(last.find((i) => i.op === 'ARG' && i.args.startsWith('VERSION='))?.args).to.equal(`VERSION=${pkg.version}`);
  });

  it('keeps host build outputs out of the build context', () => {
    const ignored = readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n');
    for (const entry of ['node_modules', 'dist', 'build', '.git']) expect(ignored).to.include(entry);
  });
});
