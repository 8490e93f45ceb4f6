// A stand-in daemon for fencer tests: joins the cluster (membership only) and keeps its lease alive until
// it is killed. argv: ENDPOINTS(comma-separated) STATE_DIR NODE. Prints "joined <lease>" once joined.
// With HANDOVER_MS in the environment, SIGTERM stops it as a clean daemon stop does: handing the lease to
// the fencer for that long.
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { Membership } from '../../src/cluster/membership.ts';

const [endpoints, stateDir, node] = process.argv.slice(2);
const client = new EtcdClient(endpoints!.split(','));
const handoverMs = process.env.HANDOVER_MS ? Number(process.env.HANDOVER_MS) : undefined;
const m = await Membership.join({
  client,
  stateDir: stateDir!,
  record: { name: node!, role: 'worker', capacity: { cpus: 1, memoryMiB: 256 }, labels: {}, gpuLevels: [] },
  log: (line) => process.stdout.write(`${line}\n`),
  ...(handoverMs !== undefined ? { handoverMs } : {}),
});
process.stdout.write(`joined ${m.leaseId}\n`);
process.once('SIGTERM', () => void m.stop({ handover: handoverMs !== undefined }).then(() => process.exit(0)));
