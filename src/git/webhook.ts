// The loopback webhook: for a forge that cannot reach a unix socket (a Gitea or GitLab on this machine, a
// reverse proxy or tunnel on it). Off unless the daemon is started with a port and a secret file. It binds
// 127.0.0.1 only. `POST /hooks/gitsource/NAME` with a GitHub-style `X-Hub-Signature-256: sha256=<hex>`
// (HMAC-SHA256 of the body under the shared secret) asks for a pass of that source; a missing or bad
// signature is 401 and asks for nothing. The payload is never read beyond its HMAC: the pass fetches and
// verifies the repository itself, so a replayed valid request costs one pass and changes nothing.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { open } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { UserError, printable } from '../errors.ts';

/** Largest body read; a forge's push payload is a few KB to a few hundred KB. */
export const MAX_WEBHOOK_BODY = 1024 * 1024;
/** A request (headers and body) must arrive within this. */
const REQUEST_TIMEOUT_MS = 10_000;
const MAX_SECRET_BYTES = 4096;

export interface WebhookOptions {
  /** TCP port on 127.0.0.1 (0: any free port, for tests). */
  port: number;
  secret: Buffer;
  /** Asks for a pass of git source NAME; false when there is no such source. */
  onNotify: (name: string) => boolean;
  log: (line: string) => void;
  maxBodyBytes?: number;
}

export interface WebhookServer {
  port: number;
  close(): Promise<void>;
}

/**
 * Reads the shared secret: a file only its owner can read or write (0600 or 0400), not empty, at most
 * 4 KB; one trailing newline is not part of the secret.
 */
export async function readWebhookSecret(file: string): Promise<Buffer> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch (err) {
    throw new UserError(`webhook secret ${printable(file)}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : (err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  try {
    const info = await handle.stat();
    if (!info.isFile()) throw new UserError(`webhook secret ${printable(file)}: not a regular file`);
    if ((info.mode & 0o077) !== 0) {
      throw new UserError(`webhook secret ${printable(file)}: mode ${(info.mode & 0o777).toString(8).padStart(4, '0')} lets others read or write it (chmod 600)`);
    }
    if (info.size > MAX_SECRET_BYTES) throw new UserError(`webhook secret ${printable(file)}: larger than ${MAX_SECRET_BYTES} bytes`);
    let secret = await handle.readFile();
    if (secret.at(-1) === 0x0a) secret = secret.subarray(0, secret.at(-2) === 0x0d ? -2 : -1);
    if (secret.length < 16) throw new UserError(`webhook secret ${printable(file)}: shorter than 16 bytes`);
    return secret;
  } finally {
    await handle.close();
  }
}

/** Whether `header` is `sha256=<hex>` of the HMAC-SHA256 of body under secret (compared in constant time). */
export function validSignature(secret: Buffer, body: Buffer, header: string | undefined): boolean {
  const m = /^sha256=([0-9a-f]{64})$/i.exec(header?.trim() ?? '');
  if (!m) return false;
  const expected = createHmac('sha256', secret).update(body).digest();
  return timingSafeEqual(expected, Buffer.from(m[1]!, 'hex'));
}

const HOOK_PATH = /^\/hooks\/gitsource\/([a-z0-9]([-a-z0-9]*[a-z0-9])?)$/;

export async function startWebhookServer(opts: WebhookOptions): Promise<WebhookServer> {
  const max = opts.maxBodyBytes ?? MAX_WEBHOOK_BODY;
  const server = http.createServer((req, res) => {
    const reply = (status: number, text: string, headers: Record<string, string> = {}) => {
      if (res.headersSent) return;
      res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8', connection: 'close', ...headers });
      res.end(`${text}\n`);
    };
    const name = HOOK_PATH.exec(req.url ?? '')?.[1];
    if (!name) return void (reply(404, 'not found'), req.resume());
    if (req.method !== 'POST') return void (reply(405, 'method not allowed', { allow: 'POST' }), req.resume());
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > max) return void (reply(413, `body larger than ${max} bytes`), req.destroy());
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > max) {
        reply(413, `body larger than ${max} bytes`);
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => {
      if (size > max) return;
      const header = req.headers['x-hub-signature-256'];
      if (!validSignature(opts.secret, Buffer.concat(chunks), Array.isArray(header) ? header[0] : header)) {
        opts.log(`webhook: ${req.method} ${req.url}: refused (missing or bad X-Hub-Signature-256)`);
        return reply(401, 'bad or missing X-Hub-Signature-256');
      }
      if (!opts.onNotify(name)) return reply(404, `no gitsource/${name}`);
      reply(202, `ok gitsource/${name}`);
    });
    req.on('error', () => undefined);
  });
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.headersTimeout = REQUEST_TIMEOUT_MS;
  server.maxHeadersCount = 64;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    // Loopback only: a forge elsewhere reaches it through whatever the operator puts in front.
    server.listen({ host: '127.0.0.1', port: opts.port }, () => resolve());
  }).catch((err: NodeJS.ErrnoException) => {
    throw new UserError(`webhook: cannot listen on 127.0.0.1:${opts.port}: ${err.code ?? err.message}`);
  });
  server.on('error', (err) => opts.log(`webhook: ${err.message}`));
  return {
    port: (server.address() as AddressInfo).port,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
