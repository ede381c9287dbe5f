import { expect } from 'chai';
import { CALLBACK_PATH, startCallbackListener } from '../../src/auth/google/loopback.js';
import type { CallbackListener } from '../../src/auth/google/loopback.js';
import { openerFor } from '../../src/auth/google/browser.js';

describe('login callback listener', () => {
  let listener: CallbackListener | undefined;
  afterEach(async () => {
    await listener?.close();
    listener = undefined;
  });

  const base = (l: CallbackListener) => l.redirectUri.replace(CALLBACK_PATH, '');

  it('listens on 127.0.0.1 on an ephemeral port and hands over the code of the right state, once', async () => {
    listener = await startCallbackListener({ state: 'right-state', timeoutMs: 10_000 });
    expect(listener.redirectUri).to.match(/^http:\/\/127\.0\.0\.1:\d+\/oauth2callback$/);
    // A stray request (the favicon) neither consumes nor ends the login.
    expect((await fetch(`${base(listener)}/favicon.ico`)).status).to.equal(404);
    const res = await fetch(`${listener.redirectUri}?state=right-state&code=4/abc&scope=openid`);
    expect(res.status).to.equal(200);
    expect(await res.text()).to.include('Signed in');
    expect(await listener.code).to.equal('4/abc');
    // One-shot: nothing listens any more.
    const again = await fetch(`${listener.redirectUri}?state=right-state&code=4/other`).then(
      (r) => r.status,
      (e: Error) => (e.cause as { code?: string }).code,
    );
    expect(again).to.equal('ECONNREFUSED');
  });

  it('renders nothing but an error for a wrong state, and fails the login', async () => {
    listener = await startCallbackListener({ state: 'right-state', timeoutMs: 10_000 });
    const res = await fetch(`${listener.redirectUri}?state=forged&code=4/attacker`);
    expect(res.status).to.equal(400);
    const body = await res.text();
    expect(body).to.not.include('Signed in');
    expect(body).to.include('does not belong to the login');
    const err = (await listener.code.catch((e: unknown) => e)) as Error;
    expect(err.message).to.include('wrong state');
  });

  it('reports consent refused', async () => {
    listener = await startCallbackListener({ state: 's', timeoutMs: 10_000 });
    await fetch(`${listener.redirectUri}?state=s&error=access_denied`);
    expect(((await listener.code.catch((e: unknown) => e)) as Error).message).to.include('consent was refused');
  });

  it('times out and closes', async () => {
    listener = await startCallbackListener({ state: 's', timeoutMs: 100 });
    const err = (await listener.code.catch((e: unknown) => e)) as Error & { hint?: string };
    expect(err.message).to.include('no answer from the browser within');
    expect(err.hint).to.include('kvx-proxy login');
    const after = await fetch(`${listener.redirectUri}?state=s&code=4/late`).then(
      (r) => r.status,
      (e: Error) => (e.cause as { code?: string }).code,
    );
    expect(after).to.equal('ECONNREFUSED');
  });

  it('uses each platform\'s opener without a shell', () => {
    expect(openerFor('linux')).to.deep.equal({ command: 'xdg-open', args: [] });
    expect(openerFor('darwin')).to.deep.equal({ command: 'open', args: [] });
    expect(openerFor('win32')).to.deep.equal({ command: 'rundll32', args: ['url.dll,FileProtocolHandler'] });
  });
});
