import type { ProxyRequest } from './engine.js';

/**
 * Errors the proxy itself answers, in MLflow's error shape so the MLflow client prints the message.
 * `kind` goes to the X-Kvx-Error header and metrics, so tooling can tell proxy errors from MLflow's.
 */
export type ProxyErrorKind =
  | 'bad_request'
  | 'forbidden_target'
  | 'method_not_allowed'
  | 'not_implemented'
  | 'upstream_unreachable'
  | 'upstream_timeout'
  | 'upstream_tls'
  | 'upstream_bad_response'
  /** The egress proxy (egress.proxy, HTTPS_PROXY) refused, failed or wanted credentials. */
  | 'egress_proxy'
  | 'credentials_unavailable'
  | 'host_not_allowed'
  | 'origin_not_allowed'
  | 'cross_site_request';

const STATUS: Record<ProxyErrorKind, { status: number; errorCode: string }> = {
  bad_request: { status: 400, errorCode: 'BAD_REQUEST' },
  forbidden_target: { status: 400, errorCode: 'BAD_REQUEST' },
  method_not_allowed: { status: 405, errorCode: 'BAD_REQUEST' },
  not_implemented: { status: 501, errorCode: 'BAD_REQUEST' },
  upstream_unreachable: { status: 502, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  upstream_tls: { status: 502, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  upstream_bad_response: { status: 502, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  egress_proxy: { status: 502, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  upstream_timeout: { status: 504, errorCode: 'DEADLINE_EXCEEDED' },
  credentials_unavailable: { status: 503, errorCode: 'TEMPORARILY_UNAVAILABLE' },
  // 421: the request was sent to a server that does not answer for the host it names (RFC 9110 §15.5.20).
  host_not_allowed: { status: 421, errorCode: 'BAD_REQUEST' },
  origin_not_allowed: { status: 403, errorCode: 'PERMISSION_DENIED' },
  cross_site_request: { status: 403, errorCode: 'PERMISSION_DENIED' },
};

/** The JSON body of every answer the proxy makes itself, in MLflow's error shape. */
export function errorBody(kind: ProxyErrorKind, message: string): string {
  return JSON.stringify({ error_code: STATUS[kind].errorCode, message: `kvx-proxy: ${message}` });
}

const REASONS: Record<number, string> = {
  400: 'Bad Request',
  403: 'Forbidden',
  405: 'Method Not Allowed',
  421: 'Misdirected Request',
  501: 'Not Implemented',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
};

/** Answers with the error, or breaks the connection when an answer is already under way. Returns the status. */
export function sendProxyError(
  response: ProxyRequest,
  kind: ProxyErrorKind,
  message: string,
  extraHeaders: Record<string, string | number> = {},
): number {
  const status = STATUS[kind].status;
  if (response.headersSent) {
    // The client already has a status line; the only honest signal left is a broken connection.
    response.destroy();
    return status;
  }
  const headers = ['content-type', 'application/json', 'x-kvx-error', kind];
  for (const name in extraHeaders) headers.push(name, String(extraHeaders[name]));
  response.reply(status, REASONS[status] ?? 'Error', headers, Buffer.from(errorBody(kind, message)));
  return status;
}
