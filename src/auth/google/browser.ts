/** Opens a URL in the user's browser with the platform's opener, run directly (no shell), the URL one argument. */
import { spawn } from 'node:child_process';

/** The opener and the arguments before the URL; Windows' `start` is a cmd built-in, so its URL handler is run instead. */
export function openerFor(platform: NodeJS.Platform): { command: string; args: string[] } {
  if (platform === 'darwin') return { command: 'open', args: [] };
  if (platform === 'win32') return { command: 'rundll32', args: ['url.dll,FileProtocolHandler'] };
  return { command: 'xdg-open', args: [] };
}

/**
 * Starts the opener and resolves true once it started, false when it could not be run (none installed, no
 * desktop); the caller prints the URL either way, since an opener that starts may still show nothing.
 */
export function openBrowser(url: string, options: { platform?: NodeJS.Platform; env?: NodeJS.ProcessEnv } = {}): Promise<boolean> {
  const { command, args } = openerFor(options.platform ?? process.platform);
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn(command, [...args, url], { stdio: 'ignore', detached: true, shell: false, env: options.env ?? process.env });
    } catch {
      resolve(false);
      return;
    }
    child.once('error', () => resolve(false));
    child.once('spawn', () => {
      child.unref();
      resolve(true);
    });
  });
}
