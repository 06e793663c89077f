"""Each agency's least privilege on the exchange, as kafka-acls.sh arguments."""

from __future__ import annotations

import shlex

from gateway.node.acls import agency_grants, script


class TestGrants:
    def test_own_topics_read_others_write_own_groups(self) -> None:
        """Read on its own inbox, receipts and witness topics only; write on its checkpoints and
        hit filters and the others' inbox, receipts and witness; read on the others' checkpoints
        and hit filters; its groups only."""
        grants = agency_grants("NL-POL", ["BE-FPJ", "NL-POL", "US-ATF"])
        read, publish, write, witness, groups = grants
        assert ("fx.inbox.NL-POL", "fx.receipts.NL-POL", "fx.witness.NL-POL") == read.names
        assert "Read" in read.operations and "Write" not in read.operations
        assert ("fx.checkpoints.NL-POL", "fx.hitfilters.NL-POL") == publish.names
        assert "Write" in publish.operations and "Read" not in publish.operations
        assert (
            "fx.inbox.BE-FPJ",
            "fx.receipts.BE-FPJ",
            "fx.witness.BE-FPJ",
            "fx.inbox.US-ATF",
            "fx.receipts.US-ATF",
            "fx.witness.US-ATF",
        ) == write.names
        assert ("Write", "Describe") == write.operations
        assert (
            "fx.checkpoints.BE-FPJ",
            "fx.hitfilters.BE-FPJ",
            "fx.checkpoints.US-ATF",
            "fx.hitfilters.US-ATF",
        ) == witness.names
        assert ("Read", "Describe") == witness.operations
        assert ("fxgw.NL-POL.",) == groups.names and groups.prefixed
        assert all("User:NL-POL" == g.principal for g in grants)

    def test_prefix_scopes_topics_and_groups(self) -> None:
        """Another exchange prefix names its topics and its groups (as the node names them)."""
        read, publish, *_, groups = agency_grants("BE-FPJ", ["BE-FPJ", "NL-POL"], prefix="t1")
        assert ("t1.inbox.BE-FPJ", "t1.receipts.BE-FPJ", "t1.witness.BE-FPJ") == read.names
        assert ("t1.checkpoints.BE-FPJ", "t1.hitfilters.BE-FPJ") == publish.names
        assert ("fxgw.t1.BE-FPJ.",) == groups.names

    def test_alone_has_no_grant_on_other_topics(self) -> None:
        """An agency alone in the federation writes nowhere but its checkpoints topic."""
        assert 3 == len(agency_grants("NL-POL", ["NL-POL"]))

    def test_script_is_one_quoted_call_per_grant(self) -> None:
        """The operator's script calls kafka-acls.sh once per grant, with the admin config."""
        text = script(["NL-POL", "BE-FPJ"], "fx", "kafka:9093", "admin.properties")
        calls = [shlex.split(line) for line in text.splitlines() if line.startswith("kafka-acls")]
        assert 10 == len(calls)
        assert all(
            c[:5]
            == [
                "kafka-acls.sh",
                "--bootstrap-server",
                "kafka:9093",
                "--command-config",
                "admin.properties",
            ]
            for c in calls
        )
        assert ["--resource-pattern-type", "prefixed"] == calls[4][-2:]
