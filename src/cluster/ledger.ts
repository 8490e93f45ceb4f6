// The ledger: one JSON line per VM start and stop on this node, appended to the file QWAMOS_LEDGER names,
// so that a checker can prove no two copies of a VM ever ran at once across nodes. Conservative on purpose:
// `start` is written BEFORE QEMU is spawned (the intent), `stop` only AFTER its process is confirmed gone.
// Each line is one write(2) on an O_APPEND descriptor: atomic per line across processes (the VM
// controller and the fencer of each node write to the same file).
import { open, readFile, writeFile } from 'node:fs/promises';
import { processAlive } from '../proc.ts';
import { vmPaths, type LaunchRecord } from '../controllers/vm/context.ts';

export interface LedgerEntry {
  vm: string;
  node: string;
  event: 'start' | 'stop';
  /** The QEMU process; null for a start (written before the spawn: the pid is not known yet). */
  pid: number | null;
  /** ISO 8601 with milliseconds. */
  at: string;
}

/** Where this node writes its ledger lines. */
export interface LedgerTarget {
  file: string;
  node: string;
}

export async function appendLedger(target: LedgerTarget, vm: string, event: LedgerEntry['event'], pid: number | null): Promise<void> {
  const entry: LedgerEntry = { vm, node: target.node, event, pid, at: new Date().toISOString() };
  const fh = await open(target.file, 'a', 0o644);
  try {
    await fh.write(`${JSON.stringify(entry)}\n`);
  } finally {
    await fh.close();
  }
}

/** Parses a ledger file's text (lines that are not entries are skipped). */
export function parseLedger(text: string): LedgerEntry[] {
  const out: LedgerEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const e = JSON.parse(line) as LedgerEntry;
      if (typeof e.vm === 'string' && typeof e.node === 'string' && (e.event === 'start' || e.event === 'stop')) out.push(e);
    } catch {
      // a foreign line
    }
  }
  return out;
}

/**
 * Waits until each killed process is gone (a zombie counts as gone), at most `timeoutMs`, and appends a
 * `stop` for each one that is. One still alive then gets no stop: the ledger never claims a copy ended
 * before it did. With `stateDir`, the VM's launch record is marked closed too (when it names that pid),
 * so that the controller does not write a second stop for the same copy.
 */
export async function ledgerStopsWhenGone(target: LedgerTarget, killed: ReadonlyArray<{ vm: string; pid: number; start?: string }>, opts: { stateDir?: string; timeoutMs?: number } = {}): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 5000;
  const deadline = Date.now() + timeoutMs;
  await Promise.all(
    killed.map(async (k) => {
      while (processAlive(k.pid, k.start)) {
        if (Date.now() >= deadline) return;
        await new Promise((r) => setTimeout(r, 10));
      }
      await appendLedger(target, k.vm, 'stop', k.pid);
      if (opts.stateDir) await closeLaunchRecord(opts.stateDir, k.vm, k.pid).catch(() => {});
    }),
  );
}

async function closeLaunchRecord(stateDir: string, vm: string, pid: number): Promise<void> {
  const file = vmPaths({ stateDir }, vm).launchRecord;
  const rec = JSON.parse(await readFile(file, 'utf8')) as LaunchRecord;
  if (rec.ledgerOpen && rec.pid === pid) await writeFile(file, JSON.stringify({ ...rec, ledgerOpen: false }), { mode: 0o600 });
}
