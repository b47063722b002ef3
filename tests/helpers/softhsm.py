"""A throw-away SoftHSM2 token per test: its own SOFTHSM2_CONF and token directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/softhsm/libsofthsm2.so",
)
SO_PIN = "so-pin-1234"


def module_path() -> str | None:
    return next((m for m in MODULE_CANDIDATES if Path(m).is_file()), None)


def require_softhsm() -> str:
    mod = module_path()
    if mod is None or shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2 not installed (Debian package softhsm2; make system-deps)")
    return mod


@dataclass
class Token:
    label: str
    pin: str
    module: str
    conf: Path
    dir: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}

    def uri(self, obj: str, pin_file: Path | None = None, module: bool = True) -> str:
        u = f"pkcs11:token={self.label};object={obj}"
        q = []
        if module:
            q.append(f"module-path={self.module}")
        if pin_file is not None:
            q.append(f"pin-source=file:{pin_file}")
        return u + ("?" + "&".join(q) if q else "")

    def import_pem(self, pem: Path, obj: str, key_id: str = "01") -> None:
        """Import a P-384 private key and its public key (pkcs11-tool, else the library)."""
        tool = shutil.which("pkcs11-tool")
        if tool is None:
            pytest.skip("pkcs11-tool not installed (Debian package opensc)")
        from cryptography.hazmat.primitives import serialization

        from imgtool.keys import ecc

        key = ecc.load_private(pem)
        der_priv = pem.with_suffix(".p8.der")
        der_priv.write_bytes(
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        der_pub = pem.with_suffix(".pub.der")
        der_pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        for path, typ in ((der_priv, "privkey"), (der_pub, "pubkey")):
            subprocess.run(
                [tool, "--module", self.module, "--token-label", self.label, "--login",
                 "--pin", self.pin, "--write-object", str(path), "--type", typ,
                 "--id", key_id, "--label", obj],
                env=self.env(), check=True, capture_output=True,
            )  # fmt: skip
        der_priv.unlink()


def make_token(tmp: Path, monkeypatch: pytest.MonkeyPatch, label: str = "cptra") -> Token:
    mod = require_softhsm()
    tdir = tmp / "softhsm-tokens"
    tdir.mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tdir}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    pin = "user-pin-" + os.urandom(4).hex()
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", SO_PIN,
         "--pin", pin],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)}, check=True, capture_output=True,
    )  # fmt: skip
    return Token(label, pin, mod, conf, tdir)
