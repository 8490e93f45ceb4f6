// desiredForPass: the compiled firewall is reused across the plans and diffs of one observation (the
// engine hands each call a new World object over the same records), recomputed once a rule in it
// expires, and never shared between different records or name resolutions.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { World } from '../../src/engine/contract.ts';
import { makeWorld } from '../../src/engine/contract.ts';
import type { StoredResource } from '../../src/store/store.ts';
import { nftShape } from '../../src/controllers/firewall/backend.ts';
import { desiredFirewall, desiredForPass } from '../../src/controllers/firewall/desired.ts';
import type { NameResolution } from '../../src/firewall/compile.ts';

const meta = { source: { path: '/m', digest: 'd' }, generation: 1, appliedAt: '' };
const NOW = Date.parse('2026-11-30T12:00:00Z');
const EXPIRE = '2026-11-30T12:00:10Z';
const records: StoredResource[] = [
  { apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name: 'dev' }, spec: { vm: 'dev', mode: 'direct', address: '10.8.1.2/24', gateway: '10.8.1.1' }, ...meta } as StoredResource,
  { apiVersion: 'qwamos.io/v1alpha1', kind: 'FirewallPolicy', metadata: { name: 'dev' }, spec: { vms: ['dev'], rules: [{ action: 'accept', proto: 'tcp', dstPorts: '443', expire: EXPIRE }] }, ...meta } as StoredResource,
];
const opts = { prefix: 'qw', dnscryptAvailable: false };
const shape = nftShape('qw');
// The engine's world(): one indexed snapshot, a new object with a fresh `now` per call.
const snapshot = makeWorld(records, NOW);
const at = (now: number): World => ({ ...snapshot, now });

test('reused across World objects of the same records and names; equal to a fresh compile', () => {
  const resolved = new Map<string, NameResolution>();
  const a = desiredForPass(at(NOW), resolved, opts, shape);
  const b = desiredForPass(at(NOW + 5), resolved, opts, shape);
  assert.equal(b.compiled, a.compiled, 'the same compile');
  assert.equal(b.view, a.view, 'the same view');
  assert.deepEqual(a.compiled, desiredFirewall(at(NOW + 5), resolved, opts));
  // Another resolution (a new observation) or other options: computed again.
  assert.notEqual(desiredForPass(at(NOW), new Map(), opts, shape).compiled, a.compiled);
  assert.notEqual(desiredForPass(at(NOW), resolved, { ...opts, dnscryptAvailable: true }, shape).compiled, a.compiled);
});

test('a rule that expires makes the next call compile again (never a stale rule)', () => {
  const resolved = new Map<string, NameResolution>();
  const before = desiredForPass(at(NOW), resolved, opts, shape);
  assert.equal(before.compiled[0]!.outbound.rules.length, 1);
  const after = desiredForPass(at(Date.parse(EXPIRE)), resolved, opts, shape);
  assert.notEqual(after.compiled, before.compiled);
  assert.equal(after.compiled[0]!.outbound.rules.length, 0, 'the expired rule is gone');
});
