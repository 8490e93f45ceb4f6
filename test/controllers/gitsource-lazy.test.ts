// The GitSource controller loaded on first observe: the same answers as the controller itself, and a
// watch asked for before it was loaded starts once it is (and not after it was closed).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { LazyGitSourceController } from '../../src/controllers/gitsource-lazy.ts';
import { makeWorld } from '../../src/engine/contract.ts';
import { Store } from '../../src/store/store.ts';

const tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'qwamos-gitlazy-'));
after(() => fs.rm(tmp, { recursive: true, force: true }));

test('plan before observe is refused; after observe it answers; the watch follows the load', async () => {
  const store = await Store.open(path.join(tmp, 'state'));
  const lazy = new LazyGitSourceController({ stateDir: store.dir, trustDir: path.join(tmp, 'trust'), imageRoot: tmp, prefix: 'qt', store });
  const world = makeWorld([]);
  const source = { apiVersion: 'qwamos.io/v1alpha1', kind: 'GitSource', metadata: { name: 'src', generation: 1, createdAt: '', updatedAt: '' }, spec: { url: 'file:///nowhere', ref: 'main' }, source: { path: '/m', digest: 'd' } } as never;
  assert.throws(() => lazy.plan(source, undefined), /before any GitSource was observed/);
  const closedEarly = lazy.watch(() => {}, () => world);
  closedEarly.close();
  const watch = lazy.watch(() => {}, () => world);
  const actual = await lazy.observe([source]);
  assert.equal(actual.size, 1);
  const plan = lazy.plan(source, actual.get('GitSource/src' as never));
  assert.ok(Array.isArray(plan.actions));
  // The real watch runs now (its timer keeps the test alive until closed).
  watch.close();
});
