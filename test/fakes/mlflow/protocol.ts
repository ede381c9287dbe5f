/**
 * MLflow's REST conventions that every part of the fake shares: errors as `{"error_code","message"}` with MLflow's
 * status mapping, JSON replies, JSON request bodies behind a Content-Type check, and the count of body bytes each
 * request is recorded with.
 */
import type http from 'node:http';

/** MLflow's mapping of error codes to HTTP statuses (mlflow/protos/databricks.proto users). */
const ERROR_STATUS: Record<string, number> = {
  INVALID_PARAMETER_VALUE: 400,
  BAD_REQUEST: 400,
  MALFORMED_REQUEST: 400,
  INVALID_STATE: 400,
  RESOURCE_ALREADY_EXISTS: 400,
  RESOURCE_DOES_NOT_EXIST: 404,
  ENDPOINT_NOT_FOUND: 404,
  PERMISSION_DENIED: 403,
  UNAUTHENTICATED: 401,
  INTERNAL_ERROR: 500,
  TEMPORARILY_UNAVAILABLE: 503,
};

export class MlflowError extends Error {
  constructor(
    readonly errorCode: string,
    message: string,
    readonly status = ERROR_STATUS[errorCode] ?? 500,
  ) {
    super(message);
  }
}

export const invalid = (message: string): MlflowError => new MlflowError('INVALID_PARAMETER_VALUE', message);

export const notFound = (message: string): MlflowError => new MlflowError('RESOURCE_DOES_NOT_EXIST', message);

export const noEndpoint = (what: string): MlflowError => new MlflowError('ENDPOINT_NOT_FOUND', `No API endpoint found for ${what}`);

export const missing = (name: string): MlflowError =>
  invalid(`Missing value for required parameter '${name}'. See the API docs for more information about request parameters.`);

/** Body bytes received for one request, whoever reads the body. */
export interface ByteCount {
  bytes: number;
}

/** Counts a body that is piped or drained rather than read through {@link readJson}. */
export function countBody(req: http.IncomingMessage, count: ByteCount): void {
  req.on('data', (chunk: Buffer) => (count.bytes += chunk.length));
}

export function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
  res.end(text);
}

export function sendError(res: http.ServerResponse, status: number, errorCode: string, message: string): void {
  sendJson(res, status, { error_code: errorCode, message });
}

/** Reads the whole body; GET and DELETE bodies are read and ignored, as MLflow's Flask handlers do. */
export async function readJson(req: http.IncomingMessage, count: ByteCount, method: string): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) {
    count.bytes += chunk.length;
    chunks.push(chunk);
  }
  if (method === 'GET' || method === 'DELETE') return {};
  const text = Buffer.concat(chunks).toString('utf8');
  const ctype = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  if (ctype !== 'application/json') throw invalid("Bad Request. Content-Type must be 'application/json'.");
  if (text.trim() === '') return {};
  try {
    const parsed: unknown = JSON.parse(text);
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not an object');
    return parsed as Record<string, unknown>;
  } catch {
    throw new MlflowError('MALFORMED_REQUEST', `Malformed request: could not parse JSON body`);
  }
}

/** MLflow's protobuf JSON leaves out repeated fields that are empty. */
export function omitEmpty<T extends Record<string, unknown>>(obj: T): T {
  for (const [k, v] of Object.entries(obj)) if (Array.isArray(v) && v.length === 0) delete obj[k];
  return obj;
}

/** A repeated field of a request body: absent is empty, anything but a list is refused. */
export function list(v: unknown, name: string): Record<string, unknown>[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw invalid(`Invalid value for parameter '${name}': expected a list`);
  return v as Record<string, unknown>[];
}
