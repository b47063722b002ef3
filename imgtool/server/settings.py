"""Server settings from the environment (digsigserver's names where they exist) and the
``serve`` command line (which wins)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ServerError
from .auth import Quota, parse_quota


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ServerError(f"{name}: not an integer: {raw!r}") from None
    if value <= 0:
        raise ServerError(f"{name}: must be positive")
    return value


def _number(env: Mapping[str, str], name: str) -> float | None:
    """The variable as a float; None when unset or empty."""
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ServerError(f"{name}: not a number: {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name)
    if value is None:
        return default
    if not value > 0:
        raise ServerError(f"{name}: must be positive")
    return value


def _interval(env: Mapping[str, str], name: str, default: float) -> float:
    value = _number(env, name)
    if value is None:
        return default
    if not 0 <= value <= 3600:
        raise ServerError(f"{name}: must be 0..3600 seconds")
    return value


def keyfile_root(uri: str) -> Path:
    """DIGSIGSERVER_KEYFILE_URI: file:///path or a plain path (s3:// is not supported)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    raise ServerError(f"DIGSIGSERVER_KEYFILE_URI: scheme {parsed.scheme!r} is not supported")


def pkcs11_modules(value: str) -> tuple[Path, ...]:
    """CPTRA_IMGTOOL_PKCS11_MODULES (else CPTRA_IMGTOOL_PKCS11_MODULE): the PKCS#11 modules
    (absolute paths, ``os.pathsep``-separated) that HSM keys in the key store may use. Only the
    server's environment sets it: a key store file cannot make the server load another module."""
    out: list[Path] = []
    for part in value.split(os.pathsep):
        if not part:
            continue
        if not os.path.isabs(part):
            raise ServerError(f"CPTRA_IMGTOOL_PKCS11_MODULES: {part!r} is not an absolute path")
        out.append(Path(part))
    return tuple(out)


AUDIT_NAME = "server-audit.jsonl"


def state_dir(lms_state: str | None = None) -> Path:
    """The server's state directory: that of the LMS leaf-state store when it is a file
    (``--state`` / CPTRA_IMGTOOL_STATE), else ``$XDG_STATE_HOME/cptra-imgtool``
    (``~/.local/state`` when XDG_STATE_HOME is unset or relative), as the store's default."""
    loc = lms_state or os.environ.get("CPTRA_IMGTOOL_STATE", "")
    if loc and "://" not in loc and os.path.isabs(loc):
        return Path(loc).parent
    base = os.environ.get("XDG_STATE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "cptra-imgtool"


def default_audit_log(lms_state: str | None = None) -> Path:
    """Where the audit log goes when none is given: ``<state dir>/server-audit.jsonl``."""
    return state_dir(lms_state) / AUDIT_NAME


def cpus() -> int:
    """CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def default_jobs() -> int:
    """Concurrent i.MX jobs: 4 per CPU. A cst job is a short process (about 20 ms of RSA
    signing) plus process and namespace set-up and file I/O; measured on 2 CPUs
    (bench/imx_vs_digsigserver.py, 8 clients), 2 jobs kept the CPUs idle part of the time and
    8 gave the best throughput. LMS signing (pure Python, CPU-bound) gets one slot per CPU."""
    return 4 * cpus()


@dataclass(frozen=True)
class Settings:
    keyfile_root: Path
    imx_cst_base: Path = Path("/opt/NXP")
    request_max_size: int = 64 * 1024 * 1024
    log_level: str = "INFO"
    tokens_file: Path | None = None
    audit_log: Path | None = None
    subprocess_timeout: int = 60
    max_jobs: int = 0  # concurrent i.MX jobs; 0: 4 per CPU (default_jobs())
    queue_timeout: float = 30.0  # how long a job waits for a slot before 429
    max_queue: int = 256  # jobs waiting beyond that: 429 at once
    tar_max_bytes: int = 16 * 1024 * 1024
    tar_max_files: int = 256
    insecure_no_auth: bool = False
    work_dir: Path | None = None  # cst output files, large artifacts, unsandboxed job dirs
    lms_state: str | None = None  # LMS leaf-state store (None: CPTRA_IMGTOOL_STATE / default)
    lms_quota: Quota = Quota(256, 86400)  # per token, unless the token has its own
    quota_db: Path | None = None  # default: beside the tokens file
    allow_unsandboxed_cst: bool = False
    no_audit_log: bool = False  # explicitly run without an audit log (a start-up warning)
    # PKCS#11 modules the server may load for HSM keys in the key store (hsmkeys.py): a key
    # store file names one of these (or none: the first); never an arbitrary .so
    pkcs11_modules: tuple[Path, ...] = ()
    pkcs11_pin_dir: Path | None = None  # <dir>/<machine>.pin per machine, else the env PIN
    pkcs11_scan_interval: float = 1.0  # s between key store scans for shared tokens (0: always)

    @property
    def jobs(self) -> int:
        return self.max_jobs or default_jobs()

    @property
    def lms_jobs(self) -> int:
        return min(self.jobs, cpus())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        e = os.environ if env is None else env
        uri = e.get("DIGSIGSERVER_KEYFILE_URI", "")
        if not uri and overrides.get("keyfile_root") is None:
            raise ServerError(
                "no key store: give --keys DIR or set DIGSIGSERVER_KEYFILE_URI (where the keys "
                "live)"
            )
        tokens = e.get("CPTRA_IMGTOOL_TOKENS")
        audit = e.get("CPTRA_IMGTOOL_AUDIT_LOG")
        level = e.get("DIGSIGSERVER_LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ServerError(f"DIGSIGSERVER_LOG_LEVEL: unknown level {level!r}")
        quota = e.get("CPTRA_IMGTOOL_LMS_QUOTA")
        values: dict[str, object] = {
            "keyfile_root": keyfile_root(uri) if uri else None,
            "imx_cst_base": Path(e.get("DIGSIGSERVER_IMX_CST_BASE", "/opt/NXP")),
            "request_max_size": _int(e, "DIGSIGSERVER_REQUEST_MAX_SIZE", 64 * 1024 * 1024),
            "log_level": level,
            "tokens_file": Path(tokens) if tokens else None,
            "audit_log": Path(audit) if audit else None,
            "subprocess_timeout": _int(e, "CPTRA_IMGTOOL_SUBPROCESS_TIMEOUT", 60),
            "max_jobs": _int(e, "CPTRA_IMGTOOL_MAX_JOBS", 0),
            "queue_timeout": _float(e, "CPTRA_IMGTOOL_QUEUE_TIMEOUT", 30.0),
            "work_dir": Path(e["CPTRA_IMGTOOL_WORK_DIR"])
            if e.get("CPTRA_IMGTOOL_WORK_DIR")
            else None,
            "lms_state": e.get("CPTRA_IMGTOOL_STATE") or None,
            "lms_quota": parse_quota(quota, "CPTRA_IMGTOOL_LMS_QUOTA")
            if quota
            else Quota(256, 86400),
        }
        mods = e.get("CPTRA_IMGTOOL_PKCS11_MODULES") or e.get("CPTRA_IMGTOOL_PKCS11_MODULE") or ""
        values["pkcs11_modules"] = pkcs11_modules(mods)
        pin_dir = e.get("CPTRA_IMGTOOL_PKCS11_PIN_DIR")
        values["pkcs11_pin_dir"] = Path(pin_dir) if pin_dir else None
        values["pkcs11_scan_interval"] = _interval(e, "CPTRA_IMGTOOL_PKCS11_SCAN_INTERVAL", 1.0)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values.get("audit_log") is None and not values.get("no_audit_log"):
            values["audit_log"] = default_audit_log(values.get("lms_state"))  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def check(self) -> None:
        """Refuse to start on a key store that is not there."""
        if not self.keyfile_root.is_dir():
            raise ServerError(f"{self.keyfile_root}: key store not found (not a directory)")
        for mod in self.pkcs11_modules:
            if not mod.is_file():
                raise ServerError(f"CPTRA_IMGTOOL_PKCS11_MODULES: {mod}: no such file")
        if self.pkcs11_pin_dir is not None and not self.pkcs11_pin_dir.is_dir():
            raise ServerError(
                f"CPTRA_IMGTOOL_PKCS11_PIN_DIR: {self.pkcs11_pin_dir}: not a directory"
            )
