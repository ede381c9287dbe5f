import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** `npm run demo`, the README's first command: the real executable against the loopback stand-ins. */
describe('npm run demo', () => {
  it('runs an MLflow workflow through kvx-proxy with a Google identity and never prints the token', async () => {
    const { stdout } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) => {
      execFile(process.execPath, ['--import', 'tsx', path.join(ROOT, 'scripts/demo.ts')], { cwd: ROOT, timeout: 60_000 }, (err, out, errOut) =>
        err ? reject(Object.assign(err, { stdout: out, stderr: errOut })) : resolve({ stdout: out, stderr: errOut }),
      );
    });
    expect(stdout).to.match(/kvx-proxy is listening on http:\/\/127\.0\.0\.1:\d+/);
    expect(stdout).to.include('identity: mlflow-client@my-project.iam.gserviceaccount.com');
    expect(stdout).to.match(/ID token: audience 123456789012-iapclient\.apps\.googleusercontent\.com, issuer https:\/\/accounts\.google\.com, expires \d{4}-/);
    expect(stdout).to.match(/(\d+) of \1 forwarded requests carried the injected Authorization: Bearer header/);
    expect(stdout).to.include('rejections: {}');
    // No JWT (three base64url segments starting with a JSON header) anywhere in what a newcomer sees.
    expect(stdout).not.to.match(/eyJ[\w-]+\.[\w-]+\.[\w-]+/);
  });
});
