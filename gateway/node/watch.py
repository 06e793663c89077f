"""Hot reload and housekeeping: a changed policy or trust list is checked in full and swapped in
between two events (or the last good one stays in force); the spool's retention sweep; and a
signed audit checkpoint each minute in which entries were written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from datetime import datetime

import structlog

from gateway.audit.chain import CHECKPOINT
from gateway.audit.store import AuditLog
from gateway.contract.schemas import SchemaRegistry
from gateway.core.inbound import InboundCore
from gateway.core.outbound import OutboundCore
from gateway.core.receipts import ReceiptsCore
from gateway.crypto.trust import TrustList, authority_keys, load_trust_list
from gateway.errors import ConfigError, Disowned, InfrastructureError
from gateway.node.config import NodeConfig
from gateway.node.files import (
    load_checked_policy,
    own_entry,
    stat_of,
    write_atomically_replace,
)
from gateway.node.loop import Executor
from gateway.node.sinks import Sink, SpoolSink


class Watching:
    """The node's hot reload and housekeeping (a part of :class:`~gateway.node.runtime.Node`)."""

    config: NodeConfig
    registry: SchemaRegistry
    outbound: OutboundCore
    inbound: InboundCore
    receipts: ReceiptsCore
    counters: Counter[str]
    _audit_log: AuditLog | None
    _executor: Executor
    _log: structlog.stdlib.BoundLogger
    _now: Callable[[], datetime]

    @property
    def audit(self) -> AuditLog:
        """The audit trail (open while the node runs)."""
        if self._audit_log is None:
            raise RuntimeError("the audit trail is open only while the node runs")
        return self._audit_log

    def _record_loaded(self, what: set[str]) -> None:
        """Audit which policy, trust list and keys are in force (ids and digests only)."""
        policy, trust, keys = self.outbound.policy, self.outbound.trust, self.outbound.keys
        if "policy" in what:
            self.audit.append(
                "policy_loaded",
                {"policy_id": policy.policy_id, "policy_digest": policy.digest.hex()},
            )
        if "trust" in what:
            self.audit.append(
                "trust_loaded",
                {
                    "federation": trust.federation,
                    "version": trust.version,
                    "digest": trust.digest.hex(),
                    "expires_at": trust.expires_at.isoformat(),
                },
            )
        if "keys" in what:
            self.audit.append(
                "keys_loaded",
                {
                    "signing_key_id": keys.signing.key_id,
                    "encryption_key_ids": [k.key_id for k in keys.encryption],
                },
            )

    async def _watch_loop(self, stop: asyncio.Event, sink: Sink) -> None:
        """Hot reload of the policy and the trust list, the spool's retention sweep, and a signed
        audit checkpoint each minute in which entries were written (so that a quiet node does
        not leave its recent entries unsigned for long).

        A changed file is loaded and checked in full before it replaces the one in force, between
        two events; a file that fails keeps the last good version in force and says why.
        """
        c = self.config
        sig = c.trust.file.with_name(c.trust.file.name + ".sig")
        watched = {"policy": c.policy, "trust": c.trust.file, "trust-signature": sig}
        seen = {name: stat_of(path) for name, path in watched.items()}
        last_sweep = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            changed = {n for n, p in watched.items() if stat_of(p) != seen[n]}
            if changed:
                seen = {name: stat_of(path) for name, path in watched.items()}
                self.reload({"trust" if n == "trust-signature" else n for n in changed})
            if loop.time() - last_sweep > 60:
                last_sweep = loop.time()
                if isinstance(sink, SpoolSink):
                    for message_id in sink.purge_expired(self._now()):
                        self.counters["retention_purged"] += 1
                        self._log.info("retention_purged", message_id=message_id)
                        self.audit.append("retention_purged", {"message_id": message_id})
                last = self.audit.last
                if last is not None and last.kind != CHECKPOINT:
                    await self._executor.retry("audit checkpoint", self._checkpoint_audit)

    def reload(self, changed: set[str]) -> bool:
        """Load the changed files (``policy``, ``trust``) and swap them in if all are valid.

        Returns True when the new versions are in force; on any error the old ones stay.

        :raises Disowned: a newer, validly signed trust list no longer fits this node (see
            :class:`~gateway.errors.Disowned`); audited before the node stops.
        """
        c = self.config
        try:
            trust = self.outbound.trust
            if "trust" in changed:
                trust = load_trust_list(
                    c.trust.file,
                    authority_keys(c.trust.pinned),
                    now=self._now(),
                    min_version=trust.version,
                    threshold=c.trust.threshold,
                )
                self._check_own_entry(trust)
            policy = load_checked_policy(
                c,
                self.registry,
                trust,
                can_pseudonymise=self.outbound.pseudonymiser is not None,
                contract=self.outbound.contract,
            )
        except ConfigError as exc:
            self.counters["reload_failed"] += 1
            self._log.error("reload_failed", files=sorted(changed), error=str(exc))
            if self._audit_log is not None:
                self._audit_log.append(
                    "reload_failed", {"files": sorted(changed), "error": str(exc)}
                )
                with contextlib.suppress(InfrastructureError):  # the next batch syncs it
                    self._audit_log.sync()
            return False
        self.outbound.trust = trust
        self.inbound.trust = trust
        self.receipts.trust = trust
        self.outbound.policy = policy
        write_atomically_replace(c.state_dir / "trust-version", str(trust.version).encode())
        self.counters["reloads"] += 1
        if self._audit_log is not None:
            self._record_loaded(changed | {"policy"})
            with contextlib.suppress(InfrastructureError):  # the next batch syncs it
                self._audit_log.sync()
        self._log.info(
            "reloaded",
            files=sorted(changed),
            policy=policy.policy_id,
            policy_digest=policy.digest.hex(),
            trust_version=trust.version,
        )
        return True

    def _check_own_entry(self, trust: TrustList) -> None:
        """The new list has what start-up requires of it: the agency, a valid signing key, and
        only versions the node has. A node that would speak another version after a restart
        says so.

        :raises Disowned: it has not (audited first).
        """
        contract = self.outbound.contract
        if contract is None:
            return
        try:
            own = own_entry(
                self.config, trust, contract, self.outbound.keys.signing.key_id, self._now()
            )
        except ConfigError as exc:
            error = Disowned(
                f"trust list version {trust.version} no longer fits this node: {exc}; the node"
                " stops rather than keep the list it replaces (whose keys may be revoked)"
            )
            self._log.error("trust_list_disowns_node", trust_version=trust.version, error=str(exc))
            if self._audit_log is not None:
                self._audit_log.append(
                    "trust_disowned", {"trust_version": trust.version, "error": str(exc)[:512]}
                )
                with contextlib.suppress(InfrastructureError):
                    self._audit_log.sync()
            raise error from exc
        if own is not self.outbound.own_version:
            self._log.warning(
                "contract_version_changes_on_restart",
                running=self.outbound.own_version.label,
                after_restart=own.label,
            )

    async def _checkpoint_audit(self) -> None:
        self.audit.checkpoint()
