/**
 * `npm run demo`: kvx-proxy doing its main job on a machine with no Google account and no network.
 *
 * Everything runs on loopback: an MLflow-shaped tracking server behind a gate that checks Google ID tokens as
 * Identity-Aware Proxy does, Google-shaped OAuth and IAM Credentials endpoints (the fakes the tests use, signing
 * real RS256 JWTs), and the real kvx-proxy executable (dist/cli/kvx-proxy.js) impersonating a service account
 * with a gcloud-style user login, as on a laptop. A short MLflow workflow goes through the proxy, then the demo
 * prints who the gate saw, what the token said (never the token itself) and every request forwarded.
 *
 * `--serve` keeps everything running until Ctrl-C, to point a real MLflow client or browser at the proxy.
 */
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { iapGate } from '../test/fakes/iap-gate.js';
import { decodeJwt } from '../test/fakes/jwt.js';
import { startFakeMlflow } from '../test/fakes/mlflow/index.js';
import { CLIENT_ID, TARGET_SA, USER, startGoogleWorld } from '../test/fakes/google-world.js';
import { MlflowClientEmulator, runTrackingWorkflow } from '../test/helpers/mlflow-client.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const PROXY_CLI = path.join(ROOT, 'dist/cli/kvx-proxy.js');
const serveAfter = process.argv.includes('--serve');

const say = (line = ''): void => {
  process.stdout.write(line + '\n');
};

async function main(): Promise<void> {
  say('kvx demo: everything below runs on this machine, on loopback, against stand-ins for Google and MLflow.');
  const world = await startGoogleWorld();
  const gate = iapGate({ issuer: world.issuer, audience: CLIENT_ID });
  const mlflow = await startFakeMlflow({ gate });
  let proxy: ChildProcess | undefined;
  try {
    const configFile = path.join(world.dir, 'kvx-demo.yaml');
    writeFileSync(
      configFile,
      [
        'listen: {host: 127.0.0.1, port: 0}',
        'admin: {enabled: false}',
        `upstream: {url: "${mlflow.url}"}`,
        'auth:',
        '  provider: google-iam',
        `  params: {client_id: "${CLIENT_ID}", service_account: "${TARGET_SA}"}`,
        `  endpoints: {oauthToken: "${world.endpoints.oauthToken}", iamCredentials: "${world.endpoints.iamCredentials}"}`,
        'log: {level: info, requests: false}',
        '',
      ].join('\n'),
    );
    say(`  tracking server (behind an IAP-like gate, audience ${CLIENT_ID}): ${mlflow.url}`);
    say(`  Google OAuth token endpoint: ${world.endpoints.oauthToken}`);
    say(`  Google IAM Credentials:      ${world.endpoints.iamCredentials}`);
    say(`  your login (gcloud application-default, ${USER.email}): ${world.userFile}`);
    say();
    say(`Starting kvx-proxy --config ${configFile}`);
    const started = await startProxy(configFile, world.userEnv());
    proxy = started.child;
    const url = started.url;
    say(`  kvx-proxy is listening on ${url}, impersonating ${TARGET_SA}`);

    const client = new MlflowClientEmulator(url);
    const before = mlflow.requests.length;
    let result: Awaited<ReturnType<typeof runTrackingWorkflow>>;
    try {
      say();
      say(`Running an MLflow workflow with MLFLOW_TRACKING_URI=${url} (no credentials in the client):`);
      result = await runTrackingWorkflow(client, { artifactBytes: 1024 * 1024, experimentName: 'kvx-demo' });
    } finally {
      client.close();
    }
    const forwarded = mlflow.requests.slice(before);
    say('  (the first 404 is MLflow saying the experiment does not exist yet; the workflow then creates it)');
    for (const r of forwarded) say(`  ${String(r.status).padEnd(4)}${r.method.padEnd(5)} ${r.path.length > 100 ? r.path.slice(0, 97) + '...' : r.path}`);
    say(`  experiment ${result.experimentId}, run ${result.runId}, a 1 MiB artifact up and down (sha256 ${result.artifactSha256.slice(0, 16)}...)`);

    say();
    say('What the gate saw:');
    say(`  ${gate.accepted} requests accepted, rejections: ${JSON.stringify(gate.rejected)}`);
    say(`  identity: ${[...new Set(gate.identities)].join(', ')}`);
    for (const token of gate.tokens) {
      const claims = decodeJwt(token)?.payload ?? {};
      const exp = typeof claims['exp'] === 'number' ? new Date(claims['exp'] * 1000).toISOString() : '?';
      say(`  ID token: audience ${String(claims['aud'])}, issuer ${String(claims['iss'])}, expires ${exp} (the token itself is never printed)`);
    }
    const withToken = forwarded.filter((r) => /^Bearer /.test(String(r.headers['authorization'] ?? ''))).length;
    say(`  ${withToken} of ${forwarded.length} forwarded requests carried the injected Authorization: Bearer header`);

    say();
    say('With a real MLflow behind IAP, the same thing is:');
    say('  gcloud auth application-default login');
    say('  kvx-proxy --upstream https://mlflow.example.com --client-id <IAP OAuth client id> --service-account <sa>@<project>.iam.gserviceaccount.com');
    say('  export MLFLOW_TRACKING_URI=http://127.0.0.1:5001');
    if (serveAfter) {
      say();
      say(`Still serving: MLFLOW_TRACKING_URI=${url} (the MLflow API and a stand-in UI page). Ctrl-C to stop.`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
    }
  } finally {
    if (proxy !== undefined) await stopProxy(proxy);
    await mlflow.close();
    await world.close();
  }
}

/** The real executable, on the same Node as this script; resolves once it logs its listening address. */
function startProxy(configFile: string, env: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [PROXY_CLI, '--config', configFile], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout! });
    const seen: string[] = [];
    const onExit = (code: number | null): void => reject(new Error(`kvx-proxy exited (${code}) before listening:\n${seen.join('\n')}`));
    child.once('exit', onExit);
    child.once('error', reject);
    lines.on('line', (line) => {
      seen.push(line);
      let record: { msg?: string; url?: string };
      try {
        record = JSON.parse(line) as typeof record;
      } catch {
        return;
      }
      if (record.msg === 'kvx-proxy listening' && record.url) {
        child.off('exit', onExit);
        resolve({ child, url: record.url });
      }
    });
  });
}

function stopProxy(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGTERM');
  });
}

main().then(
  () => {
    process.exitCode = 0;
  },
  (err: unknown) => {
    process.stderr.write(`kvx demo failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exitCode = 1;
  },
);
