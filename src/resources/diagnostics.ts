// A diagnostic is one problem in one place: FILE:LINE:COL: Kind/name: message.
import { printable } from '../errors.ts';

export interface Diagnostic {
  file: string;
  line: number;
  col: number;
  /** 'Kind/name', or 'document N' when the document has no usable kind or name. */
  resource: string;
  message: string;
  severity?: 'error' | 'warning';
}

export function formatDiagnostic(d: Diagnostic): string {
  const where = `${printable(d.file)}:${d.line}:${d.col}`;
  const prefix = d.severity === 'warning' ? 'warning: ' : '';
  return `${where}: ${printable(d.resource)}: ${prefix}${printable(d.message)}`;
}

/** Sorts by file, then line, then column, so output reads top to bottom. */
export function sortDiagnostics(list: Diagnostic[]): Diagnostic[] {
  return [...list].sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line || a.col - b.col);
}
