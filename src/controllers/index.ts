// The composition root: the controllers of this host, one per kind, built from the configuration.
import os from 'node:os';
import type { ClusterVmView } from '../cluster/view.ts';
import type { Config } from '../config.ts';
import type { AnyController } from '../engine/contract.ts';
import type { Store } from '../store/store.ts';
import { ClusterNodeController } from './clusternode/index.ts';
import { declarationController } from './declaration.ts';
import { LazyGitSourceController } from './gitsource-lazy.ts';
import { RouteController } from './route/index.ts';
import { VmController } from './vm/index.ts';
import { FirewallPolicyController, FirewallService } from './firewall/index.ts';

/**
 * `store`: where a GitSource stores the resources of its revisions (without it, GitSource is a
 * declaration: `diff`). `cluster`: the cluster this node joined (--etcd): VMs run only where placed and
 * claimed. `planOnly`: the controllers only observe and plan, never report status (`diff`): the VM
 * controller then probes the host only when a VM runs or is to run.
 */
export function createControllers(config: Config, store?: Store, opts: { cluster?: ClusterVmView; planOnly?: boolean } = {}): AnyController[] {
  const { cluster } = opts;
  const layout = { prefix: config.prefix, ...(config.hostNetns ? { hostNetns: config.hostNetns } : {}) };
  // One firewall for both controllers that write it: the table is compiled whole from the world.
  const firewall = new FirewallService({ ...layout, backend: config.firewallBackend, ...(config.firewallUserChain ? { userChain: config.firewallUserChain } : {}) });
  return [
    new RouteController(layout, config.uplink, { firewall, settings: { ...layout, stateDir: config.stateDir } }),
    new FirewallPolicyController(firewall),
    new VmController({
      layout,
      stateDir: config.stateDir,
      imageRoot: config.imageRoot,
      stopTimeoutMs: config.stopTimeoutMs,
      ...(config.tscKhz ? { tscKhz: config.tscKhz } : {}),
      ...(cluster ? { cluster } : {}),
      ...(config.ledger ? { ledger: { file: config.ledger, node: cluster?.node ?? os.hostname() } } : {}),
      ...(opts.planOnly ? { planOnly: true } : {}),
    }),
    declarationController('GpuTrustLevel'),
    new ClusterNodeController({ stateDir: config.stateDir }),
    store
      ? new LazyGitSourceController({ stateDir: config.stateDir, trustDir: config.trustDir, imageRoot: config.imageRoot, prefix: config.prefix, store })
      : declarationController('GitSource'),
  ];
}
