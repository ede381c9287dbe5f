/**
 * All Google fakes wired together as one small Google: one issuer (so an IAP gate trusts every token),
 * one access-token store (so IAM Credentials accepts tokens from the OAuth endpoint and the metadata
 * server), and a HOME without a gcloud login so the developer's own credentials are never picked up.
 */
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { AccessTokenStore, GoogleIssuer } from './google-common.js';
import { startFakeIam } from './google-iam-credentials.js';
import type { FakeIam } from './google-iam-credentials.js';
import { startFakeMetadata } from './google-metadata.js';
import type { FakeMetadata } from './google-metadata.js';
import { authorizedUserFile, startFakeOauth, writeCredentialsFile } from './google-oauth-token.js';
import type { FakeOauth, ServiceAccountKey, UserLogin } from './google-oauth-token.js';
import { Logger } from '../../src/log/logger.js';

export const CLIENT_ID = '123456789012-iapclient.apps.googleusercontent.com';
export const TARGET_SA = 'mlflow-client@my-project.iam.gserviceaccount.com';
export const KEY_SA = 'ci-runner@my-project.iam.gserviceaccount.com';
export const USER: UserLogin = {
  email: 'alice@example.com',
  clientId: '764086051850-gcloud.apps.googleusercontent.com',
  clientSecret: 'gcloud-client-secret',
  refreshToken: '1//user-refresh-token',
};

export interface GoogleWorld {
  issuer: GoogleIssuer;
  accessTokens: AccessTokenStore;
  oauth: FakeOauth;
  metadata: FakeMetadata;
  iam: FakeIam;
  dir: string;
  home: string;
  saKey: ServiceAccountKey;
  /** Path of a service-account key file for KEY_SA. */
  keyFile: string;
  /** Path of an authorized_user file (a gcloud application-default login of USER). */
  userFile: string;
  /** auth.endpoints pointing at the fakes. */
  endpoints: { oauthToken: string; iamCredentials: string; metadataHost: string };
  /** Environment with only the metadata server reachable (Vertex AI, GKE). */
  metadataEnv(): NodeJS.ProcessEnv;
  /** Environment with GOOGLE_APPLICATION_CREDENTIALS set to the key file. */
  keyEnv(): NodeJS.ProcessEnv;
  /** Environment of a laptop with a gcloud application-default login. */
  userEnv(): NodeJS.ProcessEnv;
  /** Environment with no credentials at all and a metadata host that refuses connections. */
  noCredentialsEnv(): NodeJS.ProcessEnv;
  close(): Promise<void>;
}

export async function startGoogleWorld(options: { lifetimeSeconds?: number } = {}): Promise<GoogleWorld> {
  const issuer = new GoogleIssuer();
  const accessTokens = new AccessTokenStore();
  const lifetimeSeconds = options.lifetimeSeconds ?? 3600;
  const oauth = await startFakeOauth({ issuer, accessTokens, lifetimeSeconds });
  const metadata = await startFakeMetadata({ issuer, accessTokens, lifetimeSeconds });
  const iam = await startFakeIam({
    issuer,
    accessTokens,
    lifetimeSeconds,
    serviceAccounts: { [TARGET_SA]: [metadata.email, USER.email, KEY_SA], [KEY_SA]: [] },
  });
  const dir = mkdtempSync(path.join(tmpdir(), 'kvx-google-'));
  const home = path.join(dir, 'home');
  mkdirSync(home);
  const saKey = oauth.addServiceAccount(KEY_SA);
  oauth.addUser(USER);
  const keyFile = writeCredentialsFile(path.join(dir, 'key.json'), saKey);
  const userFile = writeCredentialsFile(path.join(dir, 'adc-user.json'), authorizedUserFile(USER));
  // A port nothing listens on: the closed metadata server of a laptop, without leaving loopback.
  const closedHost = `127.0.0.1:${await closedPort()}`;
  const base = { HOME: home, PATH: process.env['PATH'] ?? '' };
  return {
    issuer,
    accessTokens,
    oauth,
    metadata,
    iam,
    dir,
    home,
    saKey,
    keyFile,
    userFile,
    endpoints: { oauthToken: oauth.tokenUrl, iamCredentials: iam.url, metadataHost: '' },
    metadataEnv: () => ({ ...base, GCE_METADATA_HOST: metadata.host }),
    keyEnv: () => ({ ...base, GOOGLE_APPLICATION_CREDENTIALS: keyFile, GCE_METADATA_HOST: closedHost }),
    userEnv: () => ({ ...base, GOOGLE_APPLICATION_CREDENTIALS: userFile, GCE_METADATA_HOST: closedHost }),
    noCredentialsEnv: () => ({ ...base, GCE_METADATA_HOST: closedHost }),
    close: async () => {
      await Promise.all([oauth.close(), metadata.close(), iam.close()]);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function closedPort(): Promise<number> {
  const net = await import('node:net');
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A logger whose lines are kept, to assert that no token ever reaches a log. */
export function capturingLogger(level: 'debug' | 'info' = 'debug'): { logger: Logger; lines: string[] } {
  const lines: string[] = [];
  return { logger: new Logger(level, { write: (line: string) => lines.push(line) }), lines };
}
