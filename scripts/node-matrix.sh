#!/usr/bin/env bash
# Runs the forwarding engine's suites on every Node.js kvx claims to support: the lowest version `engines`
# allows, the newest of that major, the version kvx ships with (the `node` dev dependency) and the newest
# release there is. Each Node comes from the npm registry's node-<platform>-<arch> package (the binary the
# `node` package itself installs), unpacked once into .cache/node/<version>.
#
#   bash scripts/node-matrix.sh              # the default versions
#   bash scripts/node-matrix.sh 22.19.0 ...  # these versions
#
# Expects a build (npm run build) and installed dependencies; the suites spawn the built proxy with the same
# Node that runs mocha, so every process of a run is on the version under test.
set -euo pipefail
cd "$(dirname "$0")/.."

shipped_node="node_modules/.bin/node"
platform=$("$shipped_node" -p 'process.platform + "-" + (process.arch === "x64" ? "x64" : process.arch)')
package="node-${platform}"

if [ "$#" -gt 0 ]; then
  versions=("$@")
else
  mapfile -t versions < <("$shipped_node" scripts/node-versions.mjs "$package")
fi

suites=(
  test/integration/proxy-wire.test.ts
  test/integration/proxy-forwarding.test.ts
  test/integration/proxy-streaming.test.ts
  test/integration/proxy-operations.test.ts
)

for version in "${versions[@]}"; do
  dir=".cache/node/${version}"
  if [ ! -x "${dir}/bin/node" ]; then
    mkdir -p "${dir}"
    tarball=$(npm pack --silent --pack-destination "${dir}" "${package}@${version}")
    tar -xzf "${dir}/${tarball}" -C "${dir}" --strip-components=1
    rm -f "${dir}/${tarball}"
  fi
  node_bin="$(pwd)/${dir}/bin/node"
  echo "=== Node.js $("${node_bin}" --version): engine, forwarding and fault suites (the engine suites on both engines)"
  "${node_bin}" node_modules/mocha/bin/mocha.js --reporter dot "${suites[@]}"
  # The node engine (node:http and undici) on the same suites: the fallback auto picks where the wire engine's
  # self-test fails. The fault suite runs on it once, in npm run test:faults.
  KVX_SERVER_ENGINE=node "${node_bin}" node_modules/mocha/bin/mocha.js --reporter dot "${suites[@]}"
  "${node_bin}" node_modules/mocha/bin/mocha.js --reporter dot --config test/faults/.mocharc.json
done
