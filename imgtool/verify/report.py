"""The result of a verification: checks with stable ids, a status each, and where keys came from.

Statuses: ``ok``; ``FAIL`` (the device would reject it, or it is not what the anchors say);
``skip`` (could not or need not be checked, with why); ``note`` (worth knowing, not a failure).
The CLI maps a report to text / JSON and to the exit code: 0 only when nothing failed and
authenticity was established from an anchor (or ``--integrity-only`` was asked for).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    SKIP = "skip"
    NOTE = "note"


@dataclass(frozen=True)
class Check:
    id: str  # stable, dotted: flash.crc.header, manifest.sig.owner_imc.lms, ...
    status: Status
    what: str
    detail: str = ""
    key: str = ""  # where the key (or reference value) came from

    def line(self) -> str:
        tail = f": {self.detail}" if self.detail else ""
        key = f" [key: {self.key}]" if self.key else ""
        return f"{self.status.value:<4} {self.id}: {self.what}{tail}{key}"


@dataclass
class Report:
    kind: str
    checks: list[Check] = field(default_factory=list)
    anchors: list[str] = field(default_factory=list)
    integrity_only: bool = False
    authentic: bool = False  # set by the verifier once the trust chain is evaluated
    verdict: str = ""

    def add(self, id: str, ok: bool | Status, what: str, detail: str = "", key: str = "") -> bool:
        status = ok if isinstance(ok, Status) else (Status.OK if ok else Status.FAIL)
        self.checks.append(Check(id, status, what, detail, key))
        return status is not Status.FAIL

    def skip(self, id: str, what: str, why: str, key: str = "") -> None:
        self.checks.append(Check(id, Status.SKIP, what, why, key))

    def note(self, id: str, what: str, detail: str = "") -> None:
        self.checks.append(Check(id, Status.NOTE, what, detail))

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status is Status.FAIL]

    @property
    def ok(self) -> bool:
        """Exit 0: nothing failed, and authenticity was established (or not asked for)."""
        return not self.failures and (self.authentic or self.integrity_only)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def counts(self) -> dict[str, int]:
        return {s.value: sum(c.status is s for c in self.checks) for s in Status}

    def summary(self) -> str:
        n = self.counts()
        return (
            f"{n['ok']} ok, {n['FAIL']} failed, {n['skip']} skipped, {n['note']} notes: "
            f"{self.verdict}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "authentic": self.authentic,
            "integrity_only": self.integrity_only,
            "anchors": self.anchors,
            "verdict": self.verdict,
            "counts": self.counts(),
            "checks": [
                {
                    "id": c.id,
                    "status": c.status.value,
                    "check": c.what,
                    "detail": c.detail,
                    "key": c.key,
                }
                for c in self.checks
            ],
        }
