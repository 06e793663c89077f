"""The deploy artifacts: every node config under deploy/ loads with the node's own loader in
production mode, and the container image, compose file, Kubernetes manifests and systemd unit
keep the settings the node depends on (non-root, read-only root, key modes, probes, hardening).

No container engine or cluster is needed: these files are parsed and checked, not run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from gateway.contract.schemas import SchemaRegistry
from gateway.crypto.keys import (
    generate_signing_key,
    load_encryption_key,
    load_pseudonym_key,
    load_signing_key,
    write_key_file,
)
from gateway.crypto.trust import authority_keys, load_trust_list
from gateway.errors import KeyFileError
from gateway.node.config import NodeConfig, load_config
from gateway.policy.engine import load_policy
from gateway.types import AgencyId, KeyId

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
IMAGE_SCHEMAS = "/usr/share/fxgw/schemas/avro"
"""Where the Containerfile puts the contract; node configs that run in the image point here."""
NODE_UID = 10001


# --- finding node configs ------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def _documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def _configmap_node_configs() -> Iterator[tuple[str, str]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in _documents(path):
            if doc.get("kind") == "ConfigMap" and "node.yaml" in doc.get("data", {}):
                yield (
                    f"{path.relative_to(DEPLOY)}:{doc['metadata']['name']}",
                    doc["data"]["node.yaml"],
                )


def _node_config_sources() -> list[tuple[str, str]]:
    """(where, YAML text) of every node config under deploy/: node.yaml files and the
    node.yaml of each ConfigMap."""
    files = [
        (str(p.relative_to(DEPLOY)), p.read_text(encoding="utf-8"))
        for p in sorted(DEPLOY.rglob("node.yaml"))
    ]
    return files + list(_configmap_node_configs())


NODE_CONFIGS = _node_config_sources()


def _password_envs(document: Any) -> Iterator[str]:
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("password_env", "key_password_env") and isinstance(value, str):
                yield value
            else:
                yield from _password_envs(value)
    elif isinstance(document, list):
        for item in document:
            yield from _password_envs(item)


def _load(where: str, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodeConfig:
    """Load a node config with the node's loader: a file where it lies, a ConfigMap's text from
    a file of its own. Only the variables its password_env fields name are set."""
    for name in _password_envs(yaml.safe_load(text)):
        monkeypatch.setenv(name, f"value-of-{name}")
    path = DEPLOY / where
    filled = _with_an_authority_key(text)
    if not path.is_file() or filled != text:
        # a template: filled in as its init step would, in a file of its own
        path = tmp_path / where.replace("/", "_")
        path.write_text(filled, encoding="utf-8")
    return load_config(path)


_AN_AUTHORITY_KEY = base64.b64encode(bytes(range(32))).decode()
"""Stands in for the federation authority's public key, which each deployment makes."""


def _with_an_authority_key(text: str) -> str:
    for placeholder in (
        "@AUTHORITY_PUBLIC_KEY@",
        "REPLACE-WITH-THE-FEDERATION-AUTHORITY-PUBLIC-KEY",
    ):
        text = text.replace(placeholder, _AN_AUTHORITY_KEY)
    return text


def _hosts(bootstrap: str) -> set[str]:
    return {s.strip().lower() for s in bootstrap.split(",") if s.strip()}


class TestFound:
    def test_every_artifact_has_node_configs(self) -> None:
        """Compose (three agencies and the operator), Kubernetes and systemd configs are found."""
        wheres = {where for where, _ in NODE_CONFIGS}
        assert {
            "compose/NL-POL/node.yaml",
            "compose/BE-FPJ/node.yaml",
            "compose/US-ATF/node.yaml",
            "compose/ops/node.yaml",
            "systemd/node.yaml",
            "kubernetes/configmap.yaml:fxgw-nl-pol-config",
        } <= wheres


@pytest.mark.parametrize(("where", "text"), NODE_CONFIGS, ids=[w for w, _ in NODE_CONFIGS])
class TestNodeConfigs:
    def test_production_settings(
        self, where: str, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No development mode; TLS to the exchange; replication 3, min ISR 2 there."""
        config = _load(where, text, tmp_path, monkeypatch)
        assert config.development is False
        assert config.exchange.cluster.protocol in ("SSL", "SASL_SSL")
        assert config.exchange.cluster.check_hostname
        assert config.exchange.topics.replication >= 3
        assert config.exchange.topics.min_insync_replicas >= 2
        assert "development" not in yaml.safe_load(text)

    def test_local_cluster_is_not_the_exchange(
        self, where: str, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The plaintext topics' cluster shares no broker with the exchange."""
        config = _load(where, text, tmp_path, monkeypatch)
        local = _hosts(config.local.bootstrap_servers)
        exchange = _hosts(config.exchange.bootstrap_servers)
        assert local and exchange and not local & exchange

    def test_password_env_is_read(
        self, where: str, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A password named by password_env is what the client gets; none is in the file."""
        config = _load(where, text, tmp_path, monkeypatch)
        for cluster in (config.exchange.cluster, config.local.cluster):
            if cluster.password is not None and cluster.password.env is not None:
                assert f"value-of-{cluster.password.env}" == cluster.password.read()
        assert not re.search(r"^\s*password\s*:", text, re.MULTILINE)

    def test_referenced_policy_loads(
        self,
        where: str,
        text: str,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        registry: SchemaRegistry,
    ) -> None:
        """The policy a config names loads with the policy loader and is the agency's own: the
        file it names where that is committed, else policies/<agency>.yaml, which compose,
        Kubernetes (the federation ConfigMap) and systemd put in its place."""
        config = _load(where, text, tmp_path, monkeypatch)
        if config.agency == "EU-OPS":  # the operator's config: no node runs with it
            assert not config.policy.exists()
            return
        path = config.policy
        if not path.is_file():
            path = ROOT / "policies" / f"{config.agency.lower()}.yaml"
        assert config.agency == load_policy(path, registry).agency


class TestComposeConfigs:
    def test_schemas_point_into_the_image(self) -> None:
        """Configs that run in the image name the contract where the Containerfile puts it."""
        in_image = [(w, t) for w, t in NODE_CONFIGS if not w.startswith("systemd/")]
        assert in_image
        for _, text in in_image:
            assert IMAGE_SCHEMAS == yaml.safe_load(text)["schemas"]
        assert re.search(rf"^COPY .*schemas/avro/ {IMAGE_SCHEMAS}/$", _containerfile(), re.M)

    def test_placeholders_are_the_init_scripts(self) -> None:
        """Every @PLACEHOLDER@ of a compose config is one federation-init replaces."""
        script = (COMPOSE / "init" / "federation-init.sh").read_text(encoding="utf-8")
        found = set()
        for path in COMPOSE.glob("*/node.yaml"):
            found |= set(re.findall(r"@[A-Z_]+@", path.read_text(encoding="utf-8")))
        assert {"@AUTHORITY_KEY_ID@", "@AUTHORITY_PUBLIC_KEY@"} == found
        for placeholder in found:
            assert f"s|{placeholder}|" in script

    def test_agencies_match_federation(self) -> None:
        """The compose agencies are federation.yaml's, each with a config folder and policy."""
        federation = yaml.safe_load((COMPOSE / "federation.yaml").read_text(encoding="utf-8"))
        agencies = {a["id"] for a in federation["agencies"]}
        assert {"NL-POL", "BE-FPJ", "US-ATF"} == agencies
        for agency in agencies:
            assert (COMPOSE / agency / "node.yaml").is_file()
            assert (ROOT / "policies" / f"{agency.lower()}.yaml").is_file()


@pytest.fixture(scope="module")
def federation_init(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The volumes federation-init.sh fills, made by running it under a folder (its
    FXGW_INIT_ROOT) with this interpreter's fxgw and python first on PATH, owners this user."""
    root = tmp_path_factory.mktemp("init")
    me = str(os.getuid())
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FXGW_INIT_ROOT": str(root),
        "FXGW_INIT_SRC": str(ROOT),
        "FXGW_KAFKA_UID": me,
        "FXGW_NODE_UID": me,
        "FXGW_ROOT_UID": me,
    }
    script = COMPOSE / "init" / "federation-init.sh"
    result = subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert 0 == result.returncode, result.stderr
    again = subprocess.run(
        ["sh", str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert 0 == again.returncode and "done before" in again.stdout
    return root


def _as_mounted(root: Path, agency: str, tmp_path: Path) -> Path:
    """An agency's /etc/fxgw as its node sees it: the config volume, the keys volume inside."""
    etc = tmp_path / "etc-fxgw"
    shutil.copytree(root / "out" / agency / "config", etc)
    (etc / "keys").rmdir()
    shutil.copytree(root / "out" / agency / "keys", etc / "keys")
    return etc / "node.yaml"


class TestFederationInit:
    @pytest.mark.parametrize("agency", ["NL-POL", "BE-FPJ", "US-ATF"])
    def test_node_finds_everything(
        self, federation_init: Path, agency: str, tmp_path: Path, registry: SchemaRegistry
    ) -> None:
        """A rendered config loads; its trust list verifies against the authority key put in
        it; its keys, policy, CA and password file are all usable by the node."""
        config = load_config(_as_mounted(federation_init, agency, tmp_path))
        assert "@" not in config.trust.pinned[0][0]
        trust = load_trust_list(
            config.trust.file, authority_keys(config.trust.pinned), now=datetime.now(UTC)
        )
        assert {"NL-POL", "BE-FPJ", "US-ATF"} == set(trust.agencies)
        assert load_signing_key(config.keys.signing).key_id.startswith(f"{agency}/")
        assert all(load_encryption_key(p) for p in config.keys.encryption)
        assert config.keys.pseudonym is not None and load_pseudonym_key(config.keys.pseudonym)
        assert agency == load_policy(config.policy, registry).agency
        assert [] == config.exchange.cluster.problems()
        assert "ssl_context" in config.exchange.cluster.client_options()

    def test_private_files_are_private(self, federation_init: Path) -> None:
        """Keys, passwords and broker keystores have no group or other bits; the configs,
        trust list and CA are readable by all."""
        for path in federation_init.rglob("*"):
            if path.is_dir():
                continue
            mode = stat.S_IMODE(path.stat().st_mode)
            configs = "config" in path.parts or "ops" in path.parts
            public = path.suffix in (".yaml", ".sig") and configs
            public |= path.name == "ca.pem" or path.name.endswith(("-1.pem", "-2.pem", "-3.pem"))
            if public:
                assert mode & 0o004, path
            else:
                assert 0 == mode & 0o077, path

    def test_acl_script_and_scram_users(self, federation_init: Path) -> None:
        """The ACL script grants each agency its own inbox; every agency and admin has a SCRAM
        password, the one in its keys volume."""
        script = (federation_init / "pki" / "acls.sh").read_text(encoding="utf-8")
        for agency in ("NL-POL", "BE-FPJ", "US-ATF"):
            assert f"--allow-principal User:{agency}" in script
            scram = (federation_init / "pki" / "scram" / agency).read_text()
            node = (federation_init / "out" / agency / "keys" / "exchange.password").read_text()
            assert scram == node and len(scram.strip()) >= 32
        assert (federation_init / "pki" / "scram" / "admin").is_file()
        assert not (federation_init / "out" / "NL-POL" / "config" / "FED.authority.key").exists()


# --- every YAML file -----------------------------------------------------------------------------


class TestYaml:
    @pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
    def test_parses(self, path: Path) -> None:
        """Every YAML file under deploy/ parses, all its documents."""
        assert _documents(path)

    def test_yamllint_clean(self) -> None:
        """yamllint with the repository's .yamllint finds nothing under deploy/."""
        config = YamlLintConfig(file=str(ROOT / ".yamllint"))
        problems = [
            f"{path.relative_to(DEPLOY)}:{p.line}: {p.message}"
            for path in _yaml_files()
            for p in linter.run(path.read_text(encoding="utf-8"), config, str(path))
        ]
        assert [] == problems

    def test_yamllint_finds_a_duplicate_key(self) -> None:
        """The lint config does catch a mistake (a key given twice)."""
        config = YamlLintConfig(file=str(ROOT / ".yamllint"))
        problems = list(linter.run("a: 1\na: 2\n", config))
        assert any("duplication" in p.message for p in problems)


# --- the container image -------------------------------------------------------------------------


def _containerfile() -> str:
    return CONTAINERFILE.read_text(encoding="utf-8")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    found = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def _stages(text: str) -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions(text):
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


class TestContainerfile:
    def test_final_stage_runs_as_numeric_non_root_user(self) -> None:
        """The image's default stage sets USER to a numeric UID:GID other than root."""
        final = _stages(_containerfile())[-1]
        users = [args for word, args in final if word == "USER"]
        assert users, "the final stage sets its user"
        uid, _, gid = users[-1].partition(":")
        assert uid.isdigit() and int(uid) == NODE_UID
        assert gid.isdigit() and int(gid) != 0

    def test_entrypoint_and_command(self) -> None:
        """ENTRYPOINT fxgw, CMD run -c /etc/fxgw/node.yaml, the metrics port exposed."""
        final = dict(_stages(_containerfile())[-1])
        assert ["fxgw"] == json.loads(final["ENTRYPOINT"])
        assert ["run", "-c", "/etc/fxgw/node.yaml"] == json.loads(final["CMD"])
        assert "9464" == final["EXPOSE"]
        assert "org.opencontainers.image.licenses" in final["LABEL"]

    def test_multi_stage_from_python_311_slim(self) -> None:
        """A build stage makes the wheels; the runtime is a slim Python 3.11."""
        text = _containerfile()
        assert re.search(r"^ARG PYTHON_IMAGE=\S*python:3\.11-slim", text, re.M)
        assert "pip wheel" in text
        assert len(_stages(text)) >= 2

    def test_copies_no_secret(self) -> None:
        """Only the package sources and the contract are copied in; no key, password or
        certificate, and the build context's .dockerignore is an allow-list."""
        for word, args in _instructions(_containerfile()):
            if word in ("COPY", "ADD"):
                sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
                assert word == "COPY"
                for source in sources:
                    assert source in ("pyproject.toml", "README.md", "gateway/", "schemas/avro/")
                    assert not re.search(r"key|secret|password|credential|\.pem", source, re.I)
        ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        rules = [line for line in ignore if line and not line.startswith("#")]
        assert "*" == rules[0]
        assert not any(r.startswith("!") and ("key" in r or "deploy" in r) for r in rules)


# --- compose -------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    document = yaml.safe_load((COMPOSE / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def _agencies() -> list[str]:
    return sorted(p.parent.name for p in COMPOSE.glob("*-*/node.yaml"))


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """target -> (source, options) of a service's short-syntax volumes."""
    found = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        found[target] = (source, options[0] if options else "rw")
    return found


class TestCompose:
    def test_valid_compose_specification(self) -> None:
        """The file validates against the Compose Specification's JSON schema (as vendored in
        tests/data/compose-spec.json, from compose-spec/compose-spec at commit 170098b)."""
        schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(_compose())]
        assert [] == errors

    def test_schema_check_catches_a_typo(self) -> None:
        """The schema check is not vacuous: a misspelt key is refused."""
        schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
        document = _compose()
        document["services"]["nl-pol"]["read_onyl"] = True
        assert list(jsonschema.Draft7Validator(schema).iter_errors(document))

    @pytest.mark.parametrize("agency", _agencies())
    def test_node_service_is_locked_down(self, agency: str) -> None:
        """User 10001, read-only root, tmpfs /tmp, config and keys read-only, state on a named
        volume, built from the Containerfile, healthy on /readyz of the config's port."""
        compose = _compose()
        service = compose["services"][agency.lower()]
        config = yaml.safe_load((COMPOSE / agency / "node.yaml").read_text(encoding="utf-8"))
        assert f"{NODE_UID}:{NODE_UID}" == service["user"]
        assert service["read_only"] is True
        assert any(t.split(":")[0] == "/tmp" for t in service["tmpfs"])
        assert ["ALL"] == service["cap_drop"]
        assert "deploy/container/Containerfile" == service["build"]["dockerfile"]
        mounts = _mounts(service)
        assert "ro" == mounts["/etc/fxgw"][1]
        assert "ro" == mounts["/etc/fxgw/keys"][1]
        state_source, _ = mounts[config["state_dir"]]
        assert state_source in compose["volumes"]
        assert "ro" not in mounts[config["state_dir"]][1]
        check = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{config['metrics_port']}/readyz" in check

    @pytest.mark.parametrize("agency", _agencies())
    def test_local_broker_is_the_agencys_alone(self, agency: str) -> None:
        """The node's local broker is a service on an internal network no other node joins."""
        compose = _compose()
        config = yaml.safe_load((COMPOSE / agency / "node.yaml").read_text(encoding="utf-8"))
        [local] = _hosts(config["local"]["bootstrap_servers"])
        broker = compose["services"][local.split(":")[0]]
        for network in broker["networks"]:
            assert compose["networks"][network].get("internal") is True
            members = {
                name
                for name, s in compose["services"].items()
                if network in s.get("networks", []) and name != local.split(":")[0]
            }
            assert {agency.lower()} == members

    def test_exchange_brokers_are_services(self) -> None:
        """Every bootstrap server of the compose configs is a broker service of the file."""
        compose = _compose()
        for agency in [*_agencies(), "ops"]:
            config = yaml.safe_load((COMPOSE / agency / "node.yaml").read_text(encoding="utf-8"))
            for host in _hosts(config["exchange"]["bootstrap_servers"]):
                assert compose["services"][host.split(":")[0]]["image"].startswith("apache/kafka")

    def test_exchange_broker_settings(self) -> None:
        """The brokers: replication 3, min ISR 2, StandardAuthorizer, no access without an ACL,
        SASL_SSL for the agencies; the ACL script comes from fxgw acls."""
        script = (COMPOSE / "init" / "exchange-broker.sh").read_text(encoding="utf-8")
        for line in (
            "default.replication.factor=3",
            "min.insync.replicas=2",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            "listener.security.protocol.map=EXTERNAL:SASL_SSL,BROKER:SSL,CONTROLLER:SSL",
        ):
            assert line in script.splitlines()
        init = (COMPOSE / "init" / "federation-init.sh").read_text(encoding="utf-8")
        assert 'fxgw acls -c "$ops"/node.yaml' in init
        services = _compose()["services"]
        assert "topics" in services["exchange-topics"]["command"]
        assert [f"kafka-{i}" for i in (1, 2, 3)] == sorted(
            n for n, s in services.items() if "exchange-broker.sh" in str(s.get("entrypoint"))
        )

    def test_no_private_key_committed(self) -> None:
        """No key file, password file or PEM private key lies anywhere under deploy/."""
        for path in DEPLOY.rglob("*"):
            if path.is_file():
                assert path.suffix not in (".key", ".password"), path
                assert "PRIVATE KEY" not in path.read_text(encoding="utf-8", errors="replace")


# --- Kubernetes ----------------------------------------------------------------------------------


def _k8s(kind: str) -> dict[str, Any]:
    [found] = [
        d for p in sorted(KUBERNETES.glob("*.yaml")) for d in _documents(p) if d.get("kind") == kind
    ]
    assert isinstance(found, dict)
    return found


def _k8s_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodeConfig:
    [(where, text)] = list(_configmap_node_configs())
    return _load(where, text, tmp_path, monkeypatch)


def _pod() -> dict[str, Any]:
    pod = _k8s("StatefulSet")["spec"]["template"]["spec"]
    assert isinstance(pod, dict)
    return pod


def _container(name: str) -> dict[str, Any]:
    [found] = [c for c in _pod()["containers"] if c["name"] == name]
    assert isinstance(found, dict)
    return found


class TestKubernetes:
    def test_key_secret_mode_has_no_group_or_other_bits(self) -> None:
        """The key Secret's volume has defaultMode 0400 (the key loader refuses more)."""
        secrets = [v for v in _pod()["volumes"] if "secret" in v]
        assert secrets
        for volume in secrets:
            mode = volume["secret"]["defaultMode"]
            assert 0 == mode & 0o077 and mode & 0o400

    def test_node_reads_keys_installed_0400(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """fsGroup adds group read to Secret files, so the init container copies the keys
        with mode 0400 into the folder the node reads them from, mounted read-only there."""
        config = _k8s_config(tmp_path, monkeypatch)
        keys_dir = str(config.keys.signing.parent)
        [init] = _pod()["initContainers"]
        assert "install -m 0400" in " ".join(init["command"])
        assert keys_dir in [m["mountPath"] for m in init["volumeMounts"]]
        [mount] = [m for m in _container("fxgw")["volumeMounts"] if m["mountPath"] == keys_dir]
        assert mount["readOnly"] is True
        [volume] = [v for v in _pod()["volumes"] if v["name"] == mount["name"]]
        assert "emptyDir" in volume

    def test_probes_on_healthz_and_readyz(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Liveness on /healthz, readiness on /readyz, on the config's metrics port, which
        listens on every address (kubelet probes the pod's IP)."""
        config = _k8s_config(tmp_path, monkeypatch)
        node = _container("fxgw")
        assert "/healthz" == node["livenessProbe"]["httpGet"]["path"]
        assert "/readyz" == node["readinessProbe"]["httpGet"]["path"]
        ports = {p["name"]: p["containerPort"] for p in node["ports"]}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert config.metrics_port == ports[node[probe]["httpGet"]["port"]]
        assert "0.0.0.0" == config.metrics_address

    def test_security_context(self) -> None:
        """Non-root 10001, seccomp RuntimeDefault; each container read-only, no escalation,
        no capabilities."""
        pod = _pod()
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert NODE_UID == context["runAsUser"] == context["fsGroup"]
        assert "RuntimeDefault" == context["seccompProfile"]["type"]
        for container in pod["containers"] + pod["initContainers"]:
            c = container["securityContext"]
            assert c["readOnlyRootFilesystem"] is True
            assert c["allowPrivilegeEscalation"] is False
            assert ["ALL"] == c["capabilities"]["drop"]

    def test_one_replica_state_on_a_claim(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One replica (its pod name gives the instance id); state_dir on a volume claim."""
        config = _k8s_config(tmp_path, monkeypatch)
        statefulset = _k8s("StatefulSet")
        assert 1 == statefulset["spec"]["replicas"]
        [claim] = statefulset["spec"]["volumeClaimTemplates"]
        mounts = {m["mountPath"]: m["name"] for m in _container("fxgw")["volumeMounts"]}
        assert claim["metadata"]["name"] == mounts[str(config.state_dir)]
        assert "instance_id" not in yaml.safe_load(_k8s("ConfigMap")["data"]["node.yaml"])

    def test_password_envs_come_from_secrets(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each password_env of the config is set in the node container from a Secret."""
        config = _k8s_config(tmp_path, monkeypatch)
        env = {e["name"]: e for e in _container("fxgw")["env"]}
        names = [
            c.password.env for c in (config.exchange.cluster, config.local.cluster) if c.password
        ]
        assert names
        for name in names:
            assert "secretKeyRef" in env[name]["valueFrom"]

    def test_key_loader_follows_secret_symlinks(self, tmp_path: Path) -> None:
        """Secret files are symlinks into ..data/: the loader judges the target's mode, so a
        0400 target loads and a 0440 one (what fsGroup makes) is refused."""
        data = tmp_path / "..data"
        key = generate_signing_key(KeyId("NL-POL/sign/test"))
        write_key_file(data / "NL-POL.sign.key", key, owner=AgencyId("NL-POL"))
        link = tmp_path / "NL-POL.sign.key"
        link.symlink_to(Path("..data") / "NL-POL.sign.key")
        (data / "NL-POL.sign.key").chmod(0o400)
        assert stat.S_ISLNK(link.lstat().st_mode)
        assert key.key_id == load_signing_key(link).key_id
        (data / "NL-POL.sign.key").chmod(0o440)
        with pytest.raises(KeyFileError, match="accessible to others"):
            load_signing_key(link)


# --- systemd -------------------------------------------------------------------------------------


def _unit() -> list[tuple[str, str, str]]:
    """(section, key, value) of every assignment in fxgw@.service, in order."""
    section = ""
    found = []
    for line in (SYSTEMD / "fxgw@.service").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.append((section, key.strip(), value.strip()))
    return found


def _service(key: str) -> list[str]:
    return [v for s, k, v in _unit() if s == "Service" and k == key]


class TestSystemd:
    @pytest.mark.parametrize(
        ("key", "value"),
        [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectKernelLogs", "yes"),
            ("ProtectControlGroups", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("CapabilityBoundingSet", ""),
            ("UMask", "0077"),
            ("StateDirectory", "fxgw/%i"),
            ("ReadWritePaths", "/var/lib/fxgw/%i"),
            ("Restart", "on-failure"),
        ],
    )
    def test_hardening(self, key: str, value: str) -> None:
        """The unit sets each hardening option exactly so, once."""
        assert [value] == _service(key)

    def test_system_call_filter_and_user(self) -> None:
        """@system-service syscalls only; a fixed unprivileged user; a restart back-off."""
        assert "@system-service" == _service("SystemCallFilter")[0]
        assert _service("User") and _service("User")[0] not in ("root", "0")
        assert _service("RestartSec")
        assert [v for s, k, v in _unit() if s == "Unit" and k == "StartLimitBurst"]

    def test_example_config_matches_the_unit(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The example node.yaml's password file is the unit's credential for its instance,
        and its state_dir is the unit's StateDirectory for that instance."""
        config = _load(
            "systemd/node.yaml", (SYSTEMD / "node.yaml").read_text(), tmp_path, monkeypatch
        )
        assert (
            config.exchange.cluster.password is not None and config.exchange.cluster.password.file
        )
        match = re.fullmatch(
            r"/run/credentials/fxgw@([a-z0-9-]+)\.service/([a-z-]+)",
            str(config.exchange.cluster.password.file),
        )
        assert match
        instance, credential = match.groups()
        loaded = _service("LoadCredentialEncrypted") + _service("LoadCredential")
        assert any(v.startswith(f"{credential}:") for v in loaded)
        assert Path(f"/var/lib/fxgw/{instance}") == config.state_dir
        exec_start = _service("ExecStart")[0]
        assert exec_start.endswith("run -c /etc/fxgw/%i/node.yaml")

    @pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        """systemd-analyze verify accepts the unit (the command swapped for /bin/true, which
        exists here); keys newer than this systemd may only be reported as unknown."""
        text = (SYSTEMD / "fxgw@.service").read_text(encoding="utf-8")
        (tmp_path / "fxgw@.service").write_text(
            text.replace("/opt/fxgw/bin/fxgw run", "/bin/true run"), encoding="utf-8"
        )
        result = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", "fxgw@nl-pol.service"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        newer = ("RestartSteps", "RestartMaxDelaySec")
        complaints = [
            line
            for line in (result.stdout + result.stderr).splitlines()
            if "fxgw@" in line and not any(f"Unknown key '{k}'" in line for k in newer)
        ]
        assert [] == complaints
        assert 0 == result.returncode
