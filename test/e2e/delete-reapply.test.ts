// Delete, then apply the same resources again before the deletion finished: nothing may be lost (the
// hostile-test repros of issue #12 points 1, 2 and 6), with the daemon running and without it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { listAllNetns } from '../helpers/hostns.ts';
import { Store } from '../../src/store/store.ts';
import { createSandbox, until, type Sandbox } from './harness.ts';

const N = 20;
/** N direct Routes r<i> for VMs v<i>, as the repro writes them, in one file. */
function routes(): string {
  return Array.from({ length: N }, (_, i) => {
    const third = 100 + Math.floor(i / 250);
    const fourth = i % 250;
    return `apiVersion: qwamos.io/v1alpha1\nkind: Route\nmetadata:\n  name: r${i}\nspec:\n  vm: v${i}\n  mode: direct\n  address: 10.${third}.${fourth}.2/24\n  gateway: 10.${third}.${fourth}.1\n`;
  }).join('---\n');
}

const routeNetns = async (sb: Sandbox) => (await listAllNetns()).filter((n) => n.startsWith(`${sb.host.prefix}-v`)).length;

async function expectAllKept(sb: Sandbox): Promise<void> {
  const store = await Store.open(sb.stateDir);
  const records = await store.listResources('Route');
  assert.equal(records.length, N, 'every record is still stored');
  assert.equal(records.filter((r) => r.deletionRequestedAt).length, 0, 'no record carries a tombstone');
  await until('every Route Ready again with its netns', async () => {
    const statuses = await store.listStatuses('Route');
    return statuses.filter((s) => s.phase === 'Ready').length === N && (await routeNetns(sb)) === N;
  }, 60_000);
}

describe('delete, then apply again at once, with the daemon running', () => {
  let sb: Sandbox;
  let file: string;
  before(async () => {
    sb = await createSandbox();
    file = await sb.manifest('routes.yaml', routes());
    await sb.startDaemon();
  });
  after(async () => sb?.cleanup());

  test('apply --wait after delete -f keeps every record and netns (no late removal)', async () => {
    const first = await sb.qwamos(['apply', '-f', file, '--wait', '--timeout', '90s']);
    assert.equal(first.exitCode, 0, first.stderr);
    assert.equal(await routeNetns(sb), N);

    const del = await sb.qwamos(['delete', '-f', file]);
    assert.equal(del.exitCode, 0, del.stderr);
    const again = await sb.qwamos(['apply', '-f', file, '--wait', '--timeout', '90s']);
    assert.equal(again.exitCode, 0, again.stderr);
    // The deletion passes in flight end now: they must leave the re-applied records alone.
    await new Promise((r) => setTimeout(r, 3000));
    await expectAllKept(sb);
  });

  test('without --wait, a re-applied resource is not stuck deleting', async () => {
    const del = await sb.qwamos(['delete', '-f', file]);
    assert.equal(del.exitCode, 0, del.stderr);
    const again = await sb.qwamos(['apply', '-f', file]);
    assert.equal(again.exitCode, 0, again.stderr);
    await expectAllKept(sb);
    // Still so after more passes: no deletion pass runs on them any more.
    await sb.qwamos(['reconcile']);
    await new Promise((r) => setTimeout(r, 2000));
    await expectAllKept(sb);
  });
});

describe('delete, then apply again, without a daemon', () => {
  let sb: Sandbox;
  let file: string;
  before(async () => {
    sb = await createSandbox();
    file = await sb.manifest('routes.yaml', routes());
  });
  after(async () => sb?.cleanup());

  test('a delete in the background and an apply soon after leave everything in place', async () => {
    const first = await sb.qwamos(['apply', '-f', file, '--wait', '--timeout', '90s']);
    assert.equal(first.exitCode, 0, first.stderr);
    const deleting = sb.qwamos(['delete', '-f', file]);
    await new Promise((r) => setTimeout(r, 300));
    const again = await sb.qwamos(['apply', '-f', file, '--wait', '--timeout', '120s']);
    await deleting;
    assert.equal(again.exitCode, 0, again.stderr);
    // Whatever the order the two ran in, the last word was the apply: reconcile and check.
    const rec = await sb.qwamos(['reconcile', '--wait', '--timeout', '90s']);
    assert.equal(rec.exitCode, 0, rec.stdout + rec.stderr);
    await expectAllKept(sb);
  });

  test('a record lost by hand leaves no host objects behind (garbage collected)', async () => {
    const store = await Store.open(sb.stateDir);
    // Remove one record behind qwamos' back, as corruption or a hand edit would.
    await store.deleteResource('Route', 'r3');
    const rec = await sb.qwamos(['reconcile', '--wait', '--timeout', '90s']);
    assert.equal(rec.exitCode, 0, rec.stdout + rec.stderr);
    await until('the lost Route\'s netns collected', async () => !(await listAllNetns()).includes(`${sb.host.prefix}-v3`), 20_000);
    assert.equal(await routeNetns(sb), N - 1, 'only the lost Route\'s netns went');
  });
});
