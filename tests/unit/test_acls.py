"""Each agency's least privilege on the exchange, as kafka-acls.sh arguments."""

from __future__ import annotations

import shlex

from gateway.node.acls import agency_grants, script


class TestGrants:
    def test_own_topics_read_others_write_own_groups(self) -> None:
        """Read on its own inbox and receipts only; write on the others'; its groups only."""
        grants = agency_grants("NL-POL", ["BE-FPJ", "NL-POL", "US-ATF"])
        read, write, groups = grants
        assert ("fx.inbox.NL-POL", "fx.receipts.NL-POL") == read.names
        assert "Read" in read.operations and "Write" not in read.operations
        assert (
            "fx.inbox.BE-FPJ",
            "fx.receipts.BE-FPJ",
            "fx.inbox.US-ATF",
            "fx.receipts.US-ATF",
        ) == write.names
        assert ("Write", "Describe") == write.operations
        assert ("fxgw.NL-POL.",) == groups.names and groups.prefixed
        assert all("User:NL-POL" == g.principal for g in grants)

    def test_prefix_scopes_topics_and_groups(self) -> None:
        """Another exchange prefix names its topics and its groups (as the node names them)."""
        read, _, groups = agency_grants("BE-FPJ", ["BE-FPJ", "NL-POL"], prefix="t1")
        assert ("t1.inbox.BE-FPJ", "t1.receipts.BE-FPJ") == read.names
        assert ("fxgw.t1.BE-FPJ.",) == groups.names

    def test_alone_has_no_write_grant(self) -> None:
        """An agency alone in the federation writes nowhere."""
        assert 2 == len(agency_grants("NL-POL", ["NL-POL"]))

    def test_script_is_one_quoted_call_per_grant(self) -> None:
        """The operator's script calls kafka-acls.sh once per grant, with the admin config."""
        text = script(["NL-POL", "BE-FPJ"], "fx", "kafka:9093", "admin.properties")
        calls = [shlex.split(line) for line in text.splitlines() if line.startswith("kafka-acls")]
        assert 6 == len(calls)
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
        assert ["--resource-pattern-type", "prefixed"] == calls[2][-2:]
