// The VirtualMachine controller: QEMU (unprivileged, sandboxed) inside the VM's Route netns with a tap.
//   observe.ts  host facts: pidfile process, a live QEMU found by its command line, QMP status, disks, images, netns/tap, probes
//   launch.ts   the QEMU launch the VM needs (rendered from resource, world and facts) or why it cannot start (pure)
//   plan.ts     runStrategy, crash backoff, adoption, pause/resume drift, restarts, deletion (pure)
//   apply.ts    launch, stop, adopt, pause/resume, disks, clean-up
//   status.ts   drift fields and the status report (RestartRequired, GpuUnavailable, Paused, pid, serial log)
//   watch.ts    QMP event connections: a crash is seen at once
//   placement.ts  in a cluster: placement, run/ claims, failover, the cluster conditions (absent on one host)
//   context.ts  where a VM's files live
import type { Controller, FieldDiff, Plan, StatusReport, World } from '../../engine/contract.ts';
import { keyOf, makeKey, type ObjectKey } from '../../resources/keys.ts';
import type { StoredResource } from '../../store/store.ts';
import { applyVmActions } from './apply.ts';
import type { VmContext } from './context.ts';
import { VmObserver, type VmActual } from './observe.ts';
import { planVm, type VmAction } from './plan.ts';
import { diffVm, reportVm } from './status.ts';
import { VmWatchers } from './watch.ts';
import { policiesFor } from '../firewall/desired.ts';

export type { VmContext } from './context.ts';
export type { VmActual } from './observe.ts';
export type { VmAction } from './plan.ts';

export class VmController implements Controller<'VirtualMachine', VmActual, VmAction> {
  readonly kind = 'VirtualMachine';
  private readonly observer: VmObserver;
  private readonly watchers: VmWatchers;

  constructor(private readonly ctx: VmContext) {
    this.observer = new VmObserver(ctx);
    this.watchers = new VmWatchers(ctx);
  }

  observe(resources: StoredResource<'VirtualMachine'>[], world: World): Promise<Map<ObjectKey, VmActual>> {
    return this.observer.observe(resources, world);
  }

  plan(r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, world: World): Plan<VmAction> {
    return planVm(this.ctx, r, actual, world);
  }

  diff(r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, world: World): FieldDiff[] {
    return diffVm(r, actual, world);
  }

  report(r: StoredResource<'VirtualMachine'>, actual: VmActual | undefined, world: World): StatusReport {
    return reportVm(this.ctx, r, actual, world);
  }

  dependencies(r: StoredResource<'VirtualMachine'>, world: World): ObjectKey[] {
    const spec = r.spec;
    const level = spec.gpu?.trustLevel;
    return [
      ...(spec.network?.route ? [makeKey('Route', spec.network.route)] : []),
      ...(level && world.get('GpuTrustLevel', level) ? [makeKey('GpuTrustLevel', level)] : []),
      // Never started before the firewall of the policies that select it is in place.
      ...policiesFor(r.metadata.name, world).map((p) => makeKey('FirewallPolicy', p.metadata.name)),
      ...(spec.dependsOn ?? []).map((d) => makeKey(d.kind ?? 'VirtualMachine', d.name)),
    ];
  }

  apply(actions: VmAction[]): Promise<void> {
    return applyVmActions(this.ctx, this.watchers, actions);
  }

  watch(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    const qmp = this.watchers.start(notify, world);
    // A cluster change (a node lost or back, a claim gone) may concern any VM: all are reconsidered now.
    const unsubscribe = this.ctx.cluster?.subscribe((vms) =>
      notify(vms === 'all' ? world().list('VirtualMachine').map((r) => keyOf(r)) : vms.map((vm) => makeKey('VirtualMachine', vm))),
    );
    return {
      close: () => {
        unsubscribe?.();
        qmp.close();
      },
    };
  }
}
