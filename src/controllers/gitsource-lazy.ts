// The GitSource controller, loaded on first use. Its git client (isomorphic-git) costs ~20 MB of
// resident memory, which a host without git sources should not carry (the daemon's budget with a
// thousand resources is 100 MB). Every call the engine makes about a GitSource starts with observe, which
// loads it; the watch starts once it is loaded (it only acts on sources that were observed).
import type { Controller, FieldDiff, Plan, StatusReport, World } from '../engine/contract.ts';
import type { ObjectKey } from '../resources/keys.ts';
import type { StoredResource } from '../store/store.ts';
import type { GitSourceController, GitSourceOptions } from './gitsource/index.ts';
import type { GitSourceAction, GitSourceActual } from './gitsource/plan.ts';

export class LazyGitSourceController implements Controller<'GitSource', GitSourceActual, GitSourceAction> {
  readonly kind = 'GitSource' as const;
  private real?: GitSourceController;
  private loading?: Promise<GitSourceController>;
  private watching?: { notify: (keys: ObjectKey[]) => void; world: () => World; handle?: { close(): void }; closed: boolean };

  constructor(private readonly opts: GitSourceOptions) {}

  private load(): Promise<GitSourceController> {
    this.loading ??= import('./gitsource/index.ts').then(({ GitSourceController }) => {
      const real = new GitSourceController(this.opts);
      this.real = real;
      const w = this.watching;
      if (w && !w.closed) w.handle = real.watch(w.notify, w.world);
      return real;
    });
    this.loading.catch(() => (this.loading = undefined));
    return this.loading;
  }

  private loaded(): GitSourceController {
    if (!this.real) throw new Error('GitSource controller used before any GitSource was observed');
    return this.real;
  }

  async observe(resources: StoredResource<'GitSource'>[]): Promise<Map<ObjectKey, GitSourceActual>> {
    return (await this.load()).observe(resources);
  }

  plan(resource: StoredResource<'GitSource'>, actual: GitSourceActual | undefined): Plan<GitSourceAction> {
    return this.loaded().plan(resource, actual);
  }

  diff(resource: StoredResource<'GitSource'>, actual: GitSourceActual | undefined): FieldDiff[] {
    return this.loaded().diff(resource, actual);
  }

  report(resource: StoredResource<'GitSource'>, actual: GitSourceActual | undefined): StatusReport {
    return this.loaded().report(resource, actual);
  }

  async apply(actions: GitSourceAction[], world: World): Promise<void> {
    await (await this.load()).apply(actions, world);
  }

  watch(notify: (keys: ObjectKey[]) => void, world: () => World): { close(): void } {
    const w: NonNullable<typeof this.watching> = { notify, world, closed: false };
    this.watching = w;
    if (this.real) w.handle = this.real.watch(notify, world);
    return {
      close() {
        w.closed = true;
        w.handle?.close();
      },
    };
  }
}
