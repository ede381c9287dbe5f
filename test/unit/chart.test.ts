/**
 * helm cannot be installed on these machines, so this checks what `helm lint` would and a bit more: every values
 * file against values.schema.json (as helm does, after merging over values.yaml), that the schema rejects what
 * it should, that templates read only values that exist, and that each example yields a config kvx accepts.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { expect } from 'chai';
import YAML from 'yaml';
import { planProviders } from '../../src/auth/registry.js';
import '../../src/auth/index.js';
import { loadConfig } from '../../src/config/load.js';
import { HostGuard } from '../../src/proxy/host-guard.js';
import { renderValuesSchema } from '../../scripts/chart-schema.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHART = path.join(ROOT, 'charts/kvx-proxy');

type Tree = Record<string, unknown>;

const readYaml = (file: string): Tree => (YAML.parse(readFileSync(file, 'utf8')) ?? {}) as Tree;
const isTree = (v: unknown): v is Tree => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Helm's coalescing: maps merge key by key, anything else (lists included) replaces; null deletes. */
function coalesce(base: Tree, override: Tree): Tree {
  const out: Tree = structuredClone(base);
  for (const [key, value] of Object.entries(override)) {
    if (value === null) delete out[key];
    else if (isTree(value) && isTree(out[key])) out[key] = coalesce(out[key] as Tree, value);
    else out[key] = structuredClone(value);
  }
  return out;
}

function templateFiles(dir = path.join(CHART, 'templates')): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? templateFiles(path.join(dir, entry.name)) : [path.join(dir, entry.name)],
  );
}

const errorsText = (errors: ErrorObject[] | null | undefined): string =>
  (errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? ''} ${JSON.stringify(e.params)}`).join('\n');

describe('Helm chart charts/kvx-proxy', () => {
  const values = readYaml(path.join(CHART, 'values.yaml'));
  const schemaText = readFileSync(path.join(CHART, 'values.schema.json'), 'utf8');
  const schema = JSON.parse(schemaText) as Tree;
  const ciFiles = readdirSync(path.join(CHART, 'ci'))
    .filter((f) => f.endsWith('-values.yaml'))
    .map((f) => path.join(CHART, 'ci', f));
  let validate: ValidateFunction;

  before(() => {
    validate = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true }).compile(schema);
  });

  describe('Chart.yaml', () => {
    const chart = readYaml(path.join(CHART, 'Chart.yaml'));
    const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };

    it('is a v2 application chart named after its directory, with semver versions', () => {
      expect(chart['apiVersion']).to.equal('v2');
      expect(chart['type']).to.equal('application');
      expect(chart['name']).to.equal(path.basename(CHART));
      expect(String(chart['version'])).to.match(/^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/);
      expect(String(chart['description'] ?? '')).to.have.length.greaterThan(20);
    });

    it('deploys the package version by default', () => {
      expect(String(chart['appVersion'])).to.equal(pkg.version);
    });

    it('requires a Kubernetes version with native sidecars (1.29+)', () => {
      expect(chart['kubeVersion']).to.equal('>=1.29.0-0');
    });
  });

  describe('values.schema.json', () => {
    it('is draft-07 and closed at the top level', () => {
      expect(schema['$schema']).to.equal('http://json-schema.org/draft-07/schema#');
      expect(schema['additionalProperties']).to.equal(false);
    });

    it('has a config schema in step with src/config/schema.ts (regenerate: npx tsx scripts/chart-schema.ts)', () => {
      expect(renderValuesSchema(schemaText)).to.equal(schemaText);
    });

    it('describes every key of values.yaml, and values.yaml validates', () => {
      expect(validate(values), errorsText(validate.errors)).to.equal(true);
    });

    for (const file of readdirSync(path.join(CHART, 'ci')).filter((f) => f.endsWith('-values.yaml'))) {
      it(`validates ci/${file} alone and merged over values.yaml`, () => {
        const example = readYaml(path.join(CHART, 'ci', file));
        expect(validate(example), errorsText(validate.errors)).to.equal(true);
        const merged = coalesce(values, example);
        expect(validate(merged), errorsText(validate.errors)).to.equal(true);
      });
    }

    const rejects: { name: string; patch: Tree; where: string; keyword: string }[] = [
      { name: 'an unknown top-level key', patch: { replicas: 2 }, where: '', keyword: 'additionalProperties' },
      { name: 'an unknown nested key', patch: { service: { prot: 80 } }, where: '/service', keyword: 'additionalProperties' },
      { name: 'an unknown kvx config key', patch: { config: { upstream: { urll: 'https://x' } } }, where: '/config/upstream', keyword: 'additionalProperties' },
      { name: 'listen, which the chart owns', patch: { config: { listen: { host: '0.0.0.0' } } }, where: '/config', keyword: 'additionalProperties' },
      { name: 'a string where a number belongs', patch: { replicaCount: 'two' }, where: '/replicaCount', keyword: 'type' },
      { name: 'a port out of range', patch: { ports: { proxy: 70000 } }, where: '/ports/proxy', keyword: 'maximum' },
      { name: 'a misspelt provider type', patch: { config: { auth: { provider: 'googel-iam' } } }, where: '/config/auth/provider', keyword: 'enum' },
      { name: 'a string where a boolean belongs', patch: { networkPolicy: { enabled: 'yes' } }, where: '/networkPolicy/enabled', keyword: 'type' },
      { name: 'a malformed Workload Identity account', patch: { serviceAccount: { gcpServiceAccount: 'kvx-proxy@my-project' } }, where: '/serviceAccount/gcpServiceAccount', keyword: 'pattern' },
      { name: 'a bad PDB value', patch: { podDisruptionBudget: { minAvailable: 'half' } }, where: '/podDisruptionBudget/minAvailable', keyword: 'oneOf' },
      { name: 'a list where a map belongs', patch: { podAnnotations: ['a'] }, where: '/podAnnotations', keyword: 'type' },
    ];
    for (const { name, patch, where, keyword } of rejects) {
      it(`rejects ${name}`, () => {
        const ok = validate(coalesce(values, patch));
        expect(ok).to.equal(false);
        const hit = (validate.errors ?? []).find((e) => e.instancePath === where && e.keyword === keyword);
        expect(hit, errorsText(validate.errors)).to.not.equal(undefined);
      });
    }
  });

  describe('templates', () => {
    const files = templateFiles();
    const sources = new Map(files.map((f) => [path.relative(CHART, f), readFileSync(f, 'utf8')]));

    it('read only values that values.yaml defines', () => {
      const missing: string[] = [];
      for (const [file, text] of sources) {
        for (const match of text.matchAll(/\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)/g)) {
          let node: unknown = values;
          for (const key of match[1]!.slice(1).split('.')) {
            if (!isTree(node) || !(key in node)) {
              missing.push(`${file}: .Values${match[1]}`);
              break;
            }
            node = node[key];
          }
        }
      }
      expect(missing).to.deep.equal([]);
    });

    it('include only templates that are defined', () => {
      const defined = new Set<string>();
      for (const text of sources.values()) for (const m of text.matchAll(/define\s+"([^"]+)"/g)) defined.add(m[1]!);
      const undefinedNames: string[] = [];
      for (const [file, text] of sources) {
        for (const m of text.matchAll(/(?:include|template)\s+"([^"]+)"/g)) if (!defined.has(m[1]!)) undefinedNames.push(`${file}: ${m[1]}`);
      }
      expect(defined).to.include.keys('kvx-proxy.sidecarContainer', 'kvx-proxy.sidecarVolumes', 'kvx-proxy.config');
      expect(undefinedNames).to.deep.equal([]);
    });

    it('have balanced actions and blocks', () => {
      for (const [file, text] of sources) {
        const withoutComments = text.replace(/\{\{-?\s*\/\*[\s\S]*?\*\/\s*-?\}\}/g, '');
        expect(withoutComments.split('{{').length, `${file}: {{ vs }}`).to.equal(withoutComments.split('}}').length);
        const opens = [...withoutComments.matchAll(/\{\{-?\s*(if|with|range|define)\b/g)].length;
        const ends = [...withoutComments.matchAll(/\{\{-?\s*end\b/g)].length;
        expect(ends, `${file}: if/with/range/define vs end`).to.equal(opens);
      }
    });

    it('keep the pod hardened and probed on the admin port', () => {
      const deployment = sources.get('templates/deployment.yaml')!;
      expect(deployment).to.match(/checksum\/config: \{\{ include \(print \$\.Template\.BasePath "\/configmap\.yaml"\) \. \| sha256sum \}\}/);
      expect(deployment).to.match(/livenessProbe:\s+\{\{- include "kvx-proxy.httpProbe" \(dict "path" "\/healthz" "port" "admin"/);
      expect(deployment).to.match(/readinessProbe:\s+\{\{- include "kvx-proxy.httpProbe" \(dict "path" "\/readyz" "port" "admin"/);
      const sc = values['securityContext'] as Tree;
      expect(sc).to.deep.include({ readOnlyRootFilesystem: true, runAsNonRoot: true, allowPrivilegeEscalation: false, runAsUser: 65532 });
      expect(sc['capabilities']).to.deep.equal({ drop: ['ALL'] });
      expect(sc['seccompProfile']).to.deep.equal({ type: 'RuntimeDefault' });
      expect((values['podSecurityContext'] as Tree)['seccompProfile']).to.deep.equal({ type: 'RuntimeDefault' });
    });

    it('render the sidecar as a native sidecar that waits for /readyz', () => {
      const sidecar = sources.get('templates/_sidecar.tpl')!;
      const body = sidecar.slice(sidecar.indexOf('define "kvx-proxy.sidecarContainer"'));
      expect(body).to.match(/- name: kvx-proxy\n\s+restartPolicy: Always/);
      expect(body).to.match(/startupProbe:\s+\{\{- include "kvx-proxy.httpProbe" \(dict "path" "\/readyz"/);
      expect(body).to.include('KVX_LISTEN_HOST');
      expect(sources.get('templates/tests/test-mlflow-health.yaml')).to.include('include "kvx-proxy.sidecarContainer" .');
    });

    it('annotate the ServiceAccount for Workload Identity', () => {
      expect(sources.get('templates/serviceaccount.yaml')).to.include('iam.gke.io/gcp-service-account: {{ . | quote }}');
    });

    it('tell users how to set MLFLOW_TRACKING_URI', () => {
      expect(sources.get('templates/NOTES.txt')).to.include('MLFLOW_TRACKING_URI=http://{{ include "kvx-proxy.fullname" . }}');
    });
  });

  describe('the kvx config each example renders', () => {
    let dir: string;
    before(() => {
      dir = mkdtempSync(path.join(tmpdir(), 'kvx-chart-'));
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    /**
     * What the kvx-proxy.config template produces for a release: values.config with listen/admin set from ports and,
     * with the Deployment, the Service's names added to server.allowedHosts.
     */
    function renderedConfig(merged: Tree, release = RELEASE): Tree {
      const ports = merged['ports'] as { proxy: number; admin: number };
      const owned: Tree = {
        listen: { host: '0.0.0.0', port: ports.proxy, allowNonLoopback: true },
        admin: { enabled: true, host: '0.0.0.0', port: ports.admin },
      };
      if ((merged['deployment'] as { enabled: boolean }).enabled) {
        const userHosts = ((merged['config'] as { server?: { allowedHosts?: string[] } }).server?.allowedHosts ?? []);
        owned['server'] = { allowedHosts: [...new Set([...userHosts, ...serviceNames(merged, release)])] };
      }
      return coalesce(merged['config'] as Tree, owned);
    }

    it('adds the Service names to server.allowedHosts, after the user\'s own, only with the Deployment', () => {
      const helpers = sourcesOf('templates/_helpers.tpl');
      const config = helpers.slice(helpers.indexOf('define "kvx-proxy.config"'));
      // The template's construction, which renderedConfig mirrors: fullname, namespace, svc, cluster domain.
      expect(config).to.include('{{- if .Values.deployment.enabled }}');
      expect(config).to.include('{{- $svc := include "kvx-proxy.fullname" . }}');
      expect(config).to.include(
        '{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) }}',
      );
      expect(config).to.include('{{- $hosts := concat (dig "server" "allowedHosts" (list) .Values.config) $names | uniq }}');
      expect(config).to.include('{{- $_ := set $owned "server" (dict "allowedHosts" $hosts) }}');
      expect(values['clusterDomain']).to.equal('cluster.local');

      const withIngress = coalesce(values, { config: { upstream: { url: 'https://m.example' }, server: { allowedHosts: ['mlflow.corp.example'] } } });
      expect((renderedConfig(withIngress) as { server: { allowedHosts: string[] } }).server.allowedHosts).to.deep.equal([
        'mlflow.corp.example',
        'mlflow-proxy-kvx-proxy',
        'mlflow-proxy-kvx-proxy.ml',
        'mlflow-proxy-kvx-proxy.ml.svc',
        'mlflow-proxy-kvx-proxy.ml.svc.cluster.local',
      ]);
      const sidecarOnly = coalesce(values, { deployment: { enabled: false }, config: { upstream: { url: 'https://m.example' } } });
      expect(renderedConfig(sidecarOnly)['server']).to.equal(undefined);
    });

    it('values.yaml alone leaves upstream.url empty, which the template refuses with a message', () => {
      expect((values['config'] as { upstream: { url: string } }).upstream.url).to.equal('');
      expect(sourcesOf('templates/_helpers.tpl')).to.include('required "config.upstream.url is required');
    });

    for (const file of ciFiles) {
      it(`loads and plans providers for ci/${path.basename(file)}`, () => {
        const merged = coalesce(values, readYaml(file));
        const configFile = path.join(dir, `${path.basename(file)}.kvx.yaml`);
        writeFileSync(configFile, YAML.stringify(renderedConfig(merged)));
        // Environment the pod would have: every env entry present (values come from Secrets at run time).
        const env: NodeJS.ProcessEnv = {};
        for (const item of (merged['env'] as { name: string }[]) ?? []) env[item.name] = 'placeholder-from-secret';
        const loaded = loadConfig({ files: [configFile], env });
        expect(loaded.config.listen.host).to.equal('0.0.0.0');
        expect(loaded.config.admin.port).to.not.equal(loaded.config.listen.port);
        const { plans, problems } = planProviders(loaded.config, env);
        expect(problems).to.deep.equal([]);
        expect(plans).to.have.length.greaterThan(0);
        // Clients reach the Service by its names (NOTES.txt prints the full one) and pods by IP; a rebound name is refused.
        const guard = new HostGuard(loaded.config);
        const port = (merged['service'] as { port: number }).port;
        const hosts = (merged['deployment'] as { enabled: boolean }).enabled ? serviceNames(merged, RELEASE) : [];
        for (const host of [...hosts, ...hosts.map((h) => `${h}:${port}`), '10.8.0.12:5001', '127.0.0.1:5001', 'localhost:5001']) {
          expect(guard.check('GET', host, ['Host', host]), host).to.equal(undefined);
        }
        expect(guard.check('GET', 'attacker.example', ['Host', 'attacker.example'])?.kind).to.equal('host_not_allowed');
      });
    }
  });
});

/** helm install mlflow-proxy charts/kvx-proxy --namespace ml */
const RELEASE = { name: 'mlflow-proxy', namespace: 'ml' };

/** kvx-proxy.fullname, then the four names the Service answers to in cluster DNS. */
function serviceNames(merged: Tree, release: { name: string; namespace: string }): string[] {
  const override = String(merged['fullnameOverride'] ?? '');
  const name = String(merged['nameOverride'] || 'kvx-proxy');
  const trim = (s: string) => s.slice(0, 63).replace(/-$/, '');
  const svc = override ? trim(override) : release.name.includes(name) ? trim(release.name) : trim(`${release.name}-${name}`);
  const ns = release.namespace;
  return [svc, `${svc}.${ns}`, `${svc}.${ns}.svc`, `${svc}.${ns}.svc.${String(merged['clusterDomain'])}`];
}

function sourcesOf(relative: string): string {
  return readFileSync(path.join(CHART, relative), 'utf8');
}

describe('config/ examples', () => {
  const examples: Record<string, { host: string; allowNonLoopback: boolean; provider: string }> = {
    'local-dev.yaml': { host: '127.0.0.1', allowNonLoopback: false, provider: 'google-iam' },
    'sidecar.yaml': { host: '127.0.0.1', allowNonLoopback: false, provider: 'google-oauth' },
    'shared-in-cluster.yaml': { host: '0.0.0.0', allowNonLoopback: true, provider: 'google-iam' },
  };

  for (const [file, expected] of Object.entries(examples)) {
    it(`config/${file} loads, plans its provider and explains itself`, () => {
      const full = path.join(ROOT, 'config', file);
      const loaded = loadConfig({ files: [full], env: {} });
      expect(loaded.config.listen.host).to.equal(expected.host);
      expect(loaded.config.listen.allowNonLoopback).to.equal(expected.allowNonLoopback);
      const { plans, problems } = planProviders(loaded.config, {});
      expect(problems).to.deep.equal([]);
      expect(plans.map((p) => p.type)).to.deep.equal([expected.provider]);
      const comments = readFileSync(full, 'utf8').split('\n').filter((line) => line.trimStart().startsWith('#'));
      expect(comments.length, 'a commented example').to.be.greaterThan(5);
    });
  }
});
