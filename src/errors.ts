// Errors that reach the user as one line, never as a stack trace.

/** A problem with how a command was called (exit code 2). */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** A problem the user can fix in their input or host (exit code 1 unless a command says otherwise). */
export class UserError extends Error {
  override name = 'UserError';
}

/** Printable form of any thrown value: one line, control characters escaped. */
export function oneLine(err: unknown): string {
  const text = err instanceof Error ? err.message : String(err);
  return printable(text.split('\n')[0] ?? '');
}

/** Escape control characters so hostile input cannot rewrite a terminal line. */
export function printable(text: string): string {
  return text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, (c) =>
    c === '\t' ? '\\t' : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}
