// The user's own chain (QWAMOS_FIREWALL_USER_CHAIN), like Docker's DOCKER-USER: a chain the user owns
// and qwamos never creates, fills, flushes or deletes. A `direct` VM's forwarded packets that qwamos'
// rules accept (both directions, established flows included) go through it before they are accepted:
// a drop there is final, an accept or a return accepts what qwamos accepted anyway, so the user's
// chain can only restrict. tor/i2p/isolated VMs never reach it (their forwarded traffic is dropped
// first), so nothing there can open them. Both backends emit the same shape (see ./nft.ts and
// ./iptables.ts): every accept of a direct VM's forward chains becomes a jump to a small chain qwamos
// owns (`user_verdict` / `QWAMOS-USER`) holding `jump <user chain>; accept`.
import type { VmFirewall } from './ir.ts';

/** The setting that names the chain (read in src/config.ts only). */
export const USER_CHAIN_SETTING = 'QWAMOS_FIREWALL_USER_CHAIN';

/** Whether a compiled VM's accepted forwarded traffic goes through the user's chain. */
export function jumpsToUserChain(fw: VmFirewall): boolean {
  return fw.mode === 'direct' && !fw.failClosed;
}

/**
 * The user's chain is configured but does not exist: every direct VM fails closed (rejects all its
 * traffic) with `reason`, rather than run without the restrictions its owner meant to add. The other
 * modes never use the chain and are unchanged.
 */
export function closeWithoutUserChain(compiled: readonly VmFirewall[], reason: string): VmFirewall[] {
  return compiled.map((fw) =>
    jumpsToUserChain(fw)
      ? {
          ...fw,
          failClosed: reason,
          outbound: { allowEstablished: false, rules: [], defaultAction: 'reject' },
          inbound: { allowEstablished: false },
          toGateway: { rules: [] },
          redirects: [],
        }
      : fw,
  );
}

/** The one-line reason direct VMs are closed while the chain is missing (status names the chain). */
export function userChainMissing(chain: string, where: string): string {
  return `user chain ${chain} (${USER_CHAIN_SETTING}) does not exist in ${where}: direct VMs fail closed until it is created`;
}
