// Linux names derived from resource names. Interface names must fit IFNAMSIZ (15 bytes), so a name is
// refused at validation when any of its derived names would not fit.
export const IFNAME_MAX = 15;

export interface DerivedNames {
  netns: string;
  hostIf: string;
  vmIf: string;
  tap: string;
}

/** Names of the host objects that carry one VM's network. */
export function derivedNames(prefix: string, vm: string): DerivedNames {
  return { netns: `${prefix}-${vm}`, hostIf: `${prefix}h-${vm}`, vmIf: `${prefix}v-${vm}`, tap: `${prefix}t-${vm}` };
}

/** The longest VM name whose derived names all fit. */
export function maxVmNameLength(prefix: string): number {
  const longest = Math.max(...Object.values(derivedNames(prefix, '')).map((n) => Buffer.byteLength(n)));
  return IFNAME_MAX - longest;
}

/** Names that would not fit, with the offending derived name, or undefined when all fit. */
export function tooLongDerivedName(prefix: string, vm: string): string | undefined {
  return Object.values(derivedNames(prefix, vm)).find((n) => Buffer.byteLength(n) > IFNAME_MAX);
}
