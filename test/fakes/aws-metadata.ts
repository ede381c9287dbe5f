/**
 * The EC2 instance metadata service as google-auth-library's AWS credentials read it, IMDSv2 only (a session token
 * from `PUT /latest/api/token`, required on every read): the availability zone, the role attached to the instance
 * and that role's temporary credentials.
 */
import { randomBytes } from 'node:crypto';
import { count, startFakeServer } from './google-common.js';
import type { FakeServer } from './google-common.js';

export interface AwsRoleCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
}

export interface FakeAwsMetadata extends FakeServer {
  role: string;
  credentials: AwsRoleCredentials;
}

export async function startFakeAwsMetadata(options: { zone: string; role: string; credentials: AwsRoleCredentials }): Promise<FakeAwsMetadata> {
  const sessions = new Set<string>();
  const server = await startFakeServer((req, _body, respond) => {
    count(self, 'all');
    const path = new URL(req.url ?? '/', 'http://imds').pathname;
    if (req.method === 'PUT' && path === '/latest/api/token') {
      if (!req.headers['x-aws-ec2-metadata-token-ttl-seconds']) return respond(400, 'Missing x-aws-ec2-metadata-token-ttl-seconds');
      const token = randomBytes(16).toString('base64url');
      sessions.add(token);
      return respond(200, token);
    }
    if (!sessions.has(String(req.headers['x-aws-ec2-metadata-token'] ?? ''))) return respond(401, 'Unauthorized');
    if (path === '/latest/meta-data/placement/availability-zone') return respond(200, options.zone);
    if (path === '/latest/meta-data/iam/security-credentials') return respond(200, options.role);
    if (path === `/latest/meta-data/iam/security-credentials/${options.role}`) {
      count(self, 'credentials');
      const { accessKeyId, secretAccessKey, sessionToken } = options.credentials;
      return respond(200, { Code: 'Success', Type: 'AWS-HMAC', AccessKeyId: accessKeyId, SecretAccessKey: secretAccessKey, Token: sessionToken, Expiration: new Date(Date.now() + 3600_000).toISOString() });
    }
    respond(404, 'Not Found');
  });
  const self: FakeAwsMetadata = Object.assign(server, { role: options.role, credentials: options.credentials });
  return self;
}
