// Generated from schemas/*.json by `npm run gen:types`. Do not edit.
/* eslint-disable */

/**
 * A QEMU virtual machine kept in its declared run state.
 */
export interface VirtualMachine {
  apiVersion: 'qwamos.io/v1alpha1';
  kind: 'VirtualMachine';
  metadata: Metadata;
  spec: VirtualMachineSpec;
}
export interface Metadata {
  /**
   * a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  name: string;
  labels?: Labels;
  annotations?: {
    [k: string]: string | undefined;
  };
}
export interface Labels {
  /**
   * a label value (letters, digits, '-', '_', '.', at most 63 characters)
   */
  [k: string]: string | undefined;
}
export interface VirtualMachineSpec {
  /**
   * KubeVirt's meaning: Running keeps it running, Stopped keeps it off, Paused keeps it paused, RerunOnFailure restarts it only when it fails.
   */
  runStrategy?: 'Running' | 'Stopped' | 'Paused' | 'RerunOnFailure';
  cpus?: number;
  /**
   * a size such as 512Mi or 2Gi
   */
  memory?: string;
  machine?: 'microvm' | 'q35';
  accel?: 'auto' | 'kvm' | 'tcg';
  boot?: Boot;
  /**
   * @maxItems 16
   */
  disks?: Disk[];
  network?: Network;
  gpu?: Gpu;
  placement?: Placement;
  /**
   * In a cluster, what happens when the node running this VM is lost: Restart starts it on another node, Never leaves it down. Default: Never for a VM pinned to a node (placement.node) or with a passthrough GPU (vfio), else Restart.
   */
  failover?: 'Restart' | 'Never';
  /**
   * @maxItems 64
   */
  dependsOn?: Dependency[];
  driftPolicy?: 'heal' | 'warn';
  /**
   * What a spec change that needs a restart does to a running VM: Manual sets the RestartRequired condition, Restart restarts it.
   */
  updatePolicy?: 'Manual' | 'Restart';
  /**
   * What happens to the VM's disks when the VM is deleted.
   */
  deletionPolicy?: 'Retain' | 'Delete';
}
export interface Boot {
  /**
   * a relative path under the image root (no '..', not absolute)
   */
  kernel: string;
  /**
   * a relative path under the image root (no '..', not absolute)
   */
  initrd?: string;
  cmdline?: string;
}
export interface Disk {
  /**
   * a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  name: string;
  /**
   * a size such as 512Mi or 2Gi
   */
  size: string;
  /**
   * a relative path under the image root (no '..', not absolute)
   */
  backingImage?: string;
  readOnly?: boolean;
}
export interface Network {
  /**
   * a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  route: string;
}
export interface Gpu {
  /**
   * a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  trustLevel: string;
}
export interface Placement {
  /**
   * a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  node?: string;
  nodeSelector?: Labels;
  /**
   * a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  antiAffinityGroup?: string;
}
export interface Dependency {
  kind?: 'VirtualMachine' | 'Route' | 'FirewallPolicy' | 'GpuTrustLevel' | 'ClusterNode';
  /**
   * a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  name: string;
}

/**
 * One VM's network attachment: a netns per VM, a veth pair to the host side, a tap for QEMU.
 */
export interface Route {
  apiVersion: 'qwamos.io/v1alpha1';
  kind: 'Route';
  metadata: Metadata;
  spec: RouteSpec;
}
export interface RouteSpec {
  /**
   * a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  vm: string;
  /**
   * isolated: nothing leaves the VM's netns; direct: forwarded and NATed; tor: fail-closed through Tor; i2p: only the I2P proxy ports.
   */
  mode: 'tor' | 'i2p' | 'direct' | 'isolated';
  /**
   * an IPv4 address with prefix length such as 10.8.0.2/24
   */
  address?: string;
  /**
   * an IPv4 address such as 10.8.0.1
   */
  gateway?: string;
  dns?: 'tor' | 'dnscrypt' | 'host' | 'none';
  driftPolicy?: 'heal' | 'warn';
}

/**
 * Qubes' per-VM firewall model: ordered rules, first match wins, unmatched traffic gets the default action.
 */
export interface FirewallPolicy {
  apiVersion: 'qwamos.io/v1alpha1';
  kind: 'FirewallPolicy';
  metadata: Metadata;
  spec: FirewallPolicySpec;
}
export interface FirewallPolicySpec {
  /**
   * @minItems 1
   * @maxItems 256
   *
   * Items: a lowercase DNS label (a-z, 0-9, '-', starting with a letter, at most 63 characters)
   */
  vms?: [string, ...string[]];
  selector?: Selector;
  defaultAction?: 'drop' | 'reject' | 'accept';
  /**
   * @maxItems 1024
   */
  rules?: FirewallRule[];
}
export interface Selector {
  matchLabels: Labels;
}
export interface FirewallRule {
  action: 'accept' | 'drop' | 'reject';
  /**
   * an IPv4 address, an IPv4 network such as 10.0.0.0/8, or a host name
   */
  dstHost?: string;
  proto?: 'tcp' | 'udp' | 'icmp';
  /**
   * a port such as 443 or a range such as 8000-8100
   */
  dstPorts?: string;
  icmpType?: number;
  specialTarget?: 'dns';
  /**
   * an RFC 3339 time such as 2026-12-31T23:59:59Z
   */
  expire?: string;
  comment?: string;
}

/**
 * Overrides one of the five built-in GPU trust levels (by name) or declares a new one.
 */
export interface GpuTrustLevel {
  apiVersion: 'qwamos.io/v1alpha1';
  kind: 'GpuTrustLevel';
  metadata: Metadata;
  spec: GpuTrustLevelSpec;
}
export interface GpuTrustLevelSpec {
  level: number;
  /**
   * The QEMU device that provides what the level allows.
   */
  device?: 'none' | 'virtio-gpu' | 'virgl' | 'venus' | 'vfio';
  vramMiB?: number;
  allowVulkan?: boolean;
  allowCompute?: boolean;
  requireIommu?: boolean;
  /**
   * a PCI address such as 0000:01:00.0
   */
  hostDevice?: string;
}

/**
 * A host that runs the qwamos controller for the VMs placed on it.
 */
export interface ClusterNode {
  apiVersion: 'qwamos.io/v1alpha1';
  kind: 'ClusterNode';
  metadata: Metadata;
  spec: ClusterNodeSpec;
}
export interface ClusterNodeSpec {
  /**
   * an IPv4 address such as 10.8.0.1
   */
  address: string;
  role: 'coordinator' | 'worker' | 'standby';
  capacity?: Capacity;
  labels?: Labels;
  publicKey: PublicKey;
}
export interface Capacity {
  cpus?: number;
  /**
   * a size such as 512Mi or 2Gi
   */
  memory?: string;
}
export interface PublicKey {
  alg: 'ml-dsa-65' | 'ml-dsa-87';
  keyId?: string;
  /**
   * the public key in base64
   */
  value: string;
}

/**
 * a git branch or tag name
 */
export type GitRefName = string;
/**
 * a full commit id (40 lowercase hex digits)
 */
export type GitCommit = string;

/**
 * A git repository of signed manifests the controller follows: each revision under path is verified and applied whole, or not at all.
 */
export interface GitSource {
  apiVersion: 'qwamos.io/v1alpha1';
  kind: 'GitSource';
  metadata: Metadata;
  spec: GitSourceSpec;
}
export interface GitSourceSpec {
  /**
   * an absolute path of a local repository, or an http:// or https:// URL without credentials
   */
  url: string;
  ref?: GitSourceRef;
  /**
   * a relative directory inside the repository (no '..', not absolute)
   */
  path?: string;
  /**
   * a duration such as 500ms, 30s, 5m or 1h
   */
  interval?: string;
  /**
   * a duration such as 500ms, 30s, 5m or 1h
   */
  timeout?: string;
  /**
   * an absolute path of a file holding the https token (sent as a bearer token, never logged)
   */
  tokenFile?: string;
  /**
   * how the token is sent: Bearer, or Basic (the file holds user:password)
   */
  tokenScheme?: 'bearer' | 'basic';
  /**
   * glob patterns of files under path to leave out (** matches across directories)
   *
   * @maxItems 256
   */
  ignore?: string[];
  prune?: boolean;
  allowEmpty?: boolean;
  suspend?: boolean;
  acceptRevision?: GitCommit;
  requireIndex?: boolean;
}
/**
 * What to follow: a branch, a tag, or a commit (a commit may name the branch to fetch it from). Default: the repository's HEAD.
 */
export interface GitSourceRef {
  branch?: GitRefName;
  tag?: GitRefName;
  commit?: GitCommit;
}
