// Exit codes, kubectl-style: 0 success, 1 failure (or differences, for diff), 2 usage or other error.
export const EXIT = { ok: 0, failed: 1, usage: 2 } as const;
