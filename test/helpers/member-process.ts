// A stand-in daemon for fencer tests: joins the cluster (membership only) and keeps its lease alive until
// it is killed. argv: ENDPOINTS(comma-separated) STATE_DIR NODE. Prints "joined <lease>" once joined.
import { EtcdClient } from '../../src/drivers/etcd.ts';
import { Membership } from '../../src/cluster/membership.ts';

const [endpoints, stateDir, node] = process.argv.slice(2);
const client = new EtcdClient(endpoints!.split(','));
const m = await Membership.join({
  client,
  stateDir: stateDir!,
  record: { name: node!, role: 'worker', capacity: { cpus: 1, memoryMiB: 256 }, labels: {}, gpuLevels: [] },
  log: (line) => process.stdout.write(`${line}\n`),
});
process.stdout.write(`joined ${m.leaseId}\n`);
process.once('SIGTERM', () => void m.stop().then(() => process.exit(0)));
