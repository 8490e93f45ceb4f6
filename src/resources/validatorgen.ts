// Renders the kinds' validators as standalone JavaScript (ajv's standaloneCode) into
// src/resources/validators.generated.ts, so no process compiles the schemas at start (0.3-0.6 s of CPU
// per CLI command and daemon start). Used by scripts/gen-types.ts and the freshness test.
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Ajv2020, _ } from 'ajv/dist/2020.js';
import standaloneModule from 'ajv/dist/standalone/index.js';
import addFormatsModule from 'ajv-formats';
import { KIND_SCHEMA_FILES } from './kinds.ts';

const schemasDir = fileURLToPath(new URL('../../schemas/', import.meta.url));
// Both are CommonJS; under NodeNext their function sits on `default`.
const standaloneCode = standaloneModule.default;
const addFormats = addFormatsModule.default;

/** The options every validator is compiled with (schema.ts's error messages rely on allErrors and verbose). */
export const AJV_OPTIONS = { allErrors: true, strict: true, useDefaults: true, verbose: true } as const;

export async function renderValidators(): Promise<string> {
  const ajv = new Ajv2020({ ...AJV_OPTIONS, code: { source: true, esm: true, formats: _`require("ajv-formats/dist/formats").fullFormats` } });
  addFormats(ajv, ['date-time']);
  const ids: Record<string, string> = {};
  for (const file of ['common.json', ...Object.values(KIND_SCHEMA_FILES)]) {
    const schema = JSON.parse(await readFile(schemasDir + file, 'utf8')) as { $id: string };
    ajv.addSchema(schema);
    if (file !== 'common.json') ids[Object.entries(KIND_SCHEMA_FILES).find(([, f]) => f === file)![0]] = schema.$id;
  }
  let code = standaloneCode(ajv, ids);
  // ajv's ESM output still require()s its runtime helpers: turn each into an import.
  const modules = new Map<string, string>();
  code = code.replace(/require\("([^"]+)"\)/g, (_m, mod: string) => {
    if (!modules.has(mod)) modules.set(mod, `runtime${modules.size}`);
    return modules.get(mod)!;
  });
  const imports = [...modules].map(([mod, name]) => `import ${name} from '${mod}.js';`);
  return [
    '// Generated from schemas/*.json by `npm run gen:types` (src/resources/validatorgen.ts). Do not edit.',
    '// @ts-nocheck',
    '/* eslint-disable */',
    ...imports,
    code.replace(/^"use strict";/, ''),
    '',
  ].join('\n');
}
