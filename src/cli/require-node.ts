/**
 * Imported first by each command's entry module (after the inspector guard, which needs nothing newer), so that
 * on an older Node.js the user reads which version is needed instead of a TypeError from deep inside a
 * dependency (undici and the proxy's HTTP engine both use APIs that Node 20 lacks). It exits rather than throws: the modules imported after it must not run at all.
 */
export const MIN_NODE = [22, 19] as const;

export function nodeTooOld(version: string): boolean {
  const [major = 0, minor = 0] = version.replace(/^v/, '').split('.').map(Number);
  return major < MIN_NODE[0] || (major === MIN_NODE[0] && minor < MIN_NODE[1]);
}

if (nodeTooOld(process.version)) {
  process.stderr.write(
    `kvx needs Node.js ${MIN_NODE.join('.')} or later; this is Node.js ${process.version} (${process.execPath}).\n` +
      'Install a current Node.js (https://nodejs.org), run it through the project (npm run proxy), or use the kvx container image.\n',
  );
  process.exit(1);
}
