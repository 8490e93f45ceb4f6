// Checks across resources: references resolve, nothing is declared twice, no dependency cycles.
import { isBuiltinGpuLevel } from './gpu.ts';
import { parseCidr } from './net.ts';
import type { Issue } from './checks.ts';
import type { AnyResource, LoadedResource } from './types.ts';

export interface CrossIssue extends Issue {
  /** The resource the issue is reported on. */
  at: LoadedResource;
}

/**
 * `resources` are the ones being checked; `known` are others already in force (e.g. in the store)
 * that references may resolve to. A resource in both counts as the one being checked. `invalid` are
 * the keys of resources declared but already reported as invalid: a reference to one is not reported
 * again as "does not exist", which would send the user looking for a resource that is right there.
 */
export function crossCheck(resources: LoadedResource[], known: LoadedResource[] = [], invalid: ReadonlySet<string> = new Set()): CrossIssue[] {
  const issues: CrossIssue[] = [];
  const byKey = new Map<string, LoadedResource>();
  for (const lr of resources) {
    const first = byKey.get(lr.key);
    if (first) {
      issues.push({ at: lr, pointer: '/metadata/name', message: `${lr.key} is declared twice (first in ${first.file})` });
    } else {
      byKey.set(lr.key, lr);
    }
  }
  const all = new Map<string, AnyResource>();
  for (const lr of known) all.set(lr.key, lr.resource);
  for (const [key, lr] of byKey) all.set(key, lr.resource);
  const ofKind = <K extends AnyResource['kind']>(kind: K) =>
    [...all.values()].filter((r): r is Extract<AnyResource, { kind: K }> => r.kind === kind);

  const routes = ofKind('Route');
  const vms = ofKind('VirtualMachine');
  const vmNames = new Set(vms.map((v) => v.metadata.name));
  const nodes = new Set(ofKind('ClusterNode').map((n) => n.metadata.name));
  const gpuLevels = new Set(ofKind('GpuTrustLevel').map((g) => g.metadata.name));

  for (const lr of byKey.values()) {
    const r = lr.resource;
    const add = (pointer: string, message: string, severity?: 'warning') => issues.push({ at: lr, pointer, message, ...(severity ? { severity } : {}) });
    switch (r.kind) {
      case 'VirtualMachine': {
        const routeName = r.spec.network?.route;
        if (routeName) {
          const route = all.get(`Route/${routeName}`);
          if (route?.kind === 'Route') {
            if (route.spec.vm !== r.metadata.name) add('/spec/network/route', `spec.network.route: Route "${routeName}" belongs to VM "${route.spec.vm}", not "${r.metadata.name}"`);
          } else if (!invalid.has(`Route/${routeName}`)) {
            add('/spec/network/route', `spec.network.route: Route "${routeName}" does not exist`);
          }
        }
        const level = r.spec.gpu?.trustLevel;
        if (level && !isBuiltinGpuLevel(level) && !gpuLevels.has(level) && !invalid.has(`GpuTrustLevel/${level}`)) {
          add('/spec/gpu/trustLevel', `spec.gpu.trustLevel: GPU trust level "${level}" is neither built in (untrusted, low, medium, high, system) nor declared`);
        }
        const node = r.spec.placement?.node;
        if (node && !nodes.has(node) && !invalid.has(`ClusterNode/${node}`)) add('/spec/placement/node', `spec.placement.node: ClusterNode "${node}" does not exist`);
        (r.spec.dependsOn ?? []).forEach((dep, i) => {
          const key = `${dep.kind ?? 'VirtualMachine'}/${dep.name}`;
          if (!all.has(key) && !invalid.has(key)) add(`/spec/dependsOn/${i}`, `spec.dependsOn[${i}]: ${key} does not exist`);
          if (key === lr.key) add(`/spec/dependsOn/${i}`, `spec.dependsOn[${i}]: a VM cannot depend on itself`);
        });
        break;
      }
      case 'Route': {
        const vm = r.spec.vm;
        const rival = routes.find((o) => o !== r && o.spec.vm === vm);
        if (rival) add('/spec/vm', `spec.vm: VM "${vm}" already has Route "${rival.metadata.name}" (one route per VM)`);
        if (r.spec.address) {
          const ip = parseCidr(r.spec.address).ip;
          const clash = routes.find((o) => o !== r && o.spec.address && parseCidr(o.spec.address).ip === ip);
          if (clash) add('/spec/address', `spec.address: ${ip} is also the address of Route "${clash.metadata.name}"`);
          const gatewayClash = routes.find((o) => o.spec.gateway === ip);
          if (gatewayClash) add('/spec/address', `spec.address: ${ip} is the gateway of Route "${gatewayClash.metadata.name}"`);
        }
        if (vmNames.size > 0 && !vmNames.has(vm) && !invalid.has(`VirtualMachine/${vm}`)) add('/spec/vm', `spec.vm: VirtualMachine "${vm}" is not declared (the route is created without a VM)`, 'warning');
        break;
      }
      case 'FirewallPolicy': {
        (r.spec.vms ?? []).forEach((name, i) => {
          if (!vmNames.has(name) && !invalid.has(`VirtualMachine/${name}`)) add(`/spec/vms/${i}`, `spec.vms[${i}]: VirtualMachine "${name}" does not exist`);
        });
        const match = r.spec.selector?.matchLabels;
        if (match && !vms.some((vm) => Object.entries(match).every(([k, v]) => vm.metadata.labels?.[k] === v))) {
          add('/spec/selector', 'spec.selector: matches no VirtualMachine', 'warning');
        }
        break;
      }
      default:
        break;
    }
  }
  issues.push(...dependencyCycles(byKey, all));
  return issues;
}

/** Reports each dependsOn cycle once, on the resource where the walk found it. */
function dependencyCycles(checked: Map<string, LoadedResource>, all: Map<string, AnyResource>): CrossIssue[] {
  const issues: CrossIssue[] = [];
  const edges = (key: string): string[] => {
    const r = all.get(key);
    return r?.kind === 'VirtualMachine' ? (r.spec.dependsOn ?? []).map((d) => `${d.kind ?? 'VirtualMachine'}/${d.name}`) : [];
  };
  const state = new Map<string, 'visiting' | 'done'>();
  const reported = new Set<string>();
  const visit = (key: string, trail: string[]) => {
    if (state.get(key) === 'done') return;
    if (state.get(key) === 'visiting') {
      const cycle = [...trail.slice(trail.indexOf(key)), key];
      const owner = checked.get(key);
      const id = [...cycle].sort().join();
      if (owner && !reported.has(id)) {
        reported.add(id);
        // Point at the owner's own entry that starts the cycle, not at the whole dependsOn list.
        const i = edges(key).indexOf(cycle[1]!);
        issues.push({ at: owner, pointer: `/spec/dependsOn/${i}`, message: `spec.dependsOn[${i}]: dependency cycle ${cycle.join(' -> ')}` });
      }
      return;
    }
    state.set(key, 'visiting');
    for (const next of edges(key)) if (next !== key) visit(next, [...trail, key]);
    state.set(key, 'done');
  };
  for (const key of checked.keys()) visit(key, []);
  return issues;
}
