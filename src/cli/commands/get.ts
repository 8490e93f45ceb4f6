// qwamos get [KIND [NAME]] [-o wide|json|yaml|name]: list stored resources with their status, kubectl-style.
// Exit 0 (also when there is nothing to list), 1 when a named resource does not exist, 2 on usage errors.
import { keyOf } from '../../resources/keys.ts';
import { Option } from '../commander.ts';
import { UsageError, UserError, oneLine, printable } from '../../errors.ts';
import { gitSourceOf } from '../../git/owner.ts';
import { assertName, type ResourceStatus, type Store, type StoredResource } from '../../store/store.ts';
import type { CliCommand } from '../command.ts';
import { EXIT } from '../exit.ts';
import {
  createdAt,
  formatAge,
  messageOf,
  parseKind,
  parseKinds,
  readyOf,
  renderTable,
  statusOf,
  toJson,
  toYaml,
} from '../format.ts';
import { openStoreForRead } from '../state-read.ts';
import type { NodeView } from '../../cluster/status.ts';

type Output = 'wide' | 'json' | 'yaml' | 'name';

interface Entry {
  resource: StoredResource;
  status: ResourceStatus | undefined;
}

/** A resource as -o json / -o yaml show it: the stored manifest and its bookkeeping, plus its status (null before the controller wrote one). */
export function resourceObject(r: StoredResource, status: ResourceStatus | undefined): Record<string, unknown> {
  const { apiVersion, kind, metadata, spec, ...rest } = r;
  let st: Omit<ResourceStatus, 'kind' | 'name'> | null = null;
  if (status) {
    const { kind: _k, name: _n, ...s } = status;
    st = s;
  }
  return { apiVersion, kind, metadata, spec, ...rest, status: st };
}

/** Splits `KIND/NAME` or `KIND NAME` (either part may be absent). */
export function splitRef(first: string | undefined, second: string | undefined): { kind?: string; name?: string } {
  if (first !== undefined && first.includes('/')) {
    if (second !== undefined) throw new UsageError('give KIND/NAME or KIND NAME, not both');
    const slash = first.indexOf('/');
    const name = first.slice(slash + 1);
    if (!name) throw new UsageError(`missing NAME in ${JSON.stringify(first)}`);
    return { kind: first.slice(0, slash), name };
  }
  return { ...(first !== undefined ? { kind: first } : {}), ...(second !== undefined ? { name: second } : {}) };
}

/** One stored resource with its status, or undefined (also for a name that cannot exist). */
export async function findResource(store: Store | undefined, kind: string, name: string): Promise<Entry | undefined> {
  if (!store) return undefined;
  try {
    assertName(name);
  } catch {
    return undefined;
  }
  const resource = await store.getResource(kind, name);
  if (!resource) return undefined;
  return { resource, status: await store.getStatus(kind, name) };
}

/** Every stored resource of the given kinds with its status, sorted by kind then name. */
export async function listEntries(store: Store | undefined, kinds: readonly string[]): Promise<Entry[]> {
  if (!store) return [];
  const entries: Entry[] = [];
  for (const kind of kinds) {
    const [resources, statuses] = await Promise.all([store.listResources(kind), store.listStatuses(kind)]);
    const byName = new Map(statuses.map((s) => [s.name, s]));
    for (const resource of resources) entries.push({ resource, status: byName.get(resource.metadata.name) });
  }
  return entries.sort(
    (a, b) => cmp(a.resource.kind, b.resource.kind) || cmp(a.resource.metadata.name, b.resource.metadata.name),
  );
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** What a controller reports about the host side (a VM's state, pid, machine/accel, netns). */
function detailOf(s: Entry['status']): string {
  const f = s?.fields ?? {};
  const parts = [
    typeof f.state === 'string' ? f.state : '',
    typeof f.pid === 'number' ? `pid ${f.pid}` : '',
    typeof f.machine === 'string' ? `${f.machine}/${String(f.accel ?? '?')}` : '',
    typeof f.netns === 'string' ? `netns ${f.netns}` : '',
  ].filter(Boolean);
  return parts.length ? parts.join(' ') : '-';
}

/** Where a resource came from: its file, or `gitsource/NAME@<short sha>` for one a git source applied. */
function sourceOf(r: StoredResource): string {
  const commit = r.source.commit ? `@${r.source.commit.slice(0, 7)}` : '';
  const git = gitSourceOf(r.source.path);
  return git ? `gitsource/${git}${commit}` : `${r.source.path}${commit}`;
}

/** A GitSource's applied revision, its sha shortened ('main@sha1:0123456789ab'). */
function revisionOf(s: Entry['status']): string {
  const rev = s?.fields.lastAppliedRevision;
  return typeof rev === 'string' ? rev.replace(/(sha1:[0-9a-f]{12})[0-9a-f]+$/, '$1') : '-';
}

function table(entries: Entry[], wide: boolean): string {
  const now = Date.now();
  // Only git sources listed: their applied revision and message, as `flux get sources git` shows them.
  const sources = entries.every((e) => e.resource.kind === 'GitSource');
  const header = ['KIND', 'NAME', 'READY', 'STATUS', 'AGE'];
  if (sources) header.push('REVISION');
  if (sources && !wide) header.push('MESSAGE');
  if (wide) header.push('GEN', 'OBSERVED', 'DETAIL', 'SOURCE', 'SIGNER', 'MESSAGE');
  const rows = entries.map(({ resource: r, status: s }) => {
    const row = [r.kind, r.metadata.name, readyOf(s), statusOf(r, s), formatAge(createdAt(r), now)];
    if (sources) row.push(revisionOf(s));
    if (sources && !wide) row.push(messageOf(s));
    if (wide) {
      const signer = r.source.signer ? `${r.source.signer.name ?? ''}${r.source.signer.name ? ':' : ''}${r.source.signer.keyId.slice(0, 12)}` : '<unsigned>';
      row.push(String(r.generation), s ? String(s.observedGeneration) : '-', detailOf(s), sourceOf(r), signer, messageOf(s));
    }
    return row;
  });
  return renderTable(header, rows);
}

export const getCommand: CliCommand = {
  name: 'get [kind] [name]',
  define: (cmd) =>
    cmd
      .description(
        'list resources and their status; KIND is a kind, its short name (vm, rt, fw, gpu, node), a comma-separated list, or all (the default); also KIND/NAME',
      )
      .addOption(new Option('-o, --output <format>', 'output format').choices(['wide', 'json', 'yaml', 'name']))
      .option('--etcd <urls>', 'get nodes: ask this etcd cluster (default: the one this host\'s controller joined)'),

  async run(first: string | undefined, second: string | undefined, opts: { output?: Output; etcd?: string }) {
    const ref = splitRef(first, second);
    const store = await openStoreForRead();
    if (ref.name === undefined && ref.kind !== undefined && parseKinds(ref.kind).join() === 'ClusterNode') {
      const shown = await showClusterNodes(store, opts);
      if (shown !== undefined) return shown;
    } else if (opts.etcd !== undefined) {
      throw new UsageError('--etcd only goes with get nodes');
    }
    let entries: Entry[];
    let single = false;
    if (ref.name !== undefined) {
      const kind = parseKind(ref.kind!);
      const entry = await findResource(store, kind, ref.name);
      if (!entry) throw new UserError(`${kind} "${ref.name}" not found`);
      entries = [entry];
      single = true;
    } else {
      entries = await listEntries(store, parseKinds(ref.kind));
    }

    const objects = () => entries.map((e) => resourceObject(e.resource, e.status));
    switch (opts.output) {
      case 'json':
        process.stdout.write(toJson(single ? objects()[0] : objects()));
        return EXIT.ok;
      case 'yaml':
        process.stdout.write(toYaml(single ? objects()[0] : objects()));
        return EXIT.ok;
      case 'name':
        process.stdout.write(renderNames(entries));
        return EXIT.ok;
      default:
        if (entries.length === 0) {
          process.stderr.write('No resources found.\n');
          return EXIT.ok;
        }
        process.stdout.write(table(entries, opts.output === 'wide'));
        return EXIT.ok;
    }
  },
};

/**
 * `get nodes` on a cluster: the nodes as etcd sees them (and declared ones it does not know). Undefined
 * when no cluster is known (no --etcd, this host never joined one): then the stored ClusterNodes are listed.
 */
async function showClusterNodes(store: Store | undefined, opts: { output?: Output; etcd?: string }): Promise<number | undefined> {
  // Loaded only for `get nodes`: listing resources needs none of the cluster code.
  const [{ DEFAULT_CLUSTER_PREFIX }, { readLeaseFile }, { parseEndpoints }, { clusterNodeViews }] = await Promise.all([
    import('../../cluster/keys.ts'),
    import('../../cluster/membership.ts'),
    import('../../cluster/node.ts'),
    import('../../cluster/status.ts'),
  ]);
  // A damaged lease file only means this host's own node shows less precisely.
  const local = store ? await readLeaseFile(store.dir).catch(() => undefined) : undefined;
  const endpoints = opts.etcd !== undefined ? parseEndpoints(opts.etcd) : local?.endpoints;
  if (!endpoints) return undefined;
  const declared = store ? (await store.listResources('ClusterNode')).map((r) => r.metadata.name) : [];
  const { EtcdClient } = await import('../../drivers/etcd.ts'); // gRPC: loaded only for a cluster
  const client = new EtcdClient(endpoints);
  let view: Awaited<ReturnType<typeof clusterNodeViews>>;
  try {
    view = await clusterNodeViews(client, { prefix: local?.prefix ?? DEFAULT_CLUSTER_PREFIX, declared, ...(local ? { local } : {}) });
  } catch (err) {
    throw new UserError(`cannot read the cluster's nodes from etcd at ${endpoints.join(',')}: ${oneLine(err)}`);
  } finally {
    client.close();
  }
  switch (opts.output) {
    case 'json':
      process.stdout.write(toJson({ revision: view.revision, nodes: view.nodes }));
      return EXIT.ok;
    case 'yaml':
      process.stdout.write(toYaml({ revision: view.revision, nodes: view.nodes }));
      return EXIT.ok;
    case 'name':
      process.stdout.write(view.nodes.map((n) => `ClusterNode/${printable(n.name)}\n`).join(''));
      return EXIT.ok;
    default: {
      if (view.nodes.length === 0) {
        process.stderr.write('No nodes found.\n');
        return EXIT.ok;
      }
      const now = Date.now();
      const wide = opts.output === 'wide';
      const header = ['NAME', 'READY', 'ROLE', 'LEASE', 'LAST KEEPALIVE', 'REVISION'];
      if (wide) header.push('CPUS', 'MEMORY', 'GPU LEVELS', 'LABELS', 'VMS');
      const rows = view.nodes.map((n: NodeView) => {
        const row = [
          n.name,
          // kubectl's wording for a cordoned node.
          `${n.ready ? 'True' : 'False'}${n.drained ? ',SchedulingDisabled' : ''}`,
          n.role ?? '-',
          n.lease ?? '-',
          n.lastKeepalive !== undefined ? `${Math.max(0, Math.round((now - n.lastKeepalive) / 100) / 10)}s ago` : '-',
          n.revision ?? '-',
        ];
        if (wide) {
          row.push(
            n.cpus !== undefined ? String(n.cpus) : '-',
            n.memoryMiB !== undefined ? `${n.memoryMiB}Mi` : '-',
            n.gpuLevels?.length ? n.gpuLevels.join(',') : '-',
            Object.entries(n.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(',') || '-',
            n.vms.join(',') || '-',
          );
        }
        return row;
      });
      process.stdout.write(renderTable(header, rows));
      return EXIT.ok;
    }
  }
}

function renderNames(entries: Entry[]): string {
  // Names and kinds passed the store's checks, but the files may have been edited by hand.
  return entries.map((e) => `${printable(keyOf(e.resource))}\n`).join('');
}
