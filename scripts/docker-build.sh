#!/usr/bin/env bash
# The Dockerfile's build stage as plain shell, so it runs (and is tested in CI) without a container daemon.
#
#   scripts/docker-build.sh deps          install dependencies from the lockfile (npm ci)
#   scripts/docker-build.sh build OUT     compile, build the standalone executable, prune dev dependencies,
#                                         and stage the runtime files under OUT (OUT/usr/local/bin/kvx-proxy ...)
#   scripts/docker-build.sh all OUT       both
#
# KVX_SMOKE_NODE names a Node >= 22 to smoke-test the pruned npm package with (default: node on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '==> %s\n' "$*"; }

deps() {
  step "npm ci (from package-lock.json)"
  npm ci --no-audit --no-fund
}

build() {
  local out=${1:?usage: docker-build.sh build OUT}
  local smoke_node=${KVX_SMOKE_NODE:-node}

  step "compile TypeScript"
  npm run build

  step "build the standalone executable"
  npm run build:sea
  build/sea/kvx-proxy --version

  step "prune dev dependencies"
  npm prune --omit=dev --no-audit --no-fund
  # The pruned tree is what `npm install` users get: the CLI must run on production dependencies alone.
  local major
  major=$("$smoke_node" -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 22 ]; then
    echo "docker-build.sh: $smoke_node is Node $major; set KVX_SMOKE_NODE to a Node >= 22" >&2
    exit 1
  fi
  "$smoke_node" dist/cli/kvx-proxy.js --version

  step "stage runtime files in $out"
  rm -rf "$out"
  mkdir -p "$out/usr/local/bin"
  # kvx-proxy is the real file, so `COPY --from=<image> /usr/local/bin/kvx-proxy ...` copies the executable
  # whether or not the builder follows links; the other names are links to it (one program picked by name).
  cp build/sea/kvx "$out/usr/local/bin/kvx-proxy"
  chmod 0755 "$out/usr/local/bin/kvx-proxy"
  ln -s kvx-proxy "$out/usr/local/bin/kvx"
  if [ -e build/sea/kvx-launch ]; then ln -s kvx-proxy "$out/usr/local/bin/kvx-launch"; fi
  ls -l "$out/usr/local/bin"
}

case "${1:-}" in
  deps) deps ;;
  build) build "${2:-}" ;;
  all) deps && build "${2:-}" ;;
  *)
    echo "usage: $0 deps | build OUT | all OUT" >&2
    exit 2
    ;;
esac
