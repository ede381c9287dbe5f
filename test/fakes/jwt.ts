/**
 * Real RS256 JWTs for the Google fakes: key pairs from node:crypto, signing, verification with the checks
 * IAP makes (signature, audience, issuer, expiry with no leeway) and a JWKS document.
 */
import { createPublicKey, generateKeyPairSync, randomBytes, sign, verify } from 'node:crypto';
import type { JsonWebKey, KeyObject } from 'node:crypto';

export interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  /** PKCS#8 PEM, as in a service-account key file's `private_key`. */
  privatePem: string;
}

export function generateSigningKey(kid = randomBytes(8).toString('hex')): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { kid, privateKey, publicKey, privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString() };
}

const cached: SigningKey[] = [];
/** Key generation takes tens of milliseconds; tests share a few per process. */
export function testKey(index = 0): SigningKey {
  while (cached.length <= index) cached.push(generateSigningKey(`test-key-${cached.length}`));
  return cached[index]!;
}

export type Claims = Record<string, unknown>;

export function signJwt(claims: Claims, key: SigningKey, header: Record<string, unknown> = {}): string {
  const head = { alg: 'RS256', typ: 'JWT', kid: key.kid, ...header };
  const input = `${b64(JSON.stringify(head))}.${b64(JSON.stringify(claims))}`;
  const signature = sign('RSA-SHA256', Buffer.from(input), key.privateKey);
  return `${input}.${signature.toString('base64url')}`;
}

export function decodeJwt(token: string): { header: Claims; payload: Claims; signingInput: string; signature: Buffer } | undefined {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    return {
      header: JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8')) as Claims,
      payload: JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as Claims,
      signingInput: `${parts[0]}.${parts[1]}`,
      signature: Buffer.from(parts[2]!, 'base64url'),
    };
  } catch {
    return undefined;
  }
}

export interface VerifyOptions {
  /** Keys the signature may come from; matched by `kid` when the token names one. */
  keys: readonly { kid: string; publicKey: KeyObject }[];
  audience?: string | readonly string[];
  issuer?: string | readonly string[];
  /** Seconds since epoch; defaults to now. */
  now?: number;
  leewaySeconds?: number;
}

export type VerifyResult = { ok: true; payload: Claims } | { ok: false; reason: string };

/** Verifies as IAP and Google's token endpoint do; the reason says which check failed. */
export function verifyJwt(token: string, options: VerifyOptions): VerifyResult {
  const decoded = decodeJwt(token);
  if (decoded === undefined) return { ok: false, reason: 'malformed JWT' };
  const { header, payload } = decoded;
  if (header['alg'] !== 'RS256') return { ok: false, reason: `unexpected algorithm ${String(header['alg'])}` };
  const candidates = header['kid'] === undefined ? options.keys : options.keys.filter((k) => k.kid === header['kid']);
  if (candidates.length === 0) return { ok: false, reason: 'unknown signing key' };
  const signedBy = candidates.some((k) => verify('RSA-SHA256', Buffer.from(decoded.signingInput), k.publicKey, decoded.signature));
  if (!signedBy) return { ok: false, reason: 'invalid signature' };
  const now = options.now ?? Math.floor(Date.now() / 1000);
  const leeway = options.leewaySeconds ?? 0;
  const exp = payload['exp'];
  if (typeof exp !== 'number') return { ok: false, reason: 'missing exp' };
  if (now >= exp + leeway) return { ok: false, reason: 'expired' };
  const iat = payload['iat'];
  if (typeof iat === 'number' && iat > now + leeway + 30) return { ok: false, reason: 'issued in the future' };
  if (options.audience !== undefined) {
    const wanted = typeof options.audience === 'string' ? [options.audience] : options.audience;
    const aud = payload['aud'];
    const got = Array.isArray(aud) ? aud : [aud];
    if (!got.some((a) => wanted.includes(a as string))) return { ok: false, reason: `wrong audience ${JSON.stringify(aud)}` };
  }
  if (options.issuer !== undefined) {
    const wanted = typeof options.issuer === 'string' ? [options.issuer] : options.issuer;
    if (!wanted.includes(payload['iss'] as string)) return { ok: false, reason: `wrong issuer ${JSON.stringify(payload['iss'])}` };
  }
  return { ok: true, payload };
}

export function jwks(keys: readonly SigningKey[]): { keys: JsonWebKey[] } {
  return { keys: keys.map((k) => ({ ...createPublicKey(k.publicKey).export({ format: 'jwk' }), kid: k.kid, alg: 'RS256', use: 'sig' })) };
}

function b64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64url');
}
