// The TypeScript types are generated from the JSON Schemas; this fails when someone changes a schema
// without regenerating them (npm run gen:types), so the two can never drift apart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { renderTypes } from '../src/resources/typegen.ts';
import { renderValidators } from '../src/resources/validatorgen.ts';

test('src/resources/generated.ts is what the schemas generate', async () => {
  const current = await readFile(new URL('../src/resources/generated.ts', import.meta.url), 'utf8');
  assert.equal(current, await renderTypes(), 'stale types: run `npm run gen:types`');
});

test('src/resources/validators.generated.ts is what the schemas compile to', async () => {
  const current = await readFile(new URL('../src/resources/validators.generated.ts', import.meta.url), 'utf8');
  assert.equal(current, await renderValidators(), 'stale validators: run `npm run gen:types`');
});

test('every kind schema is strict: additionalProperties false on every object', async () => {
  const { KIND_SCHEMA_FILES } = await import('../src/resources/kinds.ts');
  for (const file of [...Object.values(KIND_SCHEMA_FILES), 'common.json']) {
    const schema = JSON.parse(await readFile(new URL(`../schemas/${file}`, import.meta.url), 'utf8'));
    const loose: string[] = [];
    const walk = (node: unknown, at: string) => {
      if (typeof node !== 'object' || node === null) return;
      const n = node as Record<string, unknown>;
      if (n.type === 'object' && n.properties && n.additionalProperties !== false) loose.push(at);
      for (const [k, v] of Object.entries(n)) walk(v, `${at}/${k}`);
    };
    walk(schema, file);
    assert.deepEqual(loose, [], `objects that accept unknown fields in ${file}`);
    if (file !== 'common.json') assert.equal(schema.$schema, 'https://json-schema.org/draft/2020-12/schema');
  }
});
