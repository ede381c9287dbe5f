/**
 * The configuration schema: one declarative tree that drives defaults, validation, the `KVX_*` environment
 * names, redaction in `check-config`, and the reference table in docs/configuration.md. Adding a key means adding it here.
 */

/** One key of the schema. Every option here is read by the loader, the reference table or the chart schema. */
export type FieldSpec =
  | {
      kind: 'string';
      default?: string;
      doc: string;
      choices?: readonly string[];
      /** Choices are the documented set (and the chart's enum) but another module validates the value. */
      openChoices?: boolean;
      /** A file or module path: relative values are resolved once, against the config file's folder or, from env and flags, the working directory. */
      path?: boolean;
      /** In a list item: the item is refused without it. */
      required?: boolean;
    }
  | { kind: 'int'; default?: number; min?: number; max?: number; doc: string }
  | { kind: 'bool'; default?: boolean; doc: string }
  | { kind: 'stringList'; default?: readonly string[]; doc: string }
  | { kind: 'intList'; default?: readonly number[]; doc: string }
  /**
   * Free-form map (provider params, labels): values are kept as given; keys are not checked here. Keys matching
   * `pathKeys` hold paths, resolved like a `path` string; keys matching `secretKeys` are redacted when printed.
   */
  | { kind: 'map'; doc: string; secretKeys?: RegExp; pathKeys?: RegExp }
  | { kind: 'object'; fields: Fields; doc: string }
  | { kind: 'list'; item: Fields; doc: string };

export type Fields = Readonly<Record<string, FieldSpec>>;

/** The value a key holds once loaded: its type follows from its spec, so the schema and the type cannot drift. */
type ValueOf<F> = F extends { kind: 'string'; choices: readonly (infer C)[]; openChoices?: false }
  ? C
  : F extends { kind: 'string' }
    ? string
    : F extends { kind: 'int' }
      ? number
      : F extends { kind: 'bool' }
        ? boolean
        : F extends { kind: 'stringList' }
          ? string[]
          : F extends { kind: 'intList' }
            ? number[]
            : F extends { kind: 'map' }
              ? Record<string, unknown>
              : F extends { kind: 'object'; fields: infer S }
                ? { -readonly [K in keyof S]: ValueOf<S[K]> }
                : F extends { kind: 'list'; item: infer S }
                  ? ItemOf<S>[]
                  : never;

/** A list item: required keys and maps (which default to `{}`) are always there, the rest only when given. */
type ItemOf<S> = { -readonly [K in keyof S as S[K] extends { required: true } | { kind: 'map' } ? K : never]: ValueOf<S[K]> } & {
  -readonly [K in keyof S as S[K] extends { required: true } | { kind: 'map' } ? never : K]?: ValueOf<S[K]>;
};

/**
 * Built-in provider types. The registry (src/auth/registry.ts) validates a type, so embedders and tests
 * can register more; the schema lists these for flags, documentation and the Helm chart's enum, and
 * src/auth/index.ts refuses to load when one of them has no implementation.
 */
export const BUILT_IN_PROVIDER_TYPES = ['static', 'basic', 'google-iam', 'google-oauth', 'google-user', 'custom'] as const;
/** What auth.provider takes: a provider type, `auto` (chosen from auth.params) or `none`. */
export const AUTH_PROVIDER_TYPES = ['auto', 'none', ...BUILT_IN_PROVIDER_TYPES] as const;

export const SCHEMA = {
  listen: {
    kind: 'object',
    doc: 'Where the proxy accepts MLflow clients.',
    fields: {
      host: { kind: 'string', default: '127.0.0.1', doc: 'Address to listen on. Anything but loopback needs listen.allowNonLoopback.' },
      port: { kind: 'int', default: 5001, min: 0, max: 65535, doc: 'Port to listen on; 0 picks a free one.' },
      allowNonLoopback: {
        kind: 'bool',
        default: false,
        doc: 'Allow a non-loopback listen.host. Whoever reaches the port gets authenticated MLflow access.',
      },
    },
  },
  admin: {
    kind: 'object',
    doc: 'Health and metrics listener, separate so it never shadows an MLflow path.',
    fields: {
      enabled: { kind: 'bool', default: true, doc: 'Serve /healthz, /readyz and /metrics.' },
      host: { kind: 'string', default: '127.0.0.1', doc: 'Admin listen address (loopback unless listen.allowNonLoopback).' },
      port: { kind: 'int', default: 9464, min: 0, max: 65535, doc: 'Admin port; 0 picks a free one.' },
    },
  },
  upstream: {
    kind: 'object',
    doc: 'The MLflow tracking server requests are forwarded to.',
    fields: {
      url: { kind: 'string', default: '', doc: 'MLflow server URL, http or https, optionally with a path prefix (https://host/mlflow). Required.' },
      connectTimeoutMs: { kind: 'int', default: 10_000, min: 1, doc: 'Time allowed to open a connection to upstream.' },
      headersTimeoutMs: {
        kind: 'int',
        default: 300_000,
        min: 1,
        doc: 'Time allowed for upstream response headers after the request was sent, including any wait for a free connection (upstream.maxConnections).',
      },
      idleTimeoutMs: {
        kind: 'int',
        default: 300_000,
        min: 1,
        doc: 'Longest pause allowed while a body streams in either direction; a multi-GB transfer may take longer in total.',
      },
      maxConnections: { kind: 'int', default: 256, min: 1, doc: 'Most upstream connections kept open at once.' },
      caFile: { kind: 'string', default: '', path: true, doc: 'PEM bundle of CAs trusted for upstream TLS (replaces the system list); an empty or non-PEM file is refused at start.' },
      certFile: { kind: 'string', default: '', path: true, doc: 'Client certificate (PEM) for mutual TLS; needs upstream.keyFile.' },
      keyFile: { kind: 'string', default: '', path: true, doc: 'Client key (PEM) for mutual TLS; needs upstream.certFile.' },
      insecure: { kind: 'bool', default: false, doc: 'Skip upstream TLS verification. For debugging only; cannot be combined with upstream.caFile.' },
    },
  },
  egress: {
    kind: 'object',
    doc: 'How kvx reaches the network: the upstream, Google endpoints and kvx-launch calls (the metadata server is never proxied).',
    fields: {
      proxy: {
        kind: 'string',
        default: '',
        doc:
          'HTTP proxy for every outgoing call, http://[user:password@]host[:port], tunnelled with CONNECT. Empty: HTTPS_PROXY / HTTP_PROXY ' +
          '(lower case first, as undici reads them; https URLs fall back to HTTP_PROXY). When set, those variables and NO_PROXY are ignored.',
      },
      noProxy: {
        kind: 'stringList',
        default: [],
        doc:
          'Hosts reached directly, replacing NO_PROXY: example.com and .example.com (the domain and its subdomains), *.example.com (subdomains only), ' +
          'host:port, IP addresses, CIDR ranges (10.0.0.0/8, matched against IP literals), * for all.',
      },
      hostAliases: {
        kind: 'map',
        doc:
          "Fixed host name → IP address mappings kvx resolves itself, like /etc/hosts entries (vertexai.yml: run_config.network.host_aliases). " +
          'TLS still checks the name. A name sent to a proxy is resolved by the proxy.',
      },
    },
  },
  server: {
    kind: 'object',
    doc: 'Limits on client connections.',
    fields: {
      headersTimeoutMs: { kind: 'int', default: 30_000, min: 1, doc: 'Time a client has to send its request headers (slow-client guard).' },
      requestTimeoutMs: { kind: 'int', default: 0, min: 0, doc: 'Time a client has to send a whole request; 0 for none (large uploads).' },
      keepAliveTimeoutMs: { kind: 'int', default: 65_000, min: 1, doc: 'How long an idle client connection is kept open.' },
      maxHeaderSize: { kind: 'int', default: 32_768, min: 1024, doc: 'Largest request header block accepted, in bytes; larger gets 431.' },
      engine: {
        kind: 'string',
        default: 'auto',
        choices: ['auto', 'wire', 'node'],
        doc:
          "HTTP engine: wire (Node's llhttp parser on raw sockets, the fast one), node (node:http's server and undici's Pool, public APIs only) " +
          'or auto (wire when its start-up self-test of the parser passes on this Node.js, node otherwise, with a warning). See docs/proxy.md.',
      },
      shutdownTimeoutMs: { kind: 'int', default: 25_000, min: 0, doc: 'On SIGTERM, SIGINT or SIGHUP, how long in-flight requests may take to finish.' },
      allowedHosts: {
        kind: 'stringList',
        default: [],
        doc:
          'Host names clients may address the proxy by, besides IP addresses, localhost, *.localhost and listen.host; other Hosts get 421 (DNS-rebinding guard). ' +
          '*.example.com matches subdomains; * turns the check off (behind a front end that checks Host). The Helm chart adds its Service names.',
      },
      allowedOrigins: {
        kind: 'stringList',
        default: [],
        doc:
          "Browser origins (https://host[:port]) besides the proxy's own that may send requests, e.g. a dashboard of yours; other cross-site browser requests get 403. " +
          '* turns the Origin and Sec-Fetch-Site checks off.',
      },
    },
  },
  headers: {
    kind: 'object',
    doc: 'Client header handling.',
    fields: {
      preserve: {
        kind: 'stringList',
        default: [],
        doc:
          'Client credential headers (authorization, proxy-authorization, x-serverless-authorization, cookie) to forward anyway. ' +
          'They are dropped by default; a header a provider sets is always replaced.',
      },
      allowUnderscores: {
        kind: 'bool',
        default: false,
        doc:
          'Forward client request headers whose names contain "_" (X_Forwarded_For). Dropped by default, as nginx does: WSGI servers such as ' +
          "MLflow's read X_Auth and X-Auth as one header, so a name with _ could pass for one kvx strips.",
      },
    },
  },
  auth: {
    kind: 'object',
    doc: 'Header providers.',
    fields: {
      provider: {
        kind: 'string',
        default: 'auto',
        choices: AUTH_PROVIDER_TYPES,
        openChoices: true,
        doc: 'Provider type; auto selects from auth.params as kedro-vertexai does (client_id + service_account: google-iam; client_id: google-oauth).',
      },
      header: { kind: 'string', default: 'Authorization', doc: 'Header the token goes in (Proxy-Authorization behind IAP when MLflow uses basic auth; X-Serverless-Authorization for Cloud Run IAM without IAP).' },
      scheme: { kind: 'string', default: 'Bearer', doc: 'Scheme before the token; empty for a bare token.' },
      params: {
        kind: 'map',
        doc: 'Provider params, as kedro-vertexai request_header_provider_params (client_id, service_account, custom keys).',
        secretKeys: /token|secret|password|key/i,
        pathKeys: /_file$/,
      },
      module: { kind: 'string', default: '', path: true, doc: 'Custom provider module path (ESM or CommonJS), relative to the config file.' },
      export: { kind: 'string', default: 'default', doc: 'Export of auth.module holding the provider class.' },
      providers: {
        kind: 'list',
        doc: 'Several providers, applied in order; each takes type, params, header, scheme, module, export.',
        item: {
          type: {
            kind: 'string',
            required: true,
            choices: BUILT_IN_PROVIDER_TYPES,
            openChoices: true,
            doc: 'Provider type: static, basic, google-iam, google-oauth, google-user, custom, or one a module registered.',
          },
          params: { kind: 'map', doc: 'Params, merged over auth.params.', secretKeys: /token|secret|password|key/i, pathKeys: /_file$/ },
          header: { kind: 'string', doc: 'Header name; defaults to auth.header.' },
          scheme: { kind: 'string', doc: 'Scheme; defaults to auth.scheme.' },
          module: { kind: 'string', path: true, doc: 'Custom module path.' },
          export: { kind: 'string', doc: 'Custom module export.' },
        },
      },
      extraHeaders: {
        kind: 'map',
        doc:
          'Fixed headers added to every request alongside the providers (X-MLFLOW-WORKSPACE, a vendor API key): name → a literal, or {value}, {env: VAR} (read at start) ' +
          'or {file: path} (re-read when it changes). Hop-by-hop names, Host and headers a provider sets are refused; values are redacted when printed.',
        secretKeys: /./,
      },
      refreshBeforeExpirySec: { kind: 'int', default: 300, min: 0, doc: 'Refresh a token this long before it expires.' },
      refreshJitterSec: { kind: 'int', default: 30, min: 0, doc: 'Random extra lead time, so many proxies do not refresh at once.' },
      retryOnStatus: {
        kind: 'intList',
        default: [401],
        doc:
          'Upstream statuses that force a token refresh and one replay of a small request, for auth layers other than IAP (Cloud Run IAM, gateways). ' +
          "IAP's own answers (X-Goog-IAP-Generated-Response: true) are read by that mark: its 401 always refreshes, its 403 (a missing role) never; MLflow's own 401/403 behind IAP are passed through.",
      },
      replayMaxBodyBytes: { kind: 'int', default: 1_048_576, min: 0, doc: 'Largest request body kept for a replay after 401; bigger bodies stream and are never replayed.' },
      requireTokenAtStart: { kind: 'bool', default: true, doc: 'Exit at start when the first credentials cannot be produced.' },
      startupTimeoutMs: { kind: 'int', default: 30_000, min: 1, doc: 'How long the first credentials may take at start.' },
      tokenFetchTimeoutMs: { kind: 'int', default: 30_000, min: 1, doc: 'How long one token request to Google may take before it counts as failed and is retried with backoff.' },
      tokenWaitMs: {
        kind: 'int',
        default: 2_000,
        min: 0,
        doc:
          'Longest a proxied request waits for a token being fetched when no usable token is held. A fetch unanswered for ' +
          'longer makes requests get 503 with Retry-After at once; the fetch itself runs on, up to auth.tokenFetchTimeoutMs.',
      },
      endpoints: {
        kind: 'object',
        doc: 'Google endpoints, for private setups and tests.',
        fields: {
          metadataHost: { kind: 'string', default: '', doc: 'Metadata server host[:port]; GCE_METADATA_HOST is honoured when unset.' },
          iamCredentials: { kind: 'string', default: 'https://iamcredentials.googleapis.com', doc: 'IAM Credentials API base URL.' },
          oauthToken: { kind: 'string', default: 'https://oauth2.googleapis.com/token', doc: 'OAuth 2.0 token endpoint.' },
          oauthAuthorize: { kind: 'string', default: 'https://accounts.google.com/o/oauth2/v2/auth', doc: 'OAuth 2.0 authorization endpoint the browser is sent to by `kvx-proxy login`.' },
          oauthRevoke: { kind: 'string', default: 'https://oauth2.googleapis.com/revoke', doc: 'OAuth 2.0 revocation endpoint `kvx-proxy logout` revokes the login at.' },
          sts: {
            kind: 'string',
            default: 'https://sts.googleapis.com/v1/token',
            doc: "Security Token Service token URL for workload identity federation; replaces Google's in external_account files that name it (as iamCredentials does for their impersonation URL).",
          },
        },
      },
    },
  },
  log: {
    kind: 'object',
    doc: 'Logging.',
    fields: {
      level: { kind: 'string', default: 'info', choices: ['debug', 'info', 'warn', 'error', 'silent'], doc: 'Least severe level written.' },
      requests: { kind: 'bool', default: true, doc: 'Write one line per proxied request.' },
    },
  },
  vertex: {
    kind: 'object',
    doc: 'Vertex AI settings for kvx-launch; filled from a vertexai.yml when one is given.',
    fields: {
      projectId: { kind: 'string', default: '', doc: 'Google Cloud project id (vertexai.yml: project_id).' },
      region: { kind: 'string', default: '', doc: 'Vertex AI region (vertexai.yml: region).' },
      endpoint: { kind: 'string', default: '', doc: 'Vertex AI API base URL; https://<region>-aiplatform.googleapis.com by default.' },
      experimentName: { kind: 'string', default: '', doc: 'MLflow experiment and job id prefix (run_config.experiment_name).' },
      root: { kind: 'string', default: '', doc: 'Pipeline root, bucket/path without gs:// (run_config.root).' },
      serviceAccount: { kind: 'string', default: '', doc: 'Service account the pipeline runs as (run_config.service_account).' },
      network: { kind: 'string', default: '', doc: 'VPC network name or full resource name (run_config.network.vpc).' },
      labels: { kind: 'map', doc: 'Labels put on the pipeline job.' },
      experiment: { kind: 'string', default: '', doc: 'Vertex AI experiment to associate the job with (run_config.experiment).' },
      projectNumber: { kind: 'string', default: '', doc: 'Project number, needed when vertex.network is a bare VPC name (Vertex wants projects/<number>/global/networks/<vpc>).' },
      enableCaching: { kind: 'bool', default: false, doc: 'Let Vertex reuse cached task results; off by default, as kedro-vertexai runs.' },
    },
  },
  adapt: {
    kind: 'object',
    doc: 'How kvx-launch run and adapt adapt a kedro-vertexai pipeline (kvx-proxy exec in every step, start-run, an exit task ending the run); see docs/launcher.md.',
    fields: {
      enabled: { kind: 'bool', default: true, doc: 'Adapt a spec recognised as kedro-vertexai\'s before kvx-launch run submits it (--no-adapt: submit it untouched).' },
      proxyPath: { kind: 'string', default: 'kvx-proxy', doc: 'kvx-proxy inside the step image: a name on its PATH or an absolute path.' },
      launchPath: { kind: 'string', default: 'kvx-launch', doc: 'kvx-launch inside the step image (start-run, end-run).' },
      stepConfig: {
        kind: 'string',
        default: 'conf/{env}/vertexai.yml',
        doc: "Config the steps' kvx commands read, relative to the image's working directory; {env} is the step's kedro env (kedro run -e ENV).",
      },
    },
  },
} as const satisfies Fields;

export type KvxConfig = { -readonly [K in keyof typeof SCHEMA]: ValueOf<(typeof SCHEMA)[K]> };
/** One entry of auth.providers: a registered provider type with its params, header, scheme and custom module. */
export type ProviderConfig = KvxConfig['auth']['providers'][number];
