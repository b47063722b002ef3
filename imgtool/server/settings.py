"""Server settings from the environment (digsigserver's names where they exist)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ServerError


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


def keyfile_root(uri: str) -> Path:
    """DIGSIGSERVER_KEYFILE_URI: file:///path or a plain path (s3:// is not supported)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri)
    raise ServerError(f"DIGSIGSERVER_KEYFILE_URI: scheme {parsed.scheme!r} is not supported")


@dataclass(frozen=True)
class Settings:
    keyfile_root: Path
    imx_cst_base: Path = Path("/opt/NXP")
    request_max_size: int = 64 * 1024 * 1024
    log_level: str = "INFO"
    tokens_file: Path | None = None
    audit_log: Path | None = None
    subprocess_timeout: int = 60
    max_jobs: int = 4
    tar_max_bytes: int = 16 * 1024 * 1024
    tar_max_files: int = 256
    insecure_no_auth: bool = False
    work_dir: Path | None = None  # where per-request work dirs go (default: the system temp)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        e = os.environ if env is None else env
        uri = e.get("DIGSIGSERVER_KEYFILE_URI", "")
        if not uri:
            raise ServerError("DIGSIGSERVER_KEYFILE_URI is not set (where the keys live)")
        tokens = e.get("CPTRA_IMGTOOL_TOKENS")
        audit = e.get("CPTRA_IMGTOOL_AUDIT_LOG")
        level = e.get("DIGSIGSERVER_LOG_LEVEL", "INFO").upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ServerError(f"DIGSIGSERVER_LOG_LEVEL: unknown level {level!r}")
        values: dict[str, object] = {
            "keyfile_root": keyfile_root(uri),
            "imx_cst_base": Path(e.get("DIGSIGSERVER_IMX_CST_BASE", "/opt/NXP")),
            "request_max_size": _int(e, "DIGSIGSERVER_REQUEST_MAX_SIZE", 64 * 1024 * 1024),
            "log_level": level,
            "tokens_file": Path(tokens) if tokens else None,
            "audit_log": Path(audit) if audit else None,
            "subprocess_timeout": _int(e, "CPTRA_IMGTOOL_SUBPROCESS_TIMEOUT", 60),
            "max_jobs": _int(e, "CPTRA_IMGTOOL_MAX_JOBS", 4),
            "work_dir": Path(e["CPTRA_IMGTOOL_WORK_DIR"])
            if e.get("CPTRA_IMGTOOL_WORK_DIR")
            else None,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
