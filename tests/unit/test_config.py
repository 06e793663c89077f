"""The node config and the YAML reader: paths resolved beside the file, errors name file, line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from gateway._yamlfile import describe_loc, read_yaml
from gateway.core.effects import MIB
from gateway.core.routing import Route
from gateway.dev.sandbox import POLICIES, Federation
from gateway.errors import ConfigError, PolicyError
from gateway.node.config import DEFAULT_SCHEMAS, NodeConfig, load_config

BASE = """\
agency: NL-POL
keys:
  signing: keys/NL-POL.sign.key
  encryption: [keys/NL-POL.enc.key]
trust:
  file: ../trust/trust.yaml
  authority_keys:
    - {id: FED/sign/1, public: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}
policy: ../policies/nl-pol.yaml
state_dir: state
exchange:
  bootstrap_servers: "exchange.example:9093"
  security:
    protocol: SASL_SSL
    sasl: {mechanism: SCRAM-SHA-512, username: nl-pol, password_env: FXGW_TEST_PASSWORD}
local:
  bootstrap_servers: "127.0.0.1:9092"
  inbound_topic: nl.inbound
  quarantine_topic: nl.quarantine
envelope:
  ttl_hours: 24
routes:
  - event: fxgw.SeizureEvent
    to: {groups: [EU]}
"""
"""A minimal valid node config; the tests below edit one line of it at a time."""


def _write(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "node"
    folder.mkdir(exist_ok=True)
    path = folder / "node.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _edit(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


def _error(tmp_path: Path, text: str) -> tuple[ConfigError, Path]:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value, path


class TestSandboxConfigs:
    """The sandbox's node configs load, with relative paths resolved against their folder."""

    @pytest.mark.parametrize("agency", ["NL-POL", "BE-FPJ", "US-ATF"])
    def test_sandbox_config_loads(self, fed: Federation, agency: str) -> None:
        """Each node.yaml loads and its key, trust and state paths sit beside it."""
        path = fed.config(agency)
        config = load_config(path)
        folder = path.resolve().parent
        assert agency == config.agency
        assert folder / "keys" / f"{agency}.sign.key" == config.keys.signing
        assert (folder / "keys" / f"{agency}.enc.key",) == config.keys.encryption
        assert config.keys.signing.is_file()
        assert all(p.is_file() for p in config.keys.encryption)
        assert fed.trust_file is not None
        assert fed.trust_file.resolve() == config.trust.file.resolve()
        assert folder / "state" == config.state_dir
        assert folder / "spool" / "in" == config.spool.inbound_dir
        assert folder / "spool" / "out" == config.spool.outbound_dir

    def test_absolute_paths_are_kept(self, fed: Federation) -> None:
        """An absolute path (the sandbox's policy file) is used as written."""
        config = load_config(fed.config("NL-POL"))
        assert POLICIES / "nl-pol.yaml" == config.policy
        assert config.policy.is_file()

    def test_sandbox_sinks(self, fed: Federation) -> None:
        """BE-FPJ delivers to its spool folder, the others to their inbound topic."""
        assert "spool" == load_config(fed.config("BE-FPJ")).delivery.sink
        nl = load_config(fed.config("NL-POL"))
        assert "kafka" == nl.delivery.sink
        assert fed.local_topic("NL-POL", "inbound") == nl.local.inbound_topic

    def test_sandbox_routes(self, fed: Federation) -> None:
        """NL-POL's routes compile to Route values in file order."""
        routes = load_config(fed.config("NL-POL")).routes_in_force
        assert (
            Route("fxgw.SeizureEvent", agencies=("US-ATF",), groups=("EU",)),
            Route(
                "fxgw.TraceRequest",
                countries_from=("firearm.manufacture_country", "firearm.import_country"),
                role="trace",
            ),
            Route("fxgw.TraceResponse", agencies_from=("requesting_agency.agency_id",)),
            Route("fxgw.TraceUpdate", agencies_from=("to_agency.agency_id",)),
        ) == routes

    def test_topics_follow_the_prefix(self, fed: Federation) -> None:
        """Inbox and receipt topics are named from the exchange prefix."""
        config = load_config(fed.config("US-ATF"))
        assert fed.inbox("BE-FPJ") == config.inbox_topic("BE-FPJ")
        assert f"{fed.prefix}.receipts.NL-POL" == config.receipts_topic("NL-POL")

    def test_consumer_groups_are_scoped_by_a_prefix_of_its_own(self, fed: Federation) -> None:
        """Two exchanges on one cluster never share a consumer group; the default prefix keeps
        the plain names."""
        config = load_config(fed.config("US-ATF"))

        def prefixed(prefix: str) -> NodeConfig:
            exchange = config.exchange.model_copy(update={"topic_prefix": prefix})
            return config.model_copy(update={"exchange": exchange})

        assert "fxgw.t1.US-ATF.inbox" == prefixed("t1").group_id("inbox")
        assert "fxgw.US-ATF.inbox" == prefixed("fx").group_id("inbox")


class TestLoadConfig:
    """A hand-written config: resolution and defaults."""

    def test_relative_paths_resolve_against_the_file_not_the_cwd(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Loaded through a relative path from elsewhere, paths still resolve beside the file."""
        _write(tmp_path, BASE)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        config = load_config(Path("../node/node.yaml"))
        folder = (tmp_path / "node").resolve()
        assert folder / "keys" / "NL-POL.sign.key" == config.keys.signing
        assert folder / ".." / "policies" / "nl-pol.yaml" == config.policy
        assert folder / "state" == config.state_dir
        assert config.state_dir.is_absolute()

    def test_home_is_expanded(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A path starting with ~ is taken from the home folder."""
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        config = load_config(_write(tmp_path, _edit("state_dir: state", "state_dir: ~/fxgw")))
        assert tmp_path / "home" / "fxgw" == config.state_dir

    def test_defaults(self, tmp_path: Path) -> None:
        """Unset options take their documented defaults."""
        config = load_config(_write(tmp_path, BASE))
        assert isinstance(config, NodeConfig)
        assert DEFAULT_SCHEMAS == config.schemas
        assert "fx" == config.exchange.topic_prefix
        assert "127.0.0.1:9092" == config.local.bootstrap_servers
        assert "PLAINTEXT" == config.local.cluster.protocol
        assert "SASL_SSL" == config.exchange.cluster.protocol
        assert (3, 2, 1) == (
            config.exchange.topics.replication,
            config.exchange.topics.min_insync_replicas,
            config.exchange.topics.partitions,
        )
        assert not config.development
        assert "kafka" == config.delivery.sink
        assert config.local.outbound_topic is None
        assert config.spool.inbound_dir is None
        assert timedelta(hours=24) == config.envelope.ttl
        assert timedelta(minutes=5) == config.envelope.max_skew
        assert timedelta(days=30) == config.envelope.max_lifetime
        assert 10_000 == config.envelope.data_key_max_uses
        assert (("FED/sign/1", "A" * 43 + "="),) == config.trust.pinned
        assert (None, "127.0.0.1") == (config.metrics_port, config.metrics_address)
        assert timedelta(days=14) == config.expiry_warning

    def test_metrics_settings(self, tmp_path: Path) -> None:
        """The metrics port, its address and the expiry warning window are read."""
        text = _edit(
            "state_dir: state\n",
            "state_dir: state\nmetrics_port: 0\nmetrics_address: '::1'\nexpiry_warning_days: 30\n",
        )
        config = load_config(_write(tmp_path, text))
        assert (0, "::1") == (config.metrics_port, config.metrics_address)
        assert timedelta(days=30) == config.expiry_warning

    def test_spool_sink_with_a_folder(self, tmp_path: Path) -> None:
        """A spool sink with spool.inbound_dir needs no inbound topic."""
        text = _edit("  inbound_topic: nl.inbound\n", "").replace(
            "routes:", "spool: {inbound_dir: in}\ndelivery: {sink: spool}\nroutes:"
        )
        config = load_config(_write(tmp_path, text))
        assert "spool" == config.delivery.sink
        assert (tmp_path / "node").resolve() / "in" == config.spool.inbound_dir


class TestConfigErrors:
    """Every error names the file, the line and the field at fault."""

    def test_unknown_key(self, tmp_path: Path) -> None:
        """A key the format does not have is refused (extra="forbid"), at its line."""
        error, path = _error(
            tmp_path, _edit("state_dir: state\n", "state_dir: x\nstate_folder: y\n")
        )
        assert str(path) == error.file
        assert 11 == error.line
        assert "'state_folder'" in error.message
        assert "not permitted" in error.message
        assert str(error).startswith(f"{path}:11: ")

    def test_unknown_nested_key(self, tmp_path: Path) -> None:
        """A misspelt key inside a route names its dotted path and line."""
        error, _ = _error(tmp_path, _edit("to: {groups: [EU]}", "to: {group: [EU]}"))
        assert 24 == error.line
        assert "'routes[0].to.group'" in error.message

    def test_wrong_type(self, tmp_path: Path) -> None:
        """A value of the wrong type names the field and its line."""
        error, _ = _error(tmp_path, _edit("ttl_hours: 24", "ttl_hours: a week"))
        assert 21 == error.line
        assert "'envelope.ttl_hours'" in error.message
        assert "number" in error.message

    def test_out_of_range(self, tmp_path: Path) -> None:
        """A value outside its range names the field."""
        error, _ = _error(tmp_path, _edit("ttl_hours: 24", "ttl_hours: 0"))
        assert 21 == error.line
        assert "'envelope.ttl_hours'" in error.message

    def test_bad_agency_id(self, tmp_path: Path) -> None:
        """An agency id not of the form CC-NAME names the pattern it must match."""
        error, _ = _error(tmp_path, _edit("agency: NL-POL", "agency: nl-pol"))
        assert 1 == error.line
        assert "'agency'" in error.message
        assert "[A-Z]{2}" in error.message

    def test_empty_encryption_key_list(self, tmp_path: Path) -> None:
        """A node needs at least one encryption key."""
        error, _ = _error(tmp_path, _edit("encryption: [keys/NL-POL.enc.key]", "encryption: []"))
        assert 4 == error.line
        assert "'keys.encryption'" in error.message

    def test_missing_required_key(self, tmp_path: Path) -> None:
        """A missing required key is named."""
        error, _ = _error(tmp_path, _edit("state_dir: state\n", ""))
        assert "'state_dir'" in error.message
        assert "required" in error.message.lower()

    def test_kafka_sink_without_inbound_topic(self, tmp_path: Path) -> None:
        """The default kafka sink without local.inbound_topic is refused, naming both fields."""
        error, path = _error(tmp_path, _edit("  inbound_topic: nl.inbound\n", ""))
        assert str(path) == error.file
        assert error.line is not None
        assert "delivery.sink" in error.message
        assert "local.inbound_topic" in error.message

    def test_spool_sink_without_folder(self, tmp_path: Path) -> None:
        """A spool sink without spool.inbound_dir is refused, naming the folder option."""
        error, _ = _error(tmp_path, _edit("routes:", "delivery: {sink: spool}\nroutes:"))
        assert "spool.inbound_dir" in error.message

    def test_invalid_yaml(self, tmp_path: Path) -> None:
        """Broken YAML is refused with the line of the fault."""
        error, path = _error(tmp_path, _edit("state_dir: state\n", "state_dir: state\n  x: y\n"))
        assert str(path) == error.file
        assert 11 == error.line
        assert "not valid YAML" in error.message

    def test_unclosed_bracket(self, tmp_path: Path) -> None:
        """An unclosed flow list is reported at or just after its line."""
        error, _ = _error(tmp_path, _edit("ttl_hours: 24", "ttl_hours: [24"))
        assert "not valid YAML" in error.message
        assert error.line in (21, 22)

    def test_not_a_mapping(self, tmp_path: Path) -> None:
        """A file that is not a mapping says so at the top level."""
        error, _ = _error(tmp_path, "- agency: NL-POL\n")
        assert "(top level)" in error.message

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is named."""
        path = tmp_path / "absent.yaml"
        with pytest.raises(ConfigError, match="node config not found") as info:
            load_config(path)
        assert str(path) == info.value.file
        assert info.value.line is None


class TestReadYaml:
    """read_yaml keeps the line of every key and item, and names faults."""

    def test_lines_of_keys_and_items(self, tmp_path: Path) -> None:
        """Keys, nested keys and list items map to their 1-based lines."""
        path = tmp_path / "f.yaml"
        path.write_text("a: 1\nb:\n  c: 2\n  d:\n    - x\n    - y\n", encoding="utf-8")
        document = read_yaml(path, "file")
        assert {"a": 1, "b": {"c": 2, "d": ["x", "y"]}} == document.data
        assert 1 == document.line_of(("a",))
        assert 3 == document.line_of(("b", "c"))
        assert 6 == document.line_of(("b", "d", 1))
        assert path.read_bytes() == document.raw

    def test_line_of_falls_back_to_the_deepest_known_prefix(self, tmp_path: Path) -> None:
        """An unknown location is placed at its nearest known parent."""
        path = tmp_path / "f.yaml"
        path.write_text("a: 1\nb:\n  c: 2\n", encoding="utf-8")
        document = read_yaml(path, "file")
        assert 3 == document.line_of(("b", "c", "nothing", 4))
        assert 2 == document.line_of(("b", "missing"))
        assert 1 == document.line_of(("missing",))

    def test_empty_document(self, tmp_path: Path) -> None:
        """An empty file is None data with no lines."""
        path = tmp_path / "f.yaml"
        path.write_text("", encoding="utf-8")
        document = read_yaml(path, "file")
        assert document.data is None
        assert document.line_of(("a",)) is None

    def test_error_class_is_the_callers(self, tmp_path: Path) -> None:
        """The error raised is of the class the caller asks for, with the file named."""
        path = tmp_path / "policy.yaml"
        path.write_text("rules: [\n", encoding="utf-8")
        with pytest.raises(PolicyError, match="not valid YAML") as info:
            read_yaml(path, "policy file", PolicyError)
        assert str(path) == info.value.file
        assert info.value.line is not None

    def test_not_utf8(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 are refused, naming what the file was meant to be."""
        path = tmp_path / "f.yaml"
        path.write_bytes(b"agency: \xff\xfe\n")
        with pytest.raises(ConfigError, match="node config is not UTF-8 text"):
            read_yaml(path, "node config")

    def test_missing(self, tmp_path: Path) -> None:
        """A missing file is 'not found', naming what it was meant to be."""
        with pytest.raises(ConfigError, match="trust list not found"):
            read_yaml(tmp_path / "nothing.yaml", "trust list")


class TestDescribeLoc:
    """describe_loc writes a pydantic location as a dotted path with indexes."""

    @pytest.mark.parametrize(
        ("loc", "expected"),
        [
            (("rules", 2, "to"), "rules[2].to"),
            (("agency",), "agency"),
            (("a", "b", "c"), "a.b.c"),
            (("a", 0, 1, "b"), "a[0][1].b"),
            ((3,), "[3]"),
            ((), "(top level)"),
        ],
    )
    def test_describe_loc(self, loc: tuple[str | int, ...], expected: str) -> None:
        """Names join with dots, indexes in brackets; nothing is the top level."""
        assert expected == describe_loc(loc)


class TestKafkaConnections:
    """Each cluster's security, the production defaults, and development mode."""

    def test_plaintext_exchange_refused_outside_development(self, tmp_path: Path) -> None:
        """An exchange without TLS is refused, naming the field and both ways out."""
        text = _edit(
            "  security:\n    protocol: SASL_SSL\n    sasl: {mechanism: SCRAM-SHA-512, username:"
            " nl-pol, password_env: FXGW_TEST_PASSWORD}\n",
            "",
        )
        error, _ = _error(tmp_path, text)
        assert "exchange.security.protocol is PLAINTEXT" in error.message
        assert "development: true" in error.message
        config = load_config(_write(tmp_path, text + "development: true\n"))
        assert "PLAINTEXT" == config.exchange.cluster.protocol
        assert config.development

    def test_local_topics_on_the_exchange_cluster_refused(self, tmp_path: Path) -> None:
        """A local bootstrap list that names an exchange broker is refused."""
        text = _edit(
            'bootstrap_servers: "127.0.0.1:9092"',
            'bootstrap_servers: "127.0.0.1:9092, Exchange.example:9093"',
        )
        error, _ = _error(tmp_path, text)
        assert "local.bootstrap_servers names a broker of the exchange cluster" in error.message

    def test_local_cluster_must_be_named(self, tmp_path: Path) -> None:
        """local.bootstrap_servers has no fallback to the exchange's."""
        error, _ = _error(tmp_path, _edit('  bootstrap_servers: "127.0.0.1:9092"\n', ""))
        assert "'local.bootstrap_servers'" in error.message
        assert "required" in error.message.lower()

    def test_password_from_a_private_file(self, tmp_path: Path) -> None:
        """The first line of password_file is the password, read when a client is made; it
        never shows in a repr, and a file others may read is refused."""
        secret = tmp_path / "node" / "exchange.password"
        secret.parent.mkdir()
        secret.write_text("s3cr3t-value\n")
        secret.chmod(0o600)
        config = load_config(
            _write(
                tmp_path,
                _edit("password_env: FXGW_TEST_PASSWORD", "password_file: exchange.password"),
            )
        )
        options = config.exchange.cluster.client_options()
        assert "s3cr3t-value" == options["sasl_plain_password"]
        assert "nl-pol" == options["sasl_plain_username"]
        assert "s3cr3t-value" not in repr(config)
        secret.write_text("rotated\n")
        assert "rotated" == config.exchange.cluster.client_options()["sasl_plain_password"]
        secret.chmod(0o644)
        with pytest.raises(ConfigError) as info:
            config.exchange.cluster.client_options()
        assert "exchange.security.sasl.password" in info.value.message
        assert "accessible to others (mode 0644)" in info.value.message
        assert "chmod 600" in info.value.message

    def test_password_variable_must_be_set(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A named variable that is not set is named when a client would be made."""
        config = load_config(_write(tmp_path, BASE))
        monkeypatch.delenv("FXGW_TEST_PASSWORD")
        assert [
            "exchange.security.sasl.password: the environment variable FXGW_TEST_PASSWORD"
            " is not set"
        ] == config.exchange.cluster.problems()

    def test_password_in_the_config_refused(self, tmp_path: Path) -> None:
        """A password written in node.yaml is an unknown key, not a secret."""
        error, _ = _error(tmp_path, _edit("password_env: FXGW_TEST_PASSWORD", "password: hunter2"))
        assert "hunter2" not in error.message
        assert "exchange.security.sasl" in error.message

    def test_tls_files(self, tmp_path: Path) -> None:
        """A client certificate needs its key; every missing or open file is named at once."""
        text = _edit(
            "  security:\n    protocol: SASL_SSL\n    sasl: {mechanism: SCRAM-SHA-512, username:"
            " nl-pol, password_env: FXGW_TEST_PASSWORD}\n",
            "  security:\n    protocol: SSL\n    tls: {ca_file: ca.pem, cert_file: me.pem,"
            " key_file: me.key}\n",
        )
        config = load_config(_write(tmp_path, text))  # loads where the files are not mounted
        problems = config.exchange.cluster.problems()
        assert 3 == len(problems)
        assert problems[0].startswith("exchange.security.tls.ca_file: no file at")
        folder = tmp_path / "node"
        for name in ("ca.pem", "me.pem", "me.key"):
            (folder / name).write_text("x")
        (folder / "me.key").chmod(0o640)
        assert ["exchange.security.tls.key_file:"] == [
            p.split(" ")[0] for p in config.exchange.cluster.problems()
        ]
        (folder / "me.key").chmod(0o600)
        assert [] == config.exchange.cluster.problems()
        assert (folder / "me.pem", folder / "me.key") == (
            config.exchange.cluster.cert_file,
            config.exchange.cluster.key_file,
        )
        error, _ = _error(tmp_path, text.replace(" key_file: me.key", " check_hostname: true"))
        assert "cert_file and key_file go together" in error.message
        error, _ = _error(
            tmp_path, text.replace(" cert_file: me.pem, key_file: me.key", " check_hostname: true")
        )
        assert "SSL without a client certificate" in error.message

    def test_topic_settings(self, tmp_path: Path) -> None:
        """Topic settings become topic specs; an impossible min ISR and limits that do not fit
        the topics are refused."""
        from gateway.node.config import topic_spec

        config = load_config(
            _write(tmp_path, BASE + "")  # defaults
        )
        spec = topic_spec("t", config.exchange.topics)
        assert (3, 2, 1, MIB) == (
            spec.replication,
            spec.min_insync_replicas,
            spec.partitions,
            spec.max_message_bytes,
        )
        assert (("retention.ms", str(168 * 3_600_000)),) == spec.configs
        error, _ = _error(
            tmp_path,
            _edit(
                '  bootstrap_servers: "127.0.0.1:9092"\n',
                '  bootstrap_servers: "127.0.0.1:9092"\n  topics: {replication: 1}\n',
            ),
        )
        assert "min_insync_replicas (2) is more than replication (1)" in error.message
        error, _ = _error(
            tmp_path,
            _edit(
                '  bootstrap_servers: "exchange.example:9093"\n',
                '  bootstrap_servers: "exchange.example:9093"\n'
                "  topics: {max_message_bytes: 500000}\n",
            ),
        )
        assert "limits.max_envelope_bytes" in error.message
        assert "exchange.topics.max_message_bytes (500000)" in error.message
