// What the signature verification pool and its workers send each other. Kept apart from verify-pool.ts so
// a worker loads only this and signature.ts.
import type { VerifyOutcome } from './signature.ts';
import type { PublicKeyRecord, TrustStore } from './truststore.ts';

/** A trust store as structured-clone data (a Map of records survives, but say what is sent). */
export interface WireTrustStore {
  dir: string;
  keys: PublicKeyRecord[];
}

export interface VerifyJob {
  bytes: Uint8Array;
  sigText: string;
}

export interface VerifyBatch {
  id: number;
  jobs: VerifyJob[];
}

export interface VerifyBatchResult {
  id: number;
  outcomes: VerifyOutcome[];
}

export function storeToWire(store: TrustStore): WireTrustStore {
  return { dir: store.dir, keys: [...store.keys.values()] };
}

export function storeFromWire(wire: WireTrustStore): TrustStore {
  return { dir: wire.dir, keys: new Map(wire.keys.map((k) => [k.keyId, k])), warnings: [] };
}
