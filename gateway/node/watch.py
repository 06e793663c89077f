"""Hot reload and housekeeping: a changed policy, trust list or key file is checked in full and
swapped in between two batches (or the last good one stays in force); the spool's retention
sweep; and a signed audit checkpoint each minute in which entries were written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Literal

import structlog

from gateway.audit.chain import CHECKPOINT
from gateway.audit.store import AuditLog
from gateway.contract.schemas import SchemaRegistry
from gateway.contract.versions import ContractVersion
from gateway.core.inbound import InboundCore
from gateway.core.outbound import OutboundCore
from gateway.core.receipts import ReceiptsCore
from gateway.crypto.keys import AgencyKeys
from gateway.crypto.trust import TrustList, authority_keys, load_trust_list
from gateway.errors import ConfigError, Disowned, InfrastructureError
from gateway.node.config import NodeConfig
from gateway.node.files import (
    check_own_keys,
    load_agency_keys,
    load_checked_policy,
    own_entry,
    stat_of,
    write_atomically_replace,
)
from gateway.node.loop import Executor
from gateway.node.sinks import Sink, SpoolSink
from gateway.policy.transforms import Pseudonymiser


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
            self.audit.append("keys_loaded", keys.key_ids)

    async def _watch_loop(self, stop: asyncio.Event, sink: Sink) -> None:
        """Hot reload of the policy, the trust list and the key files, the spool's retention
        sweep, and a signed audit checkpoint each minute in which entries were written (so that
        a quiet node does not leave its recent entries unsigned for long).

        A changed file is loaded and checked in full before it replaces the one in force, between
        two events; a file that fails keeps the last good version in force and says why.
        """
        c = self.config
        sig = c.trust.file.with_name(c.trust.file.name + ".sig")
        watched = {
            "policy": c.policy,
            "trust": c.trust.file,
            "trust-signature": sig,
            "keys-signing": c.keys.signing,
            **{f"keys-encryption-{i}": path for i, path in enumerate(c.keys.encryption)},
            **({"keys-pseudonym": c.keys.pseudonym} if c.keys.pseudonym else {}),
        }
        seen = {name: stat_of(path) for name, path in watched.items()}
        last_sweep = 0.0
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            changed = {n for n, p in watched.items() if stat_of(p) != seen[n]}
            if changed:
                seen = {name: stat_of(path) for name, path in watched.items()}
                # what a file is part of is the first word of its name: trust-signature is
                # part of the trust list, keys-encryption-1 of the keys
                self.reload({name.split("-")[0] for name in changed})
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
        """Load the changed files (``policy``, ``trust``, ``keys``: the key files the config
        names) and swap them in if all are valid; key files that fail do not hold back the
        other files that changed with them.

        Returns True when the new versions are in force; on any error the old ones stay.

        :raises Disowned: a newer, validly signed trust list no longer fits this node (see
            :class:`~gateway.errors.Disowned`); audited before the node stops.
        """
        failed = self._reload(changed)
        if failed == "keys" and changed != {"keys"}:
            failed = self._reload(changed - {"keys"})
        return failed is None

    def _reload(self, changed: set[str]) -> Literal["keys", "files"] | None:
        """:meth:`reload`; returns None when it worked, else whether the key files failed."""
        c = self.config
        now = self._now()
        keys = self.outbound.keys
        stage: Literal["keys", "files"] = "keys"
        try:
            if "keys" in changed:
                keys = load_agency_keys(c)
            stage = "files"
            trust = self.outbound.trust
            if "trust" in changed:
                trust = load_trust_list(
                    c.trust.file,
                    authority_keys(c.trust.pinned),
                    now=now,
                    min_version=trust.version,
                    threshold=c.trust.threshold,
                )
                self._check_own_entry(trust, keys)
            if "keys" in changed:
                stage = "keys"
                check_own_keys(c, trust, keys, now)
                stage = "files"
            policy = load_checked_policy(
                c,
                self.registry,
                trust,
                can_pseudonymise=keys.pseudonym is not None,
                contract=self.outbound.contract,
                names="policy" in changed,
            )
        except ConfigError as exc:
            # key file errors name the file and what is wrong with it, never its contents
            self.counters["reload_failed"] += 1
            self._log.error("reload_failed", files=sorted(changed), error=str(exc))
            if self._audit_log is not None:
                self._audit_log.append(
                    "reload_failed", {"files": sorted(changed), "error": str(exc)}
                )
                with contextlib.suppress(InfrastructureError):  # the next batch syncs it
                    self._audit_log.sync()
            return stage
        if "trust" in changed and "keys" not in changed:
            try:
                check_own_keys(c, trust, keys, now)
            except ConfigError as exc:  # the list is the federation's word: in force anyway
                self._log.warning("keys_unfit_for_trust_list", error=str(exc))
        if "policy" not in changed:
            for problem in policy.unknown_names(trust):  # refused at the next start
                self._log.warning("policy_names_unknown_recipient", error=str(problem))
        if keys is not self.outbound.keys:
            self._use_keys(keys)
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
            **(keys.key_ids if "keys" in changed else {}),
        )
        return None

    def _use_keys(self, keys: AgencyKeys) -> None:
        """Put ``keys`` in force for the next batch, and drop what was derived from the old
        ones: data keys unwrapped with an encryption key no longer held (or held with other
        bytes), the pseudonymiser of the old secret. The audit trail is checkpointed under the
        old signing key before the new one signs its checkpoints."""
        old = self.outbound.keys
        if self._audit_log is not None and old.signing.public != keys.signing.public:
            with contextlib.suppress(InfrastructureError):  # else the next one covers them
                self._audit_log.checkpoint()
            self._audit_log.use_signer(keys.signing)
        held = {k.key_id: k.public for k in keys.encryption}
        self.inbound.cache.forget(
            [k.key_id for k in old.encryption if held.get(k.key_id) != k.public]
        )
        self.outbound.keys = keys
        self.inbound.keys = keys
        if old.pseudonym != keys.pseudonym:
            self.outbound.pseudonymiser = (
                Pseudonymiser(keys.pseudonym.secret) if keys.pseudonym else None
            )

    def _check_own_entry(self, trust: TrustList, keys: AgencyKeys) -> None:
        """The new list has what start-up requires of it: the agency, a valid signing key (the
        one in force, or the one of key files loaded with the list), and only versions the
        node has. A node that would speak another version after a restart says so.

        :raises Disowned: it has not (audited first).
        """
        contract = self.outbound.contract
        if contract is None:
            return
        if keys is not self.outbound.keys:
            with contextlib.suppress(ConfigError):
                self._own_version_warning(
                    own_entry(self.config, trust, contract, keys.signing.key_id, self._now())
                )
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
        self._own_version_warning(own)

    def _own_version_warning(self, own: ContractVersion) -> None:
        if own is not self.outbound.own_version:
            self._log.warning(
                "contract_version_changes_on_restart",
                running=self.outbound.own_version.label,
                after_restart=own.label,
            )

    async def _checkpoint_audit(self) -> None:
        self.audit.checkpoint()
