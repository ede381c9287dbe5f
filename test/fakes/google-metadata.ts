/**
 * A GCE/GKE/Vertex AI metadata server: identity tokens for an audience (email only with format=full, as
 * Google does), access tokens, the service-account email. Requires `Metadata-Flavor: Google`, answers with
 * it, and refuses requests carrying X-Forwarded-For (the real server's SSRF guard). Point clients at it
 * with GCE_METADATA_HOST=127.0.0.1:<port>.
 */
import { AccessTokenStore, GoogleIssuer, count, startFakeServer } from './google-common.js';
import type { FakeServer } from './google-common.js';

export interface FakeMetadataOptions {
  email?: string;
  issuer?: GoogleIssuer;
  accessTokens?: AccessTokenStore;
  lifetimeSeconds?: number;
}

export interface FakeMetadata extends FakeServer {
  email: string;
  issuer: GoogleIssuer;
  accessTokens: AccessTokenStore;
  lifetimeSeconds: number;
  /** host:port, the form GCE_METADATA_HOST takes. */
  host: string;
  /** Audiences identity tokens were asked for, in order. */
  audiences: string[];
}

const BASE = '/computeMetadata/v1';

export async function startFakeMetadata(options: FakeMetadataOptions = {}): Promise<FakeMetadata> {
  const extra = {
    email: options.email ?? 'vertex-runner@my-project.iam.gserviceaccount.com',
    issuer: options.issuer ?? new GoogleIssuer(),
    accessTokens: options.accessTokens ?? new AccessTokenStore(),
    lifetimeSeconds: options.lifetimeSeconds ?? 3600,
    audiences: [] as string[],
  };
  const server = await startFakeServer(
    (req, _body, respond) => {
      const url = new URL(req.url ?? '/', 'http://metadata');
      count(self, 'all');
      if (req.headers['x-forwarded-for'] !== undefined) {
        respond(403, 'Request had X-Forwarded-For header and was rejected.\n');
        return;
      }
      if (req.headers['metadata-flavor'] !== 'Google') {
        respond(403, 'Missing Metadata-Flavor:Google header.\n');
        return;
      }
      if (self.failure === 'error500') {
        respond(500, 'Internal error\n');
        return;
      }
      const path = url.pathname.replace(/\/+$/, '');
      const account = `${BASE}/instance/service-accounts/default`;
      if (path === BASE || path === `${BASE}/instance` || path === `${BASE}/project/project-id`) {
        respond(200, path.endsWith('project-id') ? 'my-project' : 'attributes/\nservice-accounts/\n');
        return;
      }
      if (path === `${account}/email`) {
        count(self, 'email');
        respond(200, self.email);
        return;
      }
      if (path === `${account}/token`) {
        count(self, 'token');
        if (self.failure === 'garbage') return respond(200, '<html>captive portal</html>');
        respond(200, self.accessTokens.issue(self.email, self.lifetimeSeconds, self.failure === 'expired'));
        return;
      }
      if (path === `${account}/identity`) {
        count(self, 'identity');
        const audience = url.searchParams.get('audience');
        if (!audience) {
          respond(400, 'non-empty audience parameter required\n');
          return;
        }
        self.audiences.push(audience);
        if (self.failure === 'garbage') return respond(200, 'not-a-jwt');
        const full = url.searchParams.get('format') === 'full';
        const token = self.issuer.idToken({
          audience: self.failure === 'wrong-audience' ? 'some-other-audience' : audience,
          email: self.email,
          lifetimeSeconds: self.lifetimeSeconds,
          expired: self.failure === 'expired',
          extra: full
            ? { google: { compute_engine: { project_id: 'my-project', zone: 'europe-west4-a', instance_name: 'vertex-step' } } }
            : { email: undefined, email_verified: undefined },
        });
        respond(200, token);
        return;
      }
      respond(404, `${url.pathname} not found\n`);
    },
    { 'metadata-flavor': 'Google' },
  );
  const self: FakeMetadata = Object.assign(server, extra, { host: `127.0.0.1:${server.port}` });
  return self;
}
