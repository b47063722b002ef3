"""ECC P-384: PEM forms, hardware format both ways, deterministic ECDSA."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imgtool.errors import KeyFileError
from imgtool.keys import ecc


def _write(path: Path, key: ec.EllipticCurvePrivateKey, fmt: serialization.PrivateFormat) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    )
    return path


def test_hw_format_word_swap() -> None:
    x = int.from_bytes(bytes(range(48)), "big")
    hw = ecc.scalars_to_hw(x, 1)
    assert hw[:4] == bytes([3, 2, 1, 0]) and hw[4:8] == bytes([7, 6, 5, 4])
    assert hw[92:96] == bytes([1, 0, 0, 0])
    assert ecc.hw_to_scalars(hw) == (x, 1)


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8]
)
def test_sec1_and_pkcs8_sign_deterministically(
    tmp_path: Path, fmt: serialization.PrivateFormat
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    p = _write(tmp_path / "k.pem", key, fmt)
    signer = ecc.EccSigner.load(p)
    d = hashlib.sha384(b"abc").digest()
    s1, s2 = signer.sign_digest(d), signer.sign_digest(d)
    assert s1 == s2 and len(s1) == 96
    assert ecc.verify_digest(key.public_key(), d, ecc.hw_to_der(s1))
    assert not ecc.verify_digest(
        key.public_key(), hashlib.sha384(b"abd").digest(), ecc.hw_to_der(s1)
    )
    assert (
        ecc.hw_to_public(signer.public_bytes()).public_numbers()
        == key.public_key().public_numbers()
    )


def test_ec_parameters_block_before_key(ref: Path) -> None:
    # vnd-man-ecc-prvk.pem starts with an EC PARAMETERS block
    key = ecc.load_private(ref / "key" / "ast2700-default" / "vnd-man-ecc-prvk.pem")
    pub = ecc.load_public(ref / "key" / "ast2700-default" / "vnd-man-ecc-pubk.pem")
    assert key.public_key().public_numbers() == pub.public_numbers()


def test_rejects_other_curves_and_types(tmp_path: Path) -> None:
    p256 = _write(
        tmp_path / "p256.pem",
        ec.generate_private_key(ec.SECP256R1()),
        serialization.PrivateFormat.PKCS8,
    )
    with pytest.raises(KeyFileError, match="secp256r1"):
        ecc.load_private(p256)
    r = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    rp = tmp_path / "rsa.pem"
    rp.write_bytes(
        r.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(KeyFileError, match="not an EC key"):
        ecc.load_private(rp)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError, match="public key where a private key"):
        ecc.load_private(pub)
    with pytest.raises(KeyFileError, match="not found"):
        ecc.load_public(tmp_path / "nope.pem")


def test_generate_keypair_modes_and_no_overwrite(tmp_path: Path) -> None:
    priv, pub = ecc.generate_keypair(tmp_path / "x")
    assert priv.stat().st_mode & 0o777 == 0o600
    assert b"BEGIN EC PRIVATE KEY" in priv.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(KeyFileError, match="exists"):
        ecc.generate_keypair(tmp_path / "x")


def test_prebuilt_vendor_signature_verifies(ref: Path) -> None:
    der = (ref / "vnd_sig" / "vnd_ecc_sig.der").read_bytes()
    pub = ecc.load_public(ref / "key" / "ast2700-default" / "vnd-fw-ecc-pubk.pem")
    from imgtool.formats.manifest1 import PREBUILT_VENDOR_TBS_DIGEST

    assert ecc.verify_digest(pub, PREBUILT_VENDOR_TBS_DIGEST, der)
    assert ecc.hw_to_der(ecc.der_to_hw(der)) == der
