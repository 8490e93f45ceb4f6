// Small IPv4 helpers for route checks.

export function ipToInt(ip: string): number {
  return ip.split('.').reduce((acc, octet) => acc * 256 + Number(octet), 0);
}

export function parseCidr(cidr: string): { ip: string; prefix: number } {
  const [ip, prefix] = cidr.split('/');
  return { ip: ip!, prefix: Number(prefix) };
}

export function sameSubnet(a: string, b: string, prefix: number): boolean {
  if (prefix === 0) return true;
  const size = 2 ** (32 - prefix);
  return Math.floor(ipToInt(a) / size) === Math.floor(ipToInt(b) / size);
}

/** True for the network and broadcast addresses of a subnet of /30 or larger. */
export function isNetworkOrBroadcast(ip: string, prefix: number): boolean {
  if (prefix >= 31) return false;
  const size = 2 ** (32 - prefix);
  const offset = ipToInt(ip) % size;
  return offset === 0 || offset === size - 1;
}
