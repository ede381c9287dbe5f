/**
 * `--serve-artifacts`: the mlflow-artifacts API (PUT/GET/DELETE of files, directory listings, multipart uploads)
 * with bodies streamed to and from files under a temporary directory, never buffered. Multipart part URLs point at
 * a stand-in for cloud storage on the same server (`/_fake-storage/`), which the tracking server's auth layer does
 * not guard.
 */
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import type { Stats } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, unlink } from 'node:fs/promises';
import type http from 'node:http';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { MlflowError, countBody, invalid, list, missing, noEndpoint, notFound, omitEmpty, readJson, sendJson } from './protocol.js';
import type { ByteCount } from './protocol.js';

/** Path prefix (below the base path) of the fake cloud storage that multipart part URLs point at. */
export const STORAGE_PREFIX = '/_fake-storage/';

const STORAGE_PART = /^\/_fake-storage\/mpu\/([^/]+)\/(\d+)$/;

const MIME_TYPES: Record<string, string> = {
  '.txt': 'text/plain',
  '.log': 'text/plain',
  '.json': 'application/json',
  '.yaml': 'text/yaml',
  '.yml': 'text/yaml',
  '.html': 'text/html',
  '.csv': 'text/csv',
  '.png': 'image/png',
};

const mimeType = (p: string): string => MIME_TYPES[path.extname(p).toLowerCase()] ?? 'application/octet-stream';

const badPath = (): MlflowError => invalid('Invalid path');

/** An artifact path as sent (percent-encoded segments), refused when it could leave the artifact root. */
function artifactPath(raw: string): string {
  let decoded: string;
  try {
    decoded = raw.split('/').map(decodeURIComponent).join('/');
  } catch {
    throw badPath();
  }
  const parts = decoded.split('/');
  if (decoded.startsWith('/') || decoded.includes('\\') || decoded.includes('\0') || parts.includes('..') || parts.includes('.')) throw badPath();
  return parts.filter((p) => p !== '').join('/');
}

const exists = (file: string): Promise<Stats | undefined> => stat(file).catch(() => undefined);

type MultipartAction = 'create' | 'complete' | 'abort';

interface Upload {
  /** The artifact path the upload completes into. */
  path: string;
  /** Where its parts are stored. */
  dir: string;
}

export class FakeArtifacts {
  private readonly uploads = new Map<string, Upload>();
  /** The server's URL (with base path), known once it listens; part URLs are built from it. */
  serverUrl = '';

  constructor(readonly root: string) {}

  async reset(): Promise<void> {
    this.uploads.clear();
    await rm(this.filesDir, { recursive: true, force: true });
    await rm(this.uploadsDir, { recursive: true, force: true });
  }

  /** A PUT of one multipart part to the fake storage; false when `p` is not such a request. */
  async storagePut(req: http.IncomingMessage, res: http.ServerResponse, p: string, count: ByteCount): Promise<boolean> {
    const part = STORAGE_PART.exec(p);
    if (part === null || req.method !== 'PUT') return false;
    const upload = this.uploads.get(part[1]!);
    if (upload === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('NoSuchUpload');
      return true;
    }
    countBody(req, count);
    await pipeline(req, createWriteStream(path.join(upload.dir, part[2]!)));
    res.writeHead(200, { etag: `"${createHash('md5').update(part[2]!).digest('hex')}"` }).end();
    return true;
  }

  /** A call to /api/2.0/mlflow-artifacts/<endpoint>; `what` names it in errors. */
  async handle(req: http.IncomingMessage, res: http.ServerResponse, endpoint: string, query: URLSearchParams, count: ByteCount, what: string): Promise<void> {
    const method = req.method ?? 'GET';
    if (endpoint === 'artifacts' && method === 'GET') {
      sendJson(res, 200, await this.list(artifactPath(query.get('path') ?? '')));
      return;
    }
    if (endpoint.startsWith('artifacts/')) {
      const rel = artifactPath(endpoint.slice('artifacts/'.length));
      if (method === 'PUT') return this.put(req, res, rel, count);
      if (method === 'GET') return this.get(res, rel);
      if (method === 'DELETE') {
        await this.delete(rel);
        sendJson(res, 200, {});
        return;
      }
      throw new MlflowError('ENDPOINT_NOT_FOUND', `The method ${method} is not allowed for artifacts`, 405);
    }
    const mpu = /^mpu\/(create|complete|abort)\/(.+)$/.exec(endpoint);
    if (mpu !== null && method === 'POST') {
      const body = await readJson(req, count, method);
      sendJson(res, 200, await this.multipart(mpu[1] as MultipartAction, artifactPath(mpu[2]!), body));
      return;
    }
    throw noEndpoint(what);
  }

  private get filesDir(): string {
    return path.join(this.root, 'files');
  }

  private get uploadsDir(): string {
    return path.join(this.root, 'mpu');
  }

  private onDisk(rel: string): string {
    return path.join(this.filesDir, ...rel.split('/'));
  }

  private async put(req: http.IncomingMessage, res: http.ServerResponse, rel: string, count: ByteCount): Promise<void> {
    if (rel === '') throw badPath();
    const target = this.onDisk(rel);
    try {
      await mkdir(path.dirname(target), { recursive: true });
    } catch {
      throw invalid(`Cannot write artifact '${rel}': a parent path is a file`);
    }
    // Written beside the target and renamed, so a reader never sees half a file; listings skip these.
    const temp = `${target}.upload-${randomUUID()}`;
    countBody(req, count);
    await pipeline(req, createWriteStream(temp));
    await rename(temp, target);
    sendJson(res, 200, {});
  }

  private async get(res: http.ServerResponse, rel: string): Promise<void> {
    const file = this.onDisk(rel);
    const info = await exists(file);
    if (info === undefined || !info.isFile()) throw notFound(`File not found: ${rel}`);
    res.writeHead(200, {
      'content-type': mimeType(rel),
      'content-length': String(info.size),
      'content-disposition': `attachment; filename=${path.basename(rel)}`,
      'x-content-type-options': 'nosniff',
    });
    await pipeline(createReadStream(file), res);
  }

  /** MLflow lists a directory's entries; a file or a missing path lists as `{}`. */
  private async list(rel: string): Promise<unknown> {
    const dir = this.onDisk(rel);
    const info = await exists(dir);
    if (info === undefined || !info.isDirectory()) return {};
    const entries = await readdir(dir, { withFileTypes: true });
    const files: Record<string, unknown>[] = [];
    for (const e of entries.sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.name.includes('.upload-')) continue;
      if (e.isDirectory()) files.push({ path: e.name, is_dir: true });
      else files.push({ path: e.name, is_dir: false, file_size: (await stat(path.join(dir, e.name))).size });
    }
    return omitEmpty({ files });
  }

  private async delete(rel: string): Promise<void> {
    const target = this.onDisk(rel);
    if ((await exists(target)) === undefined) throw notFound(`File not found: ${rel}`);
    await rm(target, { recursive: true, force: true });
  }

  private async multipart(action: MultipartAction, rel: string, body: Record<string, unknown>): Promise<unknown> {
    if (action === 'create') return this.createUpload(rel, body.num_parts);
    const uploadId = String(body.upload_id ?? '');
    const upload = this.uploads.get(uploadId);
    if (upload === undefined || upload.path !== rel) throw notFound(`Upload ${uploadId} not found for path ${rel}`);
    if (action === 'complete') await this.assemble(rel, uploadId, upload, body.parts);
    this.uploads.delete(uploadId);
    await rm(upload.dir, { recursive: true, force: true });
    return {};
  }

  private async createUpload(rel: string, numParts: unknown): Promise<unknown> {
    const parts = Number(numParts ?? 1);
    if (!Number.isInteger(parts) || parts < 1 || parts > 10000) throw invalid(`Invalid value for 'num_parts': ${String(numParts)}`);
    const uploadId = randomUUID();
    const dir = path.join(this.uploadsDir, uploadId);
    await mkdir(dir, { recursive: true });
    this.uploads.set(uploadId, { path: rel, dir });
    const credentials = Array.from({ length: parts }, (_, i) => ({
      part_number: i + 1,
      url: `${this.serverUrl}${STORAGE_PREFIX}mpu/${uploadId}/${i + 1}`,
      headers: {},
    }));
    return { upload_id: uploadId, credentials };
  }

  /** Concatenates the parts, in part-number order, into the artifact. */
  private async assemble(rel: string, uploadId: string, upload: Upload, rawParts: unknown): Promise<void> {
    const parts = list(rawParts, 'parts').map((p) => Number(p.part_number)).sort((a, b) => a - b);
    if (parts.length === 0) throw missing('parts');
    const target = this.onDisk(rel);
    await mkdir(path.dirname(target), { recursive: true });
    const out = createWriteStream(target);
    for (const n of parts) {
      const partFile = path.join(upload.dir, String(n));
      if ((await exists(partFile)) === undefined) {
        out.destroy();
        await unlink(target).catch(() => undefined);
        throw invalid(`Part ${n} of upload ${uploadId} was never uploaded`);
      }
      await pipeline(createReadStream(partFile), out, { end: false });
    }
    await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())));
  }
}
