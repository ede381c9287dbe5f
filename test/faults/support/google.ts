/**
 * The Google fakes wired for a proxy running as a separate process: a metadata server, IAM Credentials and
 * an OAuth token endpoint sharing one issuer, an IAP-like check for the scripted upstream, every minted
 * credential registered as a secret for the final leak check, and a Google clock that can be moved
 * relative to the proxy's (the feasible way to make the proxy's clock jump without touching the host's).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import type http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AccessTokenStore, GOOGLE_ISSUER, GoogleIssuer } from '../../fakes/google-common.js';
import { startFakeIam } from '../../fakes/google-iam-credentials.js';
import type { FakeIam } from '../../fakes/google-iam-credentials.js';
import { startFakeMetadata } from '../../fakes/google-metadata.js';
import type { FakeMetadata } from '../../fakes/google-metadata.js';
import { startFakeOauth, writeCredentialsFile } from '../../fakes/google-oauth-token.js';
import type { FakeOauth } from '../../fakes/google-oauth-token.js';
import { verifyJwt } from '../../fakes/jwt.js';
import { registerSecret } from './transcript.js';

export const CLIENT_ID = '246813579024-faultsiap.apps.googleusercontent.com';
export const TARGET_SA = 'mlflow-writer@faults-project.iam.gserviceaccount.com';
export const KEY_SA = 'pipeline@faults-project.iam.gserviceaccount.com';

/** An issuer whose clock runs `offsetSeconds` away from this machine's: Google's time as the proxy would see it after a jump. */
export class SkewedIssuer extends GoogleIssuer {
  offsetSeconds = 0;
  minted = 0;

  override idToken(options: Parameters<GoogleIssuer['idToken']>[0]): string {
    const token = super.idToken({ ...options, now: options.now ?? this.googleNow() });
    this.minted += 1;
    registerSecret('google id token', token);
    return token;
  }

  googleNow(): number {
    return Math.floor(Date.now() / 1000) + this.offsetSeconds;
  }
}

export interface CredWorld {
  issuer: SkewedIssuer;
  metadata: FakeMetadata;
  iam: FakeIam;
  oauth: FakeOauth;
  keyFile: string;
  /** Verifies as IAP does, on Google's clock. */
  gate: (req: http.IncomingMessage) => { status: number; body: string; headers: Record<string, string> } | null;
  accepted: number;
  rejected: Record<string, number>;
  /** Proxy environment and flags: google-iam with the metadata server as source credentials. */
  iamSetup(): { env: Record<string, string>; authArgs: string[] };
  /** google-oauth with a service-account key. */
  keySetup(): { env: Record<string, string>; authArgs: string[] };
  /** google-oauth from the metadata server at `host`. */
  metadataSetup(host?: string): { env: Record<string, string>; authArgs: string[] };
  close(): Promise<void>;
}

export async function startCredWorld(lifetimeSeconds: number): Promise<CredWorld> {
  const issuer = new SkewedIssuer();
  const accessTokens = new AccessTokenStore();
  const issue = accessTokens.issue.bind(accessTokens);
  accessTokens.issue = (email, lifetime, expired) => {
    const answer = issue(email, lifetime, expired);
    registerSecret('google access token', answer.access_token);
    return answer;
  };
  const metadata = await startFakeMetadata({ issuer, accessTokens, lifetimeSeconds });
  const iam = await startFakeIam({ issuer, accessTokens, lifetimeSeconds, serviceAccounts: { [TARGET_SA]: [metadata.email] } });
  const oauth = await startFakeOauth({ issuer, accessTokens, lifetimeSeconds });
  const dir = mkdtempSync(path.join(tmpdir(), 'kvx-faults-google-'));
  const key = oauth.addServiceAccount(KEY_SA);
  registerSecret('service-account private key', key.private_key);
  const keyFile = writeCredentialsFile(path.join(dir, 'key.json'), key);
  const world: CredWorld = {
    issuer,
    metadata,
    iam,
    oauth,
    keyFile,
    accepted: 0,
    rejected: {},
    gate: (req) => {
      const value = req.headers.authorization;
      const reject = (reason: string) => {
        world.rejected[reason] = (world.rejected[reason] ?? 0) + 1;
        return { status: 401, body: `Invalid IAP credentials: ${reason}`, headers: { 'x-goog-iap-generated-response': 'true' } };
      };
      if (typeof value !== 'string' || !value.startsWith('Bearer ')) return reject('empty token');
      const result = verifyJwt(value.slice(7), {
        keys: issuer.keys.map((k) => ({ kid: k.kid, publicKey: k.publicKey })),
        audience: CLIENT_ID,
        issuer: GOOGLE_ISSUER,
        now: issuer.googleNow(),
      });
      if (!result.ok) return reject(result.reason);
      world.accepted += 1;
      return null;
    },
    iamSetup: () => ({
      env: { GCE_METADATA_HOST: metadata.host, KVX_AUTH_ENDPOINTS_IAM_CREDENTIALS: iam.url },
      authArgs: ['--client-id', CLIENT_ID, '--service-account', TARGET_SA],
    }),
    keySetup: () => ({
      env: { GOOGLE_APPLICATION_CREDENTIALS: keyFile, KVX_AUTH_ENDPOINTS_OAUTH_TOKEN: oauth.tokenUrl, GCE_METADATA_HOST: '127.0.0.1:9' },
      authArgs: ['--client-id', CLIENT_ID],
    }),
    metadataSetup: (host = metadata.host) => ({ env: { GCE_METADATA_HOST: host }, authArgs: ['--client-id', CLIENT_ID] }),
    close: async () => {
      await Promise.all([metadata.close(), iam.close(), oauth.close()]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return world;
}
