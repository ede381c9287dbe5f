import { readFileSync, readdirSync } from 'node:fs';

/**
 * Descriptors kept free beyond the upstream connections' share: token fetches, secret files, admin probes,
 * module loads (prom-client, about 1 s after start), DNS.
 */
const SPARE_FDS = 16;

/** The soft open-file limit (RLIMIT_NOFILE, what `ulimit -n` shows), or undefined when unlimited or unknown. */
export function openFileLimit(): number | undefined {
  try {
    if (process.platform === 'linux') {
      const m = /^Max open files\s+(\d+|unlimited)\s/m.exec(readFileSync('/proc/self/limits', 'utf8'));
      return m && m[1] !== 'unlimited' ? Number(m[1]) : undefined;
    }
    // Elsewhere only the diagnostic report tells (a few ms, once at start).
    const report = process.report.getReport() as { userLimits?: { open_files?: { soft?: unknown } } };
    const soft = report.userLimits?.open_files?.soft;
    return typeof soft === 'number' ? soft : undefined;
  } catch {
    return undefined;
  }
}

/** Descriptors the process holds now, or undefined where /dev/fd cannot be listed. */
export function openFileCount(): number | undefined {
  try {
    // The listing's own descriptor is among the entries.
    return readdirSync('/dev/fd').length - 1;
  } catch {
    return undefined;
  }
}

/**
 * How many client connections the proxy takes at once so that each can still get an upstream connection. At
 * the open-file limit accept() fails with EMFILE and libuv quietly accepts and closes the connection with a
 * descriptor it keeps in reserve (nothing reaches Node, nothing could be logged or counted), and an upstream
 * connect fails with EMFILE (a 502 for a client already taken). Refusing at this cap instead lets Node report
 * each connection it drops. Undefined when the limit is unknown or unlimited.
 */
export function clientConnectionCap(upstreamMaxConnections: number): { cap: number; fdLimit: number } | undefined {
  const fdLimit = openFileLimit();
  const open = openFileCount();
  if (fdLimit === undefined || open === undefined) return undefined;
  const available = fdLimit - open - SPARE_FDS;
  // A client needs at most one upstream connection at a time, and the pool opens at most upstream.maxConnections.
  const cap = Math.max(1, available - Math.min(upstreamMaxConnections, Math.floor(available / 2)));
  return { cap, fdLimit };
}
