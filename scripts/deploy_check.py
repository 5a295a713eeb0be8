#!/usr/bin/env python3
"""The coherence checks of `make deploy-check`: what no linter knows, that the files under
deploy/, k8s/ and docker-compose.yml agree with the services they configure.

  metrics   every metric a rule, dashboard or canary analysis names is a family the source
            registers (tests/tests/deploy_metrics.rs checks the same names against the
            running services' /metrics); every recording rule used is defined
  promql    every dashboard and analysis query parses (promtool, as for the rules)
  config    every environment that compose or a ConfigMap gives a service is accepted by
            that service's own loader (`<service> --check-config`)
  ports     ports, probe paths and grace periods in compose and k8s match what the services
            listen on and serve
  budget    every compose container has a memory limit; the app's sum fits 1.5 GiB
  versions  k8s pins the same image versions as .env; the topics job creates the source's
            topics
  runbooks  every alert's runbook_url is docs/runbooks/<alert>.md, and that file exists

Usage: deploy_check.py ROOT BIN_DIR RENDERED_DIR COMPOSE_JSON
  ROOT          the repository (or a mutated copy of it, for the negative tests)
  BIN_DIR       where the checkout, inventory and payments binaries are
  RENDERED_DIR  `kubectl kustomize` output of every overlay and k8s/tests folder, one
                <name>.yaml each
  COMPOSE_FILE  `docker-compose config` output with every profile enabled

Exits 1 after printing every problem found, 0 when there is none.
"""

import os
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

SERVICES = ("checkout", "inventory", "payments")
MAIN_LISTEN = {"checkout": "HTTP_LISTEN", "inventory": "GRPC_LISTEN", "payments": "GRPC_LISTEN"}
MAIN_PORT_NAME = {"checkout": "http", "inventory": "grpc", "payments": "grpc"}
PROBES = {"startupProbe": "/startup", "readinessProbe": "/ready", "livenessProbe": "/healthz"}
APP_BUDGET_MIB = 1536
DEFAULT_GRACE_MS = 10_000

problems = []


def problem(area, message):
    problems.append(f"[{area}] {message}")


# ---- metrics ---------------------------------------------------------------------------

PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
    # Aggregations, which may stand before `by (...)` rather than before their parenthesis.
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def grafana_to_promql(expr):
    """A dashboard query with Grafana's variables replaced by values PromQL accepts."""
    expr = re.sub(r"\$__rate_interval|\$__interval|\$__range", "5m", expr)
    return re.sub(r"\{\{\s*args\.[a-z-]+\s*\}\}", "canary", expr)


def metric_names(expr):
    """The metric (and recording-rule) names an expression reads."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    names = set()
    tokens = re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*|\(|\)|[^\sA-Za-z_:()]+", text)
    skip_group = False
    depth = 0
    for i, token in enumerate(tokens):
        if skip_group:
            if token == "(":
                depth += 1
            elif token == ")":
                depth -= 1
                if depth == 0:
                    skip_group = False
            continue
        if token in LABEL_LIST_KEYWORDS:
            if i + 1 < len(tokens) and tokens[i + 1] == "(":
                skip_group = True
            continue
        if not re.match(r"[A-Za-z_:]", token) or token.lower() in PROMQL_KEYWORDS:
            continue
        if i + 1 < len(tokens) and tokens[i + 1] == "(":
            continue  # a function
        names.add(token)
    return names


def registered_families(root):
    """Every string literal in the Rust source that could name a metric family."""
    literals = set()
    for folder in ("crates", "services"):
        for path in (root / folder).rglob("*.rs"):
            literals.update(re.findall(r'"([a-z][a-z0-9_]*)"', path.read_text()))
    return literals


def seconds_families(root):
    """Families registered with a unit of seconds: exported as `<name>_seconds` only."""
    found = set()
    for folder in ("crates", "services"):
        for path in (root / folder).rglob("*.rs"):
            text = path.read_text()
            found.update(re.findall(r'register_with_unit\(\s*"([a-z0-9_]+)",[^;]*?Unit::Seconds', text))
    return found


def is_registered(name, families, seconds):
    """`x_seconds_bucket` is the histogram `x` with unit seconds, `x_total` the counter `x`.
    A family with a unit is only known by its name with the unit."""
    bases = {name}
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if name.endswith(suffix):
            bases.add(name[: -len(suffix)])
    for base in bases:
        if base.endswith("_seconds") and base[: -len("_seconds")] in seconds:
            return True
        if base in families and base not in seconds:
            return True
    return False


def queries(root, rendered):
    """(where, PromQL) of every rule, dashboard panel and canary analysis."""
    found = []
    for path in sorted((root / "deploy/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule.get("alert")
                found.append((f"{path.relative_to(root)} {name}", str(rule["expr"]), "rule"))
    for path in sorted((root / "deploy/grafana/dashboards").glob("*.json")):
        board = yaml.safe_load(path.read_text())
        for panel in board.get("panels", []):
            for target in panel.get("targets", []):
                where = f"{path.relative_to(root)} panel {panel.get('title')!r}"
                found.append((where, grafana_to_promql(target["expr"]), "dashboard"))
    for name, docs in rendered.items():
        for doc in docs:
            if doc.get("kind") == "AnalysisTemplate":
                for metric in doc["spec"]["metrics"]:
                    query = metric["provider"]["prometheus"]["query"]
                    where = f"k8s render {name} AnalysisTemplate {doc['metadata']['name']}"
                    found.append((where, grafana_to_promql(query), "analysis"))
    return found


def check_metrics(root, rendered, promtool):
    families = registered_families(root)
    seconds = seconds_families(root)
    recorded = set()
    for path in (root / "deploy/prometheus/rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            recorded.update(rule["record"] for rule in group["rules"] if "record" in rule)
    found = queries(root, rendered)
    for where, expr, _ in found:
        for name in sorted(metric_names(expr)):
            if ":" in name:
                if name not in recorded:
                    problem("metrics", f"{where}: recording rule {name} is not defined")
            elif not is_registered(name, families, seconds):
                problem("metrics", f"{where}: metric {name} is not registered by any service")
    # Dashboards and analyses are parsed by promtool the way rules are: as recording rules.
    extra = [(where, expr) for where, expr, kind in found if kind != "rule"]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as handle:
        rules = [{"record": f"check:query_{i}", "expr": expr} for i, (_, expr) in enumerate(extra)]
        yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}, handle)
    result = subprocess.run([promtool, "check", "rules", handle.name], capture_output=True, text=True)
    os.unlink(handle.name)
    if result.returncode != 0:
        problem("promql", f"a dashboard or analysis query does not parse:\n{result.stdout}{result.stderr}")
    return len(found)


# ---- config ----------------------------------------------------------------------------


def allowed_unprefixed(root):
    """Variables besides `<PREFIX>_*` that a service reads: crates/telemetry's, and RUST_LOG
    (tracing's filter)."""
    source = (root / "crates/telemetry/src/lib.rs").read_text()
    return set(re.findall(r'std::env::var\("([A-Z_]+)"\)', source)) | {"RUST_LOG"}


def dockerfile_env(root):
    """ENV lines per Dockerfile stage: they are part of the container's environment."""
    env, stage = {}, None
    for line in (root / "deploy/Dockerfile").read_text().splitlines():
        match = re.match(r"FROM \S+ AS (\S+)", line)
        if match:
            stage = match.group(1)
            env[stage] = dict(env.get(line.split()[1], {}))
        match = re.match(r"ENV (\w+)=(\S+)", line)
        if match and stage:
            env[stage][match.group(1)] = match.group(2)
    return env


def check_config(root, bin_dir, service, env, where):
    prefix = service.upper()
    allowed = allowed_unprefixed(root)
    for key in sorted(env):
        if not key.startswith(f"{prefix}_") and key not in allowed:
            problem("config", f"{where}: {service} reads no variable {key}")
    run_env = {"PATH": "/usr/bin:/bin"}
    run_env.update({k: str(v) for k, v in env.items()})
    with tempfile.TemporaryDirectory() as scratch:
        if f"{prefix}_CONFIG_FILE" in env:
            # The file a job or Secret provides (deploy/postgres/secrets.sh,
            # scripts/k8s-dev-secrets.sh): the database password only.
            config = pathlib.Path(scratch, "config.toml")
            config.write_text('[database]\npassword = "checked-by-deploy-check"\n')
            run_env[f"{prefix}_CONFIG_FILE"] = str(config)
        result = subprocess.run(
            [str(bin_dir / service), "--check-config"], env=run_env, capture_output=True, text=True
        )
    if result.returncode != 0:
        problem("config", f"{where}: {service} --check-config refused it:\n  {result.stderr.strip()}")


def k8s_service_envs(docs):
    """Per Faultline Deployment (or Rollout template): its container's env, ConfigMaps merged."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
    out = {}
    for doc in docs:
        if doc.get("kind") != "Deployment" or doc["metadata"]["name"] not in SERVICES:
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            env = {}
            for source in container.get("envFrom", []):
                env.update(maps.get(source.get("configMapRef", {}).get("name"), {}))
            for item in container.get("env", []):
                env[item["name"]] = item.get("value", "<from a Secret>")
            out[doc["metadata"]["name"]] = (env, container, doc)
    return out


# ---- ports and probes ------------------------------------------------------------------


def port_of(value):
    return int(str(value).rsplit(":", 1)[-1].split("/")[0])


def served_probe_paths(root):
    source = (root / "crates/platform/src/health.rs").read_text()
    return set(re.findall(r'\.route\("(/[a-z]+)"', source))


def check_k8s_workload(root, name, service, env, container, doc):
    where = f"k8s render {name}: Deployment {service}"
    prefix = service.upper()
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    main_var, admin_var = f"{prefix}_{MAIN_LISTEN[service]}", f"{prefix}_ADMIN__LISTEN"
    for var, port_name in ((main_var, MAIN_PORT_NAME[service]), (admin_var, "admin")):
        if var not in env:
            problem("ports", f"{where}: {var} is not set, so {service} listens on loopback only")
        elif ports.get(port_name) != port_of(env[var]):
            problem("ports", f"{where}: port {port_name} is {ports.get(port_name)}, {var} says {port_of(env[var])}")
    served = served_probe_paths(root)
    for probe, path in PROBES.items():
        spec = container.get(probe)
        if not spec:
            problem("ports", f"{where}: container {container['name']} has no {probe}")
            continue
        http = spec.get("httpGet", {})
        if http.get("path") != path or path not in served:
            problem("ports", f"{where}: {probe} asks {http.get('path')}, the admin server serves {path} for it")
        if http.get("port") not in ("admin", ports.get("admin")):
            problem("ports", f"{where}: {probe} is not on the admin port")
    grace_ms = int(env.get(f"{prefix}_LIFECYCLE__GRACE_PERIOD_MS", DEFAULT_GRACE_MS))
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    termination = doc["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
    if termination < pre_stop + grace_ms / 1000:
        problem("ports", f"{where}: terminationGracePeriodSeconds {termination} < preStop {pre_stop} s + grace {grace_ms} ms")
    strategy = doc["spec"].get("strategy", {}).get("rollingUpdate", {})
    if strategy.get("maxUnavailable") != 0:
        problem("ports", f"{where}: rollingUpdate.maxUnavailable must be 0")
    if "replicas" in doc["spec"]:
        problem("ports", f"{where}: spec.replicas is set beside its HorizontalPodAutoscaler")


def check_k8s_services(name, docs, envs):
    """Each Service's ports lead to a container port of that number; callers use them."""
    services = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"}
    for service, (env, container, _) in envs.items():
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        svc = services.get(service)
        if not svc:
            problem("ports", f"k8s render {name}: no Service {service}")
            continue
        for port in svc["spec"]["ports"]:
            if ports.get(port.get("targetPort")) != port["port"]:
                problem("ports", f"k8s render {name}: Service {service} port {port['port']} does not match its container port")
    checkout_env = envs.get("checkout", ({},))[0]
    url = checkout_env.get("CHECKOUT_INVENTORY__URL")
    if url and "inventory" in services:
        grpc = {p["name"]: p["port"] for p in services["inventory"]["spec"]["ports"]}.get("grpc")
        if port_of(url) != grpc:
            problem("ports", f"k8s render {name}: CHECKOUT_INVENTORY__URL port {port_of(url)} is not inventory's Service port {grpc}")


def check_compose(root, compose, bin_dir, images):
    services = compose["services"]
    scrape = yaml.safe_load((root / "deploy/prometheus/prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape["scrape_configs"]}
    for service in SERVICES:
        spec = services[service]
        env = dict(images.get(service, {}))
        env.update(spec.get("environment") or {})
        where = f"docker-compose.yml {service}"
        check_config(root, bin_dir, service, env, where)
        prefix = service.upper()
        main = port_of(env.get(f"{prefix}_{MAIN_LISTEN[service]}", "x:0"))
        admin = port_of(env.get(f"{prefix}_ADMIN__LISTEN", "x:0"))
        if targets.get(service) != [f"{service}:{admin}"]:
            problem("ports", f"deploy/prometheus/prometheus.yml scrapes {service} at {targets.get(service)}, it serves /metrics on {admin}")
        for mapping in spec.get("ports", []):
            published = mapping.get("target") if isinstance(mapping, dict) else port_of(str(mapping))
            if int(published) != main:
                problem("ports", f"{where}: publishes container port {published}, {service} listens on {main}")
        test = spec.get("healthcheck", {}).get("test", [])
        if test != ["CMD", f"/usr/local/bin/{service}", "healthcheck"]:
            problem("ports", f"{where}: healthcheck {test} is not the service's own `healthcheck`")
        grace_ms = int(env.get(f"{prefix}_LIFECYCLE__GRACE_PERIOD_MS", DEFAULT_GRACE_MS))
        stop = duration_seconds(spec.get("stop_grace_period", "10s"))
        if stop < grace_ms / 1000:
            problem("ports", f"{where}: stop_grace_period {stop} s is shorter than the grace period {grace_ms} ms")
    if "CHECKOUT_INVENTORY__URL" in (services["checkout"].get("environment") or {}):
        inventory = port_of(services["inventory"]["environment"]["INVENTORY_GRPC_LISTEN"])
        if port_of(services["checkout"]["environment"]["CHECKOUT_INVENTORY__URL"]) != inventory:
            problem("ports", "docker-compose.yml: checkout calls inventory on another port than it listens on")


def duration_seconds(text):
    text = str(text)
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)(ms|s|m|h)", text):
        total += float(value) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def mebibytes(text):
    value, unit = re.fullmatch(r"(\d+)([bkmg]?)", str(text).lower()).groups()
    return int(value) * {"b": 1 / 2**20, "k": 1 / 1024, "": 1 / 2**20, "m": 1, "g": 1024}[unit]


def check_budget(compose):
    app = 0.0
    for name, spec in compose["services"].items():
        limit = spec.get("mem_limit") or spec.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
        if not limit:
            problem("budget", f"docker-compose.yml {name}: no memory limit")
            continue
        if not spec.get("profiles"):
            app += mebibytes(limit)
    if app > APP_BUDGET_MIB:
        problem("budget", f"the app profile's memory limits add up to {app:.0f} MiB, over {APP_BUDGET_MIB}")
    return app


def check_runbooks(root):
    """Every alert links a runbook that exists, named after the alert."""
    for path in sorted((root / "deploy/prometheus/rules").glob("*.yml")):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                url = rule.get("annotations", {}).get("runbook_url", "")
                expected = f"docs/runbooks/{rule['alert']}.md"
                if not url.endswith(expected) or not (root / expected).is_file():
                    problem("runbooks", f"{path.relative_to(root)} {rule['alert']}: runbook_url {url!r}, want an existing {expected}")


def check_versions(root, rendered):
    env = {}
    for line in (root / ".env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key] = value
    pinned = {value.rsplit(":", 1)[0]: value for key, value in env.items() if key.endswith("_IMAGE")}
    for name, docs in rendered.items():
        for doc in docs:
            spec = doc.get("spec", {})
            template = spec.get("template", spec.get("jobTemplate", {})).get("spec", {})
            for container in template.get("containers", []):
                image = container["image"]
                repo = image.split("@")[0].rsplit(":", 1)[0]
                if repo in pinned and image != pinned[repo]:
                    problem("versions", f"k8s render {name}: {image}, but .env pins {pinned[repo]}")
    contract = (root / "crates/proto/src/contract.rs").read_text()
    topics = set(re.findall(r'pub const [A-Z_]+: &str = "([a-z.]+)"', contract))
    topics |= {f"{service}.dlq" for service in SERVICES}
    script = (root / "deploy/kafka/topics.sh").read_text()
    listed = set(re.search(r'TOPICS="([^"]*)"', script).group(1).split())
    if listed != topics:
        problem("versions", f"deploy/kafka/topics.sh creates {sorted(listed)}, the services use {sorted(topics)}")


def main():
    root, bin_dir, rendered_dir, compose_file = map(pathlib.Path, sys.argv[1:5])
    promtool = os.environ.get("PROMTOOL", "promtool")
    rendered = {
        path.stem: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(rendered_dir.glob("*.yaml"))
    }
    compose = yaml.safe_load(compose_file.read_text())
    images = dockerfile_env(root)

    count = check_metrics(root, rendered, promtool)
    check_compose(root, compose, bin_dir, images)
    checked = 0
    for name, docs in rendered.items():
        envs = k8s_service_envs(docs)
        for service, (env, container, doc) in envs.items():
            full = dict(images.get(service, {}))
            full.update(env)
            check_config(root, bin_dir, service, full, f"k8s render {name}: Deployment {service}")
            check_k8s_workload(root, name, service, env, container, doc)
            checked += 1
        check_k8s_services(name, docs, envs)
    app = check_budget(compose)
    check_versions(root, rendered)
    check_runbooks(root)

    if problems:
        print("\n".join(problems), file=sys.stderr)
        print(f"[deploy-check] coherence: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(
        f"[deploy-check] coherence: {count} queries name only exported metrics; "
        f"{checked} k8s and 3 compose service environments accepted by --check-config; "
        f"ports and probes agree; app memory {app:.0f} of {APP_BUDGET_MIB} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
