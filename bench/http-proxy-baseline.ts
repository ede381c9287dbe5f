/**
 * The forwarder most Node users would write: http-proxy 1.x with a keep-alive agent, adding the token in
 * the proxyReq hook. Started as its own process by bench/run.ts; prints {"port": N} once listening.
 */
import http from 'node:http';
import httpProxy from 'http-proxy';

const target = process.env['BENCH_UPSTREAM']!;
const authorization = `Bearer ${process.env['BENCH_TOKEN'] ?? ''}`;

const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
const proxy = httpProxy.createProxyServer({ target, agent, changeOrigin: true });
proxy.on('proxyReq', (proxyReq) => {
  proxyReq.setHeader('authorization', authorization);
});
proxy.on('error', (_err, _req, res) => {
  if ('writeHead' in res && !res.headersSent) {
    res.writeHead(502, { 'content-type': 'application/json' });
    res.end('{"error_code":"BAD_GATEWAY","message":"upstream failed"}');
  } else {
    res.destroy();
  }
});

const server = http.createServer({ keepAliveTimeout: 120_000, noDelay: true }, (req, res) => proxy.web(req, res));
server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  process.stdout.write(JSON.stringify({ port: typeof address === 'object' && address ? address.port : 0 }) + '\n');
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
