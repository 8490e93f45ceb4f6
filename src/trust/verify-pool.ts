// Verifying many signed files: the verified-signature cache first (verify-cache.ts), then the misses'
// ML-DSA checks on this thread plus a worker thread per other core, all taking batches from one queue. A
// handful of files (a worker costs 30-50 ms to start) is verified in this thread alone; a worker that
// fails or exits hands its files back to this thread.
// Either way each outcome is verifyBytes' own, so the pool changes how fast, never what is decided.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { mapLimit } from '../concurrency.ts';
import { readSignature, verifyBytes, verifyBytesKnownGood, type VerifyOutcome } from './signature.ts';
import type { TrustStore } from './truststore.ts';
import { SignatureCacheFile, signatureCacheKey, trustStoreDigest } from './verify-cache.ts';
import { storeToWire, type VerifyBatch, type VerifyBatchResult, type VerifyJob } from './verify-wire.ts';

/** Up to this many checks run in this thread: below it a worker's start-up costs more than it saves. */
export const IN_PROCESS_MAX = 8;

export interface PoolOptions {
  /** Threads verifying, this one included (size - 1 workers); os.availableParallelism() by default. */
  size?: number;
  /** Up to this many jobs are verified in this thread (IN_PROCESS_MAX by default). */
  inProcessMax?: number;
  /** The worker script; verify-worker beside this module by default (tests point it at a failing one). */
  workerScript?: URL;
  /** How the work was split: batches answered by workers, verified here from the queue, and verified here for a worker that failed or had not answered yet. */
  onDone?: (split: { workerBatches: number; hereBatches: number; fallbackBatches: number }) => void;
}

/** How to start a worker: a script, or (eval) code that loads one. */
type WorkerStart = { script: URL; eval: false } | { script: string; eval: true };

/**
 * The worker beside this module: verify-worker.js in the build (dist/), verify-worker.ts when running the
 * sources through tsx. A worker does not inherit tsx, and Node 20 loads a worker's entry before hooks
 * given with --import take effect, so the .ts worker is started by a line that registers tsx first
 * (tsx named by absolute URL: a bare 'tsx' would resolve against the working directory).
 */
function defaultWorker(): WorkerStart {
  if (!import.meta.url.endsWith('.ts')) return { script: new URL('./verify-worker.js', import.meta.url), eval: false };
  const tsx = JSON.stringify(import.meta.resolve('tsx/esm/api'));
  const worker = JSON.stringify(new URL('./verify-worker.ts', import.meta.url).href);
  return { script: `import(${tsx}).then(({ register }) => { register(); return import(${worker}); });`, eval: true };
}

/** Yields to the event loop (worker answers, timers) between two checks done in this thread. */
const yieldNow = () => new Promise<void>((resolve) => setImmediate(resolve));

/**
 * verifyBytes for every job, in order, spread over this thread and worker threads when there are enough
 * jobs. This thread verifies from the same queue as the workers, one check at a time between worker
 * answers: so the pool is never slower than this thread alone (a worker slow to start, or none at all,
 * only means this thread takes more of the batches).
 */
export async function verifyInPool(jobs: VerifyJob[], store: TrustStore, opts: PoolOptions = {}): Promise<VerifyOutcome[]> {
  const verifyHere = (job: VerifyJob) => verifyBytes(job.bytes, job.sigText, store);
  if (jobs.length <= (opts.inProcessMax ?? IN_PROCESS_MAX)) return jobs.map(verifyHere);

  // Threads checking signatures, this one included.
  const size = Math.max(1, Math.min(opts.size ?? availableParallelism(), jobs.length));
  // Small batches: this thread and a slow or lost worker leave little to the others.
  const batchSize = Math.min(16, Math.max(2, Math.ceil(jobs.length / (size * 8))));
  const queue: VerifyBatch[] = [];
  for (let start = 0, id = 0; start < jobs.length; start += batchSize, id++) {
    queue.push({ id, jobs: jobs.slice(start, start + batchSize) });
  }
  const starts = queue.map((_, i) => i * batchSize);
  const outcomes = new Array<VerifyOutcome>(jobs.length);
  let workerBatches = 0;
  let hereBatches = 0;
  let fallbackBatches = 0;

  const start: WorkerStart = opts.workerScript ? { script: opts.workerScript, eval: false } : defaultWorker();
  const wire = storeToWire(store);
  const done = new Set<number>();
  /** Batches handed to a worker and not answered yet. */
  const held = new Set<VerifyBatch>();
  /** Batches of workers that failed or answered nonsense. */
  const lost: VerifyBatch[] = [];
  const record = (batch: VerifyBatch, batchOutcomes: VerifyOutcome[]) => {
    if (done.has(batch.id)) return;
    done.add(batch.id);
    batchOutcomes.forEach((o, i) => (outcomes[starts[batch.id]! + i] = o));
  };
  const stops: (() => void)[] = [];
  const runWorker = () =>
    new Promise<void>((resolve) => {
      let worker: Worker;
      try {
        worker = new Worker(start.script, { eval: start.eval, workerData: { store: wire } });
      } catch {
        resolve();
        return;
      }
      let current: VerifyBatch | undefined;
      let finished = false;
      const finish = () => {
        if (finished) return;
        finished = true;
        if (current) {
          held.delete(current);
          if (!done.has(current.id)) lost.push(current);
        }
        current = undefined;
        worker.removeAllListeners();
        worker.on('error', () => {}); // terminating may still report one
        void worker.terminate();
        resolve();
      };
      stops.push(finish);
      const sendNext = () => {
        current = queue.shift();
        if (!current) finish();
        else {
          held.add(current);
          worker.postMessage(current);
        }
      };
      worker.on('message', (result: VerifyBatchResult) => {
        if (!current || result?.id !== current.id || !Array.isArray(result.outcomes) || result.outcomes.length !== current.jobs.length) {
          finish(); // not an answer to what was asked: its batch is verified here
          return;
        }
        held.delete(current);
        if (!done.has(current.id)) workerBatches++;
        record(current, result.outcomes);
        current = undefined;
        sendNext();
      });
      worker.on('error', finish);
      worker.on('exit', finish);
      sendNext();
    });

  // This thread: the queued batches, then those of failed workers, then those workers still hold (a
  // worker slow to start or to answer is not waited for; its late answer is ignored).
  const verifyBatchHere = async (batch: VerifyBatch) => {
    const here: VerifyOutcome[] = [];
    for (const job of batch.jobs) {
      await yieldNow();
      if (done.has(batch.id)) return false; // a worker answered meanwhile
      here.push(verifyHere(job));
    }
    record(batch, here);
    return true;
  };
  const runHere = async () => {
    for (;;) {
      const queued = queue.shift();
      if (queued) {
        if (await verifyBatchHere(queued)) hereBatches++;
        continue;
      }
      const other = lost.shift() ?? [...held].find((b) => !done.has(b.id));
      if (!other) break;
      held.delete(other);
      if (await verifyBatchHere(other)) fallbackBatches++;
    }
    for (const stop of stops) stop();
  };
  const workers = Array.from({ length: size - 1 }, runWorker);
  await runHere();
  await Promise.all(workers);
  opts.onDone?.({ workerBatches, hereBatches, fallbackBatches });
  return outcomes;
}

export interface SignedFile {
  file: string;
  bytes: Uint8Array;
}

export interface VerifyFilesOptions {
  /** The persistent verified-signature cache's directory; no cache without it (or when it cannot be used). */
  cacheDir?: string;
  pool?: PoolOptions;
}

export interface VerifiedFiles {
  /** verifyFile's outcome for each file, in order. */
  outcomes: VerifyOutcome[];
  /** Signatures checked in full (the rest came from the cache, or had no signature to check). */
  checked: number;
}

/** verifyFile for every file (its bytes already read), through the cache and the pool. */
export async function verifySignedFiles(files: SignedFile[], store: TrustStore, opts: VerifyFilesOptions = {}): Promise<VerifiedFiles> {
  const [sigs, cache] = await Promise.all([
    mapLimit(files, 16, (f) => readSignature(f.file)),
    opts.cacheDir !== undefined ? SignatureCacheFile.open(opts.cacheDir) : undefined,
  ]);
  const storeDigest = trustStoreDigest(store);
  const outcomes = new Array<VerifyOutcome>(files.length);
  const misses: { index: number; key: string; job: VerifyJob }[] = [];
  files.forEach((f, index) => {
    const sig = sigs[index]!;
    if ('outcome' in sig) {
      outcomes[index] = sig.outcome;
      return;
    }
    const key = signatureCacheKey(f.bytes, sig.bytes, storeDigest);
    if (cache?.has(key)) outcomes[index] = verifyBytesKnownGood(f.bytes, sig.text, store);
    else misses.push({ index, key, job: { bytes: f.bytes, sigText: sig.text } });
  });

  const verified = await verifyInPool(misses.map((m) => m.job), store, opts.pool);
  misses.forEach((m, i) => {
    const outcome = verified[i]!;
    outcomes[m.index] = outcome;
    // Only what passed is remembered: a refused file is checked again every time.
    if (outcome.status === 'verified') cache?.add(m.key);
  });
  await cache?.save();
  return { outcomes, checked: misses.length };
}
