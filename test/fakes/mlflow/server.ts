/**
 * The fake MLflow tracking server's HTTP side: listens on 127.0.0.1:0, records every request, lets the gate answer
 * first, strips the base path and sends each path to its part (health and version, the fake storage, the
 * artifacts API, the tracking API), turning MLflow errors into MLflow's error bodies. Reply faults are applied
 * here, after the tracking API has carried a call out.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { FakeArtifacts, STORAGE_PREFIX } from './artifacts.js';
import type { Gate } from './gates.js';
import { MlflowError, countBody, noEndpoint, sendError, sendJson } from './protocol.js';
import type { ByteCount } from './protocol.js';
import { trackingApi } from './routes.js';
import { FakeMlflowStore } from './store.js';

export interface RecordedRequest {
  method: string;
  /** Path with query, as received (before the base path is stripped). */
  path: string;
  headers: http.IncomingHttpHeaders;
  bodyBytes: number;
  /** 0 when the client went away before an answer was sent. */
  status: number;
}

/**
 * A fault on the reply to a REST call the server has carried out (`POST runs/create`): `drop` closes the
 * connection without an answer (a reply lost on the way), a status answers that status instead of the result
 * (a proxy's 502 after the server acted).
 */
export interface ReplyFault {
  method: string;
  /** The endpoint after /api/2.0/mlflow/, e.g. `runs/create`. */
  endpoint: string;
  fault: 'drop' | number;
}

export interface FakeMlflow {
  url: string;
  port: number;
  store: FakeMlflowStore;
  requests: RecordedRequest[];
  /** Used up in order: each applies once, to the next matching call. */
  replyFaults: ReplyFault[];
  /** Directory artifacts are stored in. */
  artifactRoot: string;
  reset(): Promise<void>;
  close(): Promise<void>;
}

export interface FakeMlflowOptions {
  gate?: Gate;
  /** Prefix the server is mounted under, e.g. '/mlflow'. */
  basePath?: string;
  version?: string;
}

const API_PATH = /^\/(api|ajax-api)\/(2\.0|3\.0)\/(mlflow|mlflow-artifacts)(?:\/(.*))?$/;

const sendText = (res: http.ServerResponse, status: number, contentType: string, body: string): void => {
  res.writeHead(status, { 'content-type': contentType }).end(body);
};

export async function startFakeMlflow(options: FakeMlflowOptions = {}): Promise<FakeMlflow> {
  const basePath = (options.basePath ?? '').replace(/\/+$/, '');
  const version = options.version ?? '2.12.2';
  const store = new FakeMlflowStore();
  const requests: RecordedRequest[] = [];
  const replyFaults: ReplyFault[] = [];
  const artifactRoot = await mkdtemp(path.join(tmpdir(), 'kvx-fake-mlflow-'));
  const artifacts = new FakeArtifacts(artifactRoot);
  const tracking = trackingApi(store);

  /** Applies the first reply fault queued for this call; true when it answered (or dropped) the call. */
  function replyFault(req: http.IncomingMessage, res: http.ServerResponse, method: string, endpoint: string): boolean {
    const at = replyFaults.findIndex((f) => f.method === method && f.endpoint === endpoint);
    if (at === -1) return false;
    const { fault } = replyFaults.splice(at, 1)[0]!;
    if (fault === 'drop') req.socket.destroy();
    else sendError(res, fault, fault === 503 ? 'TEMPORARILY_UNAVAILABLE' : 'INTERNAL_ERROR', `fake reply fault ${fault}`);
    return true;
  }

  async function handle(req: http.IncomingMessage, res: http.ServerResponse, count: ByteCount): Promise<void> {
    const rawUrl = req.url ?? '/';
    const q = rawUrl.indexOf('?');
    const rawPath = q === -1 ? rawUrl : rawUrl.slice(0, q);
    const query = new URLSearchParams(q === -1 ? '' : rawUrl.slice(q + 1));
    const method = req.method ?? 'GET';

    if (basePath !== '' && rawPath !== basePath && !rawPath.startsWith(`${basePath}/`)) {
      sendText(res, 404, 'text/plain', 'Not Found');
      return;
    }
    const p = rawPath.slice(basePath.length) || '/';
    const what = `${method} ${p}`;

    if (p === '/health' && method === 'GET') return sendText(res, 200, 'text/plain; charset=utf-8', 'OK');
    if (p === '/version' && method === 'GET') return sendText(res, 200, 'text/plain; charset=utf-8', version);
    if (await artifacts.storagePut(req, res, p, count)) return;

    const api = API_PATH.exec(p);
    if (api === null) {
      if (p === '/' && method === 'GET') return sendText(res, 200, 'text/html; charset=utf-8', '<!doctype html><title>MLflow</title><div id="root"></div>');
      throw noEndpoint(what);
    }
    const apiVersion = api[2] as '2.0' | '3.0';
    const family = api[3];
    const endpoint = api[4] ?? '';
    if (family === 'mlflow-artifacts') {
      if (apiVersion !== '2.0') throw noEndpoint(what);
      return artifacts.handle(req, res, endpoint, query, count, what);
    }
    const result = await tracking(req, apiVersion, endpoint, query, count, what);
    // Reply faults stand for what happens on the way back, so only once the server has acted.
    if (apiVersion === '2.0' && replyFault(req, res, method, endpoint)) return;
    sendJson(res, 200, result);
  }

  const server = http.createServer((req, res) => {
    const count: ByteCount = { bytes: 0 };
    const record: RecordedRequest = {
      method: req.method ?? '',
      path: req.url ?? '',
      headers: { ...req.headers },
      bodyBytes: 0,
      status: 0,
    };
    let recorded = false;
    const finish = (): void => {
      if (recorded) return;
      recorded = true;
      record.bodyBytes = count.bytes;
      record.status = res.headersSent ? res.statusCode : 0;
      requests.push(record);
    };
    res.on('finish', finish);
    res.on('close', finish);

    void (async () => {
      try {
        const storage = (req.url ?? '').startsWith(`${basePath}${STORAGE_PREFIX}`);
        const gated = options.gate === undefined || storage ? null : await options.gate(req);
        if (gated !== null) {
          countBody(req, count);
          req.resume();
          const body = gated.body ?? '';
          res.writeHead(gated.status, { 'content-type': 'text/plain; charset=utf-8', 'content-length': String(Buffer.byteLength(body)), ...gated.headers });
          res.end(body);
          return;
        }
        await handle(req, res, count);
      } catch (err) {
        if (res.headersSent) {
          res.destroy();
          return;
        }
        if (err instanceof MlflowError) sendError(res, err.status, err.errorCode, err.message);
        else sendError(res, 500, 'INTERNAL_ERROR', `fake MLflow failed: ${(err as Error).message}`);
        // A body the handler did not read (error before streaming) must not stall the socket.
        req.resume();
      }
    })();
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const url = `http://127.0.0.1:${port}${basePath}`;
  artifacts.serverUrl = url;

  return {
    url,
    port,
    store,
    requests,
    replyFaults,
    artifactRoot,
    async reset() {
      store.reset();
      requests.length = 0;
      replyFaults.length = 0;
      await artifacts.reset();
    },
    async close() {
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
      await rm(artifactRoot, { recursive: true, force: true });
    },
  };
}
