// Renders TypeScript types from the JSON Schemas (used by scripts/gen-types.ts and its freshness test).
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { compile } from 'json-schema-to-typescript';
import { KIND_SCHEMA_FILES } from './kinds.ts';

const schemasDir = fileURLToPath(new URL('../../schemas/', import.meta.url));

export async function renderTypes(): Promise<string> {
  const parts = ['// Generated from schemas/*.json by `npm run gen:types`. Do not edit.\n/* eslint-disable */\n'];
  for (const file of Object.values(KIND_SCHEMA_FILES)) {
    const schema = JSON.parse(await readFile(schemasDir + file, 'utf8'));
    const ts = await compile(schema, schema.title, {
      cwd: schemasDir,
      bannerComment: '',
      additionalProperties: false,
      declareExternallyReferenced: true,
      format: true,
      strictIndexSignatures: true,
      maxItems: -1,
      style: { singleQuote: true, printWidth: 110 },
    });
    parts.push(ts);
  }
  return dedupe(parts.join('\n'));
}

// Each schema re-declares the shared definitions it references; keep the first declaration of each.
function dedupe(source: string): string {
  const seen = new Set<string>();
  const blocks = source.split(/\n(?=export )/);
  return blocks
    .filter((block) => {
      const name = /^export (?:interface|type) (\w+)/.exec(block)?.[1];
      if (!name) return true;
      if (seen.has(name)) return false;
      seen.add(name);
      return true;
    })
    .join('\n');
}
