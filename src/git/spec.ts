// What a GitSource spec means beyond its schema: where to fetch from, what to follow, which files count,
// and the checks a JSON Schema cannot express (credentials in the URL, ref names, token over plain http).
import path from 'node:path';
import type { Issue } from '../resources/checks.ts';
import type { GitSource, GitSourceSpec } from '../resources/types.ts';

export const DEFAULT_INTERVAL = '1m';
export const DEFAULT_TIMEOUT = '60s';

/** What a source follows, resolved from spec.ref (no ref: the repository's HEAD). */
export type FollowedRef =
  | { kind: 'head' }
  | { kind: 'branch'; name: string }
  | { kind: 'tag'; name: string }
  | { kind: 'commit'; commit: string; branch?: string };

export function followedRef(spec: GitSourceSpec): FollowedRef {
  const ref = spec.ref ?? {};
  if (ref.commit) return { kind: 'commit', commit: ref.commit, ...(ref.branch ? { branch: ref.branch } : {}) };
  if (ref.tag) return { kind: 'tag', name: ref.tag };
  if (ref.branch) return { kind: 'branch', name: ref.branch };
  return { kind: 'head' };
}

/** Flux's revision format: 'main@sha1:<40 hex>', or 'sha1:<40 hex>' for HEAD and a bare commit. */
export function revisionString(ref: FollowedRef, commit: string): string {
  const name = ref.kind === 'branch' || ref.kind === 'tag' ? ref.name : ref.kind === 'commit' ? ref.branch : undefined;
  return `${name ? `${name}@` : ''}sha1:${commit}`;
}

export function isRemoteUrl(url: string): boolean {
  return url.startsWith('http://') || url.startsWith('https://');
}

const LOOPBACK_HOSTS = new Set(['127.0.0.1', 'localhost', '[::1]']);

export function checkGitSource(source: GitSource): Issue[] {
  const { spec } = source;
  const issues: Issue[] = [];
  if (isRemoteUrl(spec.url)) {
    let url: URL | undefined;
    try {
      url = new URL(spec.url);
    } catch {
      issues.push({ pointer: '/spec/url', message: 'spec.url: not a valid URL' });
    }
    // Never echo the URL here: whatever it carries would end up in logs.
    if (url && (url.username || url.password)) {
      issues.push({ pointer: '/spec/url', message: 'spec.url: must not contain credentials (put the token in a file and name it in spec.tokenFile)' });
    }
    if (url && (url.search || url.hash)) {
      issues.push({ pointer: '/spec/url', message: 'spec.url: must not carry a query or fragment (a token belongs in spec.tokenFile)' });
    }
    if (url && spec.tokenFile && url.protocol === 'http:' && !LOOPBACK_HOSTS.has(url.hostname)) {
      issues.push({ pointer: '/spec/tokenFile', message: 'spec.tokenFile: a token is only sent over https (or plain http to loopback)' });
    }
  } else {
    if (spec.url.split('/').includes('..')) issues.push({ pointer: '/spec/url', message: "spec.url: a local repository path must not contain '..'" });
    if (spec.tokenFile) issues.push({ pointer: '/spec/tokenFile', message: 'spec.tokenFile: only an http(s) source uses a token' });
  }
  if (spec.tokenFile && path.normalize(spec.tokenFile) !== spec.tokenFile) {
    issues.push({ pointer: '/spec/tokenFile', message: 'spec.tokenFile: must be a normalised absolute path' });
  }
  const ref = spec.ref;
  if (ref) {
    if (ref.branch && ref.tag) issues.push({ pointer: '/spec/ref', message: 'spec.ref: set branch or tag, not both' });
    if (ref.tag && ref.commit) issues.push({ pointer: '/spec/ref', message: 'spec.ref: a commit may name the branch to fetch it from, not a tag' });
    for (const field of ['branch', 'tag'] as const) {
      const name = ref[field];
      const why = name === undefined ? undefined : badRefName(name);
      if (why) issues.push({ pointer: `/spec/ref/${field}`, message: `spec.ref.${field}: "${name}" ${why}` });
    }
  }
  (spec.ignore ?? []).forEach((pattern, i) => {
    if (pattern.startsWith('/') || pattern.split('/').includes('..')) {
      issues.push({ pointer: `/spec/ignore/${i}`, message: `spec.ignore[${i}]: patterns are relative to spec.path (no leading '/', no '..')` });
    }
  });
  return issues;
}

/** Why a branch or tag name is not one git accepts (git check-ref-format, the parts the schema leaves). */
function badRefName(name: string): string | undefined {
  if (name.includes('..')) return "contains '..'";
  if (name.includes('//')) return "contains '//'";
  if (name.endsWith('/') || name.endsWith('.')) return "ends with '/' or '.'";
  if (name.endsWith('.lock') || name.includes('.lock/')) return "has a component ending in '.lock'";
  if (name.split('/').some((part) => part.startsWith('.'))) return "has a component starting with '.'";
  return undefined;
}

/** Milliseconds of a schema duration ('500ms', '30s', '5m', '1h'). */
export function durationMs(text: string): number {
  const m = /^([1-9][0-9]*)(ms|s|m|h)$/.exec(text);
  if (!m) throw new Error(`invalid duration ${JSON.stringify(text)}`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
}

/** The wait before the next poll: the interval, spread by up to ±10% so many sources do not poll in step. */
export function nextPollMs(spec: GitSourceSpec, random: () => number = Math.random): number {
  const interval = durationMs(spec.interval ?? DEFAULT_INTERVAL);
  return Math.round(interval * (0.9 + 0.2 * random()));
}
