// A git smart-HTTP server for tests: node:http in front of `git http-backend` (CGI), on 127.0.0.1 only.
// It counts the bytes it sends (to measure incremental fetches), can demand a token, and can hang.
import { spawn } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface GitServerOptions {
  /** Directory whose repositories are served: http://127.0.0.1:PORT/<repo>. */
  root: string;
  /** Demand `Authorization: Bearer <token>` or `Basic base64(<token>)` (user:password). */
  token?: string;
}

export interface GitServer {
  url: string;
  /** Response body bytes sent so far. */
  bytesSent: number;
  /** Requests seen so far (by path and query). */
  requests: string[];
  /** Accept requests and never answer them (until closed). */
  hang: boolean;
  close(): Promise<void>;
}

export async function startGitServer(opts: GitServerOptions): Promise<GitServer> {
  const state = { bytesSent: 0, requests: [] as string[], hang: false };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    state.requests.push(`${req.method} ${url.pathname}${url.search}`);
    if (state.hang) return; // the socket stays open and silent
    const auth = req.headers.authorization ?? '';
    const accepted = [`Bearer ${opts.token}`, `Basic ${Buffer.from(opts.token ?? '').toString('base64')}`];
    if (opts.token !== undefined && !accepted.includes(auth)) {
      res.writeHead(401, { 'WWW-Authenticate': 'Basic realm="git"' }).end('unauthorized\n');
      return;
    }
    const cgi = spawn('git', ['http-backend'], {
      env: {
        PATH: process.env.PATH ?? '/usr/bin:/bin',
        GIT_PROJECT_ROOT: opts.root,
        GIT_HTTP_EXPORT_ALL: '1',
        PATH_INFO: decodeURIComponent(url.pathname),
        QUERY_STRING: url.search.slice(1),
        REQUEST_METHOD: req.method ?? 'GET',
        CONTENT_TYPE: req.headers['content-type'] ?? '',
        ...(req.headers['content-encoding'] ? { HTTP_CONTENT_ENCODING: req.headers['content-encoding'] } : {}),
      },
      stdio: ['pipe', 'pipe', 'ignore'],
    });
    req.pipe(cgi.stdin);
    let head = Buffer.alloc(0);
    let headerDone = false;
    cgi.stdout.on('data', (chunk: Buffer) => {
      if (headerDone) {
        state.bytesSent += chunk.length;
        res.write(chunk);
        return;
      }
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      headerDone = true;
      let status = 200;
      for (const line of head.subarray(0, end).toString('latin1').split('\r\n')) {
        const colon = line.indexOf(':');
        const name = line.slice(0, colon).trim();
        const value = line.slice(colon + 1).trim();
        if (name.toLowerCase() === 'status') status = Number.parseInt(value, 10);
        else res.setHeader(name, value);
      }
      res.statusCode = status;
      const body = head.subarray(end + 4);
      state.bytesSent += body.length;
      res.write(body);
    });
    cgi.on('close', () => res.end());
    cgi.on('error', () => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return Object.assign(state, {
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  });
}
