// The firewall at scale, inside a private test host: 100 direct VMs x 100 rules (10,000 rules), on each
// backend:
//  1. the controller's firewall sync from empty (FirewallService.sync: names resolved, the world compiled
//     whole, observe, plan, check, commit) vs one bare `nft -f` (iptables: `iptables-restore --noflush`
//     plus `ip6tables-restore --noflush`) of the same generated ruleset: the ratio;
//  2. a one-rule change: its time, and which chains the driver's plan rewrites (only that VM's);
//  3. observe: the backend's view, and the whole FirewallPolicy observe (view + names);
//  4. a one-rule change as a pass does it: observe, then sync (which reuses that observation);
//  5. nftables: where one sync from empty spends its time, step by step (the same driver calls).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { makeWorld, type World } from '../src/engine/contract.ts';
import { FirewallService } from '../src/controllers/firewall/service.ts';
import { desiredFirewall } from '../src/controllers/firewall/desired.ts';
import { buildNftTable, firewallTableName, renderFullReplace } from '../src/firewall/nft.ts';
import { buildIptTables, renderRestoreBlock } from '../src/firewall/iptables.ts';
import { applyNftScript, observeNftTable, planNftSync, renderPlan } from '../src/drivers/nftables.ts';
import { observeDockerUser, observeIpt, planIpt, removeIpt } from '../src/drivers/iptables.ts';
import { listFlows } from '../src/drivers/conntrack.ts';
import type { StoredResource } from '../src/store/store.ts';
import { createTestHost, type TestHost } from '../test/helpers/hostns.ts';
import { median, printTable, time, writeResult } from './lib.ts';

const VMS = Number(process.env.BENCH_FW_VMS ?? 100);
const RULES = Number(process.env.BENCH_FW_RULES ?? 100);
const RUNS = Number(process.env.BENCH_FW_RUNS ?? 5);

const meta = { source: { path: '/bench', digest: 'bench' }, generation: 1, appliedAt: '' };

function rulesFor(v: number, variant = 0): { action: 'accept' | 'drop'; dstHost: string; proto: 'tcp' | 'udp'; dstPorts: string }[] {
  return Array.from({ length: RULES }, (_, r) => ({
    action: r % 10 === 9 ? ('drop' as const) : ('accept' as const),
    dstHost: `198.51.${v % 256}.${r}/32`,
    proto: r % 2 ? ('udp' as const) : ('tcp' as const),
    dstPorts: r === 0 && variant ? `${1000 + variant}` : `${1000 + r}-${1100 + r}`,
  }));
}

function world(variant = 0): World {
  const resources: StoredResource[] = [];
  for (let v = 0; v < VMS; v++) {
    const name = `f${v}`;
    const net = `10.${40 + (v >> 8)}.${v & 255}`;
    resources.push({ apiVersion: 'qwamos.io/v1alpha1', kind: 'Route', metadata: { name }, spec: { vm: name, mode: 'direct', address: `${net}.2/24`, gateway: `${net}.1` }, ...meta } as StoredResource);
    // The one-rule change touches VM f0 only.
    resources.push({ apiVersion: 'qwamos.io/v1alpha1', kind: 'FirewallPolicy', metadata: { name }, spec: { vms: [name], defaultAction: 'drop', rules: rulesFor(v, v === 0 ? variant : 0) }, ...meta } as StoredResource);
  }
  return makeWorld(resources);
}

async function inHost(host: TestHost, argv: string[], input?: string): Promise<void> {
  await execa('ip', ['netns', 'exec', host.hostNs, ...argv], input === undefined ? {} : { input });
}

interface BackendResult {
  backend: string;
  rules: number;
  syncFromEmptyMs: number;
  bareMs: number;
  /** nftables: a bare `nft --check -f` of the same file (the controller checks before it commits). */
  bareCheckMs?: number;
  ratio: number;
  oneRuleChangeMs: number;
  oneRuleRewrites: string[];
  observeMs: number;
  policyObserveMs: number;
  /** Observe then sync of a one-rule change, as one engine pass runs them (the sync reuses the observation). */
  passOneRuleChangeMs: number;
  /** nftables: one sync from empty, step by step (median ms each). */
  profile?: Record<string, number>;
}

async function benchBackend(host: TestHost, dir: string, backend: 'nftables' | 'iptables'): Promise<BackendResult> {
  const prefix = host.prefix;
  const w0 = world();
  const compiled = desiredFirewall(w0, new Map(), { prefix, dnscryptAvailable: false });
  const rules = compiled.reduce((n, c) => n + c.outbound.rules.length, 0);
  const guard = `${prefix}h-*`;
  const table = firewallTableName(prefix);
  const layout = { hostNetns: host.hostNs };
  const clear = async () => {
    if (backend === 'nftables') await inHost(host, ['sh', '-c', `nft delete table inet ${table} 2>/dev/null; true`]);
    else await removeIpt(layout);
  };

  // The bare tool on the same generated ruleset (and, for nftables, the check the controller runs first).
  const bare: number[] = [];
  const checks: number[] = [];
  if (backend === 'nftables') {
    const file = path.join(dir, 'bare.nft');
    await writeFile(file, renderFullReplace(buildNftTable(table, compiled, { guardPattern: guard })));
    for (let i = 0; i < RUNS; i++) {
      await clear();
      checks.push((await time(() => inHost(host, ['nft', '--check', '-f', file]))).ms);
      bare.push((await time(() => inHost(host, ['nft', '-f', file]))).ms);
    }
  } else {
    const t = buildIptTables(compiled, { guardPattern: guard });
    const v4 = renderRestoreBlock('filter', t.v4filter) + renderRestoreBlock('nat', t.v4nat);
    const v6 = renderRestoreBlock('filter', t.v6filter);
    for (let i = 0; i < RUNS; i++) {
      await clear();
      bare.push((await time(async () => {
        await inHost(host, ['ip6tables-restore', '--noflush'], v6);
        await inHost(host, ['iptables-restore', '--noflush'], v4);
      })).ms);
    }
  }

  // The controller's sync from empty (a new service each run: nothing cached).
  const syncs: number[] = [];
  let service!: FirewallService;
  for (let i = 0; i < RUNS; i++) {
    await clear();
    service = new FirewallService({ prefix, hostNetns: host.hostNs, backend });
    await service.backendInUse();
    syncs.push((await time(() => service.sync(w0))).ms);
  }

  // A one-rule change on VM f0: what the driver's plan rewrites, then the sync's time.
  const w1 = world(1);
  const changed = desiredFirewall(w1, new Map(), { prefix, dnscryptAvailable: false });
  let rewrites: string[];
  if (backend === 'nftables') {
    const plan = planNftSync(buildNftTable(table, changed, { guardPattern: guard }), await observeNftTable({ ...layout, table }));
    rewrites = plan.kind === 'chains' ? plan.replace : [plan.kind];
  } else {
    const plan = planIpt(buildIptTables(changed, { guardPattern: guard }), await observeIpt(layout));
    rewrites = [...plan.replace.v6filter, ...plan.replace.v4filter, ...plan.replace.v4nat].map((c) => c.name);
  }
  const changes: number[] = [];
  for (let i = 0; i < RUNS; i++) changes.push((await time(() => service.sync(i % 2 ? w0 : w1))).ms);

  const backendImpl = await service.backendInUse();
  const observes: number[] = [];
  const policyObserves: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    observes.push((await time(() => backendImpl.observe())).ms);
    policyObserves.push((await time(() => service.observe(w0))).ms);
  }
  // As a pass: the controller's observe, then the sync its plan asked for (a different world each run).
  const passes: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    passes.push((await time(async () => {
      await service.observe(w0);
      await service.sync(i % 2 ? w0 : w1);
    })).ms);
  }

  // Where one sync from empty goes (nftables): the same calls the service and the driver make, one by one.
  let profile: Record<string, number> | undefined;
  if (backend === 'nftables') {
    const steps: Record<string, number[]> = {};
    const step = async <T>(name: string, fn: () => Promise<T> | T): Promise<T> => {
      const r = await time(fn);
      (steps[name] ??= []).push(r.ms);
      return r.value;
    };
    const nftLayout = { ...layout, table };
    for (let i = 0; i < RUNS; i++) {
      await clear();
      const fresh = new FirewallService({ prefix, hostNetns: host.hostNs, backend });
      await fresh.backendInUse();
      const c = await step('compile (names, world -> IR)', () => fresh.compile(world()));
      const observed = await step('observe (nft -j list table: absent)', () => observeNftTable(nftLayout));
      const t = await step('build + render the script', () => {
        const tbl = buildNftTable(table, c, { guardPattern: guard });
        return renderPlan(tbl, planNftSync(tbl, observed), table);
      });
      await step('nft --check -f + nft -f (one process)', () => applyNftScript(nftLayout, t));
      await step('DOCKER-USER read (iptables-save)', () => observeDockerUser(layout, 'qwamos bench'));
      await step('conntrack list', () => listFlows(layout));
    }
    profile = Object.fromEntries(Object.entries(steps).map(([k, v]) => [k, median(v)]));
  }
  await clear();
  const r = {
    backend,
    rules,
    syncFromEmptyMs: median(syncs),
    bareMs: median(bare),
    ...(checks.length ? { bareCheckMs: median(checks) } : {}),
    ratio: median(syncs) / median(bare),
    oneRuleChangeMs: median(changes),
    oneRuleRewrites: rewrites,
    observeMs: median(observes),
    policyObserveMs: median(policyObserves),
    passOneRuleChangeMs: median(passes),
    ...(profile ? { profile } : {}),
  };
  return r;
}

export async function benchFirewall(): Promise<void> {
  const host = await createTestHost();
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-bench-fw-'));
  try {
    const results: BackendResult[] = [];
    for (const backend of ['nftables', 'iptables'] as const) results.push(await benchBackend(host, dir, backend));
    for (const r of results) {
      const bareName = r.backend === 'nftables' ? 'one bare nft -f' : 'bare ip6tables-restore + iptables-restore';
      printTable(`Firewall, ${r.backend}: ${VMS} VMs x ${RULES} rules (${r.rules} rules), median of ${RUNS}, in a private test host`, [
        { measure: 'controller sync from empty', value: r.syncFromEmptyMs, unit: 'ms' },
        { measure: `${bareName} of the same ruleset`, value: r.bareMs, unit: 'ms' },
        ...(r.bareCheckMs !== undefined ? [{ measure: 'one bare nft --check -f of it (the controller checks first)', value: r.bareCheckMs, unit: 'ms' }] : []),
        { measure: 'ratio controller / bare (goal <= 1.3)', value: r.ratio, unit: 'x' },
        { measure: 'one-rule change (VM f0)', value: r.oneRuleChangeMs, unit: 'ms' },
        { measure: 'chains it rewrites', value: r.oneRuleRewrites.join(' '), unit: '' },
        { measure: 'observe (backend view)', value: r.observeMs, unit: 'ms' },
        { measure: 'observe (FirewallPolicy: view + names)', value: r.policyObserveMs, unit: 'ms' },
        { measure: 'one-rule change as a pass (observe, then sync reusing it)', value: r.passOneRuleChangeMs, unit: 'ms' },
      ]);
      if (r.profile) printTable(`Firewall, ${r.backend}: one sync from empty, step by step (median ms)`, Object.entries(r.profile).map(([step, ms]) => ({ step, ms })));
    }
    console.log(`wrote ${await writeResult('firewall', { vms: VMS, rulesPerVm: RULES, runs: RUNS, results })}`);
  } finally {
    await host.cleanup();
    await rm(dir, { recursive: true, force: true });
  }
}
