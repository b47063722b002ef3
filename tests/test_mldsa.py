"""ML-DSA-87 raw key files: sizes, typed errors naming the file, deterministic verified signing,
keygen --algo mldsa through the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from imgtool.errors import KeyFileError
from imgtool.keys import mldsa

SEED = bytes(range(32))


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return mldsa.generate_keypair(tmp_path_factory.mktemp("k") / "vnd-mldsa", seed=SEED)


def test_key_files_are_raw_fips204(keypair: tuple[Path, Path]) -> None:
    priv, pub = keypair
    assert priv.name == "vnd-mldsa-prvk.bin" and pub.name == "vnd-mldsa-pubk.bin"
    assert priv.stat().st_size == 4896 and pub.stat().st_size == 2592
    assert priv.stat().st_mode & 0o777 == 0o600
    # the expanded key starts with rho, which is also the first 32 bytes of the public key
    assert priv.read_bytes()[:32] == pub.read_bytes()[:32]
    assert mldsa.public_from_private(priv.read_bytes()) == pub.read_bytes()


def test_deterministic_signature_verifies_independently(keypair: tuple[Path, Path]) -> None:
    from dilithium_py.ml_dsa import ML_DSA_87

    key = mldsa.MldsaPrivateKey.load(keypair[0])
    pub = mldsa.MldsaPublicKey.load(keypair[1]).raw
    msg = b"covered bytes \x00\x01" * 100
    s1 = key.sign(msg, pub)
    assert len(s1) == 4627
    assert key.sign(msg) == s1  # deterministic: same key, same message, same bytes
    assert ML_DSA_87.verify(pub, msg, s1)  # raw message, empty context
    assert not mldsa.verify(pub, msg + b"x", s1)
    assert key.sign(msg, pub, hedged=True) != s1


def test_wrong_sizes_are_typed_errors_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "short.bin"
    bad.write_bytes(bytes(32))
    with pytest.raises(KeyFileError, match=r"short\.bin.*4896"):
        mldsa.MldsaPrivateKey.load(bad)
    with pytest.raises(KeyFileError, match=r"short\.bin.*2592"):
        mldsa.MldsaPublicKey.load(bad)
    with pytest.raises(KeyFileError, match=r"missing\.bin"):
        mldsa.MldsaPublicKey.load(tmp_path / "missing.bin")


def test_signing_against_the_wrong_public_key_fails(
    keypair: tuple[Path, Path], tmp_path: Path
) -> None:
    from imgtool.errors import SigningError

    _, other = mldsa.generate_keypair(tmp_path / "other", seed=bytes(32))
    key = mldsa.MldsaPrivateKey.load(keypair[0])
    with pytest.raises(SigningError, match="did not verify"):
        key.sign(b"m", other.read_bytes())


def test_keygen_cli(tmp_path: Path) -> None:
    out = tmp_path / "own-mldsa"
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "keygen", "--algo", "mldsa", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "own-mldsa-prvk.bin").stat().st_size == 4896
    assert (tmp_path / "own-mldsa-pubk.bin").stat().st_size == 2592
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "keygen", "--algo", "mldsa", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "already exists" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_signing_from_threads_is_safe(tmp_path: Path) -> None:
    """dilithium-py shares hashing state between calls: without keys.mldsa.LOCK, threads signing
    at once made signatures that did not verify (found in the server). Every one must verify."""
    import threading

    from dilithium_py.ml_dsa import ML_DSA_87

    priv, pubf = mldsa.generate_keypair(tmp_path / "k", seed=bytes(range(32)))
    key = mldsa.MldsaPrivateKey.load(priv)
    pub = mldsa.MldsaPublicKey.load(pubf).raw
    sigs: dict[bytes, bytes] = {}
    errors: list[str] = []

    def work(i: int) -> None:
        for j in range(3):
            msg = b"thread %d message %d" % (i, j)
            try:
                sigs[msg] = key.sign(msg, None if j == 0 else pub)
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(sigs) == 12
    assert all(ML_DSA_87.verify(pub, m, s) for m, s in sigs.items())
