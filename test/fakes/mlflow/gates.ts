/**
 * Gates play the auth layer in front of the fake: a gate sees every request first and either lets it through
 * (null) or answers it. Custom gates script failures (a 503 with Retry-After, an IAP-like JWT check in iap-gate.ts).
 */
import { timingSafeEqual } from 'node:crypto';
import type http from 'node:http';

export interface GateResult {
  status: number;
  body?: string;
  headers?: Record<string, string>;
}

export type Gate = (req: http.IncomingMessage) => GateResult | null | Promise<GateResult | null>;

function safeEqual(a: string, b: string): boolean {
  const ab = Buffer.from(a);
  const bb = Buffer.from(b);
  return ab.length === bb.length && timingSafeEqual(ab, bb);
}

/** Accepts only `<header>: Bearer <token>`; 401 otherwise, like a token-checking front end. */
export function bearerGate(token: string, header = 'authorization'): Gate {
  const name = header.toLowerCase();
  return (req) => {
    const value = req.headers[name];
    if (typeof value === 'string' && safeEqual(value, `Bearer ${token}`)) return null;
    return {
      status: 401,
      body: value === undefined ? `Missing ${header} header` : `Invalid ${header} credentials`,
      headers: { 'www-authenticate': 'Bearer realm="fake-mlflow"' },
    };
  };
}

/** MLflow's basic-auth app: 401 plain text with a Basic challenge, /health left open. */
export function basicGate(user: string, password: string): Gate {
  const expected = `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
  return (req) => {
    const p = (req.url ?? '').split('?')[0]!;
    if (p === '/health' || p.endsWith('/health') || p.startsWith('/static-files/') || p === '/favicon.ico') return null;
    const value = req.headers.authorization;
    if (typeof value === 'string' && safeEqual(value, expected)) return null;
    return {
      status: 401,
      body: 'You are not authenticated. Please see https://www.mlflow.org/docs/latest/auth/index.html#authenticating-to-mlflow on how to authenticate.',
      headers: { 'www-authenticate': 'Basic realm="mlflow"' },
    };
  };
}
