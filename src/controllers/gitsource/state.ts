// What a GitSource has in force and what it last tried, kept in STATE/git/<name>.state.json (beside the
// mirror, STATE/git/<name>) so the applied commit, index serial and consumed acceptRevision survive a
// restart: rollback protection would be void if a restart forgot the applied commit.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { AppliedState, SyncCondition } from '../../git/sync.ts';
import type { RevisionError } from '../../git/revision.ts';
import { ensureDir, readJsonFile, removeFile, writeFileAtomic } from '../../store/atomic.ts';

export interface AppliedRevision {
  commit: string;
  revision: string;
  /** 'sha256:<hex>' over the applied files (loadRevision's digest). */
  digest: string;
  serial?: number;
  indexDigest?: string;
  at: string;
  /** 'Kind/name' of every resource the revision declared: what the source owns. */
  resources: string[];
}

/** A revision that was refused: not tried again until a new commit, a spec change or a new trust store. */
export interface FailedAttempt {
  commit: string;
  revision: string;
  generation: number;
  trustDigest: string;
  condition: SyncCondition;
  message: string;
  error?: RevisionError;
  at: string;
}

export interface HistoryEntry {
  at: string;
  revision: string;
  /** 'Applied', 'Reapplied' or the refusing condition. */
  result: string;
  message: string;
}

export interface SourceState {
  applied?: AppliedRevision;
  consumedAcceptRevision?: string;
  failed?: FailedAttempt;
  history: HistoryEntry[];
}

/** Entries of history kept. */
export const HISTORY_KEPT = 10;

export function stateFile(stateDir: string, name: string): string {
  return path.join(stateDir, 'git', `${name}.state.json`);
}

export async function readState(stateDir: string, name: string): Promise<SourceState> {
  const file = stateFile(stateDir, name);
  const v = await readJsonFile<unknown>(file);
  if (v === undefined) return { history: [] };
  if (typeof v !== 'object' || v === null || !Array.isArray((v as SourceState).history)) {
    throw new Error(`${file}: not a git source state file (move it away to start the source afresh, without rollback protection)`);
  }
  return v as SourceState;
}

export async function writeState(stateDir: string, name: string, state: SourceState): Promise<void> {
  const file = stateFile(stateDir, name);
  await ensureDir(path.dirname(file));
  await writeFileAtomic(file, `${JSON.stringify(state, null, 2)}\n`);
}

/** Removes the state file and the mirror of a deleted source. */
export async function forgetState(stateDir: string, name: string): Promise<void> {
  await removeFile(stateFile(stateDir, name));
  await fs.rm(path.join(stateDir, 'git', name), { recursive: true, force: true });
}

export function appliedStateOf(state: SourceState): AppliedState {
  const a = state.applied;
  return {
    ...(a ? { commit: a.commit } : {}),
    ...(a?.serial !== undefined ? { serial: a.serial } : {}),
    ...(a?.indexDigest !== undefined ? { indexDigest: a.indexDigest } : {}),
    ...(state.consumedAcceptRevision ? { consumedAcceptRevision: state.consumedAcceptRevision } : {}),
  };
}

export function withHistory(state: SourceState, entry: HistoryEntry): HistoryEntry[] {
  return [...state.history, entry].slice(-HISTORY_KEPT);
}
