// The loopback webhook: a real HTTP server on 127.0.0.1 and real requests. Only a request whose
// X-Hub-Signature-256 is the HMAC-SHA256 of its body under the secret asks for a pass; everything else
// is refused and asks for nothing.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { readWebhookSecret, startWebhookServer, validSignature, type WebhookServer } from '../../src/git/webhook.ts';

const secret = Buffer.from('a shared secret of some length');
const sign = (body: string | Buffer, key = secret) => `sha256=${createHmac('sha256', key).update(body).digest('hex')}`;

let server: WebhookServer;
const asked: string[] = [];
const logged: string[] = [];

before(async () => {
  server = await startWebhookServer({
    port: 0, secret, maxBodyBytes: 64 * 1024, log: (l) => logged.push(l),
    onNotify: (name) => {
      if (name !== 'fleet' && name !== 'other') return false;
      asked.push(name);
      return true;
    },
  });
});
after(() => server.close());

function post(urlPath: string, body: string | Buffer, headers: Record<string, string> = {}, method = 'POST'): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: server.port, path: urlPath, method, headers: { 'content-type': 'application/json', ...headers } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: text.trim() }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('the loopback webhook', () => {
  test('a valid GitHub-style signature asks for a pass of the named source, and nothing else', async () => {
    asked.length = 0;
    const body = JSON.stringify({ ref: 'refs/heads/main', after: '0'.repeat(40), repository: { clone_url: 'https://evil.example/x.git' } });
    const r = await post('/hooks/gitsource/fleet', body, { 'x-hub-signature-256': sign(body) });
    assert.deepEqual(r, { status: 202, text: 'ok gitsource/fleet' });
    assert.deepEqual(asked, ['fleet'], 'the payload names another repository: it is not read');
  });

  test('a missing, malformed or wrong signature is 401 and asks for nothing', async () => {
    asked.length = 0;
    const body = '{"ref":"refs/heads/main"}';
    const cases: Record<string, string>[] = [{}, { 'x-hub-signature-256': 'sha256=xyz' }, { 'x-hub-signature-256': sign(body, Buffer.from('another secret entirely')) }, { 'x-hub-signature-256': sign(`${body} `) }, { 'x-hub-signature': `sha1=${createHmac('sha1', secret).update(body).digest('hex')}` }];
    for (const headers of cases) {
      const r = await post('/hooks/gitsource/fleet', body, headers);
      assert.equal(r.status, 401, JSON.stringify(headers));
    }
    assert.deepEqual(asked, []);
    assert.ok(logged.some((l) => /refused \(missing or bad X-Hub-Signature-256\)/.test(l)));
  });

  test('a body over the limit is 413 and asks for nothing (declared, or streamed without a length)', async () => {
    asked.length = 0;
    const big = Buffer.alloc(64 * 1024 + 1, 0x20);
    assert.equal((await post('/hooks/gitsource/fleet', big, { 'x-hub-signature-256': sign(big) })).status, 413);
    const streamed = await new Promise<number>((resolve) => {
      const req = http.request({ host: '127.0.0.1', port: server.port, path: '/hooks/gitsource/fleet', method: 'POST', headers: { 'transfer-encoding': 'chunked', 'x-hub-signature-256': sign(big) } }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => resolve(-1)); // the server may cut the connection before we finish writing
      for (let i = 0; i < 4; i++) req.write(big.subarray(0, 32 * 1024));
      req.end();
    });
    assert.ok(streamed === 413 || streamed === -1, `status ${streamed}`);
    assert.deepEqual(asked, []);
  });

  test('other paths are 404, other methods 405, an unknown source 404 (after the signature is checked)', async () => {
    asked.length = 0;
    assert.equal((await post('/hooks/gitsource/Fleet', '{}', { 'x-hub-signature-256': sign('{}') })).status, 404);
    assert.equal((await post('/hooks/gitsource/fleet/x', '{}', { 'x-hub-signature-256': sign('{}') })).status, 404);
    assert.equal((await post('/', '{}')).status, 404);
    assert.equal((await post('/hooks/gitsource/fleet', '', {}, 'GET')).status, 405);
    assert.equal((await post('/hooks/gitsource/nosuch', '{}')).status, 401);
    assert.deepEqual(await post('/hooks/gitsource/nosuch', '{}', { 'x-hub-signature-256': sign('{}') }), { status: 404, text: 'no gitsource/nosuch' });
    assert.deepEqual(asked, []);
  });

  test('it listens on 127.0.0.1 only', async () => {
    const s = await startWebhookServer({ port: 0, secret, onNotify: () => true, log: () => undefined });
    try {
      const ok = await new Promise<boolean>((resolve) => {
        const c = net.connect({ host: '127.0.0.1', port: s.port }, () => (c.destroy(), resolve(true)));
        c.on('error', () => resolve(false));
      });
      assert.ok(ok);
      // Not on the IPv6 loopback (or any other address) either.
      const v6 = await new Promise<boolean>((resolve) => {
        const c = net.connect({ host: '::1', port: s.port }, () => (c.destroy(), resolve(true)));
        c.on('error', () => resolve(false));
      });
      assert.equal(v6, false);
    } finally {
      await s.close();
    }
  });

  test('validSignature compares the HMAC of the exact bytes', () => {
    const body = Buffer.from('x');
    assert.ok(validSignature(secret, body, sign(body)));
    assert.ok(validSignature(secret, body, sign(body).toUpperCase().replace('SHA256=', 'sha256=')));
    assert.ok(!validSignature(secret, Buffer.from('y'), sign(body)));
    assert.ok(!validSignature(secret, body, undefined));
  });
});

describe('the webhook secret file', () => {
  test('must be owner-only, not empty or short; one trailing newline is dropped', async () => {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-webhook-'));
    try {
      const file = path.join(dir, 'secret');
      await fs.writeFile(file, 'a shared secret of some length\n', { mode: 0o600 });
      assert.deepEqual(await readWebhookSecret(file), secret);
      await fs.chmod(file, 0o644);
      await assert.rejects(readWebhookSecret(file), /mode 0644 lets others read or write it \(chmod 600\)/);
      await fs.writeFile(path.join(dir, 'short'), 'short\n', { mode: 0o600 });
      await assert.rejects(readWebhookSecret(path.join(dir, 'short')), /shorter than 16 bytes/);
      await assert.rejects(readWebhookSecret(path.join(dir, 'none')), /no such file/);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  });
});
