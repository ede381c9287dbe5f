/**
 * The one HTTP call behind every Google token endpoint (googleCall): what it reads from an answer, what it refuses,
 * and that with no egress configured it stays off Node's fetch, whose bundled undici, web streams and zlib would
 * stay in every proxy's memory for a few token calls an hour.
 */
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { Egress } from '../../src/config/egress.js';
import { googleCall } from '../../src/auth/google/http.js';
import { MAX_ANSWER_BYTES } from '../../src/net/egress-http.js';
import { startScriptedUpstream } from '../helpers/http.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const signal = () => AbortSignal.timeout(5_000);

describe('googleCall: one request to a Google endpoint', () => {
  let server: Awaited<ReturnType<typeof startScriptedUpstream>>;
  const seen: { method: string; url: string; headers: Record<string, unknown>; body: string }[] = [];

  before(async () => {
    server = await startScriptedUpstream((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString() });
        if (req.url === '/token') {
          res.writeHead(200, { 'content-type': 'application/json', 'metadata-flavor': 'Google' }).end('{"access_token":"ya29.x","expires_in":3599}');
        } else if (req.url === '/moved') {
          res.writeHead(302, { location: '/token' }).end();
        } else if (req.url === '/huge') {
          res.writeHead(200, { 'content-type': 'application/json' });
          res.end(Buffer.alloc(MAX_ANSWER_BYTES + 1, 'a'));
        } else if (req.url === '/cut') {
          res.writeHead(200, { 'content-type': 'application/json', 'content-length': '100' });
          res.write('{"access_token":');
          setTimeout(() => res.socket?.destroy(), 20);
        } else {
          res.writeHead(404).end();
        }
      });
    });
  });
  after(() => server.close());
  beforeEach(() => (seen.length = 0));

  it('sends the method, headers and body as given and returns status, text and headers by lower-case name', async () => {
    const answer = await googleCall('the token endpoint', `${server.url}/token`, { method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' }, body: 'grant_type=x&assertion=é', signal: signal() }, Egress.none);
    expect(answer.status).to.equal(200);
    expect(JSON.parse(answer.text)).to.deep.equal({ access_token: 'ya29.x', expires_in: 3599 });
    expect(answer.header('metadata-flavor')).to.equal('Google');
    expect(answer.header('x-absent')).to.equal(undefined);
    expect(seen[0]).to.include({ method: 'POST', url: '/token', body: 'grant_type=x&assertion=é' });
    expect(seen[0]!.headers['content-length']).to.equal(String(Buffer.byteLength('grant_type=x&assertion=é')));
  });

  it('never follows a redirect: the 302 is the answer, and nothing is sent where it points', async () => {
    const answer = await googleCall('the token endpoint', `${server.url}/moved`, { method: 'POST', body: 'secret-assertion', signal: signal() }, Egress.none);
    expect(answer.status).to.equal(302);
    expect(seen.map((s) => s.url)).to.deep.equal(['/moved']);
  });

  it('refuses an answer above the size limit, and one broken off midway, saying which', async () => {
    let error: unknown;
    await googleCall('the token endpoint', `${server.url}/huge`, { signal: signal() }, Egress.none).catch((err: unknown) => (error = err));
    expect(String(error)).to.match(/the token endpoint broke off its answer: KVX_ANSWER_TOO_LARGE/);
    error = undefined;
    await googleCall('the token endpoint', `${server.url}/cut`, { signal: signal() }, Egress.none).catch((err: unknown) => (error = err));
    expect(String(error)).to.match(/the token endpoint broke off its answer/);
    expect(String(error)).to.not.include('access_token');
  });

  it('through a configured egress (a host alias): the same answer, the same size limit, the same cut answer', async () => {
    const egress = Egress.fromConfig({ egress: { proxy: '', noProxy: [], hostAliases: { 'oauth.kvx.test': '127.0.0.1' } } }, {});
    try {
      const base = `http://oauth.kvx.test:${server.port}`;
      const answer = await googleCall('the token endpoint', `${base}/token`, { method: 'POST', body: 'grant_type=x', signal: signal() }, egress);
      expect(answer.status).to.equal(200);
      expect(answer.header('metadata-flavor')).to.equal('Google');
      expect(seen[0]).to.include({ method: 'POST', url: '/token', body: 'grant_type=x' });
      expect((await googleCall('the token endpoint', `${base}/moved`, { signal: signal() }, egress)).status).to.equal(302);
      let error: unknown;
      await googleCall('the token endpoint', `${base}/huge`, { signal: signal() }, egress).catch((err: unknown) => (error = err));
      expect(String(error)).to.match(/the token endpoint broke off its answer: KVX_ANSWER_TOO_LARGE/);
      error = undefined;
      await googleCall('the token endpoint', `${base}/cut`, { signal: signal() }, egress).catch((err: unknown) => (error = err));
      expect(String(error)).to.match(/the token endpoint broke off its answer/);
      expect(String(error)).to.not.include('access_token');
    } finally {
      await egress.close();
    }
  });

  it('names the endpoint and the network error when nothing answers', async () => {
    let error: unknown;
    await googleCall('the metadata server', 'http://127.0.0.1:9/token', { signal: signal() }, Egress.none).catch((err: unknown) => (error = err));
    expect(String(error)).to.include('cannot reach the metadata server (http://127.0.0.1:9): ECONNREFUSED');
  });

  it('with no egress configured, does not load Node\'s fetch (its bundled undici) in the process', async () => {
    const script = `
      import { googleCall } from './dist/auth/google/http.js';
      import { Egress } from './dist/config/egress.js';
      const answer = await googleCall('the token endpoint', ${JSON.stringify(`${server.url}/token`)}, { signal: AbortSignal.timeout(5000) }, Egress.none);
      console.log(JSON.stringify({ status: answer.status, undici: process.moduleLoadList.some((m) => m.includes('deps/undici')) }));
    `;
    const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT });
    expect(JSON.parse(stdout)).to.deep.equal({ status: 200, undici: false });
  });
});
