/** The metadata server of Vertex AI, GKE (Workload Identity), Cloud Run and VMs: the attached service account. */
import type { Egress } from '../../config/egress.js';
import { TokenFetchError, accessToken, idToken } from '../token.js';
import { holdingAccessToken } from './access-token.js';
import { googleCall, oneLine } from './http.js';
import type { FindOptions, Json, SourceCredentials } from './source.js';

const DEFAULT_METADATA_HOST = '169.254.169.254';

export class MetadataServer {
  readonly host: string;
  /** Named by auth.endpoints.metadataHost or GCE_METADATA_HOST/GCE_METADATA_IP rather than the default address. */
  readonly explicit: boolean;
  private readonly base: string;

  constructor(
    configured: string,
    env: NodeJS.ProcessEnv,
    private readonly egress: Egress,
  ) {
    const chosen = configured || env['GCE_METADATA_HOST'] || env['GCE_METADATA_IP'] || '';
    this.explicit = chosen !== '';
    this.host = chosen || DEFAULT_METADATA_HOST;
    const withScheme = /^https?:\/\//.test(this.host) ? this.host : `http://${this.host}`;
    this.base = `${withScheme.replace(/\/+$/, '')}/computeMetadata/v1/instance/service-accounts/default`;
  }

  async email(signal: AbortSignal): Promise<string> {
    const text = await this.get('email', signal);
    if (!/^[^@\s]+@[^@\s]+$/.test(text)) throw new TokenFetchError('the metadata server gave no service-account email');
    return text;
  }

  async accessToken(signal: AbortSignal): Promise<Json> {
    const text = await this.get('token', signal);
    try {
      return JSON.parse(text) as Json;
    } catch {
      throw new TokenFetchError('the metadata server answered the token request with something that is not JSON');
    }
  }

  /** format=full: without it the token carries no email, and IAP's audit log shows only a number. */
  async identity(audience: string, signal: AbortSignal): Promise<string> {
    return this.get(`identity?audience=${encodeURIComponent(audience)}&format=full`, signal);
  }

  private async get(what: string, signal: AbortSignal): Promise<string> {
    // Never through an egress proxy: the metadata server is on the machine's own link.
    const answer = await googleCall(`the metadata server at ${this.host}`, `${this.base}/${what}`, { headers: { 'metadata-flavor': 'Google' }, signal }, this.egress, { proxy: false });
    if (answer.header('metadata-flavor') !== 'Google') {
      throw new TokenFetchError(`${this.host} answered without Metadata-Flavor: Google, so it is not a metadata server`, {
        hint: 'check auth.endpoints.metadataHost / GCE_METADATA_HOST',
      });
    }
    if (answer.status !== 200) {
      throw new TokenFetchError(`the metadata server at ${this.host} answered ${answer.status} for ${what.split('?')[0]}: ${oneLine(answer.text)}`, {
        status: answer.status,
        hint:
          answer.status === 404
            ? 'no service account is attached to this VM/pod; attach one (GKE: Workload Identity annotation on the Kubernetes service account)'
            : 'retrying with backoff',
      });
    }
    return answer.text.trim();
  }
}

export function metadataCredentials(metadata: MetadataServer, email: string, options: FindOptions): SourceCredentials {
  const now = () => (options.clock ?? { now: Date.now }).now();
  return holdingAccessToken(
    { kind: 'metadata', description: `metadata server ${metadata.host} (attached service account)`, identity: email },
    async (signal) => accessToken(await metadata.accessToken(signal), now(), email),
    options,
    { idToken: async (audience, signal) => idToken(await metadata.identity(audience, signal), email) },
  );
}
