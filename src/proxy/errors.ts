import type { ServerResponse } from 'node:http';

/**
 * Errors the proxy itself answers, in MLflow's error shape so the MLflow client prints the message.
 * `kind` goes to the X-Kvx-Error header and metrics, so tooling can tell proxy errors from MLflow's.
 */
export type ProxyErrorKind =
  | 'bad_request'
  | 'forbidden_target'
  | 'method_not_allowed'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'upstream_tls'
  | 'upstream_bad_response'
  | 'credentials_unavailable'
  | 'shutting_down';

const STATUS: Record<ProxyErrorKind, { status: number; errorCode: string }> = {
  bad_request: { status: 400, errorCode: 'BAD_REQUEST' },
  forbidden_target: { status: 400, errorCode: 'BAD_REQUEST' },
  method_not_allowed: { status: 405, errorCode: 'BAD_REQUEST' },
  upstream_unreachable: { status: 502, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  upstream_tls: { status: 502, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  upstream_bad_response: { status: 502, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  upstream_timeout: { status: 504, errorCode: 'DEADLINE_EXCEEDED' },
  credentials_unavailable: { status: 503, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  shutting_down: { status: 503, errorCode: 'TEMPORARILY_UNAVAILABLE' },
};

export function statusFor(kind: ProxyErrorKind): number {
  return STATUS[kind].status;
}

export function errorBody(kind: ProxyErrorKind, message: string): string {
  return JSON.stringify({ error_code: STATUS[kind].errorCode, message: `kvx-proxy: ${message}` });
}

export function sendProxyError(
  res: ServerResponse,
  kind: ProxyErrorKind,
  message: string,
  extraHeaders: Record<string, string | number> = {},
): number {
  const status = STATUS[kind].status;
  if (res.headersSent) {
    // The client already has a status line; the only honest signal left is a broken connection.
    res.destroy();
    return status;
  }
  const body = errorBody(kind, message);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
    'x-kvx-error': kind,
    ...extraHeaders,
  });
  res.end(body);
  return status;
}
