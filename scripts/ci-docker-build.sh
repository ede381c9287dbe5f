#!/usr/bin/env bash
# Runs the Dockerfile's build stage (scripts/docker-build.sh) as plain shell in a throw-away copy of the
# repository, as a container build would see it, then checks the staged runtime files the way the runtime
# stage uses them: no node_modules, no node on PATH, run as uid 65532 when we are root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
mkdir "$work/src"
# The build context: tracked and untracked-but-not-ignored files, minus .dockerignore's build outputs.
git ls-files -z --cached --others --exclude-standard \
  | grep -zv -E '^(node_modules|dist|build|build-check|coverage)/' \
  | xargs -0 cp --parents -t "$work/src" 2>/dev/null || true
[ -f "$work/src/package-lock.json" ] && [ -f "$work/src/scripts/docker-build.sh" ] || { echo "ci-docker-build: copying the build context failed" >&2; exit 1; }

# Node >= 22 for the pruned-package smoke test (the machine's own node may be older).
export KVX_SMOKE_NODE=${KVX_SMOKE_NODE:-$root/node_modules/node/bin/node}
(cd "$work/src" && bash scripts/docker-build.sh all "$work/out")

bin=$work/out/usr/local/bin
version=$(node -p "require('$root/package.json').version")
fail() { echo "ci-docker-build: $*" >&2; exit 1; }

[ -f "$bin/kvx-proxy" ] && [ ! -L "$bin/kvx-proxy" ] || fail "/usr/local/bin/kvx-proxy must be a regular file (COPY --from source)"
[ "$(readlink "$bin/kvx")" = kvx-proxy ] || fail "/usr/local/bin/kvx must link to kvx-proxy"

# The runtime stage: nothing but the staged files; PATH without node.
run_dir=$(mktemp -d -p "$work")
chmod 0755 "$work" "$run_dir" "$work/out" "$work/out/usr" "$work/out/usr/local" "$bin"
as_runtime_user=()
if [ "$(id -u)" = 0 ] && command -v setpriv >/dev/null; then
  as_runtime_user=("$(command -v setpriv)" --reuid=65532 --regid=65532 --clear-groups)
fi
run() { (cd "$run_dir" && "${as_runtime_user[@]}" env -i PATH=/nonexistent HOME="$run_dir" "$@"); }

[ "$(run "$bin/kvx-proxy" --version)" = "$version" ] || fail "kvx-proxy --version"
[ "$(run "$bin/kvx" kvx-proxy --version)" = "$version" ] || fail "kvx kvx-proxy --version"
if [ -L "$bin/kvx-launch" ]; then
  [ "$(run "$bin/kvx-launch" --version)" = "$version" ] || fail "kvx-launch --version"
fi
run "$bin/kvx-proxy" check-config --upstream https://mlflow.example.com --auth-provider none >/dev/null 2>&1 || fail "check-config"
run "$bin/kvx-proxy" exec --upstream https://mlflow.example.com --auth-provider none -- /bin/true 2>/dev/null || fail "exec -- /bin/true"
set +e
run "$bin/kvx-proxy" exec --upstream https://mlflow.example.com --auth-provider none -- /bin/sh -c 'exit 3' 2>/dev/null
code=$?
set -e
[ "$code" = 3 ] || fail "exec exit code: got $code, want 3"
echo "ci-docker-build: OK (${as_runtime_user:+as uid 65532, }$(du -h "$bin/kvx-proxy" | cut -f1) executable)"
