// Two independent checks that no VM ever ran twice across the cluster's nodes:
//  - the ledger: every node's VM driver appends a JSON line {"vm","node","event":"start"|"stop","pid","at"}
//    to one shared file (QWAMOS_LEDGER): start before QEMU spawns, stop once it is confirmed gone (the
//    fencer appends stop for what it killed; the tests append stop for what they killed themselves). Each
//    VM's copies become intervals [start, stop) per node; two intervals of one VM that intersect are an
//    overlap ("a start on one node before the stop of a live copy on another").
//  - the observer: polls /proc every ~100 ms for the QEMUs of each node's state dir (found by command
//    line, as the VM controller and the fencer find them) and records any moment two live copies of one
//    VM existed.
import { readdir, readFile } from 'node:fs/promises';
import { vmPaths } from '../../src/controllers/vm/context.ts';
import { scanQemuProcesses, vmProcesses } from '../../src/drivers/qemu.ts';

export interface LedgerEvent {
  vm: string;
  node: string;
  event: 'start' | 'stop';
  pid?: number;
  /** Epoch ms. */
  at: number;
  /** 1-based line in the ledger file. */
  line: number;
}

export interface Interval {
  vm: string;
  node: string;
  pid?: number;
  start: number;
  /** Undefined while the copy may still be live. */
  stop?: number;
  startLine: number;
}

export interface Overlap {
  vm: string;
  a: Interval;
  b: Interval;
}

export interface LedgerReport {
  events: LedgerEvent[];
  intervals: Interval[];
  overlaps: Overlap[];
  /** Stops that matched no open start (harmless: e.g. a copy stopped twice over). */
  unmatchedStops: LedgerEvent[];
}

function toMs(at: unknown): number {
  if (typeof at === 'number' && Number.isFinite(at)) return at;
  if (typeof at === 'string') {
    const ms = Date.parse(at);
    if (Number.isFinite(ms)) return ms;
  }
  return NaN;
}

/** Parses the ledger's JSON lines; throws naming the line of anything that is not a ledger event. */
export function parseLedger(text: string): LedgerEvent[] {
  const events: LedgerEvent[] = [];
  text.split('\n').forEach((raw, i) => {
    if (raw.trim() === '') return;
    let v: Record<string, unknown>;
    try {
      v = JSON.parse(raw) as Record<string, unknown>;
    } catch {
      throw new Error(`ledger line ${i + 1} is not JSON: ${raw.slice(0, 120)}`);
    }
    const at = toMs(v.at);
    if (typeof v.vm !== 'string' || typeof v.node !== 'string' || (v.event !== 'start' && v.event !== 'stop') || Number.isNaN(at)) {
      throw new Error(`ledger line ${i + 1} is not a start/stop event with vm, node and at: ${raw.slice(0, 120)}`);
    }
    events.push({ vm: v.vm, node: v.node, event: v.event, ...(typeof v.pid === 'number' ? { pid: v.pid } : {}), at, line: i + 1 });
  });
  return events;
}

/** Each VM's copies per node, and every pair of copies of one VM that were live at the same time. */
export function checkLedger(events: readonly LedgerEvent[]): LedgerReport {
  // Lines come from several processes: order by time, then by position in the file.
  const ordered = [...events].sort((x, y) => x.at - y.at || x.line - y.line);
  const intervals: Interval[] = [];
  const open = new Map<string, Interval[]>(); // vm@node -> open intervals, oldest first
  const unmatchedStops: LedgerEvent[] = [];
  for (const e of ordered) {
    const key = `${e.vm}@${e.node}`;
    const list = open.get(key) ?? [];
    if (e.event === 'start') {
      const iv: Interval = { vm: e.vm, node: e.node, start: e.at, startLine: e.line, ...(e.pid !== undefined ? { pid: e.pid } : {}) };
      intervals.push(iv);
      list.push(iv);
      open.set(key, list);
      continue;
    }
    // A stop closes the copy with its PID, else the newest open one on that node.
    let idx = e.pid !== undefined ? list.findIndex((iv) => iv.pid === e.pid) : -1;
    if (idx < 0) idx = list.length - 1;
    if (idx < 0) {
      unmatchedStops.push(e);
      continue;
    }
    list[idx]!.stop = e.at;
    list.splice(idx, 1);
  }
  const overlaps: Overlap[] = [];
  const byVm = new Map<string, Interval[]>();
  for (const iv of intervals) byVm.set(iv.vm, [...(byVm.get(iv.vm) ?? []), iv]);
  for (const [vm, list] of byVm) {
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length; j++) {
        const a = list[i]!;
        const b = list[j]!;
        // [start, stop): a copy started exactly when another was confirmed gone does not overlap it.
        if (a.start < (b.stop ?? Infinity) && b.start < (a.stop ?? Infinity)) overlaps.push({ vm, a, b });
      }
    }
  }
  return { events: ordered, intervals, overlaps, unmatchedStops };
}

export function describeInterval(iv: Interval): string {
  const t = (ms: number) => new Date(ms).toISOString().slice(11, 23);
  return `${iv.node}${iv.pid !== undefined ? ` pid ${iv.pid}` : ''} [${t(iv.start)}, ${iv.stop === undefined ? 'still live' : t(iv.stop)}) (line ${iv.startLine})`;
}

export function describeOverlaps(overlaps: readonly Overlap[]): string {
  return overlaps.map((o) => `VM ${o.vm}: ${describeInterval(o.a)} overlaps ${describeInterval(o.b)}`).join('\n');
}

export async function readLedger(file: string): Promise<LedgerEvent[]> {
  return parseLedger(await readFile(file, 'utf8').catch((err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? '' : Promise.reject(err))));
}

/** Throws, listing every overlap, when the ledger shows two live copies of a VM at one time. */
export async function assertLedgerClean(file: string): Promise<LedgerReport> {
  const report = checkLedger(await readLedger(file));
  if (report.overlaps.length > 0) throw new Error(`the ledger shows ${report.overlaps.length} overlapping copies:\n${describeOverlaps(report.overlaps)}`);
  return report;
}

// ------------------------------------------------------------------------------------------ observer

export interface ObservedNode {
  name: string;
  stateDir: string;
}

export interface Copy {
  node: string;
  pid: number;
}

export interface Duplicate {
  at: number;
  vm: string;
  copies: Copy[];
}

/** This moment's live QEMUs per VM, across the nodes (one /proc scan). */
export async function liveCopies(nodes: readonly ObservedNode[]): Promise<Map<string, Copy[]>> {
  const procs = await scanQemuProcesses();
  const copies = new Map<string, Copy[]>();
  for (const n of nodes) {
    const vms = await readdir(`${n.stateDir}/vms`).catch(() => [] as string[]);
    for (const vm of vms) {
      for (const q of vmProcesses(procs, vmPaths({ stateDir: n.stateDir }, vm).runDir, vm)) {
        copies.set(vm, [...(copies.get(vm) ?? []), { node: n.name, pid: q.pid }]);
      }
    }
  }
  return copies;
}

/** Polls /proc every `intervalMs` and records every moment a VM had two live copies. */
export class CopyObserver {
  readonly duplicates: Duplicate[] = [];
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private polls = 0;
  private tick: Promise<void> = Promise.resolve();
  /** The last poll's copies (what the tests can look at without another scan). */
  latest = new Map<string, Copy[]>();

  constructor(private readonly nodes: () => readonly ObservedNode[], private readonly intervalMs = 100) {}

  start(): void {
    if (this.running) return;
    this.running = true;
    const loop = () => {
      if (!this.running) return;
      this.tick = this.poll().catch(() => {});
      void this.tick.then(() => {
        if (this.running) this.timer = setTimeout(loop, this.intervalMs);
      });
    };
    loop();
  }

  async stop(): Promise<void> {
    this.running = false;
    clearTimeout(this.timer);
    await this.tick;
  }

  get pollCount(): number {
    return this.polls;
  }

  private async poll(): Promise<void> {
    const copies = await liveCopies(this.nodes());
    const at = Date.now();
    this.polls++;
    this.latest = copies;
    for (const [vm, list] of copies) if (list.length > 1) this.duplicates.push({ at, vm, copies: list });
  }

  describe(): string {
    return this.duplicates
      .slice(0, 20)
      .map((d) => `${new Date(d.at).toISOString().slice(11, 23)} VM ${d.vm}: ${d.copies.map((c) => `${c.node} pid ${c.pid}`).join(', ')}`)
      .join('\n');
  }
}
