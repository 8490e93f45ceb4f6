// A QMP event connection to each running VM, so a crash (socket EOF) or a pause by hand is reconciled at
// once. Started by watch() for the VMs already running (adoption after a restart) and by apply for the
// ones it starts or adopts; never by observe.
import { inspect, watchVm } from '../../drivers/qemu.ts';
import type { World } from '../../engine/contract.ts';
import { keyOf, type ObjectKey } from '../../resources/keys.ts';
import { vmPaths, type VmContext } from './context.ts';

/** How often watch() looks for running VMs that have no event connection (e.g. one that failed to connect). */
const RESCAN_MS = 10_000;

export class VmWatchers {
  private readonly watchers = new Map<ObjectKey, { close(): void }>();
  private notify?: (keys: ObjectKey[]) => void;

  constructor(private readonly ctx: VmContext) {}

  start(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    this.notify = notify;
    const scan = async () => {
      for (const r of world().list('VirtualMachine')) {
        const key = keyOf(r);
        if (this.watchers.has(key)) continue;
        const runDir = vmPaths(this.ctx, r.metadata.name).runDir;
        const info = await inspect(runDir, r.metadata.name).catch(() => undefined);
        if (info?.alive && info.ours) this.follow(key, runDir);
      }
    };
    void scan();
    const timer = setInterval(() => void scan(), RESCAN_MS);
    timer.unref();
    return {
      close: () => {
        clearInterval(timer);
        this.notify = undefined;
        for (const w of this.watchers.values()) w.close();
        this.watchers.clear();
      },
    };
  }

  /** Keep an event connection to this VM (no-op when watching is off or it is watched already). */
  follow(key: ObjectKey, runDir: string): void {
    const notify = this.notify;
    if (!notify || this.watchers.has(key)) return;
    // Exit (socket EOF: crash, quit, kill -9) ends the watch; events (STOP, RESUME, ...) keep it.
    const w = watchVm(runDir, (change) => {
      if (change.kind === 'exit') {
        w.close();
        if (this.watchers.get(key) === w) this.watchers.delete(key);
      }
      notify([key]);
    });
    this.watchers.set(key, w);
  }

  forget(key: ObjectKey): void {
    this.watchers.get(key)?.close();
    this.watchers.delete(key);
  }
}
