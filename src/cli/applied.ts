// Converting between what the store holds and what validation reads, and comparing the two.
import { isDeepStrictEqual } from 'node:util';
import type { AnyResource, LoadedResource } from '../resources/types.ts';
import type { StoredResource } from '../store/store.ts';
import { keyOf } from '../resources/keys.ts';

/** The manifest part of a stored resource. */
export function toResource(r: StoredResource): AnyResource {
  const { apiVersion, kind, metadata, spec } = r;
  return { apiVersion, kind, metadata, spec } as AnyResource;
}

/** Stored resources as validation's `known` set, so references to already-applied resources resolve. */
export function storedAsLoaded(stored: StoredResource[]): LoadedResource[] {
  return stored
    .filter((r) => !r.deletionRequestedAt)
    .map((r) => ({
      resource: toResource(r),
      key: keyOf(r),
      file: r.source.path,
      digest: r.source.digest,
    }));
}

/** What applying would do to the store, without doing it. */
export function applyResultOf(stored: StoredResource | undefined, next: AnyResource): 'created' | 'configured' | 'unchanged' {
  if (!stored || stored.deletionRequestedAt) return 'created';
  const same =
    isDeepStrictEqual(JSON.parse(JSON.stringify(stored.spec)), JSON.parse(JSON.stringify(next.spec))) &&
    isDeepStrictEqual(stored.metadata.labels ?? {}, next.metadata.labels ?? {}) &&
    isDeepStrictEqual(stored.metadata.annotations ?? {}, next.metadata.annotations ?? {});
  return same ? 'unchanged' : 'configured';
}
