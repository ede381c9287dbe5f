/**
 * What every kind of Google source credentials is to the rest of kvx: where it came from, the cloud-platform
 * access token it holds, and (for the kinds that can) ID tokens minted by itself.
 */
import type { Egress } from '../../config/egress.js';
import type { Logger } from '../../log/logger.js';
import type { Clock } from '../clock.js';
import type { Token } from '../token.js';

export const CLOUD_PLATFORM_SCOPE = 'https://www.googleapis.com/auth/cloud-platform';

export const SETUP_HINT =
  'on a laptop run `gcloud auth application-default login`; on Vertex AI, GKE or a VM attach a service account ' +
  '(on GKE bind it with Workload Identity); elsewhere set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file';

export interface GoogleEndpoints {
  oauthToken: string;
  iamCredentials: string;
  /** Security Token Service token URL (workload identity federation); Google's when unset. */
  sts?: string;
  /** host[:port] (or a URL) of the metadata server; empty for GCE_METADATA_HOST or the default. */
  metadataHost: string;
}

/** Where the source credentials came from, for logs and `doctor`. Never holds secret material. */
export interface CredentialsInfo {
  kind: 'service_account' | 'authorized_user' | 'metadata' | 'impersonated_service_account' | 'external_account' | string;
  /** Plain words: "service-account key /etc/key.json", "gcloud user login (…/application_default_credentials.json)". */
  description: string;
  /** Whose credentials these are, when known before a token is fetched. */
  identity?: string;
  /**
   * The project Google APIs bill and meter calls to (`x-goog-user-project`), when it is not the resource's own:
   * the credentials file's `quota_project_id`, or GOOGLE_CLOUD_QUOTA_PROJECT, as Google's client libraries do.
   */
  quotaProject?: string;
}

export interface SourceCredentials {
  info: CredentialsInfo;
  /**
   * An OAuth access token with the cloud-platform scope: the held one while it is valid, else one fetch that every
   * caller asking meanwhile shares. `signal` ends this caller's wait only; the fetch has its own time limit.
   */
  accessToken(signal?: AbortSignal): Promise<Token>;
  /** Forget the held access token (IAM answered 401 for it). */
  dropAccessToken(token: string): void;
  /** An ID token for `audience` minted by these credentials themselves, when the kind can. */
  idToken?(audience: string, signal: AbortSignal): Promise<Token>;
  /**
   * An ID token for the credentials' own OAuth client, from a user login's refresh grant, when the kind is one.
   * Cloud Run IAM accepts it (what `gcloud run services proxy` sends); IAP does not, it wants its own client id.
   */
  ownIdToken?(signal: AbortSignal): Promise<Token>;
  close(): void;
}

export interface FindOptions {
  env: NodeJS.ProcessEnv;
  endpoints: GoogleEndpoints;
  logger: Logger;
  clock?: Clock;
  /** One access-token request taking longer than this fails (auth.tokenFetchTimeoutMs). */
  fetchTimeoutMs?: number;
  /** How the calls to Google reach it (egress proxy, host aliases); the metadata server is never proxied. */
  egress: Egress;
}

export type Json = Record<string, unknown>;
