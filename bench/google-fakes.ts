/**
 * The Google side of the "cached Google-token" candidate: a metadata server and IAM Credentials, the test
 * fakes, in their own process so they cost the measured processes nothing. kvx fetches one ID token at
 * start and serves every request from its cache, so these are never on the hot path.
 * Prints {"metadataHost": "...", "iamUrl": "...", "serviceAccount": "...", "audience": "...", "idTokenLength": N} once listening.
 */
import { AccessTokenStore, GoogleIssuer } from '../test/fakes/google-common.js';
import { startFakeIam } from '../test/fakes/google-iam-credentials.js';
import { startFakeMetadata } from '../test/fakes/google-metadata.js';

const caller = 'vertex-runner@bench-project.iam.gserviceaccount.com';
const serviceAccount = 'mlflow-client@bench-project.iam.gserviceaccount.com';
const audience = '123456789012-benchiapclientid.apps.googleusercontent.com';

const issuer = new GoogleIssuer();
const accessTokens = new AccessTokenStore();
const metadata = await startFakeMetadata({ email: caller, issuer, accessTokens });
const iam = await startFakeIam({ issuer, accessTokens, serviceAccounts: { [serviceAccount]: [caller] } });
// As the fake IAM mints kvx's token (includeEmail), so the benchmark can give its static token the same length.
const idTokenLength = issuer.idToken({ audience, email: serviceAccount, lifetimeSeconds: 3600 }).length;
process.stdout.write(JSON.stringify({ metadataHost: metadata.host, iamUrl: iam.url, serviceAccount, audience, idTokenLength }) + '\n');
process.on('SIGTERM', () => {
  void Promise.all([metadata.close(), iam.close()]).then(() => process.exit(0));
});
