// The five built-in GPU trust levels from the seeds; GpuTrustLevel resources override or extend them.
import type { GpuTrustLevelSpec } from './generated.ts';

export type GpuDevice = NonNullable<GpuTrustLevelSpec['device']>;

export interface GpuLevel {
  name: string;
  level: number;
  device: GpuDevice;
  vramMiB: number;
  allowVulkan: boolean;
  allowCompute: boolean;
  requireIommu: boolean;
  hostDevice?: string;
}

export const BUILTIN_GPU_LEVELS: readonly GpuLevel[] = [
  { name: 'untrusted', level: 0, device: 'none', vramMiB: 128, allowVulkan: false, allowCompute: false, requireIommu: false },
  { name: 'low', level: 1, device: 'virtio-gpu', vramMiB: 256, allowVulkan: true, allowCompute: false, requireIommu: false },
  { name: 'medium', level: 2, device: 'virgl', vramMiB: 512, allowVulkan: true, allowCompute: true, requireIommu: false },
  { name: 'high', level: 3, device: 'venus', vramMiB: 1024, allowVulkan: true, allowCompute: true, requireIommu: false },
  { name: 'system', level: 4, device: 'vfio', vramMiB: 2048, allowVulkan: true, allowCompute: true, requireIommu: true },
];

/** Passthrough (VFIO) is only ever allowed from this level up. */
export const PASSTHROUGH_MIN_LEVEL = 4;

export function isBuiltinGpuLevel(name: string): boolean {
  return BUILTIN_GPU_LEVELS.some((l) => l.name === name);
}

/** A declared level, filled in from the built-in one of the same name (or the nearest lower level). */
export function resolveGpuLevel(name: string, spec: GpuTrustLevelSpec): GpuLevel {
  const base =
    BUILTIN_GPU_LEVELS.find((l) => l.name === name) ??
    [...BUILTIN_GPU_LEVELS].reverse().find((l) => l.level <= spec.level) ??
    BUILTIN_GPU_LEVELS[0]!;
  return {
    name,
    level: spec.level,
    device: spec.device ?? base.device,
    vramMiB: spec.vramMiB ?? base.vramMiB,
    allowVulkan: spec.allowVulkan ?? base.allowVulkan,
    allowCompute: spec.allowCompute ?? base.allowCompute,
    requireIommu: spec.requireIommu ?? base.requireIommu,
    ...(spec.hostDevice ? { hostDevice: spec.hostDevice } : {}),
  };
}
