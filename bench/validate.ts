// validate + verify 1,000 signed manifests: manifests per second and where the time goes (YAML, schema,
// signature), against the raw libraries doing the same work (js-yaml loadAll + ajv + ML-DSA verify).
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { loadAll } from 'js-yaml';
import { ml_dsa65 } from '@noble/post-quantum/ml-dsa.js';
import { readManifests } from '../src/resources/manifests.ts';
import { parseYaml } from '../src/resources/yaml.ts';
import { checkSchema } from '../src/resources/schema.ts';
import { generateKey, readSecretKey } from '../src/trust/keys.ts';
import { signBytes, verifyBytes, SIGNATURE_CONTEXT } from '../src/trust/signature.ts';
import { loadTrustStore } from '../src/trust/truststore.ts';
import { printTable, time, writeResult } from './lib.ts';

const COUNT = Number(process.env.BENCH_MANIFESTS ?? 1000);

function manifest(i: number): string {
  const vm = `vm${i}`;
  return [
    'apiVersion: qwamos.io/v1alpha1',
    'kind: Route',
    `metadata: {name: ${vm}, labels: {bench: "yes"}}`,
    `spec: {vm: ${vm}, mode: direct, address: 10.${(i >> 8) & 255}.${i & 255}.2/24, gateway: 10.${(i >> 8) & 255}.${i & 255}.1, dns: host}`,
    '---',
    'apiVersion: qwamos.io/v1alpha1',
    'kind: VirtualMachine',
    `metadata: {name: ${vm}}`,
    'spec:',
    '  cpus: 1',
    '  memory: 256Mi',
    '  boot: {kernel: guest/vmlinux, initrd: guest/initrd.cpio, cmdline: console=ttyS0}',
    `  network: {route: ${vm}}`,
    '',
  ].join('\n');
}

export interface ValidateResult {
  manifests: number;
  oneCorePerSecond: number;
  poolColdPerSecond: number;
  cacheColdPerSecond: number;
  cacheWarmPerSecond: number;
}

export async function benchValidate(): Promise<ValidateResult> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'qwamos-bench-'));
  try {
    const keys = await generateKey('bench', 'ml-dsa-65', path.join(dir, 'keys'));
    const key = await readSecretKey(keys.secretPath);
    await writeFile(path.join(dir, 'trust.pub'), await readFile(keys.publicPath));
    const manifests = path.join(dir, 'manifests');
    await (await import('node:fs/promises')).mkdir(manifests);
    const files: string[] = [];
    for (let i = 0; i < COUNT; i++) {
      const file = path.join(manifests, `m${String(i).padStart(4, '0')}.yaml`);
      const bytes = Buffer.from(manifest(i));
      await writeFile(file, bytes);
      await writeFile(`${file}.sig`, signBytes(bytes, key));
      files.push(file);
    }
    const trustDir = path.join(dir, 'keys');
    // Today's path as it was: every signature checked, in this thread, no cache.
    const opts = { trustDir, allowUnsigned: false, imageRoot: dir, prefix: 'qw', signatureCacheDir: false as const, verifyPool: { size: 1, inProcessMax: Infinity } };
    await readManifests([manifests], opts); // warm up (ajv compile, JIT)

    const whole = await time(() => readManifests([manifests], opts));
    // The worker pool (no cache), then the cache: cold (verify all, fill the cache), warm (verify nothing).
    const poolRun = await time(() => readManifests([manifests], { ...opts, verifyPool: {} }));
    const state = path.join(dir, 'state');
    await (await import('node:fs/promises')).mkdir(state);
    const cached = { ...opts, verifyPool: {}, signatureCacheDir: path.join(state, 'cache', 'signatures') };
    const cold = await time(() => readManifests([manifests], cached));
    const warm = await time(() => readManifests([manifests], cached));
    for (const run of [poolRun, cold, warm]) {
      if (run.value.diagnostics.length > 0 || run.value.resources.length !== COUNT * 2) throw new Error('pool or cache run did not validate');
    }
    if (whole.value.diagnostics.length > 0 || whole.value.resources.length !== COUNT * 2) {
      throw new Error(`bench manifests did not validate: ${JSON.stringify(whole.value.diagnostics[0])}`);
    }

    // The same work stage by stage, to see the shares.
    const texts = await Promise.all(files.map((f) => readFile(f)));
    const sigs = await Promise.all(files.map((f) => readFile(`${f}.sig`, 'utf8')));
    const store = await loadTrustStore(trustDir);
    const yaml = await time(() => texts.map((b, i) => parseYaml(b.toString('utf8'), files[i]!)));
    const docs = yaml.value.flatMap((p) => p.documents.map((d) => d.value as { kind: 'Route' | 'VirtualMachine' }));
    const schema = await time(() => docs.map((d) => checkSchema(d.kind, structuredClone(d))));
    const signature = await time(() => texts.map((b, i) => verifyBytes(b, sigs[i], store)));

    // Raw libraries: no positions, no messages, no cross-checks.
    const rawYaml = await time(() => texts.map((b) => loadAll(b.toString('utf8'))));
    const pub = store.keys.values().next().value!.publicKey;
    const rawSig = await time(() => texts.map((b, i) => ml_dsa65.verify(Buffer.from(JSON.parse(sigs[i]!).signature, 'base64'), b, pub, { context: SIGNATURE_CONTEXT })));

    const stages = yaml.ms + schema.ms + signature.ms;
    const rows = [
      { what: 'readManifests, one core, no cache (before)', ms: whole.ms, 'manifests/s': (COUNT / whole.ms) * 1000, share: '' },
      { what: `validate + verify, cold (pool of ${os.availableParallelism()})`, ms: poolRun.ms, 'manifests/s': (COUNT / poolRun.ms) * 1000, share: `${(whole.ms / poolRun.ms).toFixed(2)}x` },
      { what: 'validate + verify, cold (pool, filling the cache)', ms: cold.ms, 'manifests/s': (COUNT / cold.ms) * 1000, share: `${(whole.ms / cold.ms).toFixed(2)}x` },
      { what: 'validate + verify, warm (cache, nothing to verify)', ms: warm.ms, 'manifests/s': (COUNT / warm.ms) * 1000, share: `${(whole.ms / warm.ms).toFixed(2)}x` },
      { what: '  YAML with positions', ms: yaml.ms, 'manifests/s': (COUNT / yaml.ms) * 1000, share: `${((yaml.ms / stages) * 100).toFixed(0)}%` },
      { what: '  schema (ajv)', ms: schema.ms, 'manifests/s': (COUNT / schema.ms) * 1000, share: `${((schema.ms / stages) * 100).toFixed(0)}%` },
      { what: '  signature (ML-DSA-65)', ms: signature.ms, 'manifests/s': (COUNT / signature.ms) * 1000, share: `${((signature.ms / stages) * 100).toFixed(0)}%` },
      { what: 'raw js-yaml loadAll', ms: rawYaml.ms, 'manifests/s': (COUNT / rawYaml.ms) * 1000, share: '' },
      { what: 'raw ml_dsa65.verify', ms: rawSig.ms, 'manifests/s': (COUNT / rawSig.ms) * 1000, share: '' },
    ];
    printTable(`validate + verify ${COUNT} signed manifests (${COUNT * 2} resources)`, rows);
    const ratio = whole.ms / (rawYaml.ms + rawSig.ms + schema.ms);
    console.log(`controller pipeline / raw libraries (yaml + ajv + verify): ${ratio.toFixed(2)}x`);
    const out = await writeResult('validate', {
      manifests: COUNT,
      resources: COUNT * 2,
      manifestsPerSecond: (COUNT / whole.ms) * 1000,
      cores: os.availableParallelism(),
      poolColdPerSecond: (COUNT / poolRun.ms) * 1000,
      cacheColdPerSecond: (COUNT / cold.ms) * 1000,
      cacheWarmPerSecond: (COUNT / warm.ms) * 1000,
      ratioToOneCore: { poolCold: whole.ms / poolRun.ms, cacheCold: whole.ms / cold.ms, cacheWarm: whole.ms / warm.ms },
      ms: { poolCold: poolRun.ms, cacheCold: cold.ms, cacheWarm: warm.ms, whole: whole.ms, yaml: yaml.ms, schema: schema.ms, signature: signature.ms, rawYaml: rawYaml.ms, rawSignature: rawSig.ms },
      shares: { yaml: yaml.ms / stages, schema: schema.ms / stages, signature: signature.ms / stages },
      ratioToRaw: ratio,
    });
    console.log(`wrote ${out}`);
    return { manifests: COUNT, oneCorePerSecond: (COUNT / whole.ms) * 1000, poolColdPerSecond: (COUNT / poolRun.ms) * 1000, cacheColdPerSecond: (COUNT / cold.ms) * 1000, cacheWarmPerSecond: (COUNT / warm.ms) * 1000 };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
