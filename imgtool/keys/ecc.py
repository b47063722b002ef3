"""ECC P-384: PEM key loading, deterministic ECDSA over a SHA-384 prehash, hardware format.

Caliptra's "hardware format" stores each 48-byte big-endian scalar as twelve 4-byte groups,
each group byte-reversed (a little-endian u32 holding the big-endian word).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from ..errors import KeyFileError, SigningError

COORD_LEN = 48
HW_LEN = 96  # x||y or r||s
SIG_LEN = HW_LEN
DIGEST_LEN = 48
_ALGO = ec.ECDSA(utils.Prehashed(hashes.SHA384()), deterministic_signing=True)
_VERIFY_ALGO = ec.ECDSA(utils.Prehashed(hashes.SHA384()))


def swap_words(data: bytes) -> bytes:
    """Byte-reverse every 4-byte group (its own inverse)."""
    if len(data) % 4:
        raise ValueError("length must be a multiple of 4")
    return b"".join(data[i : i + 4][::-1] for i in range(0, len(data), 4))


def scalars_to_hw(a: int, b: int) -> bytes:
    return swap_words(a.to_bytes(COORD_LEN, "big") + b.to_bytes(COORD_LEN, "big"))


def hw_to_scalars(hw: bytes) -> tuple[int, int]:
    if len(hw) != HW_LEN:
        raise ValueError(f"hardware-format value must be {HW_LEN} bytes, got {len(hw)}")
    raw = swap_words(hw)
    return int.from_bytes(raw[:COORD_LEN], "big"), int.from_bytes(raw[COORD_LEN:], "big")


def public_to_hw(key: ec.EllipticCurvePublicKey) -> bytes:
    nums = key.public_numbers()
    return scalars_to_hw(nums.x, nums.y)


def hw_to_public(hw: bytes) -> ec.EllipticCurvePublicKey:
    """Decode a hardware-format public key; raises ValueError for a point not on P-384."""
    x, y = hw_to_scalars(hw)
    return ec.EllipticCurvePublicNumbers(x, y, ec.SECP384R1()).public_key()


def der_to_hw(der: bytes) -> bytes:
    """DER ECDSA signature -> r||s in hardware format. Raises ValueError on bad DER."""
    r, s = utils.decode_dss_signature(der)
    if not (0 < r < 2**384 and 0 < s < 2**384):
        raise ValueError("signature scalar out of range")
    return scalars_to_hw(r, s)


def hw_to_der(hw: bytes) -> bytes:
    r, s = hw_to_scalars(hw)
    return utils.encode_dss_signature(r, s)


def verify_digest(key: ec.EllipticCurvePublicKey, digest: bytes, der_sig: bytes) -> bool:
    """True when ``der_sig`` is a valid ECDSA P-384 signature of the SHA-384 prehash ``digest``."""
    try:
        key.verify(der_sig, digest, _VERIFY_ALGO)
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_digest_hw(key: ec.EllipticCurvePublicKey, digest: bytes, hw_sig: bytes) -> bool:
    try:
        der = hw_to_der(hw_sig)
    except ValueError:
        return False
    return verify_digest(key, digest, der)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _check_curve(key: object, path: Path) -> None:
    if not isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        raise KeyFileError(f"{path}: not an EC key (expected ECC P-384)")
    if not isinstance(key.curve, ec.SECP384R1):
        raise KeyFileError(f"{path}: EC key on curve {key.curve.name}, expected secp384r1 (P-384)")


def load_public(path: str | Path) -> ec.EllipticCurvePublicKey:
    """Load a SubjectPublicKeyInfo PEM (or DER) P-384 public key."""
    p = Path(path)
    data = _read(p, "ECC public key")
    try:
        if b"-----BEGIN" in data:
            if b"PRIVATE KEY-----" in data and b"PUBLIC KEY-----" not in data:
                raise KeyFileError(f"{p}: holds a private key where a public key is expected")
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm, TypeError):
        raise KeyFileError(f"{p}: not a PEM/DER public key") from None
    _check_curve(key, p)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return key


def load_public_bytes(data: bytes) -> ec.EllipticCurvePublicKey:
    """A P-384 public key from PEM or DER bytes; ValueError otherwise."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (UnsupportedAlgorithm, TypeError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ValueError("not a P-384 public key")
    return key


def load_private(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """Load a SEC1 or PKCS#8 PEM P-384 private key (an EC PARAMETERS block may precede it)."""
    p = Path(path)
    data = _read(p, "ECC private key")
    if b"ENCRYPTED" in data:
        raise KeyFileError(f"{p}: encrypted private keys are not supported")
    try:
        if b"-----BEGIN" in data:
            if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
                raise KeyFileError(f"{p}: holds a public key where a private key is expected")
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, UnsupportedAlgorithm, TypeError):
        raise KeyFileError(f"{p}: not a PEM/DER private key") from None
    _check_curve(key, p)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def sign_digest_der(key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """Deterministic (RFC 6979) ECDSA P-384 over a 48-byte SHA-384 digest; DER output."""
    if len(digest) != DIGEST_LEN:
        raise SigningError(f"ECC signing needs a {DIGEST_LEN}-byte digest, got {len(digest)}")
    return key.sign(digest, _ALGO)


@dataclass(frozen=True)
class EccSigner:
    """Signs digests with a local P-384 private key (mcuboot-style small protocol)."""

    key: ec.EllipticCurvePrivateKey
    source: str = "<memory>"

    sig_len = SIG_LEN

    @classmethod
    def load(cls, path: str | Path) -> EccSigner:
        return cls(load_private(path), str(path))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.key.public_key()

    def public_bytes(self) -> bytes:
        return public_to_hw(self.public_key())

    def sign_digest(self, digest: bytes) -> bytes:
        """Return the signature in hardware format (r||s, word-swapped)."""
        return der_to_hw(sign_digest_der(self.key, digest))


def generate_keypair(prefix: str | Path) -> tuple[Path, Path]:
    """Write PREFIX-prvk.pem (SEC1, mode 0600) and PREFIX-pubk.pem (SPKI). Never overwrites."""
    from ..fileio import atomic_write

    priv_path = Path(f"{prefix}-prvk.pem")
    pub_path = Path(f"{prefix}-pubk.pem")
    for p in (priv_path, pub_path):
        if p.exists():
            raise KeyFileError(f"{p}: already exists, refusing to overwrite")
    key = ec.generate_private_key(ec.SECP384R1())
    priv = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(priv_path, priv, mode=0o600)
    atomic_write(pub_path, pub, mode=0o644)
    return priv_path, pub_path
