// qwamos drain NODE [--wait] | --undo: marks a cluster node drained (a drain/<node> key in etcd, not bound
// to any lease, so it outlives the node's restarts). Placement then puts nothing on it, and the VMs it runs
// move away: its VM controller stops each one there and releases its run/ claim, then the placement winner
// starts it ("stop there first, then start elsewhere"). --undo removes the mark; nothing moves back by itself.
import type { Command } from '../commander.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { clusterKeys, DEFAULT_CLUSTER_PREFIX, parseNodeRecord, type DrainRecord } from '../../cluster/keys.ts';
import { readLeaseFile } from '../../cluster/membership.ts';
import { parseEndpoints } from '../../cluster/node.ts';
import { readOwners } from '../../cluster/ownership.ts';
import type { EtcdClient } from '../../drivers/etcd.ts';
import { UsageError, UserError, oneLine, printable } from '../../errors.ts';
import { isDnsLabel } from '../../names.ts';
import { openStore } from '../../runtime.ts';
import type { CliCommand } from '../command.ts';
import { parseDuration } from '../duration.ts';
import { EXIT } from '../exit.ts';

export const drainCommand: CliCommand = {
  name: 'drain <node>',
  define: (cmd: Command) =>
    cmd
      .description('move the VMs off a cluster node and place nothing new there (--undo: allow placement there again)')
      .option('--wait', 'wait until the node runs no VM (holds no run/ claim)')
      .option('--timeout <duration>', 'with --wait: give up after this long', '5m')
      .option('--undo', 'remove the drain mark (kubectl uncordon); VMs do not move back by themselves')
      .option('--etcd <urls>', "etcd client URLs (default: the cluster this host's controller joined)"),

  async run(node: string, flags: { wait?: boolean; timeout: string; undo?: boolean; etcd?: string }) {
    if (!isDnsLabel(node)) throw new UsageError(`${JSON.stringify(node)} is not a node name (a lowercase DNS label)`);
    if (flags.undo && flags.wait) throw new UsageError('--wait does not go with --undo');
    const timeoutMs = parseDuration(flags.timeout);
    const store = await openStore();
    const local = await readLeaseFile(store.dir).catch(() => undefined);
    const endpoints = flags.etcd !== undefined ? parseEndpoints(flags.etcd) : local?.endpoints;
    if (!endpoints) throw new UserError('this host joined no cluster: run it on a node started with --node and --etcd, or give --etcd URL[,URL...]');
    const keys = clusterKeys(local?.prefix ?? DEFAULT_CLUSTER_PREFIX);
    const declared = (await store.getResource('ClusterNode', node)) !== undefined;
    const { EtcdClient } = await import('../../drivers/etcd.ts'); // gRPC: loaded only for a cluster
    const client = new EtcdClient(endpoints);
    const etcdError = (err: unknown) => new UserError(`cannot reach etcd at ${endpoints.join(',')}: ${oneLine(err)}`);
    try {
      const entry = await client.get(keys.node(node)).catch((err: unknown) => Promise.reject(etcdError(err)));
      const mark = await client.get(keys.drain(node)).catch((err: unknown) => Promise.reject(etcdError(err)));
      if (flags.undo) {
        if (!mark) {
          process.stdout.write(`node/${node} is not drained\n`);
          return EXIT.ok;
        }
        await client.delete(keys.drain(node)).catch((err: unknown) => Promise.reject(etcdError(err)));
        process.stdout.write(`node/${node} uncordoned (VMs do not move back by themselves)\n`);
        return EXIT.ok;
      }
      // A node the cluster does not know: most likely a typo. A declared one may drain while it is down.
      if (!(entry && parseNodeRecord(entry.value)) && !declared && !mark) {
        throw new UserError(`node ${printable(node)} is not in the cluster (no node key in etcd, no ClusterNode/${printable(node)} declared)`);
      }
      if (mark) process.stdout.write(`node/${node} already drained\n`);
      else {
        const record: DrainRecord = { node, drainedAt: new Date().toISOString() };
        await client.put(keys.drain(node), JSON.stringify(record)).catch((err: unknown) => Promise.reject(etcdError(err)));
        process.stdout.write(`node/${node} cordoned: placement puts no VM there\n`);
      }
      const vms = await vmsOn(client, keys, node).catch((err: unknown) => Promise.reject(etcdError(err)));
      if (!flags.wait) {
        process.stdout.write(vms.length ? `node/${node} drained; moving ${vms.length} VM(s) away: ${vms.join(', ')}\n` : `node/${node} drained; it runs no VM\n`);
        return EXIT.ok;
      }
      if (vms.length) process.stdout.write(`waiting for ${vms.length} VM(s) to leave node ${node}: ${vms.join(', ')}\n`);
      const giveUp = Date.now() + timeoutMs;
      let left = vms;
      while (left.length) {
        if (Date.now() >= giveUp) throw new UserError(`timed out after ${flags.timeout} waiting for node ${node} to stop ${left.join(', ')}`);
        await sleep(250);
        const now = await vmsOn(client, keys, node).catch(() => left); // a passing etcd hiccup: ask again
        for (const vm of left) if (!now.includes(vm)) process.stdout.write(`vm/${vm} left node ${node}\n`);
        left = now;
      }
      process.stdout.write(`node/${node} drained\n`);
      return EXIT.ok;
    } finally {
      client.close();
    }
  },
};

/** The VMs whose run/ claim `node` holds. */
async function vmsOn(client: EtcdClient, keys: ReturnType<typeof clusterKeys>, node: string): Promise<string[]> {
  const { owners } = await readOwners(client, keys);
  return [...owners.values()].filter((c) => c.node === node).map((c) => c.vm).sort();
}
