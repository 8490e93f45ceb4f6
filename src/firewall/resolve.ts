// Name resolution for rules' dstHost, kept out of the pure compiler so tests can stub it.
import { lookup } from 'node:dns/promises';
import { namesToResolve, type NameResolution, type PolicyRule } from './compile.ts';

export interface NameResolver {
  /** IPv4 addresses of a name; throws (or returns none) when it does not resolve. */
  resolve(name: string): Promise<string[]>;
}

/** The system resolver (getaddrinfo), IPv4 only. */
export const systemResolver: NameResolver = {
  async resolve(name) {
    const found = await lookup(name, { all: true, family: 4 });
    return found.map((a) => a.address);
  },
};

/** Resolve every name the rules use; a failure is recorded per name, never thrown. */
export async function resolveNames(rules: readonly PolicyRule[], resolver: NameResolver): Promise<Map<string, NameResolution>> {
  const out = new Map<string, NameResolution>();
  await Promise.all(
    namesToResolve(rules).map(async (name) => {
      try {
        out.set(name, { addresses: await resolver.resolve(name) });
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        out.set(name, { error: code ?? (err instanceof Error ? err.message.split('\n')[0]! : String(err)) });
      }
    }),
  );
  return out;
}
