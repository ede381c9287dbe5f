/**
 * Load drivers. wrk when installed (a C load generator costs the shared cores least); otherwise autocannon
 * from node_modules, run as its own process. Both report the same LoadResult.
 */
import { execFile, execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

export interface LoadSpec {
  url: string;
  connections: number;
  durationSec: number;
  method: 'GET' | 'POST';
  body?: Buffer;
  headers: Record<string, string>;
}

export interface LoadResult {
  requests: number;
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Socket errors, timeouts and non-2xx answers together: any of these makes a figure suspect. */
  errors: number;
}

export interface LoadDriver {
  name: 'wrk' | 'autocannon';
  run(spec: LoadSpec): Promise<LoadResult>;
}

export function findWrk(): string | undefined {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    return 'wrk';
  } catch (err) {
    // wrk --version exits 1 after printing its version.
    if ((err as { status?: number }).status === 1) return 'wrk';
    return undefined;
  }
}

function execFileText(file: string, args: string[], timeoutMs: number): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${file} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Lua long brackets with enough '=' that the body cannot close them. */
function luaString(text: string): string {
  let eq = '=';
  while (text.includes(`]${eq}]`)) eq += '=';
  return `[${eq}[${text}]${eq}]`;
}

export function wrkDriver(tmpDir: string): LoadDriver {
  let scriptCount = 0;
  return {
    name: 'wrk',
    async run(spec) {
      const lines = [`wrk.method = "${spec.method}"`];
      for (const [name, value] of Object.entries(spec.headers)) lines.push(`wrk.headers[ ${luaString(name)} ] = ${luaString(value)}`);
      if (spec.body) {
        lines.push(`wrk.body = ${luaString(spec.body.toString('utf8'))}`);
        lines.push(`wrk.headers["Content-Type"] = "application/json"`);
      }
      lines.push(
        'function done(summary, latency, requests)',
        '  local e = summary.errors',
        '  io.write(string.format("BENCHJSON {\\"requests\\":%d,\\"durationUs\\":%d,\\"errors\\":%d,\\"p50\\":%f,\\"p99\\":%f}\\n",',
        '    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout, latency:percentile(50), latency:percentile(99)))',
        'end',
      );
      const script = join(tmpDir, `wrk-${scriptCount++}.lua`);
      writeFileSync(script, lines.join('\n') + '\n');
      const out = await execFileText('wrk', ['-t1', `-c${spec.connections}`, `-d${spec.durationSec}s`, '--timeout', '10s', '-s', script, spec.url], (spec.durationSec + 30) * 1000);
      const line = out.split('\n').find((l) => l.startsWith('BENCHJSON '));
      if (!line) throw new Error(`wrk printed no summary:\n${out}`);
      const r = JSON.parse(line.slice('BENCHJSON '.length)) as { requests: number; durationUs: number; errors: number; p50: number; p99: number };
      return { requests: r.requests, rps: r.requests / (r.durationUs / 1e6), p50Ms: r.p50 / 1000, p99Ms: r.p99 / 1000, errors: r.errors };
    },
  };
}

export function autocannonDriver(tmpDir: string): LoadDriver {
  const require = createRequire(import.meta.url);
  const bin = join(require.resolve('autocannon/package.json'), '..', 'autocannon.js');
  let bodyCount = 0;
  return {
    name: 'autocannon',
    async run(spec) {
      const args = [bin, '--json', '-c', String(spec.connections), '-d', String(spec.durationSec), '-m', spec.method, '-t', '10'];
      for (const [name, value] of Object.entries(spec.headers)) args.push('-H', `${name}=${value}`);
      if (spec.body) {
        const file = join(tmpDir, `body-${bodyCount++}.json`);
        writeFileSync(file, spec.body);
        args.push('-i', file, '-H', 'content-type=application/json');
      }
      args.push(spec.url);
      const out = await execFileText(process.execPath, args, (spec.durationSec + 30) * 1000);
      const r = JSON.parse(out.slice(out.indexOf('{'))) as {
        requests: { total: number };
        duration: number;
        latency: { p50: number; p99: number };
        errors: number;
        timeouts: number;
        non2xx: number;
      };
      return {
        requests: r.requests.total,
        rps: r.requests.total / r.duration,
        p50Ms: r.latency.p50,
        p99Ms: r.latency.p99,
        errors: r.errors + r.timeouts + r.non2xx,
      };
    },
  };
}
