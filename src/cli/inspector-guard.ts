/**
 * Imported first by each command's entry module. On SIGUSR1 Node opens its inspector on 127.0.0.1:9229,
 * without authentication: any local process (or any container of the pod, which shares 127.0.0.1) could then
 * run code inside kvx, which holds credentials. Installing a listener replaces Node's signal handler (libuv
 * takes the signal over; measured on Node 24: the inspector stays closed and the process keeps running), so
 * from here on SIGUSR1 is ignored, with one notice on stderr. The listener is never removed: without it
 * SIGUSR1's default action would end the process.
 *
 * Node's own handler is in place from early in its start-up, about 35 ms before this module runs. The shipped
 * forms that can pass Node flags (the standalone executable and the image, `npm run proxy`) add
 * `--disable-sigusr1` (package.json kvx.nodeFlags), which closes that window; the npm bin's
 * `#!/usr/bin/env node` line cannot, so kvx-proxy started that way re-executes itself with the flags
 * (node-flags.ts), leaving the window open only until then. A SIGUSR1 that arrived in the window has opened the inspector already:
 * then kvx exits before reading any configuration or credential. An inspector the user asked for (`--inspect`,
 * `--inspect-brk`, `--inspect-wait`, in the command line or NODE_OPTIONS; VS Code's debugger) is left alone.
 */
import type inspectorModule from 'node:inspector';
import { StreamSink } from '../log/stream-sink.js';
import { lazyRequire } from '../util/lazy-require.js';

let notice: StreamSink | undefined;

process.on('SIGUSR1', () => {
  if (notice) return;
  notice = new StreamSink(process.stderr);
  notice.write('kvx: SIGUSR1 ignored: the Node.js inspector stays closed in kvx (it would let any local process run code in a process holding credentials); to debug kvx, start node with --inspect\n');
});

const ACTIVATING_FLAG = /(^|\s)--inspect(-brk|-wait)?(=|\s|$)/;

function inspectorRequested(): boolean {
  return process.execArgv.some((arg) => ACTIVATING_FLAG.test(arg)) || ACTIVATING_FLAG.test(process.env['NODE_OPTIONS'] ?? '') || process.env['VSCODE_INSPECTOR_OPTIONS'] !== undefined;
}

/**
 * Exits if the inspector is open and nobody asked for it. Called when this module loads and again just before
 * credentials are first fetched: Node opens the inspector on its main thread some time after the signal, so a
 * SIGUSR1 that came just before the listener was installed may open it a little after the first check.
 */
export function refuseUnrequestedInspector(): void {
  if (!process.features.inspector || inspectorRequested()) return;
  const inspector = lazyRequire('node:inspector') as typeof inspectorModule;
  if (inspector.url() === undefined) return;
  inspector.close();
  new StreamSink(process.stderr).write(
    'kvx: the Node.js inspector was opened (a SIGUSR1 during start-up) before kvx could keep it closed; exiting before any credential is read. Start kvx again.\n',
  );
  process.exit(1);
}

refuseUnrequestedInspector();
