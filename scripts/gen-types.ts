// Generates, from schemas/*.json, src/resources/generated.ts (the TypeScript types, so they cannot drift
// from the schemas) and src/resources/validators.generated.ts (the validators ajv compiles, as standalone
// code, so no process compiles the schemas at start). `npm run gen:types` writes both;
// test/schema-types.test.ts fails when either is stale.
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { renderTypes } from '../src/resources/typegen.ts';
import { renderValidators } from '../src/resources/validatorgen.ts';

for (const [file, render] of [['generated.ts', renderTypes], ['validators.generated.ts', renderValidators]] as const) {
  const out = fileURLToPath(new URL(`../src/resources/${file}`, import.meta.url));
  await writeFile(out, await render());
  console.log(`wrote ${out}`);
}
