// Prints the Node.js versions scripts/node-matrix.sh tests, one a line: the lowest version package.json's
// `engines` allows, the newest release of that major, the version of the `node` dev dependency kvx ships with,
// and the newest release published. Read from the npm registry's node-<platform>-<arch> package.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { URL } from 'node:url';

const pkgName = process.argv[2];
if (!pkgName) throw new Error('usage: node scripts/node-versions.mjs node-<platform>-<arch>');
const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8'));
const lowest = /^>=\s*(\d+\.\d+\.\d+)$/.exec(pkg.engines.node)?.[1];
if (!lowest) throw new Error(`package.json engines.node is "${pkg.engines.node}"; expected ">=X.Y.Z"`);
const shipped = JSON.parse(readFileSync(new URL('../node_modules/node/package.json', import.meta.url), 'utf8')).version;

const published = JSON.parse(execFileSync('npm', ['view', pkgName, 'versions', '--json'], { encoding: 'utf8' }));
const parse = (v) => v.split('.').map(Number);
const releases = published.filter((v) => /^\d+\.\d+\.\d+$/.test(v)).sort((a, b) => {
  const [x, y] = [parse(a), parse(b)];
  return x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
});
const newestOf = (major) => releases.filter((v) => parse(v)[0] === major).at(-1);
const wanted = [lowest, newestOf(parse(lowest)[0]), shipped, releases.at(-1)];
for (const v of wanted) if (!releases.includes(v)) throw new Error(`${pkgName}@${v} is not published`);
process.stdout.write([...new Set(wanted)].join('\n') + '\n');
