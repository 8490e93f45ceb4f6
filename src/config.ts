// Where qwamos keeps its state and how it names what it creates on the host.
// Everything is read from the environment so tests can point each run at its own directories and prefix.
import path from 'node:path';

/** The state directory (manifests, status, keys' trust store, VM runtime files). */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(env.QWAMOS_STATE_DIR || '/var/lib/qwamos');
}

/** Public keys trusted to sign manifests. */
export function trustDir(env: NodeJS.ProcessEnv = process.env): string {
  return path.join(stateDir(env), 'trust');
}

/** Root under which kernels, initrds and disk backing images must live. */
export function imageRoot(env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(env.QWAMOS_IMAGE_ROOT || path.join(stateDir(env), 'images'));
}

/**
 * Prefix of every host object qwamos owns (netns, links, nft table). Short, so derived interface
 * names stay within the kernel's 15 bytes; tests set their own to stay apart from anything else.
 */
export function hostPrefix(env: NodeJS.ProcessEnv = process.env): string {
  const prefix = env.QWAMOS_PREFIX || 'qw';
  if (!/^[a-z][a-z0-9]{1,3}$/.test(prefix)) {
    throw new Error(`QWAMOS_PREFIX must be 2-4 lowercase letters or digits, starting with a letter (got ${JSON.stringify(prefix)})`);
  }
  return prefix;
}

/** Largest manifest file read, in bytes. */
export const MAX_MANIFEST_BYTES = 1024 * 1024;
/** Most documents one file may hold. */
export const MAX_DOCUMENTS_PER_FILE = 500;
/** Deepest YAML nesting accepted; manifests need far less. */
export const MAX_YAML_DEPTH = 24;
