#!/usr/bin/env bash
# Lints and renders the chart with values.yaml plus each ci/*-values.yaml. Needs helm on PATH; .ci/run calls it
# only when helm is there (npm test checks the schema and values consistency without helm).
set -euo pipefail
cd "$(dirname "$0")/.."
chart=charts/kvx-proxy
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for values in "$chart"/ci/*-values.yaml; do
  name=$(basename "$values" -values.yaml)
  echo "helm lint/template: $name"
  helm lint --strict "$chart" -f "$values"
  helm template "ci-$name" "$chart" -f "$values" --namespace kvx >"$out/$name.yaml"
done
# The chart must refuse to render without an upstream.
if helm template no-upstream "$chart" >/dev/null 2>"$out/err.txt"; then
  echo "helm template without config.upstream.url should have failed" >&2
  exit 1
fi
grep -q 'config.upstream.url is required' "$out/err.txt"
echo "chart OK"
