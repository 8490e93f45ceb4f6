// spec.ignore: glob patterns over paths relative to the source's path. '*' and '?' stay within one path
// component, '**' crosses them; a pattern without '/' matches a file's name at any depth, and a pattern
// that names a directory ignores everything below it.

export function ignoreMatcher(patterns: string[]): (relative: string) => boolean {
  const regexps = patterns.map(globToRegExp);
  return (relative) => regexps.some((re) => re.test(relative));
}

export function globToRegExp(pattern: string): RegExp {
  const anchored = pattern.includes('/');
  const body = pattern.replace(/\/+$/, '');
  let re = '';
  for (let i = 0; i < body.length; i++) {
    const c = body[i]!;
    if (c === '*' && body[i + 1] === '*') {
      // '**/' matches zero or more directories; a trailing '**' everything below.
      if (body[i + 2] === '/') {
        re += '(?:.*/)?';
        i += 2;
      } else {
        re += '.*';
        i += 1;
      }
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${anchored ? '' : '(?:.*/)?'}${re}(?:/.*)?$`);
}
