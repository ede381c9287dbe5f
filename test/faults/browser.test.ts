/**
 * A web page on the user's machine against a real kvx-proxy process (issue 12, item 14): a rebound name and a
 * cross-site POST are answered by the proxy itself, reach nothing upstream, leave the connection usable or closed
 * cleanly, and the names given with --allowed-hosts still work.
 */
import { expect } from 'chai';
import { mlflowError, raw, request } from './support/client.js';
import { Harness } from './support/harness.js';

describe('faults: browsers on the same machine', function () {
  this.timeout(60_000);
  let h: Harness;

  before(async () => {
    h = await Harness.start({ label: 'faults-browser', args: ['--allowed-hosts', 'kvx,mlflow.corp.example'] });
  });
  after(async () => {
    await h?.stop();
  });

  it('a DNS-rebinding Host is refused with 421 on a kept connection, which then serves the UI; nothing reaches upstream', async () => {
    const before = h.upstream.requests.length;
    const refusedBefore = await h.metric('kvx_cross_site_refusals_total', { reason: 'host' });
    const port = h.proxy.port;
    const r = await raw(
      port,
      `GET /api/2.0/mlflow/experiments/search HTTP/1.1\r\nHost: attacker.example:${port}\r\nSec-Fetch-Site: same-origin\r\n\r\n` +
        `GET /bytes/10 HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nSec-Fetch-Site: same-origin\r\nConnection: close\r\n\r\n`,
    );
    expect(r.statuses).to.deep.equal([421, 200]);
    const refused = r.responses[0]!;
    expect(refused.value('x-kvx-error')).to.equal('host_not_allowed');
    expect(mlflowError(refused).message).to.include('server.allowedHosts');
    expect(h.upstream.requests.slice(before).map((q) => q.url)).to.deep.equal(['/bytes/10']);
    expect(await h.metric('kvx_cross_site_refusals_total', { reason: 'host' })).to.equal(refusedBefore + 1);
    // Log lines are written in batches: wait for it rather than read the log at once.
    const notice = await h.proxy.waitForLog((l) => l.level === 'info' && l.msg.startsWith('request refused: Host'), 5000);
    expect(notice['host']).to.equal(`attacker.example:${port}`);
    expect(h.proxy.stdout).to.not.include(h.token);
    await h.assertHealthy('after a rebound Host');
  });

  it('a cross-site text/plain POST with a body is refused with 403 and its connection closed; nothing reaches upstream', async () => {
    const before = h.upstream.requests.length;
    const body = '{"experiment_id":"1"}'.padEnd(100_000, ' ');
    const r = await raw(
      h.proxy.port,
      `POST /api/2.0/mlflow/experiments/delete HTTP/1.1\r\nHost: 127.0.0.1:${h.proxy.port}\r\nOrigin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
    );
    const answer = r.responses[0]!;
    expect(answer.status).to.equal(403);
    expect(answer.value('x-kvx-error')).to.equal('origin_not_allowed');
    expect(JSON.parse(answer.text)).to.include({ error_code: 'PERMISSION_DENIED' });
    expect(r.closedByServer).to.equal(true);
    expect(h.upstream.requests.length).to.equal(before);
    await h.assertHealthy('after a cross-site POST');
  });

  it('a name given with --allowed-hosts, and the https origin of it behind a TLS front end, pass', async () => {
    const ok = await request(h.url, '/bytes/10', { headers: { host: 'mlflow.corp.example', origin: 'https://mlflow.corp.example' } });
    expect(ok.status).to.equal(200);
    const other = await request(h.url, '/bytes/10', { headers: { host: 'mlflow.other.example' } });
    expect(other.status).to.equal(421);
    await h.assertHealthy('after configured names');
  });
});
