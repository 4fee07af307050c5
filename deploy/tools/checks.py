#!/usr/bin/env python3
"""Checks of deploy/ that need no cluster and no container engine (run by deploy/validate.sh).

    checks.py yaml                 every YAML file under deploy/ parses (all documents)
    checks.py compose              compose.yaml: compose-spec model (compose_spec) + Fleet rules
    checks.py toml                 compose/*.toml and the ConfigMaps' TOML parse; keys exist in the Rust config structs
    checks.py k8s                  cross-references and Fleet rules of deploy/k8s (grace periods, probes, ports, names)
    checks.py promql OUT.yaml      metric and label names of every PromQL expression (dashboard, alerts, KEDA)
                                   exist in the README metrics table; writes the dashboard's expressions
                                   as recording rules to OUT.yaml for `promtool check rules`
    checks.py grafana              dashboard JSON structure and its provisioning
    checks.py docker               Dockerfile and .dockerignore against the workspace (binaries, Rust version)
    checks.py healthcheck          docker/fleet-healthcheck against stub servers on loopback (200, 503, closed)
    checks.py keda-json            prints deploy/k8s KEDA objects as JSON (for tools/validate-keda.js)
    checks.py extract-toml DIR     writes the ConfigMaps' TOML files to DIR (for the binaries' own check)

Each prints one line per finding and exits 1 when something is wrong.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent
ROOT = DEPLOY.parent
FAILS: list[str] = []


def ok(msg: str) -> None:
    print(f"  ok    {msg}")


def fail(msg: str) -> None:
    FAILS.append(msg)
    print(f"  FAIL  {msg}")


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def yaml_files() -> list[Path]:
    return sorted(p for ext in ("*.yaml", "*.yml") for p in DEPLOY.rglob(ext) if "node_modules" not in p.parts)


def load_all(p: Path) -> list:
    with p.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted((DEPLOY / "k8s").rglob("*.yaml")) for d in load_all(p)]


def duration_secs(v) -> float:
    """Compose durations: 1m30s, 45s, 500ms, or a number of seconds."""
    if isinstance(v, (int, float)):
        return float(v)
    total, units = 0.0, {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", v):
        total += float(num) * units[unit]
    return total


# ---------------------------------------------------------------------------- yaml
def check_yaml() -> None:
    for p in yaml_files():
        try:
            n = len(load_all(p))
            ok(f"{rel(p)}: {n} document(s)")
        except yaml.YAMLError as e:
            fail(f"{rel(p)}: {e}")


# ---------------------------------------------------------------------------- compose
def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, $$."""

    def rep(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        v = env.get(name)
        if op == ":-":
            return v if v else default
        if op == "-":
            return v if v is not None else default
        return v or ""

    return re.sub(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}", rep, text)


def check_compose() -> None:
    path = DEPLOY / "compose.yaml"
    text = interpolate(path.read_text(), {})
    try:
        import compose_spec  # PyPI compose-spec: a Rust model of the Compose Specification

        model = compose_spec.PyOptions(apply_merge=True).from_yaml(text)
        model.validate()
        ok(f"{rel(path)}: valid against the Compose Specification model (compose-spec): services {model.service_names()}")
    except ImportError:
        fail("python package compose-spec is missing (deploy/validate.sh installs it)")
    except Exception as e:  # noqa: BLE001 - the model's errors are plain ValueErrors
        fail(f"{rel(path)}: {e}")
    doc = yaml.safe_load(text)
    services = doc.get("services", {})
    for name in ("redis", "postgres", "scheduler", "worker"):
        if name not in services:
            fail(f"compose: service {name} is missing")
    for name, svc in services.items():
        if "healthcheck" not in svc:
            fail(f"compose: service {name} has no healthcheck")
        for dep, cond in (svc.get("depends_on") or {}).items():
            if isinstance(cond, dict) and cond.get("condition") == "service_healthy" and "healthcheck" not in services.get(dep, {}):
                fail(f"compose: {name} waits for {dep} to be healthy, but {dep} has no healthcheck")
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("."):
                if not (DEPLOY / src).exists():
                    fail(f"compose: {name} mounts {src}, which does not exist")
            elif src and src not in (doc.get("volumes") or {}):
                fail(f"compose: {name} uses volume {src}, not declared under volumes")
    redis_cmd = " ".join(services.get("redis", {}).get("command", []))
    if "--appendonly yes" not in redis_cmd:
        fail("compose: redis must run with --appendonly yes (nothing lost on restart)")
    if "--maxmemory-policy noeviction" not in redis_cmd:
        fail("compose: redis must run with --maxmemory-policy noeviction (a queue must not lose keys)")
    worker = services.get("worker", {})
    if worker.get("deploy", {}).get("replicas") != 2:
        fail("compose: the worker should run 2 replicas")
    cfg = tomllib.loads((DEPLOY / "compose/worker.toml").read_text())
    grace = cfg.get("shutdown_grace_secs", 30)
    stop = duration_secs(worker.get("stop_grace_period", "10s"))
    if stop <= grace:
        fail(f"compose: worker stop_grace_period {stop:g}s must exceed shutdown_grace_secs {grace}s")
    else:
        ok(f"compose: worker stop_grace_period {stop:g}s > shutdown_grace_secs {grace}s")
    for name, cfg_file, port in (("worker", "compose/worker.toml", 9464), ("scheduler", "compose/scheduler.toml", 8080)):
        listen = tomllib.loads((DEPLOY / cfg_file).read_text()).get("listen", "")
        if not listen.startswith("0.0.0.0:") or not listen.endswith(f":{port}"):
            fail(f"compose: {cfg_file} listen = {listen!r}: containers need 0.0.0.0:{port}")
        test = services.get(name, {}).get("healthcheck", {}).get("test", [])
        if str(port) not in test:
            fail(f"compose: {name} healthcheck {test} does not probe port {port}")
    prom = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    jobs = {j["job_name"] for j in prom.get("scrape_configs", [])}
    for j in ("fleet-worker", "fleet-scheduler"):
        if j not in jobs:
            fail(f"prometheus.yml: scrape job {j} is missing (alerts.yaml selects on it)")
    if not FAILS:
        ok("compose: healthchecks, depends_on conditions, mounts, Redis durability, grace period, listen addresses, scrape jobs")


# ---------------------------------------------------------------------------- toml
def struct_fields(src: Path, struct: str) -> set[str]:
    text = src.read_text()
    m = re.search(rf"pub struct {struct} \{{(.*?)\n\}}", text, re.S)
    if not m:
        return set()
    return set(re.findall(r"^\s*pub (\w+):", m.group(1), re.M))


def configmap_tomls() -> dict[str, str]:
    out = {}
    for p, d in k8s_docs():
        if d.get("kind") == "ConfigMap":
            for key, val in (d.get("data") or {}).items():
                if key.endswith(".toml"):
                    out[f"{rel(p)}#{d['metadata']['name']}/{key}"] = val
    return out


def check_toml() -> None:
    worker_keys = struct_fields(ROOT / "worker/src/config.rs", "WorkerConfig")
    sched_keys = struct_fields(ROOT / "scheduler/src/config.rs", "SchedulerConfig")
    sources = {rel(p): p.read_text() for p in sorted((DEPLOY / "compose").glob("*.toml"))}
    sources.update(configmap_tomls())
    for name, text in sources.items():
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            fail(f"{name}: {e}")
            continue
        known = worker_keys if "worker" in name else sched_keys
        if not known:
            ok(f"{name}: parses (config struct not found to compare keys)")
            continue
        unknown = sorted(set(cfg) - known)
        if unknown:
            fail(f"{name}: keys {unknown} are not fields of the config struct")
        else:
            ok(f"{name}: parses; top-level keys {sorted(cfg)} are config fields")


def extract_toml(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in configmap_tomls().items():
        target = out / ("k8s-" + name.split("/")[-1])
        target.write_text(text)
        print(target)


# ---------------------------------------------------------------------------- k8s
KEDA_SPEC_KEYS = {"scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
                  "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers"}
KEDA_TRIGGER_KEYS = {"type", "name", "metadata", "metricType", "authenticationRef", "useCachedMetrics"}
KEDA_PROMETHEUS_METADATA = {"serverAddress", "query", "threshold", "activationThreshold", "namespace", "customHeaders",
                            "ignoreNullValues", "queryParameters", "unsafeSsl", "timeout", "authModes"}


def check_k8s() -> None:
    docs = k8s_docs()
    by_kind: dict[str, dict[str, tuple[Path, dict]]] = {}
    for p, d in docs:
        if d.get("kind") == "Kustomization":
            for r in d.get("resources", []):
                if not (p.parent / r).exists():
                    fail(f"{rel(p)}: resource {r} does not exist")
            listed = set(d.get("resources", []))
            for must in ("namespace.yaml", "configmaps.yaml", "scheduler.yaml", "worker.yaml", "keda-scaledobject.yaml"):
                if must not in listed:
                    fail(f"{rel(p)}: {must} is not listed")
            if "secret.example.yaml" in listed or any("alternatives" in r for r in listed):
                fail(f"{rel(p)}: the Secret example and the HPA alternative must not be applied by default")
            continue
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = (p, d)
        ns = d["metadata"].get("namespace")
        if d["kind"] != "Namespace" and ns != "fleet":
            fail(f"{rel(p)}: {d['kind']}/{d['metadata']['name']} is in namespace {ns!r}, not fleet")
    cms = {n: d for n, (_, d) in by_kind.get("ConfigMap", {}).items()}
    secrets = {n: d for n, (_, d) in by_kind.get("Secret", {}).items()}
    deployments = by_kind.get("Deployment", {})
    for name in ("fleet-worker", "fleet-scheduler"):
        if name not in deployments:
            fail(f"k8s: Deployment {name} is missing")
    for name, (p, dep) in deployments.items():
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"]["labels"]
        sel = dep["spec"]["selector"]["matchLabels"]
        if any(labels.get(k) != v for k, v in sel.items()):
            fail(f"{rel(p)}: {name} selector {sel} does not match its pod labels")
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and (ref["name"] not in secrets or ref["key"] not in secrets[ref["name"]].get("stringData", {})):
                    fail(f"{rel(p)}: {name} reads {ref['key']} from Secret {ref['name']}, which secret.example.yaml lacks")
            cfg_text = None
            for vm in c.get("volumeMounts", []):
                vol = volumes.get(vm["name"])
                if vol is None:
                    fail(f"{rel(p)}: {name} mounts unknown volume {vm['name']}")
                    continue
                if "configMap" in vol:
                    cm = cms.get(vol["configMap"]["name"])
                    if cm is None:
                        fail(f"{rel(p)}: {name} mounts ConfigMap {vol['configMap']['name']}, which is not defined")
                        continue
                    for key, text in cm["data"].items():
                        path = f"{vm['mountPath']}/{key}"
                        if "--config" in c.get("command", []) and c["command"][c["command"].index("--config") + 1] == path:
                            cfg_text = text
                if "persistentVolumeClaim" in vol and vol["persistentVolumeClaim"]["claimName"] not in by_kind.get(
                        "PersistentVolumeClaim", {}):
                    fail(f"{rel(p)}: {name} uses PVC {vol['persistentVolumeClaim']['claimName']}, which is not defined")
            if cfg_text is None:
                fail(f"{rel(p)}: {name}: --config does not point at a mounted ConfigMap key")
                continue
            cfg = tomllib.loads(cfg_text)
            port = int(cfg.get("listen", "127.0.0.1:0").rsplit(":", 1)[1])
            if not cfg.get("listen", "").startswith("0.0.0.0:"):
                fail(f"{rel(p)}: {name} listens on {cfg.get('listen')!r}: probes need 0.0.0.0")
            ports = {cp["name"]: cp["containerPort"] for cp in c.get("ports", [])}
            if port not in ports.values():
                fail(f"{rel(p)}: {name} containerPort {list(ports.values())} is not its listen port {port}")
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                pr = c.get(probe)
                if not pr:
                    fail(f"{rel(p)}: {name} has no {probe}")
                    continue
                get = pr.get("httpGet", {})
                pport = ports.get(get.get("port"), get.get("port"))
                # Readiness checks dependencies; liveness and start-up only that the process answers.
                want = "/readyz" if probe == "readinessProbe" else "/healthz"
                if get.get("path") != want or pport != port:
                    fail(f"{rel(p)}: {name} {probe} is {get}, expected {want} on {port}")
            if "resources" not in c or "limits" not in c["resources"] or "requests" not in c["resources"]:
                fail(f"{rel(p)}: {name} has no resource requests and limits")
            sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            if not sc.get("runAsNonRoot"):
                fail(f"{rel(p)}: {name} does not set runAsNonRoot")
            if name == "fleet-worker":
                grace = cfg.get("shutdown_grace_secs", 30)
                tgps = pod.get("terminationGracePeriodSeconds", 30)
                if tgps <= grace + 10:
                    fail(f"{rel(p)}: terminationGracePeriodSeconds {tgps} must exceed shutdown_grace_secs {grace} + 10 s for the final acks")
                else:
                    ok(f"{rel(p)}: terminationGracePeriodSeconds {tgps} > shutdown_grace_secs {grace} + 10 s")
                limit = c["resources"]["limits"].get("memory", "0Mi")
                mib = int(re.sub(r"Mi$", "", limit)) if limit.endswith("Mi") else int(re.sub(r"Gi$", "", limit)) * 1024
                budget = cfg.get("images", {}).get("memory_budget_mb", 768)
                if mib < budget + 256:
                    fail(f"{rel(p)}: memory limit {limit} leaves under 256 MiB beside memory_budget_mb {budget}")
            if name == "fleet-scheduler" and dep["spec"].get("replicas", 1) < 2:
                fail(f"{rel(p)}: run at least 2 scheduler replicas")
    for name, (p, pdb) in by_kind.get("PodDisruptionBudget", {}).items():
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
                   for _, d in deployments.values()):
            fail(f"{rel(p)}: PodDisruptionBudget {name} selects no Deployment's pods")
    for name, (p, svc) in by_kind.get("Service", {}).items():
        sel = svc["spec"]["selector"]
        matches = [d for _, d in deployments.values()
                   if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        if not matches:
            fail(f"{rel(p)}: Service {name} selects no pods")
        for sp in svc["spec"]["ports"]:
            tp = sp.get("targetPort")
            names = {cp["name"] for d in matches for c in d["spec"]["template"]["spec"]["containers"] for cp in c.get("ports", [])}
            if isinstance(tp, str) and tp not in names:
                fail(f"{rel(p)}: Service {name} targets port {tp}, which its pods do not name")
    for name, (p, so) in by_kind.get("ScaledObject", {}).items():
        spec = so["spec"]
        extra = set(spec) - KEDA_SPEC_KEYS
        if extra:
            fail(f"{rel(p)}: ScaledObject spec has unknown fields {sorted(extra)}")
        if spec["scaleTargetRef"]["name"] not in deployments:
            fail(f"{rel(p)}: ScaledObject targets {spec['scaleTargetRef']['name']}, not a Deployment here")
        if spec.get("minReplicaCount", 0) < 1:
            fail(f"{rel(p)}: minReplicaCount must be >= 1: the queue metrics come from the workers themselves")
        for t in spec["triggers"]:
            if set(t) - KEDA_TRIGGER_KEYS:
                fail(f"{rel(p)}: trigger has unknown fields {sorted(set(t) - KEDA_TRIGGER_KEYS)}")
            if t["type"] == "prometheus" and set(t["metadata"]) - KEDA_PROMETHEUS_METADATA:
                fail(f"{rel(p)}: prometheus trigger metadata has unknown fields {sorted(set(t['metadata']) - KEDA_PROMETHEUS_METADATA)}")
            if not all(isinstance(v, str) for v in t["metadata"].values()):
                fail(f"{rel(p)}: trigger metadata values must be strings")
        queries = " ".join(t["metadata"].get("query", "") for t in spec["triggers"])
        for needed in ('fleet_queue_jobs', 'state="ready"', "fleet_queue_lag_seconds", "max by (queue)"):
            if needed not in queries:
                fail(f"{rel(p)}: the triggers should use {needed}")
    for name, (p, hpa) in by_kind.get("HorizontalPodAutoscaler", {}).items():
        if hpa["spec"]["scaleTargetRef"]["name"] not in deployments:
            fail(f"{rel(p)}: HPA targets {hpa['spec']['scaleTargetRef']['name']}, not a Deployment here")
    if not FAILS:
        ok(f"k8s: {len(docs)} objects: selectors, Services, PDBs, Secret keys, ConfigMap mounts, probes (/healthz, readiness /readyz) at the "
           "listen ports, resources, non-root, scheduler replicas, ScaledObject fields and target")


def keda_json() -> None:
    docs = [{"file": rel(p), "doc": d} for p, d in k8s_docs() if str(d.get("apiVersion", "")).startswith("keda.sh/")]
    print(json.dumps(docs))


# ---------------------------------------------------------------------------- promql
def readme_metrics() -> dict[str, dict]:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Metrics\n(.*?)(?=^## )", text, re.S | re.M)
    if not m:
        raise SystemExit("README.md has no '## Metrics' section")
    metrics = {}
    for line in m.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`fleet_"):
            continue
        labels = {w for w in re.split(r"[,\s]+", re.sub(r"\(.*?\)", "", cells[2])) if w}
        for name in re.findall(r"`(fleet_[a-z0-9_]+)`", cells[0]):
            metrics[name] = {"type": cells[1], "labels": labels}
    return metrics


TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint", "node"}


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def check_expr(where: str, expr: str, metrics: dict[str, dict]) -> list[str]:
    """Returns the metric names used; reports unknown names and labels."""
    used = []
    body = strip_strings(expr)
    for m in re.finditer(r"\b(fleet_[a-z0-9_]+)\b", body):
        name = m.group(1)
        base, suffix = name, ""
        for s in ("_bucket", "_sum", "_count"):
            if name.endswith(s) and name[: -len(s)] in metrics and metrics[name[: -len(s)]]["type"] == "histogram":
                base, suffix = name[: -len(s)], s
        if base not in metrics:
            fail(f"{where}: metric {name} is not in the README metrics table")
            continue
        used.append(base)
    # Label names in selectors and grouping clauses must belong to the metrics used.
    allowed = set(TARGET_LABELS)
    for b in used:
        allowed |= metrics[b]["labels"]
        if metrics[b]["type"] == "histogram":
            allowed.add("le")
    for sel in re.findall(r"\{([^}]*)\}", expr):
        for lab in re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", sel):
            if lab not in allowed and not lab.startswith("__"):
                fail(f"{where}: label {lab!r} is not a label of {sorted(set(used)) or 'its metrics'}")
    for grp in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", body):
        for lab in re.findall(r"[a-zA-Z_][a-zA-Z0-9_]*", grp):
            if lab not in allowed:
                fail(f"{where}: grouping label {lab!r} is not a label of {sorted(set(used))}")
    return used


def check_promql(out: Path) -> None:
    metrics = readme_metrics()
    ok(f"README.md metrics table: {len(metrics)} metrics")
    used: set[str] = set()
    dash = json.loads((DEPLOY / "grafana/fleet-dashboard.json").read_text())
    rules = []
    n = 0
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            n += 1
            where = f"fleet-dashboard.json panel {panel['title']!r} {t['refId']}"
            used |= set(check_expr(where, t["expr"], metrics))
            # Grafana's variables replaced by what they become at query time, so promtool can parse the rest.
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$queue", ".*")
            rules.append({"record": f"fleet_dashboard:panel{panel['id']}:{t['refId'].lower()}", "expr": expr})
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            inner = re.match(r"label_values\((\w+),\s*(\w+)\)", q)
            if not inner or inner.group(1) not in metrics or inner.group(2) not in metrics[inner.group(1)]["labels"]:
                fail(f"fleet-dashboard.json variable {v['name']}: {q} uses an unknown metric or label")
    ok(f"fleet-dashboard.json: {n} queries checked against the README metrics table")
    out.write_text(yaml.safe_dump({"groups": [{"name": "fleet-dashboard-queries", "rules": rules}]}, sort_keys=False))
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yaml").read_text())
    n = 0
    for g in alerts["groups"]:
        for r in g["rules"]:
            n += 1
            used |= set(check_expr(f"alerts.yaml {r.get('alert') or r.get('record')}", r["expr"], metrics))
            if "alert" in r:
                if "for" not in r:
                    fail(f"alerts.yaml {r['alert']}: no for: duration")
                ann = r.get("annotations", {})
                if not ann.get("summary") or not ann.get("runbook"):
                    fail(f"alerts.yaml {r['alert']}: needs summary and runbook annotations")
                if re.search(r"\bsum\b[^()]*\(\s*[^()]*fleet_queue_", r["expr"]) and "max by" not in r["expr"]:
                    fail(f"alerts.yaml {r['alert']}: queue-wide fleet_queue_* figures must be aggregated with max")
    ok(f"alerts.yaml: {n} rules checked against the README metrics table")
    for p, d in k8s_docs():
        if d.get("kind") == "ScaledObject":
            for t in d["spec"]["triggers"]:
                q = t["metadata"].get("query")
                if q:
                    used |= set(check_expr(f"{rel(p)} trigger {t.get('name')}", q, metrics))
                    rules.append({"record": f"fleet_keda:{t.get('name', 'trigger').replace('-', '_')}", "expr": q})
                    if re.search(r"\bsum\s*\(\s*fleet_queue_", q):
                        fail(f"{rel(p)}: queue-wide figures must be aggregated with max by (queue) before sum")
    out.write_text(yaml.safe_dump({"groups": [{"name": "fleet-dashboard-and-keda-queries", "rules": rules}]}, sort_keys=False))
    wanted = {"fleet_jobs_total", "fleet_queue_jobs", "fleet_queue_lag_seconds", "fleet_job_start_latency_seconds",
              "fleet_job_duration_seconds", "fleet_queue_dead_letters_total", "fleet_limiter_waits_total", "fleet_breaker_state"}
    missing = wanted - used
    emitted = set()
    for src in ("jobs/src", "kit/src", "worker/src", "scheduler/src", "accounts/src", "webhooks/src", "images/src", "calendar/src", "comms/src"):
        for f in (ROOT / src).rglob("*.rs"):
            emitted |= set(re.findall(r'"(fleet_[a-z0-9_]+)"', f.read_text()))
    if emitted:
        stale = sorted(set(metrics) - emitted)
        if stale:
            fail(f"README metrics {stale} are emitted nowhere in the Rust sources (dashboards would stay empty)")
        else:
            ok(f"every README metric is emitted by the code ({len(emitted & set(metrics))} found in the Rust sources)")
    if missing:
        fail(f"dashboard/alerts do not show {sorted(missing)}")
    ok(f"PromQL uses {len(used)} of the {len(metrics)} README metrics; unused: {sorted(set(metrics) - used) or 'none'}")


# ---------------------------------------------------------------------------- grafana
def check_grafana() -> None:
    path = DEPLOY / "grafana/fleet-dashboard.json"
    dash = json.loads(path.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in dash:
            fail(f"{rel(path)}: no {key}")
    ids = [p["id"] for p in dash["panels"]]
    if len(ids) != len(set(ids)):
        fail(f"{rel(path)}: duplicate panel ids")
    for p in dash["panels"]:
        g = p.get("gridPos", {})
        if not all(k in g for k in ("h", "w", "x", "y")) or g["x"] + g["w"] > 24:
            fail(f"{rel(path)}: panel {p.get('title')!r} has a bad gridPos {g}")
        if p["type"] != "row":
            if p.get("datasource", {}).get("uid") != "${datasource}":
                fail(f"{rel(path)}: panel {p['title']!r} does not use the datasource variable")
            if not p.get("targets"):
                fail(f"{rel(path)}: panel {p['title']!r} has no query")
    titles = {p["title"] for p in dash["panels"]}
    for t in ("Throughput by outcome", "Queue depth by state", "Queue lag", "Enqueue-to-start latency",
              "Run duration by kind", "Dead letters", "Limiter waits", "Breaker state"):
        if t not in titles:
            fail(f"{rel(path)}: panel {t!r} is missing")
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {d["uid"] for d in ds["datasources"]}
    var = next((v for v in dash["templating"]["list"] if v["name"] == "datasource"), None)
    if var is None or var["current"]["value"] not in uids:
        fail(f"{rel(path)}: the datasource variable's default is not a provisioned data source uid {sorted(uids)}")
    prov = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/fleet.yaml").read_text())
    dash_dir = prov["providers"][0]["options"]["path"]
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    if not any(m.startswith("./grafana/fleet-dashboard.json:" + dash_dir + "/") for m in mounts):
        fail(f"compose.yaml: grafana does not mount the dashboard under the provisioned path {dash_dir}")
    if not FAILS:
        ok(f"{rel(path)}: {len(dash['panels'])} panels, unique ids, layout, datasource variable, provisioning paths and uid")


# ---------------------------------------------------------------------------- docker
def check_docker() -> None:
    df = (DEPLOY / "Dockerfile").read_text()
    bins = {"fleet-worker": ROOT / "worker/src/main.rs", "fleet-scheduler": ROOT / "scheduler/src/main.rs",
            "fleetctl": ROOT / "scheduler/src/bin/fleetctl.rs"}
    for b, src in bins.items():
        if not src.exists():
            fail(f"Dockerfile copies {b}, but {rel(src)} does not exist")
        if f"/out/{b}" not in df or f"target/release/{b}" not in df:
            fail(f"Dockerfile does not build and copy {b}")
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    need = cargo.get("workspace", {}).get("package", {}).get("rust-version", "0")
    have = re.search(r"ARG RUST_VERSION=([\d.]+)", df)
    if not have or tuple(map(int, have.group(1).split("."))) < tuple(map(int, need.split("."))):
        fail(f"Dockerfile RUST_VERSION {have and have.group(1)} is older than the workspace's rust-version {need}")
    for must in ("cargo build --release --locked -p fleet-worker -p fleet-scheduler", "nasm", "ca-certificates",
                 "USER 10001", "HEALTHCHECK", "EXPOSE 9464 8080", "debian:${DEBIAN_RELEASE}-slim"):
        if must not in df:
            fail(f"Dockerfile lacks {must!r}")
    for src in re.findall(r"^COPY (?:--chmod=\S+ )?(deploy/\S+)", df, re.M):
        if not (ROOT / src).exists():
            fail(f"Dockerfile copies {src}, which does not exist")
    ignore = (ROOT / ".dockerignore").read_text().split()
    for must in ("target/", ".git/", ".fleet/"):
        if must not in ignore:
            fail(f".dockerignore does not exclude {must}")
    for member in cargo["workspace"]["members"]:
        if any(member == i.rstrip("/") or member.startswith(i) for i in ignore if not i.startswith("#")):
            fail(f".dockerignore excludes workspace member {member}: cargo --locked needs every member")
    # The runtime image has glibc and libgcc only: built binaries must need nothing else.
    import subprocess

    base_libs = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0", "libdl.so.2",
                 "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}
    for b in bins:
        for built in (ROOT / "target/release" / b, ROOT / "target/debug" / b):
            if not built.exists():
                continue
            r = subprocess.run(["ldd", str(built)], capture_output=True, text=True)
            libs = {Path(line.split()[0]).name for line in r.stdout.splitlines() if line.strip()}
            extra = sorted(libs - base_libs)
            if extra:
                fail(f"{rel(built)} links {extra}: debian:bookworm-slim lacks them (add their packages to the runtime stage)")
            else:
                ok(f"{rel(built)} needs only {sorted(libs - {'linux-vdso.so.1'})}: all in debian:bookworm-slim")
            break
    if not FAILS:
        ok("Dockerfile: the three binaries exist in the workspace and are built and copied; Rust "
           f"{have.group(1)} >= rust-version {need}; nasm, ca-certificates, non-root user, HEALTHCHECK, EXPOSE; "
           ".dockerignore keeps target/, .git/, .fleet/ out and every workspace member in")


# ---------------------------------------------------------------------------- healthcheck
def check_healthcheck() -> None:
    """Runs deploy/docker/fleet-healthcheck against stub servers on loopback ports."""
    import http.server
    import socket
    import subprocess
    import threading

    def serve(code: int) -> http.server.HTTPServer:
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                body = b'{"status":"ok"}'
                self.send_response(code if self.path in ("/healthz", "/readyz") else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Quiet(http.server.HTTPServer):
            def handle_error(self, request, client_address):
                pass  # the probe hangs up after the status line

        srv = Quiet(("127.0.0.1", 0), H)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    script = str(DEPLOY / "docker/fleet-healthcheck")
    healthy, sick = serve(200), serve(503)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    cases = [("answers 200", [str(healthy.server_port)], {}, 0),
             ("answers 503", [str(sick.server_port)], {}, 1),
             ("nothing listens", [str(closed)], {}, 1),
             ("port from FLEET_HEALTHCHECK_PORT", [], {"FLEET_HEALTHCHECK_PORT": str(healthy.server_port)}, 0),
             ("/readyz answers 200", [str(healthy.server_port), "/readyz"], {}, 0),
             ("/readyz answers 503", [str(sick.server_port), "/readyz"], {}, 1),
             ("an unknown path", [str(healthy.server_port), "/nope"], {}, 1),
             ("path from FLEET_HEALTHCHECK_PATH", [str(healthy.server_port)], {"FLEET_HEALTHCHECK_PATH": "/nope"}, 1)]
    for name, args, env, want in cases:
        r = subprocess.run([script, *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=15)
        if r.returncode != want:
            fail(f"fleet-healthcheck, {name}: exit {r.returncode}, expected {want} ({r.stderr.strip()})")
        else:
            ok(f"fleet-healthcheck, {name}: exit {r.returncode}")
    healthy.shutdown()
    sick.shutdown()


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    cmd = sys.argv[1]
    if cmd == "yaml":
        check_yaml()
    elif cmd == "compose":
        check_compose()
    elif cmd == "toml":
        check_toml()
    elif cmd == "k8s":
        check_k8s()
    elif cmd == "promql":
        check_promql(Path(sys.argv[2]))
    elif cmd == "grafana":
        check_grafana()
    elif cmd == "docker":
        check_docker()
    elif cmd == "healthcheck":
        check_healthcheck()
    elif cmd == "keda-json":
        keda_json()
        return
    elif cmd == "extract-toml":
        extract_toml(Path(sys.argv[2]))
        return
    else:
        raise SystemExit(f"unknown check {cmd}\n{__doc__}")
    sys.exit(1 if FAILS else 0)


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
