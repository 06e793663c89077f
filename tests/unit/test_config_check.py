"""`fxgw config check`: every problem of a node's files at once, each with file, line and fix."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from gateway.cli.main import main
from gateway.dev.sandbox import Federation, build_federation
from gateway.node.check import check_node


@pytest.fixture
def own_fed(tmp_path: Path) -> Federation:
    """A sandbox federation of this test alone (its files get broken)."""
    return build_federation(tmp_path / "fed", "127.0.0.1:9092")


def _edit(path: Path, change: object) -> None:
    node = yaml.safe_load(path.read_text())
    change(node)  # type: ignore[operator]
    path.write_text(yaml.safe_dump(node, sort_keys=False))


class TestConfigCheck:
    def test_sandbox_configs_are_clean(self, own_fed: Federation) -> None:
        """Nothing to report on a consistent set of files."""
        for agency in ("NL-POL", "BE-FPJ", "US-ATF"):
            assert [] == check_node(own_fed.config(agency), datetime.now(UTC))

    def test_witnessed_agency_not_on_the_trust_list(self, own_fed: Federation) -> None:
        """An agency to witness that the trust list does not name is reported with its line."""
        path = own_fed.config("BE-FPJ")
        _edit(path, lambda node: node.update(witness={"agencies": ["US-ATF", "NL-PLO"]}))
        [problem] = check_node(path, datetime.now(UTC))
        assert "witness.agencies[1]: NL-PLO is not on the trust list; did you mean NL-POL?" in str(
            problem
        )
        assert problem.line is not None

    def test_every_problem_at_once(self, own_fed: Federation) -> None:
        """A broken key, a missing secret, unknown names in routes: all reported, each with
        its file, its line where it has one, and a way out."""
        path = own_fed.config("NL-POL")

        def break_it(node: dict[str, object]) -> None:
            routes = node["routes"]
            assert isinstance(routes, list)
            routes[0]["event"] = "fxgw.SeizureEventt"
            routes.append(
                {
                    "event": "fxgw.TraceRequest",
                    "to": {
                        "groups": ["EUU"],
                        "agencies": ["BE-FBJ"],
                        "countries_from": ["firearm.manufacture_countri"],
                        "role": "tracer",
                    },
                }
            )
            node["exchange"]["security"] = {  # type: ignore[index]
                "protocol": "SASL_SSL",
                "sasl": {"mechanism": "PLAIN", "username": "nl", "password_env": "FXGW_UNSET_X"},
            }

        _edit(path, break_it)
        (path.parent / "keys" / "NL-POL.enc.key").chmod(0o644)
        problems = check_node(path, datetime.now(UTC))
        text = [str(p) for p in problems]
        print("\n".join(text))
        assert 7 == len(problems), text
        expected = [
            "FXGW_UNSET_X is not set",
            "chmod 600",
            "fxgw.SeizureEventt is not an event type of the contract; did you mean"
            " fxgw.SeizureEvent?",
            "EUU is not on the trust list; did you mean EU?",
            "BE-FBJ is not on the trust list; did you mean BE-FPJ?",
            "no agency on the trust list has role tracer; did you mean trace?",
            "has no field 'firearm.manufacture_countri'; did you mean"
            " 'firearm.manufacture_country'?",
        ]
        for fragment in expected:
            assert any(fragment in t for t in text), fragment
        for problem in problems:
            assert problem.file is not None
            if problem.file == str(path):
                assert problem.line is not None

    def test_every_field_problem_of_the_config_at_once(self, own_fed: Federation) -> None:
        """Two bad fields and an unknown key: three problems, with their lines."""
        path = own_fed.config("BE-FPJ")
        text = path.read_text()
        text = text.replace("state_dir: state", "state_dir: state\nmetrics_prot: 9000")
        text = text.replace("sink: spool", "sink: spoool")
        text = text.replace("topic_prefix: fx", "topic_prefix: 'f x'")
        path.write_text(text)
        problems = check_node(path, datetime.now(UTC))
        assert 3 == len(problems), [str(p) for p in problems]
        assert all(p.line is not None for p in problems)
        assert any("'metrics_prot'" in str(p) and "check its spelling" in str(p) for p in problems)

    def test_command_exits_1_and_counts(
        self, own_fed: Federation, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The command prints each problem and a count, and exits 1; 0 when all is well."""
        good, bad = own_fed.config("US-ATF"), own_fed.config("NL-POL")
        _edit(bad, lambda n: n["routes"][0].update(event="fxgw.Nope"))
        assert 1 == main(["config", "check", "-c", str(good), "-c", str(bad)])
        out = capsys.readouterr().out
        assert f"{good}: OK" in out
        assert f"{bad}: 1 problem(s)" in out
        assert 0 == main(["config", "check", "-c", str(good)])

    def test_two_key_files_under_one_id_are_named(self, own_fed: Federation) -> None:
        """Each key file loads alone, but two of keys.encryption hold different keys under one
        id: that is reported (the node would refuse it at start)."""
        from gateway.crypto.keys import generate_encryption_key, load_encryption_key, write_key_file

        path = own_fed.config("NL-POL")
        keys = path.parent / "keys"
        key_id = load_encryption_key(keys / "NL-POL.enc.key").key_id
        write_key_file(keys / "other.enc.key", generate_encryption_key(key_id), owner="NL-POL")
        _edit(path, lambda n: n["keys"]["encryption"].append("keys/other.enc.key"))
        problems = check_node(path, datetime.now(UTC))
        assert [str(keys / "other.enc.key")] == [p.file for p in problems]
        assert "holds another key under the id" in problems[0].message
