// Event streams from the host network, so drift is seen at once instead of at the next resync:
// `ip monitor` for links, addresses and routes on the host side, and /run/netns for namespaces.
import { spawn } from 'node:child_process';
import { watch, type FSWatcher } from 'node:fs';
import type { NetLayout } from './netns.ts';

export interface Monitor {
  close(): void;
}

/**
 * Calls onChange (debounced) with the VM names whose network may have changed, as far as the events
 * name them ('qwh-dev', netns 'qw-dev'); `all` when an event concerns the prefix but names no VM.
 */
export function watchHostNetwork(layout: NetLayout, onChange: (vms: Set<string> | 'all') => void, debounceMs = 50): Monitor {
  let timer: NodeJS.Timeout | undefined;
  let pending: Set<string> | 'all' = new Set();
  const names = new RegExp(`\\b${layout.prefix}[hvt]?-([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)`, 'g');
  const poke = (text: string) => {
    const vms = [...text.matchAll(names)].map((m) => m[1]!);
    if (vms.length === 0) pending = 'all';
    else if (pending !== 'all') for (const vm of vms) pending.add(vm);
    clearTimeout(timer);
    timer = setTimeout(() => {
      const batch = pending;
      pending = new Set();
      onChange(batch);
    }, debounceMs);
  };

  const argv = [...(layout.hostNetns ? ['-n', layout.hostNetns] : []), 'monitor', 'link', 'address', 'route'];
  const child = spawn('ip', argv, { stdio: ['ignore', 'pipe', 'ignore'] });
  child.on('error', () => {}); // ip missing: the periodic resync still catches drift
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    if (chunk.includes(layout.prefix)) poke(chunk);
  });

  let nsWatcher: FSWatcher | undefined;
  try {
    nsWatcher = watch('/run/netns', (_event, name) => {
      if (!name) poke('');
      else if (name.startsWith(`${layout.prefix}-`)) poke(name);
    });
    nsWatcher.on('error', () => {});
  } catch {
    // No /run/netns yet: nothing to watch until qwamos creates its first namespace.
  }

  return {
    close() {
      clearTimeout(timer);
      nsWatcher?.close();
      if (child.pid !== undefined && child.exitCode === null) child.kill('SIGTERM');
    },
  };
}
