// Every setting qwamos reads from the environment, read here and only here, with its default.
// Tests point each run at its own directories, prefix and host netns through these variables.
import path from 'node:path';
import { isNetnsName, isPrefix, userChainProblem } from './names.ts';

export interface Config {
  /** The state directory (manifests, status, trust store, VM runtime files). QWAMOS_STATE_DIR */
  stateDir: string;
  /** Public keys trusted to sign manifests. */
  trustDir: string;
  /** Root under which kernels, initrds and disks must live. QWAMOS_IMAGE_ROOT */
  imageRoot: string;
  /** Prefix of every host object qwamos owns (netns, links, nft table). QWAMOS_PREFIX */
  prefix: string;
  /** Run the host side inside this netns instead of the machine's own (tests, demo). QWAMOS_HOST_NETNS */
  hostNetns?: string;
  /** Interface direct traffic leaves by; detected from the default route when unset. QWAMOS_UPLINK */
  uplink?: string;
  /** Resources reconciled at once. QWAMOS_CONCURRENCY */
  concurrency: number;
  /** The daemon's periodic full resync ('60s'). QWAMOS_RESYNC */
  resync: string;
  /** How long a graceful VM stop may take before QEMU is told to quit. QWAMOS_STOP_TIMEOUT_MS */
  stopTimeoutMs: number;
  /** Host TSC frequency for microvm's tsc_early_khz=, when it cannot be read. QWAMOS_TSC_KHZ */
  tscKhz?: number;
  /** Print stack traces of unexpected errors. QWAMOS_DEBUG */
  debug: boolean;
  /** Firewall backend: nftables, iptables, or auto (nftables when `nft` works). QWAMOS_FIREWALL_BACKEND */
  firewallBackend: FirewallBackendChoice;
  /** A file to append one JSON line to per VM start and stop (the cluster tests' ledger). QWAMOS_LEDGER */
  ledger?: string;
  /**
   * A chain the user owns, jumped to for `direct` VMs' forwarded traffic once qwamos' own rules accept
   * it (it can restrict, never open). nftables: a chain in qwamos' table; iptables: a filter chain.
   * Missing: direct VMs fail closed. QWAMOS_FIREWALL_USER_CHAIN (default: none)
   */
  firewallUserChain?: string;
}

export type FirewallBackendChoice = 'auto' | 'nftables' | 'iptables';
const FIREWALL_BACKENDS: readonly FirewallBackendChoice[] = ['auto', 'nftables', 'iptables'];

export const DEFAULT_STATE_DIR = '/var/lib/qwamos';
export const DEFAULT_PREFIX = 'qw';

/** Reads the configuration; throws a one-line error naming the variable when a value is invalid. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const stateDir = path.resolve(env.QWAMOS_STATE_DIR || DEFAULT_STATE_DIR);
  const prefix = env.QWAMOS_PREFIX || DEFAULT_PREFIX;
  if (!isPrefix(prefix)) {
    throw new Error(`QWAMOS_PREFIX must be 2-4 lowercase letters or digits, starting with a letter (got ${JSON.stringify(prefix)})`);
  }
  const hostNetns = env.QWAMOS_HOST_NETNS || undefined;
  if (hostNetns !== undefined && !isNetnsName(hostNetns)) throw new Error(`QWAMOS_HOST_NETNS is not a valid netns name: ${JSON.stringify(hostNetns)}`);
  const firewallBackend = (env.QWAMOS_FIREWALL_BACKEND || 'auto') as FirewallBackendChoice;
  if (!FIREWALL_BACKENDS.includes(firewallBackend)) {
    throw new Error(`QWAMOS_FIREWALL_BACKEND must be auto, nftables or iptables (got ${JSON.stringify(env.QWAMOS_FIREWALL_BACKEND)})`);
  }
  const firewallUserChain = env.QWAMOS_FIREWALL_USER_CHAIN || undefined;
  const chainProblem = firewallUserChain === undefined ? undefined : userChainProblem(firewallUserChain);
  if (chainProblem) throw new Error(`QWAMOS_FIREWALL_USER_CHAIN ${chainProblem} (got ${JSON.stringify(firewallUserChain)})`);
  const tscKhz = env.QWAMOS_TSC_KHZ ? positiveInt('QWAMOS_TSC_KHZ', env.QWAMOS_TSC_KHZ) : undefined;
  return {
    stateDir,
    trustDir: path.join(stateDir, 'trust'),
    imageRoot: path.resolve(env.QWAMOS_IMAGE_ROOT || path.join(stateDir, 'images')),
    prefix,
    ...(hostNetns ? { hostNetns } : {}),
    ...(env.QWAMOS_UPLINK ? { uplink: env.QWAMOS_UPLINK } : {}),
    concurrency: env.QWAMOS_CONCURRENCY ? positiveInt('QWAMOS_CONCURRENCY', env.QWAMOS_CONCURRENCY) : 256,
    resync: resyncDefault(env),
    stopTimeoutMs: env.QWAMOS_STOP_TIMEOUT_MS ? positiveInt('QWAMOS_STOP_TIMEOUT_MS', env.QWAMOS_STOP_TIMEOUT_MS) : 10_000,
    ...(tscKhz ? { tscKhz } : {}),
    debug: debugEnabled(env),
    firewallBackend,
    ...(env.QWAMOS_LEDGER ? { ledger: path.resolve(env.QWAMOS_LEDGER) } : {}),
    ...(firewallUserChain ? { firewallUserChain } : {}),
  };
}

function positiveInt(name: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer (got ${JSON.stringify(value)})`);
  return n;
}

/** The state directory alone (commands that need nothing else). */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  return loadConfig(env).stateDir;
}

/** Public keys trusted to sign manifests. */
export function trustDir(env: NodeJS.ProcessEnv = process.env): string {
  return loadConfig(env).trustDir;
}

/** Largest manifest file read, in bytes. */
export const MAX_MANIFEST_BYTES = 1024 * 1024;
/** Most documents one file may hold. */
export const MAX_DOCUMENTS_PER_FILE = 500;
/** Deepest YAML nesting accepted; manifests need far less. */
export const MAX_YAML_DEPTH = 24;

/** Root under which kernels, initrds and disks must live. */
export function imageRoot(env: NodeJS.ProcessEnv = process.env): string {
  return loadConfig(env).imageRoot;
}

/** Prefix of every host object qwamos owns. */
export function hostPrefix(env: NodeJS.ProcessEnv = process.env): string {
  return loadConfig(env).prefix;
}

/** Print stack traces of unexpected errors (readable before the rest of the configuration is checked). */
export function debugEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  return Boolean(env.QWAMOS_DEBUG);
}

/** The daemon's default resync interval (a CLI option default, read without checking the rest). */
export function resyncDefault(env: NodeJS.ProcessEnv = process.env): string {
  return env.QWAMOS_RESYNC || '60s';
}
