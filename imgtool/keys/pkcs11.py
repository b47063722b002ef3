"""ECC P-384 keys on a PKCS#11 token, named by RFC 7512 URIs.

``pkcs11:token=cptra;object=own-man-ecc?pin-source=file:/run/pin``. The module comes from the
URI's ``module-path`` or ``CPTRA_IMGTOOL_PKCS11_MODULE``; the PIN from ``pin-source``
(``file:`` only) or ``CPTRA_IMGTOOL_PKCS11_PIN``, never from the URI itself (``pin-value`` is
refused) nor from a command-line argument. Errors name the URI as given (which cannot hold a
PIN) and are one line; a wrong PIN or a locked token is reported once, never retried.

Signatures are CKM_ECDSA over the SHA-384 digest: randomized (unlike our file keys' RFC 6979),
so builds with HSM keys do not reproduce signature bytes. Every signature is verified against
the expected public key before it is returned.

Library choice: python-pkcs11 (MIT, typed with py.typed/stubs, cp311 manylinux wheels, active
releases) over PyKCS11 (GPL-2.0-or-later, SWIG without type hints).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from cryptography.hazmat.primitives.asymmetric import ec, utils

from ..errors import KeyFileError, SigningError
from . import ecc

log = logging.getLogger("imgtool")

MODULE_ENV = "CPTRA_IMGTOOL_PKCS11_MODULE"
PIN_ENV = "CPTRA_IMGTOOL_PKCS11_PIN"

# RFC 7512 section 2.3: path and query attribute names.
_PATH_ATTRS = {
    "id",
    "library-description",
    "library-manufacturer",
    "library-version",
    "manufacturer",
    "model",
    "object",
    "serial",
    "slot-description",
    "slot-id",
    "slot-manufacturer",
    "token",
    "type",
}
_QUERY_ATTRS = {"module-name", "module-path", "pin-source", "pin-value"}
_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# pchar minus the separators of each part, plus '%' (checked by _PCT)
_PATH_VALUE = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,=:@]*")
_QUERY_VALUE = re.compile(r"[A-Za-z0-9\-._~%!$'()*+,;=:@/?|]*")


class Pkcs11Error(KeyFileError):
    """A PKCS#11 URI, module, token, object or PIN problem (one line, no PIN)."""


class Pkcs11LoginError(Pkcs11Error):
    """The token refused the login (wrong, locked or unacceptable PIN): never to be retried
    in a loop (each try may count down the token's retry counter)."""


def is_uri(value: str | Path | None) -> bool:
    return value is not None and str(value).startswith("pkcs11:")


def _redact(uri: str) -> str:
    """The URI with any pin-value replaced (we refuse pin-value, but never echo it)."""
    return re.sub(r"(pin-value=)[^&;]*", r"\1***", uri, flags=re.IGNORECASE)


@dataclass(frozen=True)
class Pkcs11Uri:
    text: str  # as given; never holds a PIN (pin-value is refused)
    path: dict[str, bytes] = field(default_factory=dict)
    query: dict[str, bytes] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text

    def _s(self, name: str, where: dict[str, bytes]) -> str | None:
        v = where.get(name)
        if v is None:
            return None
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            raise Pkcs11Error(f"{self.text}: {name} is not UTF-8") from None

    @property
    def token(self) -> str | None:
        return self._s("token", self.path)

    @property
    def object(self) -> str | None:
        return self._s("object", self.path)

    @property
    def id(self) -> bytes | None:
        return self.path.get("id")

    @property
    def serial(self) -> str | None:
        return self._s("serial", self.path)

    @property
    def module_path(self) -> str | None:
        return self._s("module-path", self.query)

    @property
    def pin_source(self) -> str | None:
        return self._s("pin-source", self.query)


def parse_uri(uri: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI strictly; raises Pkcs11Error naming the (redacted) URI."""
    shown = _redact(uri)
    if not shown.isprintable():  # a newline or control byte: escaped, the error stays one line
        shown = shown.encode("unicode_escape").decode("ascii")
    if not uri.startswith("pkcs11:"):
        raise Pkcs11Error(f"{shown}: not a PKCS#11 URI (must start with pkcs11:)")
    rest = uri[len("pkcs11:") :]
    path_part, _, query_part = rest.partition("?")

    def attrs(part: str, sep: str, allowed: set[str], pattern: re.Pattern[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        if part == "":
            return out
        for item in part.split(sep):
            name, eq, value = item.partition("=")
            name = name.lower()
            if not eq or not name:
                raise Pkcs11Error(f"{shown}: malformed attribute {item!r}")
            if name == "pin-value":
                raise Pkcs11Error(
                    f"{shown}: pin-value is refused (a PIN in a URI leaks into configs and logs); "
                    f"use pin-source=file:PATH or {PIN_ENV}"
                )
            if name not in allowed and not name.startswith("x-"):
                raise Pkcs11Error(f"{shown}: unknown attribute {name!r}")
            if name in out:
                raise Pkcs11Error(f"{shown}: attribute {name!r} given twice")
            if not pattern.fullmatch(value) or _PCT.search(value):
                raise Pkcs11Error(f"{shown}: attribute {name!r}: invalid characters or % escape")
            out[name] = unquote_to_bytes(value)
        return out

    path = attrs(path_part, ";", _PATH_ATTRS, _PATH_VALUE)
    query = attrs(query_part, "&", _QUERY_ATTRS, _QUERY_VALUE)
    if "type" in path and path["type"] not in (b"private", b"public"):
        raise Pkcs11Error(f"{shown}: type must be private or public for an ECC key")
    parsed = Pkcs11Uri(uri, path, query)
    if parsed.object is None and parsed.id is None:
        raise Pkcs11Error(f"{shown}: names no key (needs object= or id=)")
    if parsed.token is None and parsed.serial is None:
        raise Pkcs11Error(f"{shown}: names no token (needs token= or serial=)")
    return parsed


def _module(uri: Pkcs11Uri) -> str:
    mod = uri.module_path or os.environ.get(MODULE_ENV)
    if not mod:
        raise Pkcs11Error(f"{uri}: no PKCS#11 module (set module-path in the URI or {MODULE_ENV})")
    return mod


def _pin(uri: Pkcs11Uri) -> str:
    src = uri.pin_source
    if src is not None:
        if not src.startswith("file:"):
            raise Pkcs11Error(f"{uri}: pin-source must be file:PATH")
        p = Path(src[len("file:") :].removeprefix("//"))
        try:
            return p.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise Pkcs11Error(f"{uri}: cannot read pin-source {p}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise Pkcs11Error(f"{uri}: pin-source {p} is not UTF-8 text") from None
    pin = os.environ.get(PIN_ENV)
    if pin is None:
        raise Pkcs11Error(f"{uri}: no PIN (set pin-source=file:PATH in the URI or {PIN_ENV})")
    return pin


_LIBS: dict[str, Any] = {}
_LIB_PID: dict[str, int] = {}  # the process that initialized each module
# PKCS#11 login state belongs to the process, not the session: a second login while another
# thread's session is logged in fails (CKR_USER_ALREADY_LOGGED_IN), and closing the last
# session logs every session out. So one thread at a time uses the token (`doit -P thread`).
_TOKEN_LOCK = threading.RLock()


def _lib(uri: Pkcs11Uri) -> Any:
    import pkcs11

    mod = _module(uri)
    try:
        if mod not in _LIBS:
            _LIBS[mod] = pkcs11.lib(mod)
            _LIB_PID[mod] = os.getpid()
        elif _LIB_PID.setdefault(mod, os.getpid()) != os.getpid():
            # a forked child (doit -P process): PKCS#11 state does not survive fork(); the
            # child initializes the module again before its first call
            _LIBS[mod].reinitialize()
            _LIB_PID[mod] = os.getpid()
    except (pkcs11.exceptions.PKCS11Error, OSError):
        raise Pkcs11Error(f"{uri}: cannot load PKCS#11 module {mod}") from None
    return _LIBS[mod]


def reset_modules() -> None:
    """Finalize and forget every loaded module (a new SOFTHSM2_CONF takes effect)."""
    import pkcs11

    with _TOKEN_LOCK:
        for lib in _LIBS.values():
            with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
                lib.finalize()
        _LIBS.clear()
        _LIB_PID.clear()


_HELD: list[int] = []  # flock depth of this process (under _TOKEN_LOCK)


@contextlib.contextmanager
def _module_lock(mod: str) -> Iterator[None]:
    """An exclusive flock(2) on the module file while this process uses the token: processes of
    this tool (``doit -P process``, parallel builds) take turns. SoftHSM2's file token is not
    safe for concurrent processes: unserialized, of 3 processes x 30 signatures two lost 24-30 of
    their 30 to CKR_GENERAL_ERROR or "no such token" (tests/test_pkcs11.py). A network HSM
    would not need it; a SoftHSM2 signature takes ~7.5 ms. A module named without a path (found
    by the loader's search) is not locked."""
    if _HELD:
        _HELD.append(1)  # nested in this thread: already held
        try:
            yield
        finally:
            _HELD.pop()
        return
    try:
        fd = os.open(mod, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        fd = -1
    try:
        if fd >= 0:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD.append(1)
        yield
    finally:
        if _HELD:
            _HELD.pop()
        if fd >= 0:
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def session(uri: Pkcs11Uri, *, rw: bool = False) -> Iterator[Any]:
    """An open, logged-in session on the URI's token (one thread, one process at a time)."""
    with _TOKEN_LOCK, _module_lock(_module(uri)):
        with _session(uri, rw=rw) as sess:
            yield sess


@contextlib.contextmanager
def _session(uri: Pkcs11Uri, *, rw: bool = False) -> Iterator[Any]:
    import pkcs11
    from pkcs11 import exceptions as x

    lib = _lib(uri)
    kw: dict[str, Any] = {}
    if uri.token is not None:
        kw["token_label"] = uri.token
    if uri.serial is not None:
        kw["token_serial"] = uri.serial.encode()
    try:
        token = lib.get_token(**kw)
    except x.NoSuchToken:
        raise Pkcs11Error(f"{uri}: no such token") from None
    except x.MultipleTokensReturned:
        raise Pkcs11Error(f"{uri}: more than one token matches (add serial=)") from None
    pin = _pin(uri)
    try:
        sess = token.open(rw=rw, user_pin=pin)
    except x.PinIncorrect:
        raise Pkcs11LoginError(f"{uri}: wrong PIN (CKR_PIN_INCORRECT; not retried)") from None
    except x.PinLocked:
        raise Pkcs11LoginError(f"{uri}: token is locked (CKR_PIN_LOCKED; not retried)") from None
    except (x.PinInvalid, x.PinLenRange, x.PinExpired):
        raise Pkcs11LoginError(f"{uri}: the PIN is not accepted by the token") from None
    except pkcs11.exceptions.PKCS11Error as exc:
        raise Pkcs11Error(f"{uri}: cannot open a session: {type(exc).__name__}") from None
    finally:
        del pin
    try:
        yield sess
    finally:
        with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
            sess.close()


def _find(sess: Any, uri: Pkcs11Uri, cls: Any) -> Any:
    from pkcs11 import KeyType
    from pkcs11 import exceptions as x

    kw: dict[str, Any] = {"object_class": cls, "key_type": KeyType.EC}
    if uri.object is not None:
        kw["label"] = uri.object
    if uri.id is not None:
        kw["id"] = uri.id
    try:
        return sess.get_key(**kw)
    except x.NoSuchKey:
        what = "private" if cls.name == "PRIVATE_KEY" else "public"
        raise Pkcs11Error(f"{uri}: no EC {what} key object on the token") from None
    except x.MultipleObjectsReturned:
        raise Pkcs11Error(f"{uri}: more than one key object matches (add id=)") from None


def _public_from_obj(uri: Pkcs11Uri, obj: Any) -> ec.EllipticCurvePublicKey:
    from pkcs11 import Attribute

    point = bytes(obj[Attribute.EC_POINT])
    if point[:1] == b"\x04" and len(point) == 2 + 97 and point[1] == 97:
        point = point[2:]  # DER OCTET STRING wrapper (the PKCS#11 spec form)
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), point)
    except ValueError:
        raise Pkcs11Error(f"{uri}: key is not an ECC P-384 key") from None


def public_key(uri: str | Pkcs11Uri) -> ec.EllipticCurvePublicKey:
    """The P-384 public key object matching the URI's key (label/id)."""
    from pkcs11 import ObjectClass

    u = parse_uri(uri) if isinstance(uri, str) else uri
    with session(u) as sess:
        return _public_from_obj(u, _find(sess, u, ObjectClass.PUBLIC_KEY))


def sign_digest_der(uri: str | Pkcs11Uri, digest: bytes) -> bytes:
    """CKM_ECDSA over a 48-byte SHA-384 digest on the token; DER output (unverified)."""
    from pkcs11 import Mechanism, ObjectClass
    from pkcs11 import exceptions as x

    u = parse_uri(uri) if isinstance(uri, str) else uri
    if len(digest) != ecc.DIGEST_LEN:
        raise SigningError(f"ECC signing needs a {ecc.DIGEST_LEN}-byte digest, got {len(digest)}")
    with session(u) as sess:
        key = _find(sess, u, ObjectClass.PRIVATE_KEY)
        try:
            raw = bytes(key.sign(digest, mechanism=Mechanism.ECDSA))
        except x.PKCS11Error as exc:
            raise Pkcs11Error(f"{u}: token refused to sign: {type(exc).__name__}") from None
    if len(raw) != 2 * ecc.COORD_LEN:
        raise Pkcs11Error(f"{u}: token returned a {len(raw)}-byte signature (not P-384)")
    r = int.from_bytes(raw[: ecc.COORD_LEN], "big")
    s = int.from_bytes(raw[ecc.COORD_LEN :], "big")
    return utils.encode_dss_signature(r, s)


def generate(uri: str | Pkcs11Uri) -> ec.EllipticCurvePublicKey:
    """Generate a P-384 key pair on the token (label = object, id = id or random); refuses
    when a key with that label/id exists. Returns the public key."""
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11 import exceptions as x
    from pkcs11.util.ec import encode_named_curve_parameters

    u = parse_uri(uri) if isinstance(uri, str) else uri
    with session(u, rw=True) as sess:
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            kw: dict[str, Any] = {"object_class": cls}
            if u.object is not None:
                kw["label"] = u.object
            if u.id is not None:
                kw["id"] = u.id
            if list(sess.get_objects(kw_to_attrs(kw))):
                raise Pkcs11Error(f"{u}: a key object with this label/id already exists")
        try:
            params = sess.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters("secp384r1")},
                local=True,
            )
            pub, _priv = params.generate_keypair(
                store=True,
                label=u.object,
                id=u.id if u.id is not None else secrets.token_bytes(8),
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
            )
        except x.PKCS11Error as exc:
            raise Pkcs11Error(f"{u}: key generation failed: {type(exc).__name__}") from None
        return _public_from_obj(u, pub)


def kw_to_attrs(kw: dict[str, Any]) -> dict[Any, Any]:
    from pkcs11 import Attribute

    names = {"object_class": Attribute.CLASS, "label": Attribute.LABEL, "id": Attribute.ID}
    return {names[k]: v for k, v in kw.items()}


@dataclass(frozen=True)
class Pkcs11EccSigner:
    """ECC P-384 signer on a token; each signature verified before it is returned."""

    uri: Pkcs11Uri
    expect_pub: ec.EllipticCurvePublicKey | None = None
    sig_len: int = ecc.SIG_LEN

    @classmethod
    def from_uri(cls, uri: str, expect_pub: ec.EllipticCurvePublicKey | None) -> Pkcs11EccSigner:
        return cls(parse_uri(uri), expect_pub)

    @property
    def description(self) -> str:
        return str(self.uri)

    def sign_digest(self, digest: bytes) -> bytes:
        pub = self.expect_pub if self.expect_pub is not None else public_key(self.uri)
        der = sign_digest_der(self.uri, digest)
        if not ecc.verify_digest(pub, digest, der):
            raise SigningError(
                f"{self.uri}: the token's signature does not verify with the configured public key"
            )
        log.debug("signed with PKCS#11 key %s", self.uri)
        return ecc.der_to_hw(der)
