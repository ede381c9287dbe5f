/**
 * Shared parts of the Google fakes: the issuer that signs ID tokens (as accounts.google.com does), the
 * store of access tokens the OAuth endpoint and the metadata server hand out and IAM Credentials checks,
 * failure injection and a loopback HTTP server that closes cleanly.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { jwks, signJwt, testKey } from './jwt.js';
import type { Claims, SigningKey } from './jwt.js';

export const GOOGLE_ISSUER = 'https://accounts.google.com';

/**
 * Failure injection, common to every fake:
 * - down: the connection is reset without an answer;
 * - error500: a 500 in the endpoint's error shape;
 * - garbage: 200 with a body that is not what the client expects;
 * - slow: the answer comes after `slowMs`;
 * - expired: a token that is already expired;
 * - wrong-audience: a token for another audience;
 * - hang: the request is read and never answered (a hung endpoint); `releaseHung()` then drops those
 *   connections, as a recovering endpoint's dead connections would be.
 */
export type Failure = 'down' | 'error500' | 'garbage' | 'slow' | 'expired' | 'wrong-audience' | 'hang';

/** Signs Google ID tokens. One per test; several fakes share it so the IAP gate trusts all of them. */
export class GoogleIssuer {
  readonly keys: SigningKey[];
  constructor(keys: SigningKey[] = [testKey(0)]) {
    this.keys = keys;
  }

  idToken(options: { audience: string; email: string; lifetimeSeconds: number; expired?: boolean; now?: number; extra?: Claims }): string {
    const now = options.now ?? Math.floor(Date.now() / 1000);
    const iat = options.expired ? now - options.lifetimeSeconds - 10 : now;
    const claims: Claims = {
      iss: GOOGLE_ISSUER,
      aud: options.audience,
      azp: options.email,
      sub: String(100000000000000000000n + BigInt(hash(options.email))),
      email: options.email,
      email_verified: true,
      iat,
      exp: iat + options.lifetimeSeconds,
      // Real tokens minted in the same second differ too; a deterministic RS256 signature would not.
      jti: randomBytes(8).toString('hex'),
      ...options.extra,
    };
    return signJwt(claims, this.keys[0]!);
  }

  jwks() {
    return jwks(this.keys);
  }
}

/** Opaque access tokens (`ya29.` like Google's) and whose they are, so IAM Credentials can check callers. */
export class AccessTokenStore {
  private readonly tokens = new Map<string, { email: string; expiresAt: number }>();

  issue(email: string, lifetimeSeconds: number, expired = false): { access_token: string; expires_in: number; token_type: 'Bearer' } {
    const token = `ya29.fake-${randomBytes(24).toString('base64url')}`;
    const expiresAt = expired ? Date.now() - 1000 : Date.now() + lifetimeSeconds * 1000;
    this.tokens.set(token, { email, expiresAt });
    return { access_token: token, expires_in: expired ? 0 : lifetimeSeconds, token_type: 'Bearer' };
  }

  /** Who holds this bearer token, or why it is not accepted. */
  check(authorization: string | undefined): { email: string } | { reason: string } {
    if (authorization === undefined || !/^Bearer\s+/i.test(authorization)) return { reason: 'missing bearer token' };
    const entry = this.tokens.get(authorization.replace(/^Bearer\s+/i, ''));
    if (entry === undefined) return { reason: 'unknown access token' };
    if (entry.expiresAt <= Date.now()) return { reason: 'expired access token' };
    return { email: entry.email };
  }

  revokeAll(): void {
    this.tokens.clear();
  }
}

export interface FakeServer {
  url: string;
  port: number;
  /** Requests by route name, for "exactly one fetch" assertions. */
  counts: Record<string, number>;
  failure: Failure | undefined;
  slowMs: number;
  /** Requests held without an answer by the `hang` failure so far (answered or not since). */
  hung: number;
  /** Drops the connections of the requests `hang` holds. */
  releaseHung(): void;
  close(): Promise<void>;
}

export type Respond = (status: number, body: unknown, headers?: Record<string, string>) => void;

/**
 * A loopback server whose handler gets the parsed request; failure modes `down` and `slow` are applied
 * here, the others by each fake, since what a 500 or garbage looks like differs per endpoint.
 */
export async function startFakeServer(
  handle: (req: http.IncomingMessage, body: string, respond: Respond, server: FakeServer) => void | Promise<void>,
  extraHeaders: Record<string, string> = {},
): Promise<FakeServer> {
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  const held = new Set<Socket>();
  const server = http.createServer();
  const state: FakeServer = {
    url: '',
    port: 0,
    counts: {},
    failure: undefined,
    slowMs: 60_000,
    hung: 0,
    releaseHung: () => {
      for (const s of held) s.destroy();
      held.clear();
    },
    close: async () => {
      for (const t of timers) clearTimeout(t);
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('request', (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      if (state.failure === 'down') {
        req.socket.destroy();
        return;
      }
      if (state.failure === 'hang') {
        state.hung += 1;
        held.add(req.socket);
        return;
      }
      const respond: Respond = (status, body, headers = {}) => {
        const text = typeof body === 'string' ? body : JSON.stringify(body);
        const contentType = typeof body === 'string' ? 'text/plain; charset=utf-8' : 'application/json; charset=utf-8';
        const send = () => {
          timers.delete(timer);
          if (res.destroyed) return;
          res.writeHead(status, { 'content-type': contentType, 'content-length': String(Buffer.byteLength(text)), ...extraHeaders, ...headers });
          res.end(text);
        };
        const timer = setTimeout(send, state.failure === 'slow' ? state.slowMs : 0);
        timers.add(timer);
      };
      Promise.resolve(handle(req, Buffer.concat(chunks).toString('utf8'), respond, state)).catch((err: unknown) => {
        respond(500, { error: { code: 500, message: String(err), status: 'INTERNAL' } });
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as AddressInfo).port;
  state.url = `http://127.0.0.1:${state.port}`;
  return state;
}

export function count(server: FakeServer, route: string): void {
  server.counts[route] = (server.counts[route] ?? 0) + 1;
}

function hash(text: string): number {
  let h = 0;
  for (const c of text) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return h;
}
