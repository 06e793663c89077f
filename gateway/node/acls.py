"""The least privilege of each agency on the exchange cluster, as Kafka ACLs.

An agency's principal (``User:<agency id>``: its SASL user name, or the common name of its client
certificate) may:

- read and describe its own inbox, receipts and witness topics (and describe their configs,
  which the node checks at start);
- write to, and describe, its own checkpoints topic (its signed audit checkpoints: hashes and
  signatures, no event metadata);
- write to, and describe, every other agency's inbox, receipts and witness topics (any agency
  may witness another's checkpoints and send its countersignature back);
- read and describe every other agency's checkpoints topic (to witness them);
- write to, and describe, its own hit filter topic (``hitfilters``: its signed, compacted filter
  of hit/no-hit PRF values), and read and describe every other agency's;
- use its own consumer groups (``fxgw.<agency>.*``, or ``fxgw.<prefix>.<agency>.*`` on an
  exchange whose topic prefix is not ``fx``).

Nothing else: no other agency's inbox, no other group, no topic creation (the federation
operator provisions the topics with ``fxgw topics provision``). Kafka's own ``kafka-acls.sh``
(AclCommand) applies the grants; this module only computes its arguments, so that the operator's
script (``fxgw acls``) and the tests on a secured local broker apply the same ones.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Grant:
    """Some operations on some resources, allowed to one principal."""

    principal: str
    operations: tuple[str, ...]
    resource: Literal["topic", "group"]
    names: tuple[str, ...]
    prefixed: bool = False

    def arguments(self) -> list[str]:
        """The arguments of ``kafka-acls.sh`` that add this grant."""
        args = ["--add", "--allow-principal", self.principal]
        for operation in self.operations:
            args += ["--operation", operation]
        for name in self.names:
            args += [f"--{self.resource}", name]
        if self.prefixed:
            args += ["--resource-pattern-type", "prefixed"]
        return args


def agency_grants(agency: str, agencies: Iterable[str], prefix: str = "fx") -> list[Grant]:
    """What ``agency`` may do on an exchange shared with ``agencies`` (topic prefix ``prefix``)."""
    principal = f"User:{agency}"
    own = tuple(f"{prefix}.{kind}.{agency}" for kind in ("inbox", "receipts", "witness"))
    rest = sorted(set(agencies) - {agency})

    def others(*kinds: str) -> tuple[str, ...]:
        return tuple(f"{prefix}.{kind}.{other}" for other in rest for kind in kinds)

    scope = "" if prefix == "fx" else f"{prefix}."
    grants = [
        Grant(principal, ("Read", "Describe", "DescribeConfigs"), "topic", own),
        Grant(
            principal,
            ("Write", "Describe", "DescribeConfigs"),
            "topic",
            (f"{prefix}.checkpoints.{agency}", f"{prefix}.hitfilters.{agency}"),
        ),
    ]
    if rest:
        grants.append(
            Grant(principal, ("Write", "Describe"), "topic", others("inbox", "receipts", "witness"))
        )
        grants.append(
            Grant(principal, ("Read", "Describe"), "topic", others("checkpoints", "hitfilters"))
        )
    grants.append(
        Grant(principal, ("Read", "Describe"), "group", (f"fxgw.{scope}{agency}.",), True)
    )
    return grants


def script(agencies: Sequence[str], prefix: str, bootstrap: str, command_config: str | None) -> str:
    """A shell script of ``kafka-acls.sh`` calls granting every agency its least privilege."""
    base = ["kafka-acls.sh", "--bootstrap-server", bootstrap]
    if command_config:
        base += ["--command-config", command_config]
    lines = ["#!/bin/sh", "# Written by 'fxgw acls': each agency's least privilege.", "set -eu"]
    for agency in sorted(agencies):
        lines.append(f"# {agency}")
        lines += [shlex.join(base + g.arguments()) for g in agency_grants(agency, agencies, prefix)]
    return "\n".join(lines) + "\n"
