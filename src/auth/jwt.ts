import { Buffer } from 'node:buffer';

/** Claims kvx reads from an ID token. The signature is the upstream's business; kvx only needs the times. */
export interface IdTokenClaims {
  exp?: number;
  iat?: number;
  aud?: string | string[];
  iss?: string;
  email?: string;
  sub?: string;
  [claim: string]: unknown;
}

/** Decodes a JWT's payload without verifying it; undefined when it is not a JWT. */
export function decodeJwtClaims(token: string): IdTokenClaims | undefined {
  const parts = token.split('.');
  if (parts.length !== 3) return undefined;
  try {
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8')) as unknown;
    return typeof claims === 'object' && claims !== null && !Array.isArray(claims) ? (claims as IdTokenClaims) : undefined;
  } catch {
    return undefined;
  }
}
