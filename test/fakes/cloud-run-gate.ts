/**
 * Cloud Run IAM in front of the fake MLflow (no IAP): a Google-signed ID token in Authorization or
 * X-Serverless-Authorization, unexpired, whose audience is the service URL (or a custom audience) or, for a user's
 * token, the OAuth client it was minted for (what `gcloud auth print-identity-token` and `gcloud run services
 * proxy` send). The identity must hold roles/run.invoker (`invokers`). Rejections are 401/403 as Cloud Run's.
 */
import type http from 'node:http';
import { GOOGLE_ISSUER } from './google-common.js';
import type { GoogleIssuer } from './google-common.js';
import { verifyJwt } from './jwt.js';

export interface CloudRunGate {
  (req: http.IncomingMessage): { status: number; body: string; headers: Record<string, string> } | null;
  accepted: number;
  identities: string[];
  audiences: string[];
}

export function cloudRunGate(options: { issuer: GoogleIssuer; serviceUrl: string; invokers: readonly string[] }): CloudRunGate {
  const reject = (status: number) => ({
    status,
    body: status === 401 ? 'Your client does not have permission to the requested URL.' : 'Your client does not have permission to get URL.',
    headers: status === 401 ? { 'www-authenticate': 'Bearer error="invalid_token"' } : {},
  });
  const gate = ((req: http.IncomingMessage) => {
    const value = req.headers['x-serverless-authorization'] ?? req.headers['authorization'];
    if (typeof value !== 'string' || !/^Bearer\s+\S/i.test(value)) return reject(403);
    const result = verifyJwt(value.replace(/^Bearer\s+/i, ''), { keys: options.issuer.keys, issuer: GOOGLE_ISSUER, leewaySeconds: 0 });
    if (!result.ok) return reject(401);
    const { aud, email } = result.payload as { aud?: string; email?: string };
    const user = typeof email === 'string' && !email.endsWith('.gserviceaccount.com');
    const audienceOk = aud === options.serviceUrl || (user && typeof aud === 'string' && aud.endsWith('.apps.googleusercontent.com'));
    if (!audienceOk) return reject(401);
    if (typeof email !== 'string' || !options.invokers.includes(email)) return reject(403);
    gate.accepted += 1;
    gate.identities.push(email);
    gate.audiences.push(String(aud));
    return null;
  }) as CloudRunGate;
  gate.accepted = 0;
  gate.identities = [];
  gate.audiences = [];
  return gate;
}
