// A signature verification worker (see verify-pool.ts): receives the trust store once, then batches of
// (file bytes, signature text) and answers each batch with verifyBytes' outcomes, in order.
import { parentPort, workerData } from 'node:worker_threads';
import { verifyBytes } from './signature.ts';
import { storeFromWire, type VerifyBatch, type VerifyBatchResult, type WireTrustStore } from './verify-wire.ts';

const store = storeFromWire((workerData as { store: WireTrustStore }).store);
const port = parentPort!;
port.on('message', (batch: VerifyBatch) => {
  const result: VerifyBatchResult = { id: batch.id, outcomes: batch.jobs.map((job) => verifyBytes(job.bytes, job.sigText, store)) };
  port.postMessage(result);
});
