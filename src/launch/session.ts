import '../auth/index.js';
import { CredentialsLookup } from '../auth/google/discovery.js';
import { HeaderInjector } from '../auth/injector.js';
import { planProviders } from '../auth/registry.js';
import type { LoadedConfig } from '../config/load.js';
import { ConfigError } from '../errors.js';
import { Egress } from '../config/egress.js';
import { egressDispatcher } from '../net/egress-http.js';
import type { ConfigProblem } from '../errors.js';
import { Logger } from '../log/logger.js';
import type { LogLevel } from '../log/logger.js';
import { MlflowClient, mlflowDispatcher, retryPolicyFromEnv } from '../mlflow/client.js';
import { VertexClient } from '../vertex/client.js';
import type { GoogleHeaderSource } from '../vertex/client.js';
import type { Progress } from './progress.js';

/** What a kvx-launch command gets from the program around it. */
export interface LaunchEnvironment {
  env: NodeJS.ProcessEnv;
  /** Where the JSON logs go (stderr, so --json output on stdout stays clean). */
  logs: NodeJS.WritableStream;
  /** Aborted by SIGINT/SIGTERM: cuts the REST call or wait in progress short and stops following. */
  signal: AbortSignal;
  /**
   * Google credentials for the Vertex AI API; the CLI chooses them, normally from `google`, the run's one look-up
   * of Application Default Credentials, which the MLflow header providers use too (one identity per run).
   */
  googleAuth(google: CredentialsLookup): GoogleHeaderSource;
  /** The display of a job being followed. */
  progress(jobId: string): Progress;
  /** A line for people on stderr: something was read leniently or ignored, and the command goes on. */
  warn(message: string): void;
  /** A line for people on stderr saying what kvx-launch did to the input (the changes adapting made). */
  info?(message: string): void;
  /** First wait between looks for a job's pipeline run context when adding it to a Vertex AI experiment. */
  experimentLinkIntervalMs?: number;
}

/**
 * The clients one kvx-launch command uses: the MLflow client (when a tracking server is configured) with its
 * header providers, and the Vertex AI client, made on first use. Closed by `withSession`.
 */
export class LaunchSession {
  readonly logger: Logger;
  /** The one Google look-up of the command: the MLflow providers' source credentials and the Vertex AI calls'. */
  readonly google: CredentialsLookup;
  /** How the command's calls reach MLflow and Google (egress proxy, host aliases). */
  readonly egress: Egress;
  private mlflowClient: MlflowClient | undefined;
  private injector: HeaderInjector | undefined;
  private vertexClient: VertexClient | undefined;
  private readonly closers: (() => Promise<void>)[] = [];

  private constructor(
    private readonly loaded: LoadedConfig,
    private readonly environment: LaunchEnvironment,
  ) {
    // Quiet unless asked: kvx-launch's own output says what happened.
    const level: LogLevel = loaded.sources.has('log.level') ? loaded.config.log.level : 'warn';
    this.logger = new Logger(level, environment.logs, { program: 'kvx-launch' });
    const { auth } = loaded.config;
    this.egress = Egress.fromConfig(loaded.config, environment.env);
    this.google = new CredentialsLookup('kvx-launch', { env: environment.env, endpoints: auth.endpoints, logger: this.logger, fetchTimeoutMs: auth.tokenFetchTimeoutMs, egress: this.egress });
    this.closers.push(async () => this.google.close(), () => this.egress.close());
  }

  /** Plans the MLflow header providers (a problem is a ConfigError) and makes the MLflow client, when one is configured. */
  static async open(loaded: LoadedConfig, environment: LaunchEnvironment): Promise<LaunchSession> {
    const session = new LaunchSession(loaded, environment);
    const { config } = loaded;
    if (config.upstream.url === '') return session;
    const { plans, problems } = planProviders(config, environment.env);
    if (problems.length > 0) throw new ConfigError(problems);
    const injector = await HeaderInjector.create(plans, { config, logger: session.logger, baseDir: loaded.baseDir, env: environment.env, googleCredentials: session.google, egress: session.egress });
    const dispatcher = mlflowDispatcher(config, session.egress);
    // The providers before the look-up they share, which closes last.
    session.closers.unshift(() => injector.close(), () => dispatcher.close());
    const { retry, timeoutMs } = retryPolicyFromEnv(environment.env);
    session.injector = injector;
    session.mlflowClient = new MlflowClient({ trackingUri: config.upstream.url, headers: injector, logger: session.logger, retry, timeoutMs, dispatcher, interrupt: environment.signal });
    return session;
  }

  /** Whether a tracking server is configured. */
  get hasMlflow(): boolean {
    return this.mlflowClient !== undefined;
  }

  /** The MLflow client, once its providers hold their first credentials. */
  async mlflow(): Promise<MlflowClient> {
    if (this.mlflowClient === undefined || this.injector === undefined) throw new Error('no MLflow tracking server is configured');
    await this.injector.start();
    return this.mlflowClient;
  }

  /** The Vertex AI client; project and region are required from here on. */
  vertex(): VertexClient {
    if (this.vertexClient !== undefined) return this.vertexClient;
    const v = this.loaded.config.vertex;
    const problems: ConfigProblem[] = [];
    if (!v.projectId) problems.push({ path: 'vertex.projectId', message: 'required: set project_id in vertexai.yml, vertex.projectId, or --project' });
    if (!v.region) problems.push({ path: 'vertex.region', message: 'required: set region in vertexai.yml, vertex.region, or --region' });
    if (problems.length > 0) throw new ConfigError(problems);
    const dispatcher = egressDispatcher(this.egress);
    this.closers.unshift(() => dispatcher.close());
    this.vertexClient = new VertexClient({
      dispatcher,
      projectId: v.projectId,
      region: v.region,
      endpoint: v.endpoint,
      auth: this.environment.googleAuth(this.google),
      logger: this.logger,
      interrupt: this.environment.signal,
    });
    return this.vertexClient;
  }

  async close(): Promise<void> {
    for (const close of this.closers) await close();
  }
}

/** Runs `use` with a session, closed whatever happens. */
export async function withSession<T>(loaded: LoadedConfig, environment: LaunchEnvironment, use: (session: LaunchSession) => Promise<T>): Promise<T> {
  const session = await LaunchSession.open(loaded, environment);
  try {
    return await use(session);
  } finally {
    await session.close();
  }
}
