import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { expect } from 'chai';
import { nodeTooOld } from '../../src/cli/require-node.js';

const ROOT = join(import.meta.dirname, '..', '..');

describe('Node.js version check', function () {
  this.timeout(20_000);

  it('accepts 22.19 and later, refuses anything older', function () {
    for (const v of ['v22.19.0', 'v22.20.1', 'v23.0.0', 'v24.21.0', '25.1.0']) expect(nodeTooOld(v), v).to.equal(false);
    for (const v of ['v20.20.2', 'v22.18.9', 'v21.7.3', 'v18.0.0']) expect(nodeTooOld(v), v).to.equal(true);
  });

  for (const command of ['kvx-proxy', 'kvx-launch']) {
    it(`${command} on Node 20 exits 1 naming the version it needs, before any other module runs`, function () {
      // Pretends to be Node 20 before the command's modules load; on a real Node 20 they would fail with a TypeError.
      const pretend = `data:text/javascript,Object.defineProperty(process, 'version', { value: 'v20.20.2' })`;
      const run = spawnSync(process.execPath, ['--import', pretend, '--import', 'tsx', join(ROOT, 'src', 'cli', `${command}.ts`), '--version'], {
        cwd: ROOT,
        encoding: 'utf8',
      });
      expect(run.status).to.equal(1);
      expect(run.stdout).to.equal('');
      expect(run.stderr).to.contain('kvx needs Node.js 22.19 or later; this is Node.js v20.20.2');
      expect(run.stderr).not.to.match(/\n\s+at /);
    });
  }
});
