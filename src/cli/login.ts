import type * as BrowserModule from '../auth/google/browser.js';
import type * as DesktopLoginModule from '../auth/google/desktop-login.js';
import type { DesktopClient } from '../auth/google-user.js';
import type * as GoogleUserModule from '../auth/google-user.js';
import { planProviders } from '../auth/registry.js';
import { Egress } from '../config/egress.js';
import { ConfigError, KvxError } from '../errors.js';
import { Logger } from '../log/logger.js';
import { lazyRequire } from '../util/lazy-require.js';
import type { CommandFlags } from './flags.js';
import { loadConfigFromOptions } from './options.js';
import { EXIT } from './program.js';
import type { CliIO, CommandDef } from './program.js';

const openInBrowser =
  (io: CliIO) =>
  (url: string): Promise<boolean> =>
    (lazyRequire('../auth/google/browser.js') as typeof BrowserModule).openBrowser(url, { env: io.env });

/**
 * `kvx-proxy login` and `kvx-proxy logout`, for the google-user provider. The login flow's modules load when one of
 * them runs, not with every `serve` and `exec` (lazyRequire, not import(): a dynamic import would give the login
 * its own copy of the provider registry where the CLI's modules were loaded as CommonJS, as under tsx).
 */
export function loginCommands(io: CliIO, open: (url: string) => Promise<boolean> = openInBrowser(io)): CommandDef[] {
  return [
    {
      id: 'kvx-proxy login',
      description: 'sign in with Google in a browser and store the refresh token the google-user provider mints ID tokens from',
      helpAfter: '\nNeeds auth.provider: google-user with auth.params.oauth_client_id and oauth_client_secret(_file|_env); see docs/providers.md.',
      async run(flags) {
        const client = desktopClient(flags, io, 'login');
        const { login } = lazyRequire('../auth/google/desktop-login.js') as typeof DesktopLoginModule;
        try {
          const result = await login(client, {
            // commander gives a --no-x switch the value true unless it was given.
            noBrowser: !flags.switch('--no-browser'),
            timeoutMs: flags.milliseconds('--login-timeout'),
            say: (line) => io.stderr.write(`${line}\n`),
            open,
          });
          io.stderr.write(`Logged in${result.email ? ` as ${result.email}` : ''}; the refresh token is stored in ${result.where}.\n`);
          return EXIT.ok;
        } finally {
          client.close();
        }
      },
    },
    {
      id: 'kvx-proxy logout',
      description: 'revoke the stored google-user login at Google and delete it',
      async run(flags) {
        const client = desktopClient(flags, io, 'logout');
        const { logout } = lazyRequire('../auth/google/desktop-login.js') as typeof DesktopLoginModule;
        try {
          const where = client.store.where();
          const result = await logout(client, AbortSignal.timeout(30_000));
          if (!result.had) {
            io.stderr.write(`No kvx-proxy login is stored for OAuth client ${client.clientId} (looked in ${where}).\n`);
            return EXIT.ok;
          }
          const who = result.email ? ` of ${result.email}` : '';
          if (result.revokeError !== undefined) {
            io.stderr.write(`Deleted the login${who} from ${where}, but Google did not revoke it: ${result.revokeError}\n`);
            io.stderr.write('  hint: revoke it at https://myaccount.google.com/permissions, or run `kvx-proxy login` and `kvx-proxy logout` again\n');
            return EXIT.failed;
          }
          io.stderr.write(`Revoked the login${who} at Google and deleted it from ${where}.\n`);
          return EXIT.ok;
        } finally {
          client.close();
        }
      },
    },
  ];
}

function desktopClient(flags: CommandFlags, io: CliIO, command: string): DesktopClient {
  const loaded = loadConfigFromOptions(flags, io, { requireUpstream: false });
  const { plans, problems } = planProviders(loaded.config, io.env);
  if (problems.length > 0) throw new ConfigError(problems);
  const users = plans.filter((p) => p.type === 'google-user');
  if (users.length === 0) {
    throw new KvxError('KVX_USAGE', `${command} is for the google-user provider, and none is configured`, {
      hint: 'set auth.provider: google-user (or --auth-provider google-user) with auth.params.oauth_client_id and oauth_client_secret_file; see docs/providers.md',
    });
  }
  const { desktopClientOf } = lazyRequire('../auth/google-user.js') as typeof GoogleUserModule;
  const egress = Egress.fromConfig(loaded.config, io.env);
  const client = desktopClientOf(users[0]!, { config: loaded.config, env: io.env, baseDir: loaded.baseDir, logger: new Logger('warn', io.stderr, { component: `kvx-proxy ${command}` }), egress });
  return {
    ...client,
    close: () => {
      client.close();
      void egress.close();
    },
  };
}
