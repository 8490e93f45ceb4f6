// Where the daemon listens for notifications (post-receive hooks, `qwamos notify`): kept apart from the
// daemon so the notify command loads nothing else.
import path from 'node:path';

/** The notification socket: STATE/notify.sock, mode 0600 (only the daemon's user may ask). */
export function notifySocketPath(stateDir: string): string {
  return path.join(stateDir, 'notify.sock');
}
