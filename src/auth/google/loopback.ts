/**
 * The one-shot loopback listener a desktop OAuth login redirects the browser to (RFC 8252 §7.3): 127.0.0.1 on a
 * port the OS picks, one answer, then closed. The `state` of the login is checked before anything is rendered,
 * so a page that sends the browser here with its own code gets an error, not a login.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { KvxError } from '../../errors.js';

export const CALLBACK_PATH = '/oauth2callback';

export interface CallbackListener {
  /** The redirect URI to give Google: http://127.0.0.1:<port>/oauth2callback. */
  redirectUri: string;
  /** The authorization code, once the browser comes back with the right state; rejects on anything else. */
  code: Promise<string>;
  close(): Promise<void>;
}

export class LoginError extends KvxError {
  constructor(message: string, hint = 'run `kvx-proxy login` again') {
    super('KVX_CREDENTIALS_UNAVAILABLE', message, { hint });
    this.name = 'LoginError';
  }
}

const PAGE_HEAD = '<!doctype html><meta charset="utf-8"><title>kvx-proxy login</title>';

export async function startCallbackListener(options: { state: string; timeoutMs: number }): Promise<CallbackListener> {
  const server = http.createServer();
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  let settle: { resolve: (code: string) => void; reject: (err: Error) => void } | undefined;
  const code = new Promise<string>((resolve, reject) => (settle = { resolve, reject }));
  code.catch(() => {});
  let done = false;
  const close = async () => {
    clearTimeout(timer);
    if (server.listening) await new Promise<void>((resolve) => server.close(() => resolve()));
    for (const s of sockets) s.destroy();
  };
  const finish = (outcome: { code: string } | { error: Error }) => {
    done = true;
    if ('code' in outcome) settle!.resolve(outcome.code);
    else settle!.reject(outcome.error);
    // New connections are refused from now on; the answer being written still goes out.
    server.close();
  };
  const timer = setTimeout(() => {
    if (done) return;
    finish({ error: new LoginError(`no answer from the browser within ${Math.round(options.timeoutMs / 1000)} s; the login was abandoned`) });
    void close();
  }, options.timeoutMs);
  timer.unref();

  server.on('request', (req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const answer = (status: number, body: string) => {
      res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store', 'referrer-policy': 'no-referrer', connection: 'close' });
      res.end(`${PAGE_HEAD}<p>${body}</p>`);
    };
    // Only the redirect counts: a favicon request or a stray probe neither consumes nor ends the login.
    if (done || req.method !== 'GET' || url.pathname !== CALLBACK_PATH) return answer(404, 'Not found.');
    if (url.searchParams.get('state') !== options.state) {
      answer(400, 'This sign-in answer does not belong to the login kvx-proxy started; nothing was done. Run <code>kvx-proxy login</code> again.');
      finish({ error: new LoginError('the browser came back with an answer that does not belong to this login (wrong state); nothing was stored') });
      return;
    }
    const error = url.searchParams.get('error');
    const got = url.searchParams.get('code');
    if (error !== null || got === null || got === '') {
      const why = error === 'access_denied' ? 'consent was refused' : `Google answered ${error ?? 'without a code'}`;
      answer(400, 'The sign-in did not complete; see the terminal.');
      finish({ error: new LoginError(`the login did not complete: ${why.replace(/[^\w .:-]/g, '')}`) });
      return;
    }
    answer(200, 'Signed in. You can close this tab and return to the terminal.');
    finish({ code: got });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return { redirectUri: `http://127.0.0.1:${port}${CALLBACK_PATH}`, code, close };
}
