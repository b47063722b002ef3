"""Which file of a machine's key archive each CSF command may name (the per-role certificate
policy of ``/sign/imx``).

A key archive holds the whole HAB4 tree of a machine: often the CA and SRK certificates (and
their private keys) as well as the CSF and IMG keys that signing needs. ``cst`` signs with the
private key that belongs to whatever certificate the CSF installs, so a CSF that may name any
archive file could make ``cst`` sign with the CA or an SRK key. The roles are therefore decided
from the files themselves, once per unpacked archive (:func:`index_tree`), and checked per
request (:func:`check_roles`):

* ``[Install SRK] File``: a HAB4 SRK table (tag 0xD7, its length the file's size, well-formed
  key entries), nothing else; ``Source Index`` must be one of its entries.
* ``[Install CSFK] File`` and ``[Install Key] File``: an X.509 certificate (PEM or DER) that is
  not a CA (no ``basicConstraints CA:TRUE``, no ``keyCertSign``), whose public key is not in
  the installed SRK table, and whose signature verifies with a key of that table (so it was
  issued by one of this CSF's SRKs). Under NXP's key-tree naming (``CSF1_1_...``,
  ``IMG1_1_...``: the file name or the certificate's common name) the name must also match the
  command: a CSF certificate for Install CSFK, an IMG certificate for Install Key.
* ``[Install NOCAK] File`` (fast authentication, a PKI made without a CA): a certificate that is
  not a CA and whose public key is an entry of the installed SRK table (an SRK certificate of a
  no-CA tree; NXP naming ``SRK...`` when the name follows it).

This is what digsigserver clients send for a key tree made by NXP's ``hab4_pki_tree.sh``
(``crts/SRK_1_2_3_4_table.bin``, ``crts/CSF1_1_..._crt.pem``, ``crts/IMG1_1_..._crt.pem``, or the
same names in a flat archive, with or without the SRK and CA certificates in it). An image key
installed by another image key (a key chain beyond the SRK) is not supported.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from .csf import Csf, CsfError, Statement

MAX_FILE = 64 * 1024  # a certificate or SRK table is a few KB; larger files are not indexed
SRK_TAG, KEY_TAG = 0xD7, 0xE1
ALG_RSA, ALG_EC = 0x21, 0x27
_CURVES: dict[int, ec.EllipticCurve] = {
    256: ec.SECP256R1(),
    384: ec.SECP384R1(),
    521: ec.SECP521R1(),
}
_NXP_ROLE = re.compile(r"(SRK|CSF|IMG|CA)[0-9]", re.IGNORECASE)
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class SrkTable:
    keys: tuple[PublicKey, ...]
    fingerprints: tuple[bytes, ...]  # canonical public numbers of each entry


@dataclass(frozen=True)
class Cert:
    fingerprint: bytes  # canonical public numbers of the certificate's key
    is_ca: bool
    role: str  # NXP naming of the file or its CN: "SRK", "CSF", "IMG", "CA", or ""
    tbs: bytes
    signature: bytes
    hash_alg: object


FileInfo = SrkTable | Cert | None


def _fp(key: object) -> bytes | None:
    if isinstance(key, rsa.RSAPublicKey):
        n = key.public_numbers()
        return b"rsa:%x:%x" % (n.n, n.e)
    if isinstance(key, ec.EllipticCurvePublicKey):
        n2 = key.public_numbers()
        return b"ec:%s:%x:%x" % (key.curve.name.encode(), n2.x, n2.y)
    return None


def parse_srk_table(data: bytes) -> SrkTable | None:
    """A HAB4 SRK table (srktool's output), or None when ``data`` is not one."""
    if len(data) < 4 or data[0] != SRK_TAG or data[3] >> 4 != 4:
        return None
    if struct.unpack(">H", data[1:3])[0] != len(data):
        return None
    keys: list[PublicKey] = []
    fps: list[bytes] = []
    off = 4
    while off < len(data):
        if len(data) - off < 12 or data[off] != KEY_TAG:
            return None
        (length,) = struct.unpack(">H", data[off + 1 : off + 3])
        entry = data[off : off + length]
        if length < 12 or len(entry) != length:
            return None
        alg = entry[3]
        try:
            key: PublicKey
            if alg == ALG_RSA:
                mlen, elen = struct.unpack(">HH", entry[8:12])
                if 12 + mlen + elen != length or not mlen or not elen:
                    return None
                n = int.from_bytes(entry[12 : 12 + mlen], "big")
                e = int.from_bytes(entry[12 + mlen :], "big")
                key = rsa.RSAPublicNumbers(e, n).public_key()
            elif alg == ALG_EC:
                (bits,) = struct.unpack(">H", entry[10:12])
                curve = _CURVES.get(bits)
                size = (bits + 7) // 8
                if curve is None or length != 12 + 2 * size:
                    return None
                x = int.from_bytes(entry[12 : 12 + size], "big")
                y = int.from_bytes(entry[12 + size :], "big")
                key = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
            else:
                return None
        except ValueError:
            return None
        fp = _fp(key)
        assert fp is not None
        keys.append(key)
        fps.append(fp)
        off += length
    if not keys or len(keys) > 4:
        return None
    return SrkTable(tuple(keys), tuple(fps))


def _role(name: str) -> str:
    m = _NXP_ROLE.match(name)
    return m.group(1).upper() if m else ""


def parse_cert(data: bytes, name: str) -> Cert | None:
    """An X.509 certificate (PEM or DER) with what the policy needs, or None."""
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_certificate(data)
        )
        fp = _fp(cert.public_key())
        if fp is None:
            return None
        is_ca = False
        try:
            is_ca = bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
        except x509.ExtensionNotFound:
            pass
        try:
            if cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
                is_ca = True
        except x509.ExtensionNotFound:
            pass
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        cn = str(cns[0].value) if cns else ""
        roles = {r for r in (_role(name.rsplit("/", 1)[-1]), _role(cn)) if r}
        if len(roles) > 1:
            role = "?"  # the file name and the CN disagree: fits no role
        else:
            role = roles.pop() if roles else ""
        return Cert(
            fp, is_ca, role, cert.tbs_certificate_bytes, cert.signature,
            cert.signature_hash_algorithm,
        )  # fmt: skip
    except (ValueError, TypeError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        return None


def index_tree(root: Path, files: frozenset[str]) -> dict[str, FileInfo]:
    """Every regular file of an unpacked archive: an SRK table, a certificate, or None (not
    nameable by any CSF command). Blocking; run once per unpacked tree."""
    out: dict[str, FileInfo] = {}
    for name in files:
        info: FileInfo = None
        try:
            p = root / name
            if p.stat().st_size <= MAX_FILE:
                data = p.read_bytes()
                info = parse_srk_table(data) or parse_cert(data, name)
        except OSError:
            info = None
        out[name] = info
    return out


_ISSUED: dict[tuple[bytes, bytes, tuple[bytes, ...]], bool] = {}  # verifications, memoized


def _issued_by(cert: Cert, table: SrkTable) -> bool:
    memo = (cert.tbs, cert.signature, table.fingerprints)
    hit = _ISSUED.get(memo)
    if hit is None:
        if len(_ISSUED) >= 4096:
            _ISSUED.clear()
        hit = _ISSUED[memo] = _verify(cert, table)
    return hit


def _verify(cert: Cert, table: SrkTable) -> bool:
    for key in table.keys:
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(cert.signature, cert.tbs, padding.PKCS1v15(), cert.hash_alg)  # type: ignore[arg-type]
            else:
                key.verify(cert.signature, cert.tbs, ec.ECDSA(cert.hash_alg))  # type: ignore[arg-type]
            return True
        except (InvalidSignature, TypeError, ValueError):
            continue
    return False


def _file(sec_stmts: list[Statement]) -> Statement | None:
    return next((s for s in sec_stmts if s.keyword == "file"), None)


def check_roles(csf: Csf, index: Mapping[str, FileInfo]) -> None:
    """Each File value fits its command's role (module docstring). Raises CsfError naming the
    line. Call after :func:`.csf.check_files` (every name exists in the archive)."""
    srk = next(s for s in csf.sections if s.name == "install srk")
    st = _file(srk.statements)
    if st is None:
        raise CsfError(srk.line, "[Install SRK] needs a File (the SRK table)")
    name = st.tokens[0].text
    table = index.get(name)
    if not isinstance(table, SrkTable):
        raise CsfError(st.line, f"{name!r} is not an SRK table (Install SRK names srktool's table)")
    idx = next((s for s in srk.statements if s.keyword == "source index"), None)
    if idx is not None and int(idx.tokens[0].text, 0) >= len(table.keys):
        raise CsfError(idx.line, f"Source Index must be below {len(table.keys)} (the SRK table)")
    for sec in csf.sections:
        role = {"install csfk": "CSF", "install key": "IMG", "install nocak": "SRK"}.get(sec.name)
        if role is None:
            continue
        st = _file(sec.statements)
        if st is None:
            raise CsfError(sec.line, f"[{sec.name}] needs a File")
        name = st.tokens[0].text
        cert = index.get(name)
        what = {
            "CSF": "a CSF certificate",
            "IMG": "an IMG certificate",
            "SRK": "an SRK certificate",
        }
        if not isinstance(cert, Cert):
            raise CsfError(
                st.line, f"{name!r} is not a certificate ({sec.name} needs {what[role]})"
            )
        if cert.is_ca:
            raise CsfError(st.line, f"{name!r} is a CA certificate: not allowed in [{sec.name}]")
        if cert.role and cert.role != role:
            raise CsfError(st.line, f"{name!r} is not {what[role]} (NXP key naming)")
        in_table = cert.fingerprint in table.fingerprints
        if role == "SRK":
            if not in_table:
                raise CsfError(st.line, f"{name!r} is not a key of the SRK table {table_name(srk)}")
        elif in_table:
            raise CsfError(st.line, f"{name!r} is an SRK certificate: not allowed in [{sec.name}]")
        elif not _issued_by(cert, table):
            raise CsfError(
                st.line, f"{name!r} was not issued by an SRK of {table_name(srk)} ({what[role]})"
            )


def table_name(srk_section: object) -> str:
    st = _file(getattr(srk_section, "statements", []))
    return repr(st.tokens[0].text) if st is not None else "the SRK table"
