// npm run bench [name...]: runs the benches, each printing a table and writing bench/results/NAME.json.
import { benchFirewall } from './firewall.ts';
import { benchGitConverge, benchGitSource } from './gitsource.ts';
import { benchRoutes } from './routes.ts';
import { benchScale } from './scale.ts';
import { benchValidate } from './validate.ts';
import { benchVms } from './vms.ts';

const benches: Record<string, () => Promise<unknown>> = {
  validate: benchValidate,
  routes: benchRoutes,
  vms: benchVms,
  gitsource: benchGitSource,
  'git-converge': benchGitConverge,
  firewall: benchFirewall,
  scale: benchScale,
};

const wanted = process.argv.slice(2);
for (const [name, run] of Object.entries(benches)) {
  if (wanted.length && !wanted.includes(name)) continue;
  await run();
}
