import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const PROJECT_ROOT = fileURLToPath(new URL('../..', import.meta.url));

/**
 * The shared corpus of real compiled specs: `../shared/reference/kfp-specs` from the project root, as in CI and
 * a main checkout; from a worktree nested deeper, the nearest ancestor holding `shared/reference`.
 * KVX_KFP_CORPUS overrides. Throws when there is none: the corpus test must not pass by finding nothing.
 */
export function kfpCorpusDir(): string {
  const override = process.env['KVX_KFP_CORPUS'];
  if (override) return path.resolve(override);
  let dir = path.dirname(PROJECT_ROOT.replace(/\/+$/, ''));
  for (let i = 0; i < 8; i++) {
    const candidate = path.join(dir, 'shared', 'reference', 'kfp-specs');
    if (existsSync(candidate)) return candidate;
    const up = path.dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new Error(`no KFP spec corpus at ../shared/reference/kfp-specs from ${PROJECT_ROOT} (or an ancestor); set KVX_KFP_CORPUS`);
}

/** The shared reference directory (vertex/, kfp-specs/) beside the corpus. */
export function sharedReferenceDir(): string {
  return path.dirname(kfpCorpusDir());
}
