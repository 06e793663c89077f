"""Hit/no-hit queries in the node: the holdings file, the hits config block, the filter topics."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest
import yaml

from gateway.cli.main import _hit_result, main
from gateway.core.identifiers import filter_identifiers
from gateway.crypto.filters import HoldingsFilter, Shard
from gateway.crypto.keys import load_oprf_seed
from gateway.crypto.oprf import OprfKey
from gateway.dev.sandbox import Federation
from gateway.errors import ConfigError
from gateway.node.acls import agency_grants
from gateway.node.check import check_node
from gateway.node.config import exchange_topic_specs, load_config
from gateway.node.hits import build_shards, read_holdings
from tests.unit.conftest import NOW
from tests.unit.test_config import BASE, _error, _write


def _holdings(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "holdings.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class TestReadHoldings:
    def test_records_give_their_identifiers_and_bad_lines_their_numbers(
        self, tmp_path: Path
    ) -> None:
        """A record with a calibre gives two identifiers; duplicates count once; a line that is
        not a record is counted by number; an obliterated serial by its reason."""
        path = _holdings(
            tmp_path,
            [
                json.dumps({"make": "Glock", "serial_number": "BXK512", "calibre": "9x19"}),
                json.dumps({"make": "GLOCK", "serial_number": "bxk-512"}),
                "not json",
                json.dumps({"make": "Glock"}),
                "",
                json.dumps({"make": "CZ", "serial_number": "A1", "serial_obliterated": True}),
            ],
        )
        holdings = read_holdings(path, 1 << 20)
        assert filter_identifiers("Glock", "BXK512", "9x19") == holdings.identifiers
        assert (4, [3, 4]) == (holdings.records + 1, holdings.bad_lines)
        assert {"obliterated": 1} == dict(holdings.unqueryable)

    def test_a_file_over_the_limit_or_missing_is_refused_by_name(self, tmp_path: Path) -> None:
        """The error names the file and the setting to change."""
        path = _holdings(tmp_path, [json.dumps({"make": "Glock", "serial_number": "X" * 100})])
        with pytest.raises(ConfigError, match=r"hits\.max_holdings_bytes") as info:
            read_holdings(path, 10)
        assert str(path) == info.value.file
        with pytest.raises(ConfigError, match="cannot read"):
            read_holdings(tmp_path / "absent.jsonl", 10)

    def test_the_filter_built_holds_every_record(self, tmp_path: Path) -> None:
        """build_shards: every identifier's PRF is in the filter the shard bytes make."""
        lines = [
            json.dumps({"make": "Walther", "serial_number": f"WP{i:05d}"}) for i in range(2000)
        ]
        holdings = read_holdings(_holdings(tmp_path, lines), 1 << 20)
        key = OprfKey.derive(bytes(32), 7)
        shards = build_shards(holdings.identifiers, key, 1e-3, 1024)
        assert len(shards) > 1  # 2,000 values of ~12 bits do not fit one 1 KiB shard
        built = HoldingsFilter.from_shards(Shard.from_bytes(s) for s in shards)
        assert all(built.contains(key.prf(i)) for i in holdings.identifiers)


class TestHitsConfig:
    def test_holdings_and_seed_go_together(self, tmp_path: Path) -> None:
        """One without the other is refused, naming both."""
        error, _ = _error(tmp_path, BASE + "hits:\n  holdings: holdings.jsonl\n")
        assert "hits.holdings and hits.seed go together" in str(error)

    def test_paths_resolve_beside_the_config(self, tmp_path: Path) -> None:
        """The holdings and seed paths are taken from the config's folder."""
        path = _write(tmp_path, BASE + "hits: {holdings: h.jsonl, seed: keys/s.key}\n")
        config = load_config(path)
        assert (path.parent / "h.jsonl", path.parent / "keys/s.key") == (
            config.hits.holdings,
            config.hits.seed,
        )

    def test_every_agency_has_a_compacted_filter_topic(self, fed: Federation) -> None:
        """One per agency, compacted; only the holder may write it, everyone reads it."""
        config = load_config(fed.config("NL-POL"))
        specs = {s.name: s for s in exchange_topic_specs(config, ["NL-POL", "BE-FPJ"])}
        spec = specs[config.hitfilters_topic("BE-FPJ")]
        assert ("cleanup.policy", "compact") in spec.configs
        grants = agency_grants("NL-POL", ["NL-POL", "BE-FPJ"], config.exchange.topic_prefix)
        writes = {n for g in grants if "Write" in g.operations for n in g.names}
        reads = {n for g in grants if "Read" in g.operations for n in g.names}
        assert config.hitfilters_topic("NL-POL") in writes
        assert config.hitfilters_topic("BE-FPJ") in reads - writes


class TestConfigCheck:
    def test_a_bad_holdings_line_and_a_missing_seed_are_named(
        self, fed: Federation, tmp_path: Path
    ) -> None:
        """fxgw config check names the seed file and each bad holdings line by number."""
        holdings = _holdings(
            tmp_path, [json.dumps({"make": "Glock", "serial_number": "A1B2"}), "{"]
        )
        config = yaml.safe_load(fed.config("BE-FPJ").read_text())
        config["hits"] = {"holdings": str(holdings), "seed": str(tmp_path / "absent.key")}
        path = fed.config("BE-FPJ").with_name(f"hits-{tmp_path.name}.yaml")
        path.write_text(yaml.safe_dump(config))
        problems = check_node(path, NOW)
        assert [str(tmp_path / "absent.key"), str(holdings)] == [p.file for p in problems]
        assert 2 == problems[1].line
        assert "Glock" not in str(problems[1])


class TestHitCommands:
    def test_keygen_writes_an_oprf_seed_and_publishes_nothing(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """``keygen --only oprf-seed``: one 0600 seed file the node loads; no trust-list entry."""
        assert 0 == main(
            ["keygen", "--agency", "BE-FPJ", "--only", "oprf-seed", "--out", str(tmp_path)]
        )
        (path,) = tmp_path.iterdir()
        assert 0o600 == stat.S_IMODE(path.stat().st_mode)
        assert 32 == len(load_oprf_seed(path).secret)
        assert "never leaves the node" in capsys.readouterr().out

    def test_a_query_goes_to_the_outbound_spool_as_a_hit_query(
        self, fed: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Without an outbound topic the query is one line in the spool; without --wait the
        command ends at once."""
        config = yaml.safe_load(fed.config("NL-POL").read_text())
        del config["local"]["outbound_topic"]
        config["spool"]["outbound_dir"] = str(tmp_path / "out")
        path = fed.config("NL-POL").with_name(f"spool-{tmp_path.name}.yaml")  # paths resolve
        path.write_text(yaml.safe_dump(config))
        args = ["hit", "query", "-c", str(path), "--make", "Glock", "--serial", "BXK 512"]
        assert 0 == main([*args, "--agency", "BE-FPJ", "--reference", "R-1"])
        (spooled,) = (tmp_path / "out").glob("*.jsonl")
        event = json.loads(spooled.read_text())
        assert "fxgw.HitQuery" == event["event_type"]
        record = event["record"]
        assert ("Glock", "BXK 512", ["BE-FPJ"], "R-1") == (
            record["make"],
            record["serial_number"],
            record["agencies"],
            record["query_reference"],
        )
        assert f"query {record['event_id']} sent to spool" in capsys.readouterr().out
        assert 2 == main([*args, "--trace"])  # a trace needs the result: --wait

    async def test_wait_finds_the_result_among_the_spooled_deliveries(
        self, fed: Federation
    ) -> None:
        """``--wait`` on a spool node: other deliveries are passed over, and a result the node
        spools after the first look is found on a later one."""
        config = load_config(fed.config("BE-FPJ"))
        assert config.spool.inbound_dir is not None
        folder = config.spool.inbound_dir
        folder.mkdir(parents=True, exist_ok=True)

        def spool(name: str, event_type: str, record: dict[str, object]) -> None:
            document = {"event_type": event_type, "provenance": {}, "record": record}
            (folder / f"{name}.json").write_text(json.dumps(document))

        spool("other", "fxgw.HitResult", {"query_event_id": "Q-other", "status": "ANSWERED"})
        spool("seizure", "fxgw.SeizureEvent", {"event_id": "S-1"})
        waiting = asyncio.create_task(_hit_result(config, "Q-1", 0, 5.0))
        await asyncio.sleep(0.7)  # the first look found nothing for Q-1
        assert not waiting.done()
        spool("result", "fxgw.HitResult", {"query_event_id": "Q-1", "status": "PARTIAL"})
        assert {"query_event_id": "Q-1", "status": "PARTIAL"} == await waiting
        assert await _hit_result(config, "Q-2", 0, 0.0) is None
