// Event streams from the host network, so drift is seen at once instead of at the next resync:
// `ip monitor` for links, addresses and routes on the host side, and /run/netns for namespaces.
import { spawn } from 'node:child_process';
import { watch, type FSWatcher } from 'node:fs';
import type { NetLayout } from './netns.ts';

export interface Monitor {
  close(): void;
}

/** Calls onChange (debounced) when anything owned by the prefix may have changed. */
export function watchHostNetwork(layout: NetLayout, onChange: () => void, debounceMs = 100): Monitor {
  let timer: NodeJS.Timeout | undefined;
  const poke = () => {
    clearTimeout(timer);
    timer = setTimeout(onChange, debounceMs);
  };
  const argv = [...(layout.hostNetns ? ['-n', layout.hostNetns] : []), 'monitor', 'link', 'address', 'route'];
  const child = spawn('ip', argv, { stdio: ['ignore', 'pipe', 'ignore'] });
  child.on('error', () => {}); // ip missing: the periodic resync still catches drift
  child.stdout.setEncoding('utf8');
  child.stdout.on('data', (chunk: string) => {
    if (chunk.includes(layout.prefix)) poke();
  });

  let nsWatcher: FSWatcher | undefined;
  try {
    nsWatcher = watch('/run/netns', (_event, name) => {
      if (!name || name.startsWith(`${layout.prefix}-`)) poke();
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
