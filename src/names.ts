// The name rules of qwamos in one place: resource names, the host prefix, netns and interface names.
// Drivers, resources and the store all check names against these, so a rule is written once.

/** A resource name: a lowercase DNS label (RFC 1123), at most 63 characters. */
export const DNS_LABEL_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
/** A kind as written in manifests ('VirtualMachine'). */
export const KIND_NAME_RE = /^[A-Z][A-Za-z]{1,62}$/;
/** Prefix of every host object qwamos owns: short, so derived interface names fit 15 bytes. */
export const PREFIX_RE = /^[a-z][a-z0-9]{1,3}$/;
/** A network namespace name as `ip netns` accepts it (a file name under /run/netns). */
export const NETNS_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** An interface name (IFNAMSIZ is 16 bytes with the NUL). */
export const IFNAME_MAX = 15;
export const IFNAME_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
/** sockaddr_un.sun_path is 108 bytes including the NUL. */
export const MAX_SOCKET_PATH = 107;

/**
 * The user's own firewall chain (QWAMOS_FIREWALL_USER_CHAIN): a name both iptables (28 characters) and
 * nft accept, and none qwamos writes itself (QWAMOS-*, the built-in chains, qwamos' nft chain names).
 */
export const USER_CHAIN_RE = /^[A-Za-z][A-Za-z0-9_-]{0,27}$/;
const RESERVED_CHAIN_RE = /^(qwamos.*|input|output|forward|prerouting|postrouting|(out|ret|in|nat)_.*|user_verdict)$/i;

/** Why a name cannot be the user's chain, or undefined when it can. */
export function userChainProblem(name: string): string | undefined {
  if (!USER_CHAIN_RE.test(name)) return 'must be 1-28 letters, digits, `_` or `-`, starting with a letter';
  if (RESERVED_CHAIN_RE.test(name)) return 'is a name qwamos or the kernel uses for its own chains';
  return undefined;
}

export function isDnsLabel(value: unknown): value is string {
  return typeof value === 'string' && DNS_LABEL_RE.test(value);
}

export function isPrefix(value: unknown): value is string {
  return typeof value === 'string' && PREFIX_RE.test(value);
}

export function isNetnsName(value: unknown): value is string {
  return typeof value === 'string' && NETNS_RE.test(value);
}

export function isIfName(value: unknown): value is string {
  return typeof value === 'string' && IFNAME_RE.test(value);
}

/** The host objects that carry one VM's network. */
export interface DerivedNames {
  netns: string;
  hostIf: string;
  vmIf: string;
  /** The bridge inside the VM netns that the veth's VM end and the tap are ports of. */
  bridge: string;
  tap: string;
}

/** Names of the host objects that carry one VM's network (unchecked; see checkedDerivedNames). */
export function derivedNames(prefix: string, vm: string): DerivedNames {
  return { netns: `${prefix}-${vm}`, hostIf: `${prefix}h-${vm}`, vmIf: `${prefix}v-${vm}`, bridge: `${prefix}b-${vm}`, tap: `${prefix}t-${vm}` };
}

/** The longest VM name whose derived names all fit. */
export function maxVmNameLength(prefix: string): number {
  const longest = Math.max(...Object.values(derivedNames(prefix, '')).map((n) => Buffer.byteLength(n)));
  return IFNAME_MAX - longest;
}

/**
 * The first derived interface name that would not fit, or undefined when all fit. The netns name is
 * not an interface and is shorter than they are, so it is not the one to name in a message.
 */
export function tooLongDerivedName(prefix: string, vm: string): string | undefined {
  const { hostIf, vmIf, bridge, tap } = derivedNames(prefix, vm);
  return [hostIf, vmIf, bridge, tap].find((n) => Buffer.byteLength(n) > IFNAME_MAX);
}

/** derivedNames, refusing a prefix or VM name that cannot give valid Linux names. */
export function checkedDerivedNames(prefix: string, vm: string): DerivedNames {
  if (!isPrefix(prefix)) throw new Error(`invalid qwamos prefix ${JSON.stringify(prefix)}`);
  if (!isDnsLabel(vm)) throw new Error(`invalid VM name ${JSON.stringify(vm)}`);
  const tooLong = tooLongDerivedName(prefix, vm);
  if (tooLong) throw new Error(`VM name ${JSON.stringify(vm)} is too long: interface ${tooLong} exceeds ${IFNAME_MAX} bytes`);
  return derivedNames(prefix, vm);
}
