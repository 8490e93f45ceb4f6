// Linux names derived from resource names. Interface names must fit IFNAMSIZ (15 bytes), so a name is
// refused at validation when any of its derived names would not fit.
export const IFNAME_MAX = 15;

export interface DerivedNames {
  netns: string;
  hostIf: string;
  vmIf: string;
  /** The bridge inside the VM netns that the veth's VM end and the tap are ports of. */
  bridge: string;
  tap: string;
}

/** Names of the host objects that carry one VM's network. */
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
