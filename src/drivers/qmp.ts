// A QMP (QEMU Machine Protocol) client over a unix socket: newline-delimited JSON. Connect, read the
// greeting, negotiate `qmp_capabilities`, then `execute` commands whose replies are matched by `id`.
// Events (STOP, RESUME, SHUTDOWN, POWERDOWN, DEVICE_DELETED, ...) can arrive at any time, also between
// a command and its reply: they are set aside in a small backlog and passed to listeners. EOF on the
// socket (QEMU quit, crashed or was killed: SIGKILL sends no event) is reported through onClose().
//
// A QMP socket serves ONE client at a time: a second connection is accepted by the kernel but QEMU never
// greets it until the first one goes away. Keep long-lived connections on their own socket (see qemu.ts,
// which gives every VM a command socket and a watch socket); a missing greeting is reported as "busy".
import net from 'node:net';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpGreeting {
  version: { qemu: { major: number; minor: number; micro: number }; package: string };
  capabilities: string[];
}

export interface QmpConnectOptions {
  /** Give up connecting (socket absent or refusing) and waiting for the greeting after this long. Default 3000 ms. */
  timeoutMs?: number;
  /** Default timeout of each command. Default 5000 ms. */
  commandTimeoutMs?: number;
}

export interface QmpExecuteOptions {
  timeoutMs?: number;
}

/** QEMU answered a command with an error. */
export class QmpError extends Error {
  override name = 'QmpError';
  constructor(
    readonly command: string,
    /** QMP error class, e.g. 'GenericError', 'DeviceNotFound', 'CommandNotFound'. */
    readonly errorClass: string,
    readonly desc: string,
  ) {
    super(`QMP ${command}: ${desc}`);
  }
}

/** The connection is gone, or never came up, or a reply did not come in time. */
export class QmpConnectionError extends Error {
  override name = 'QmpConnectionError';
  constructor(
    message: string,
    /** errno code of the socket error when there was one (ENOENT, ECONNREFUSED, ECONNRESET, ...). */
    readonly code?: string,
  ) {
    super(message);
  }
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

const EVENT_BACKLOG = 256;
const CMD_RE = /^[a-z][a-z0-9_-]{0,63}$/i;

export class QmpClient {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private readonly eventListeners = new Set<(ev: QmpEvent) => void>();
  private readonly closeListeners = new Set<(err?: Error) => void>();
  private readonly backlog: QmpEvent[] = [];
  private closedWith: { err?: Error } | undefined;
  private greetingWaiter: ((g: QmpGreeting | Error) => void) | undefined;
  /** Set once the greeting was read (connect() resolves only after it). */
  greeting!: QmpGreeting;

  private constructor(
    private readonly socket: net.Socket,
    readonly socketPath: string,
    private readonly commandTimeoutMs: number,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.onData(chunk));
    // ECONNRESET after `quit`, EPIPE on a write to a dead QEMU: end the connection, never crash the process.
    socket.on('error', (err: NodeJS.ErrnoException) => this.finish(err));
    socket.on('close', () => this.finish());
    socket.on('end', () => this.finish());
  }

  /** Connect, read the greeting and negotiate capabilities. Retries while the socket is absent or refusing. */
  static async connect(socketPath: string, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const timeoutMs = opts.timeoutMs ?? 3000;
    const deadline = Date.now() + timeoutMs;
    let delay = 5;
    for (;;) {
      const socket = await openSocket(socketPath, Math.max(1, deadline - Date.now())).catch((err: NodeJS.ErrnoException) => err);
      if (socket instanceof net.Socket) {
        const client = new QmpClient(socket, socketPath, opts.commandTimeoutMs ?? 5000);
        try {
          client.greeting = await client.readGreeting(Math.max(50, deadline - Date.now()));
          await client.execute('qmp_capabilities', undefined, { timeoutMs: Math.max(50, deadline - Date.now()) });
          return client;
        } catch (err) {
          client.close();
          throw err;
        }
      }
      const code = socket.code;
      const retriable = code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'EAGAIN';
      if (!retriable || Date.now() + delay >= deadline) {
        const why = code === 'ENOENT' ? 'no such socket' : code === 'ECONNREFUSED' ? 'connection refused (QEMU not running?)' : socket.message;
        throw new QmpConnectionError(`QMP ${socketPath}: ${why}`, code);
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 100);
    }
  }

  /** True once the socket has closed (EOF, error or close()). */
  get closed(): boolean {
    return this.closedWith !== undefined;
  }

  /**
   * Run a QMP command; resolves with its `return` value. Rejects with QmpError when QEMU answers with an
   * error, QmpConnectionError on timeout or when the connection closes first. `quit` also resolves when
   * QEMU closes the socket before its reply arrives.
   */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: QmpExecuteOptions = {}): Promise<T> {
    if (!CMD_RE.test(command)) return Promise.reject(new Error(`invalid QMP command name ${JSON.stringify(command)}`));
    if (this.closedWith) return Promise.reject(new QmpConnectionError(`QMP ${command}: connection closed`));
    const id = `q${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new QmpConnectionError(`QMP ${command}: no reply within ${timeoutMs} ms`, 'ETIMEDOUT'));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      const msg: Record<string, unknown> = { execute: command, id };
      if (args !== undefined) msg.arguments = args;
      this.socket.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Listen to every QMP event; returns a function that removes the listener. */
  onEvent(cb: (ev: QmpEvent) => void): () => void {
    this.eventListeners.add(cb);
    return () => this.eventListeners.delete(cb);
  }

  /** Called once when the connection ends (EOF, socket error, or close()); at once if already closed. */
  onClose(cb: (err?: Error) => void): () => void {
    if (this.closedWith) {
      const err = this.closedWith.err;
      queueMicrotask(() => cb(err));
      return () => {};
    }
    this.closeListeners.add(cb);
    return () => this.closeListeners.delete(cb);
  }

  /** Events received so far (oldest first, at most the last 256), and forget them. */
  drainEvents(): QmpEvent[] {
    return this.backlog.splice(0, this.backlog.length);
  }

  /**
   * Wait for an event named `name` (optionally matching `filter`). Looks at the backlog first, so an
   * event that arrived before the reply of the command that caused it is not missed.
   */
  waitEvent(name: string, timeoutMs: number, filter?: (ev: QmpEvent) => boolean): Promise<QmpEvent> {
    const match = (ev: QmpEvent) => ev.event === name && (!filter || filter(ev));
    const i = this.backlog.findIndex(match);
    if (i >= 0) return Promise.resolve(this.backlog.splice(i, 1)[0]!);
    return new Promise((resolve, reject) => {
      const done = (fn: () => void) => {
        clearTimeout(timer);
        offEvent();
        offClose();
        fn();
      };
      const timer = setTimeout(() => done(() => reject(new QmpConnectionError(`QMP: no ${name} event within ${timeoutMs} ms`, 'ETIMEDOUT'))), timeoutMs);
      const offEvent = this.onEvent((ev) => {
        if (!match(ev)) return;
        const j = this.backlog.indexOf(ev);
        if (j >= 0) this.backlog.splice(j, 1);
        done(() => resolve(ev));
      });
      const offClose = this.onClose(() => done(() => reject(new QmpConnectionError(`QMP: connection closed while waiting for ${name}`))));
    });
  }

  /** Close the connection (pending commands are rejected). */
  close(): void {
    this.socket.destroy();
    this.finish();
  }

  // ------------------------------------------------------------------------------------------ internals

  private readGreeting(timeoutMs: number): Promise<QmpGreeting> {
    if (this.greeting) return Promise.resolve(this.greeting);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.greetingWaiter = undefined;
        reject(new QmpConnectionError(`QMP ${this.socketPath}: no greeting within ${timeoutMs} ms (socket busy with another client?)`, 'ETIMEDOUT'));
      }, timeoutMs);
      this.greetingWaiter = (g) => {
        clearTimeout(timer);
        this.greetingWaiter = undefined;
        if (g instanceof Error) reject(g);
        else resolve(g);
      };
    });
  }

  private onData(chunk: string): void {
    this.buf += chunk;
    if (this.buf.length > 64 * 1024 * 1024) {
      this.socket.destroy();
      this.finish(new Error('QMP: reply larger than 64 MiB'));
      return;
    }
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // not JSON: ignore (QMP never sends this)
    }
    if ('QMP' in msg) {
      this.greeting = msg.QMP as QmpGreeting;
      this.greetingWaiter?.(this.greeting);
      return;
    }
    if (typeof msg.event === 'string') {
      const ev: QmpEvent = {
        event: msg.event,
        ...(isRecord(msg.data) ? { data: msg.data } : {}),
        ...(isRecord(msg.timestamp) ? { timestamp: { seconds: Number(msg.timestamp.seconds), microseconds: Number(msg.timestamp.microseconds) } } : {}),
      };
      this.backlog.push(ev);
      if (this.backlog.length > EVENT_BACKLOG) this.backlog.shift();
      for (const cb of [...this.eventListeners]) {
        try {
          cb(ev);
        } catch {
          // a listener's bug must not break the protocol
        }
      }
      return;
    }
    const id = typeof msg.id === 'string' ? msg.id : undefined;
    const p = id !== undefined ? this.pending.get(id) : undefined;
    if (!p || id === undefined) return; // late reply after a timeout, or a reply without id
    this.pending.delete(id);
    clearTimeout(p.timer);
    if ('error' in msg) {
      const e = (msg.error ?? {}) as { class?: string; desc?: string };
      p.reject(new QmpError(p.command, e.class ?? 'GenericError', oneLine(e.desc ?? 'error')));
    } else p.resolve(msg.return);
  }

  private finish(err?: NodeJS.ErrnoException | Error): void {
    if (this.closedWith) return;
    this.closedWith = err ? { err } : {};
    this.socket.destroy();
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    this.greetingWaiter?.(new QmpConnectionError(`QMP ${this.socketPath}: closed before the greeting${err ? ` (${err.message})` : ''}`, code));
    for (const [id, p] of this.pending) {
      this.pending.delete(id);
      clearTimeout(p.timer);
      if (p.command === 'quit') p.resolve({});
      else p.reject(new QmpConnectionError(`QMP ${p.command}: connection closed${err ? ` (${oneLine(err.message)})` : ''}`, code));
    }
    for (const cb of [...this.closeListeners]) {
      try {
        cb(err);
      } catch {
        // ignore
      }
    }
    this.closeListeners.clear();
  }
}

function openSocket(socketPath: string, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.createConnection({ path: socketPath });
    const timer = setTimeout(() => {
      s.destroy();
      reject(Object.assign(new Error(`connect timed out after ${timeoutMs} ms`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    s.once('connect', () => {
      clearTimeout(timer);
      s.removeAllListeners('error');
      resolve(s);
    });
    s.once('error', (err) => {
      clearTimeout(timer);
      s.destroy();
      reject(err);
    });
  });
}

/** Connect, run one command, close. */
export async function qmpOnce<T = unknown>(
  socketPath: string,
  command: string,
  args?: Record<string, unknown>,
  opts: QmpConnectOptions = {},
): Promise<T> {
  const client = await QmpClient.connect(socketPath, opts);
  try {
    return await client.execute<T>(command, args);
  } finally {
    client.close();
  }
}

// ------------------------------------------------------------------------------------ typed commands

/** QEMU's RunState (query-status .status). */
export type QemuRunState =
  | 'running'
  | 'paused'
  | 'shutdown'
  | 'prelaunch'
  | 'inmigrate'
  | 'postmigrate'
  | 'finish-migrate'
  | 'internal-error'
  | 'io-error'
  | 'guest-panicked'
  | 'suspended'
  | 'watchdog'
  | 'debug'
  | 'restore-vm'
  | 'save-vm'
  | 'colo';

export interface QmpStatus {
  status: QemuRunState;
  running: boolean;
}

export async function queryStatusQmp(client: QmpClient): Promise<QmpStatus> {
  const r = await client.execute<{ status: QemuRunState; running: boolean }>('query-status');
  return { status: r.status, running: r.running };
}

/** A device of the VM, as seen through QOM (devices added with -device / device_add) and query-pci. */
export interface QemuDevice {
  /**
   * What device_del accepts: the device's id, or its QOM path when it has none
   * (/machine/peripheral-anon/device[N]); `pci:BB:SS.F` for a built-in PCI device (not removable).
   */
  id: string;
  /** Added with an id (`-device ...,id=X` / device_add id). */
  named: boolean;
  /**
   * Only seen through query-pci, without an id: part of the machine (host bridge, ISA bridge, ...), or a
   * PCI device added without an id, which is then also listed (without class) under peripheral-anon.
   */
  builtin: boolean;
  /** QOM path, for devices under /machine/peripheral or /machine/peripheral-anon. */
  path?: string;
  /** QOM type (driver), e.g. 'virtio-gpu-pci'; absent for built-in devices. */
  type?: string;
  /** From query-pci (q35; microvm has no PCI): bus/slot/function, class and ids. */
  pci?: { bus: number; slot: number; function: number; classCode: number; classDesc?: string; vendorId: number; deviceId: number };
  /** A GPU / display adapter (see isGpuDevice). */
  gpu: boolean;
}

/** Device types that are display adapters whatever the bus. */
const GPU_TYPE_RE = /(^|-)(gpu|vga|display|svga|qxl|ramfb)(-|$)/i;

/**
 * A GPU / display adapter: PCI class 0x03xx when the class is known, else by driver name. A vfio-pci
 * device whose class is unknown (added without an id, so query-pci cannot be matched to it) counts as
 * one: passing an unknown host device through is treated like a GPU (fail closed).
 */
export function isGpuDevice(d: Pick<QemuDevice, 'type' | 'pci'>): boolean {
  if (d.pci) return d.pci.classCode >> 8 === 0x03;
  if (d.type === undefined) return false;
  return GPU_TYPE_RE.test(d.type) || /^vfio-pci/.test(d.type);
}

interface QomProp {
  name: string;
  type: string;
}
interface PciDev {
  bus: number;
  slot: number;
  function: number;
  qdev_id?: string;
  class_info: { class: number; desc?: string };
  id: { vendor: number; device: number };
  pci_bridge?: { bus?: unknown; devices?: PciDev[] };
}

/**
 * Every device of the VM: `qom-list` of /machine/peripheral (devices with an id) and
 * /machine/peripheral-anon (without), on both machines, merged with `query-pci` by id (q35: adds the PCI
 * class, and the machine's built-in PCI devices; devices behind bridges included). Three QMP commands,
 * sent at once.
 */
export async function listDevices(client: QmpClient): Promise<QemuDevice[]> {
  const [named, anon, pci] = await Promise.all([
    client.execute<QomProp[]>('qom-list', { path: '/machine/peripheral' }).catch(() => [] as QomProp[]),
    client.execute<QomProp[]>('qom-list', { path: '/machine/peripheral-anon' }).catch(() => [] as QomProp[]),
    client.execute<{ bus: number; devices: PciDev[] }[]>('query-pci').catch(() => []),
  ]);
  const out: QemuDevice[] = [];
  const byId = new Map<string, QemuDevice>();
  const childType = (t: string) => /^child<(.+)>$/.exec(t)?.[1];
  for (const p of named) {
    const type = childType(p.type);
    if (!type) continue;
    const d: QemuDevice = { id: p.name, named: true, builtin: false, path: `/machine/peripheral/${p.name}`, type, gpu: false };
    out.push(d);
    byId.set(p.name, d);
  }
  for (const p of anon) {
    const type = childType(p.type);
    if (type) out.push({ id: `/machine/peripheral-anon/${p.name}`, named: false, builtin: false, path: `/machine/peripheral-anon/${p.name}`, type, gpu: false });
  }
  const hex = (n: number) => n.toString(16).padStart(2, '0');
  const walk = (devs: PciDev[]) => {
    for (const dev of devs) {
      const info = {
        bus: dev.bus,
        slot: dev.slot,
        function: dev.function,
        classCode: dev.class_info.class,
        ...(dev.class_info.desc ? { classDesc: dev.class_info.desc } : {}),
        vendorId: dev.id.vendor,
        deviceId: dev.id.device,
      };
      const known = dev.qdev_id ? byId.get(dev.qdev_id) : undefined;
      if (known) known.pci = info;
      // Unnamed: built in, or added without an id (then it is also under peripheral-anon, without class).
      else if (!dev.qdev_id) out.push({ id: `pci:${hex(dev.bus)}:${hex(dev.slot)}.${dev.function}`, named: false, builtin: true, pci: info, gpu: false });
      if (dev.pci_bridge?.devices) walk(dev.pci_bridge.devices);
    }
  };
  for (const bus of pci) walk(bus.devices ?? []);
  for (const d of out) d.gpu = isGpuDevice(d);
  // QOM lists children in hash order: sort so the result is stable (added devices first, by id).
  return out.sort((x, y) => Number(x.builtin) - Number(y.builtin) || (x.id < y.id ? -1 : x.id > y.id ? 1 : 0));
}

/** `device_add`. Note: QEMU 7.2 refuses to hot-plug virtio-gpu ("expects a pluggable device type"). */
export async function deviceAdd(client: QmpClient, driver: string, id: string, props: Record<string, unknown> = {}): Promise<void> {
  await client.execute('device_add', { ...props, driver, id });
}

/**
 * `device_del`, then wait for DEVICE_DELETED (the guest must acknowledge a PCI unplug; without a guest
 * driver it never comes). Resolves false when the event did not come within waitMs.
 */
export async function deviceDel(client: QmpClient, id: string, waitMs = 0): Promise<boolean> {
  await client.execute('device_del', { id });
  if (waitMs <= 0) return false;
  try {
    await client.waitEvent('DEVICE_DELETED', waitMs, (ev) => ev.data?.device === id);
    return true;
  } catch {
    return false;
  }
}

function oneLine(s: string): string {
  return s.split('\n')[0]!.trim();
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
