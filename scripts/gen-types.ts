// Generates src/resources/generated.ts from schemas/*.json, so the TypeScript types cannot drift from
// the schemas. `npm run gen:types` writes it; test/schema-types.test.ts fails when it is stale.
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { renderTypes } from '../src/resources/typegen.ts';

const out = fileURLToPath(new URL('../src/resources/generated.ts', import.meta.url));
await writeFile(out, await renderTypes());
console.log(`wrote ${out}`);
