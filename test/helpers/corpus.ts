import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DeclaredParameter } from '../../src/vertex/spec.js';

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

/** The compiled specs in `dir` (YAML or JSON; not the `.pyyaml.json` readings beside some fixtures), sorted. */
export const specFiles = (dir: string): string[] =>
  readdirSync(dir)
    .filter((f) => /\.(ya?ml|json)$/.test(f) && !f.endsWith('.pyyaml.json'))
    .sort()
    .map((f) => path.join(dir, f));

/** A value of the declared type, as a --param would give it: the first allowed one when literals restrict it. */
export function sample(p: DeclaredParameter): string {
  if (p.literals !== undefined && p.literals.length > 0) return typeof p.literals[0] === 'string' ? p.literals[0] : JSON.stringify(p.literals[0]);
  switch (p.type) {
    case 'NUMBER_INTEGER':
      return '3';
    case 'NUMBER_DOUBLE':
      return '0.5';
    case 'BOOLEAN':
      return 'true';
    case 'LIST':
      return '["a", "b"]';
    case 'STRUCT':
      return '{"key": "value"}';
    default:
      return 'corpus value';
  }
}
