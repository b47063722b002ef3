"""Caliptra ECC keys on a PKCS#11 token in the signing server's key store.

Layout: beside (instead of) ``<root>/<machine>/caliptra/<key>-ecc-prvk.pem`` the key store holds
``<key>-ecc-prvk.pkcs11``, one line with an RFC 7512 URI naming the token and key object
(``pkcs11:token=bmc-a;object=own-fw-ecc``), and ``<key>-ecc-pubk.pem`` stays a file: every
token signature is verified against it before it is returned, and ``/pubkey`` serves it. Both a
``.pem`` and a ``.pkcs11`` private key for one name is a key store error.

Who writes what (the assumptions): the key store is written by the operator (or a provisioning
job acting for them), never by a tenant through the server; a tenant only picks the machine it
is authorized for, the key name and the algorithm from fixed lists. Even so a key store file is
treated as data, not configuration, so a wrong or planted file cannot escalate:

- **no code loading**: ``module-path`` must be one of the modules the server's own environment
  allows (``CPTRA_IMGTOOL_PKCS11_MODULES``, else ``CPTRA_IMGTOOL_PKCS11_MODULE``; compared by
  real path); without it the first allowed module is used; ``module-name`` (a loader search) is
  refused. A file cannot make the server dlopen an arbitrary ``.so``.
- **no secrets in, no files read**: ``pin-value`` and ``pin-source`` are refused in the file
  (as is any other query attribute and any ``x-`` attribute). The PIN comes from the server
  alone: ``<CPTRA_IMGTOOL_PKCS11_PIN_DIR>/<machine>.pin`` (mode 0600 or stricter; the machine
  is the authorized one, never a name from the file), else ``CPTRA_IMGTOOL_PKCS11_PIN``. So a
  file cannot point the server at another machine's PIN or at any other file.
- **one machine per token**: a token named by one machine's key store files (by label, or by
  serial when both name one) may not be named by another machine's. The key store is scanned
  (a directory listing per machine, parsed files cached by stat) at most every
  ``scan_interval`` seconds (``CPTRA_IMGTOOL_PKCS11_SCAN_INTERVAL``, default 1; 0: every
  request), and the asking machine's own file on every request: a file naming another
  machine's token is refused at once, that machine's own requests within the interval; which
  machine signed first does not matter. With per-machine PINs the token's own
  login is a second barrier.
- **no lock-out loop**: a wrong PIN or a locked token is remembered for that token (module,
  label, serial, PIN source); later requests for any key on it fail at once without a login,
  until the ``.pkcs11`` file that failed or the PIN file changes (or the server restarts): one
  failed login per fix, not one per request. A token whose PIN retry counter a client could
  run down by repeating a request would be a denial of service on the HSM.

Errors are :class:`HsmKeyError`: a generic public text for the response, and a one-line log
detail naming the machine, the key file and the URI -- never a PIN (the URI cannot hold one).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import ImgtoolError
from ..keys import ecc, pkcs11
from . import validate

SUFFIX = ".pkcs11"
MAX_FILE = 4096  # a URI file larger than this is not a URI file
PUBLIC = "Signing error: cannot use the key"
_QUERY_ALLOWED = {"module-path"}


class HsmKeyError(ImgtoolError):
    """An HSM key that cannot be used: ``public`` for the client, ``str()`` for the log."""

    def __init__(self, detail: str, public: str = PUBLIC, status: int = 500) -> None:
        super().__init__(detail)
        self.public = public
        self.status = status


def uri_file(priv_pem: Path) -> Path:
    """``<key>-ecc-prvk.pem`` -> ``<key>-ecc-prvk.pkcs11``."""
    return priv_pem.with_suffix(SUFFIX)


def pub_file(priv_pem: Path) -> Path:
    return priv_pem.with_name(priv_pem.name.replace("-prvk.pem", "-pubk.pem"))


def _sig(path: Path) -> tuple[int, ...]:
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0,)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_uri_text(path: Path) -> str:
    """The one URI line of a key store file (strict: UTF-8 printable ASCII, one line, at most
    MAX_FILE bytes). Raises HsmKeyError (the detail never quotes the file's content beyond
    what parse_uri shows, and parse_uri redacts pin-value)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise HsmKeyError(f"{path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise HsmKeyError(f"{path}: not a regular file")
        data = fh.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise HsmKeyError(f"{path}: larger than {MAX_FILE} bytes (not a PKCS#11 URI file)")
    text = data.decode("ascii", errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    if not text or "\n" in text or not validate.printable(text):
        raise HsmKeyError(f"{path}: must hold one line of printable ASCII: a pkcs11: URI")
    if not text.startswith("pkcs11:"):
        raise HsmKeyError(f"{path}: not a PKCS#11 URI (must start with pkcs11:)")
    return text


def _check_attrs(path: Path, uri: pkcs11.Pkcs11Uri) -> None:
    """What a key store file may say beyond parse_uri's syntax (names only in the detail)."""
    for name in uri.query:
        if name in ("pin-source", "pin-value"):
            raise HsmKeyError(
                f"{path}: {name} is refused in the key store (the server takes the PIN from "
                f"CPTRA_IMGTOOL_PKCS11_PIN_DIR/<machine>.pin or {pkcs11.PIN_ENV})"
            )
        if name not in _QUERY_ALLOWED:
            raise HsmKeyError(f"{path}: query attribute {name!r} is refused in the key store")
    for name in uri.path:
        if name.startswith("x-"):
            raise HsmKeyError(f"{path}: attribute {name!r} is refused in the key store")
    if uri.path.get("type", b"private") != b"private":
        raise HsmKeyError(f"{path}: type must be private (the private key signs)")


def parse_file(path: Path) -> pkcs11.Pkcs11Uri:
    """The URI of a key store file, parsed strictly (see the module docstring)."""
    text = read_uri_text(path)
    if "pin-value" in text.lower():  # before parse_uri: its message redacts, ours names only
        raise HsmKeyError(f"{path}: pin-value is refused in the key store")
    try:
        uri = pkcs11.parse_uri(text)
    except pkcs11.Pkcs11Error as exc:
        raise HsmKeyError(f"{path}: {exc}") from None
    _check_attrs(path, uri)
    return uri


def _same_token(a: pkcs11.Pkcs11Uri, b: pkcs11.Pkcs11Uri) -> bool:
    sa, sb = a.path.get("serial"), b.path.get("serial")
    if sa is not None and sb is not None:
        return sa == sb
    la, lb = a.path.get("token"), b.path.get("token")
    return la is not None and la == lb


@dataclass(frozen=True)
class HsmKey:
    machine: str
    file: Path  # the .pkcs11 file
    shown: str  # the URI as the file gives it (for logs; holds no PIN)
    uri: str  # with the server's module-path (and pin-source) added: what the signer gets
    pub: ec.EllipticCurvePublicKey
    ident: tuple[int, ...]  # stat of the URI file, the public key file and the PIN file
    token: tuple[object, ...] = ()  # (module, label, serial, PIN file): one login state
    pin_ident: tuple[int, ...] = ()  # stat of the PIN file (() for the environment's PIN)


class HsmKeys:
    """Loads, checks and caches the HSM keys of the key store, and signs with them."""

    def __init__(
        self,
        root: Path,
        modules: tuple[Path, ...] = (),
        pin_dir: Path | None = None,
        scan_interval: float = 1.0,
    ) -> None:
        self.root = root
        self.scan_interval = scan_interval  # 0: the key store is scanned on every request
        self._index: list[tuple[str, str, pkcs11.Pkcs11Uri]] | None = None
        self._index_at = 0.0
        self.modules = modules
        self.pin_dir = pin_dir
        self._lock = threading.Lock()
        self._keys: dict[Path, HsmKey] = {}
        self._parsed: dict[Path, tuple[tuple[int, ...], pkcs11.Pkcs11Uri | None]] = {}
        # a wrong PIN or a locked token, per token: (PIN file stat, failing file, its stat, text)
        self._refused: dict[tuple[object, ...], tuple[tuple[int, ...], Path, tuple[int, ...], str]]
        self._refused = {}
        self.logins_refused = 0  # requests answered from _refused (tests)

    # ------------------------------------------------------------------ lookup
    def has_key(self, priv_pem: Path) -> bool:
        """Whether the key store names this key by a URI file (a stat; no parsing)."""
        return uri_file(priv_pem).exists()

    def _pin_file(self, machine: str) -> Path | None:
        return None if self.pin_dir is None else self.pin_dir / f"{machine}.pin"

    def _module(self, path: Path, uri: pkcs11.Pkcs11Uri) -> Path:
        if not self.modules:
            raise HsmKeyError(
                f"{path}: no PKCS#11 module is allowed on this server (set "
                "CPTRA_IMGTOOL_PKCS11_MODULES)"
            )
        given = uri.module_path
        if given is None:
            return self.modules[0]
        real = os.path.realpath(given)
        for mod in self.modules:
            if os.path.realpath(mod) == real:
                return mod
        raise HsmKeyError(
            f"{path}: module-path {validate.log_safe(given, 200)} is not one of the server's "
            "CPTRA_IMGTOOL_PKCS11_MODULES"
        )

    def _check_pin_file(self, path: Path, pin_file: Path) -> None:
        try:
            st = pin_file.stat()
        except OSError as exc:
            raise HsmKeyError(f"{path}: PIN file {pin_file}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise HsmKeyError(f"{path}: PIN file {pin_file}: not a regular file")
        if st.st_mode & 0o077:
            raise HsmKeyError(
                f"{path}: PIN file {pin_file}: readable by others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}; make it 0600)"
            )

    def _parsed_cached(self, path: Path) -> pkcs11.Pkcs11Uri | None:
        """Another machine's URI file for the token scan (None when unusable anyway)."""
        ident = _sig(path)
        hit = self._parsed.get(path)
        if hit is not None and hit[0] == ident:
            return hit[1]
        try:
            uri: pkcs11.Pkcs11Uri | None = parse_file(path)
        except HsmKeyError:
            uri = None  # refused when that machine uses it; not a claim on a token here
        self._parsed[path] = (ident, uri)
        return uri

    def _scan(self) -> list[tuple[str, str, pkcs11.Pkcs11Uri]]:
        """Every (machine, file name, URI) of the key store's URI files (parsed files cached
        by stat). About 16 ms for 1000 machines on 2 loaded CPUs: hence scan_interval."""
        try:
            machines = sorted(os.listdir(self.root))
        except OSError as exc:
            raise HsmKeyError(f"{self.root}: {exc.strerror}") from None
        out = []
        for m in machines:
            d = self.root / m / "caliptra"
            try:
                names = sorted(n for n in os.listdir(d) if n.endswith(SUFFIX))
            except OSError:
                continue
            for n in names:
                uri = self._parsed_cached(d / n)
                if uri is not None:
                    out.append((m, n, uri))
        return out

    def _check_exclusive(self, machine: str, path: Path, uri: pkcs11.Pkcs11Uri) -> None:
        """No other machine's key store file names this token. The index of the others is at
        most ``scan_interval`` seconds old; the asking machine's own file is always read fresh,
        so a file naming another machine's token is refused at once, and that other machine
        within ``scan_interval``."""
        now = time.monotonic()
        if self._index is None or now - self._index_at >= self.scan_interval:
            self._index, self._index_at = self._scan(), now
        for other, n, theirs in self._index:
            if other != machine and _same_token(uri, theirs):
                raise HsmKeyError(
                    f"{path}: its token is also named by machine {other!r} ({n}): a token "
                    "belongs to one machine"
                )

    def load(self, machine: str, priv_pem: Path) -> HsmKey:
        """The checked HSM key for ``<key>-ecc-prvk.pem``'s URI file. Blocking. Raises
        HsmKeyError."""
        path = uri_file(priv_pem)
        pub_path = pub_file(priv_pem)
        pin_file = self._pin_file(machine)
        ident = _sig(path) + _sig(pub_path) + (_sig(pin_file) if pin_file else ())
        with self._lock:
            if priv_pem.exists():
                raise HsmKeyError(f"{path}: {priv_pem.name} exists too (one private key, please)")
            uri = parse_file(path)
            self._check_exclusive(machine, path, uri)
            cached = self._keys.get(path)
            if cached is not None and cached.ident == ident and cached.machine == machine:
                return cached
            module = self._module(path, uri)
            if not pub_path.is_file():
                raise HsmKeyError(
                    f"{path}: no public key file {pub_path.name} (an HSM key's public key "
                    "stays a file: every signature is verified with it)"
                )
            try:
                pub = ecc.load_public(pub_path)
            except ImgtoolError as exc:
                raise HsmKeyError(f"{path}: {exc}") from None
            if pin_file is not None:
                self._check_pin_file(path, pin_file)
            elif os.environ.get(pkcs11.PIN_ENV) is None:
                raise HsmKeyError(
                    f"{path}: no PIN on this server (set CPTRA_IMGTOOL_PKCS11_PIN_DIR or "
                    f"{pkcs11.PIN_ENV})"
                )
            full = self._with_server_query(uri, module, pin_file)
            token = (str(module), uri.path.get("token"), uri.path.get("serial"), str(pin_file))
            pin_ident = _sig(pin_file) if pin_file else ()
            key = HsmKey(machine, path, uri.text, full, pub, ident, token, pin_ident)
            self._keys[path] = key
            return key

    @staticmethod
    def _with_server_query(uri: pkcs11.Pkcs11Uri, module: Path, pin_file: Path | None) -> str:
        base = uri.text.partition("?")[0]
        q = [f"module-path={quote(str(module), safe='/')}"]
        if pin_file is not None:
            q.append(f"pin-source=file:{quote(str(pin_file), safe='/')}")
        return f"{base}?{'&'.join(q)}"

    # ------------------------------------------------------------------ signing
    def sign_digest_der(self, key: HsmKey, digest: bytes) -> bytes:
        """CKM_ECDSA on the token, verified against the key's public key file; DER. Blocking
        (the token is used by one thread and one process at a time: keys/pkcs11.py). Raises
        HsmKeyError."""
        from ..signing import ecc_key_signer

        with self._lock:
            refused = self._refused.get(key.token)
            if (
                refused is not None
                and refused[0] == key.pin_ident
                and _sig(refused[1]) == refused[2]
            ):
                self.logins_refused += 1
                raise HsmKeyError(
                    f"{key.file}: {refused[3]} (earlier, with {refused[1].name}; the token is "
                    f"not tried again until that file or the PIN file changes, or the server "
                    "restarts)"
                )
        try:
            hw = ecc_key_signer(key.uri, key.pub).sign_digest(digest)
        except pkcs11.Pkcs11Error as exc:
            text = str(exc).replace(key.uri, key.shown)
            if isinstance(exc, pkcs11.Pkcs11LoginError):
                with self._lock:
                    self._refused[key.token] = (key.pin_ident, key.file, _sig(key.file), text)
            raise HsmKeyError(f"{key.file}: {text}") from None
        except ImgtoolError as exc:  # e.g. the signature does not verify with the public key
            raise HsmKeyError(f"{key.file}: {str(exc).replace(key.uri, key.shown)}") from None
        except Exception as exc:  # noqa: BLE001 - a python-pkcs11 error keys/pkcs11 did not word
            raise HsmKeyError(
                f"{key.file}: {key.shown}: token error {type(exc).__name__}"
            ) from None
        der = ecc.hw_to_der(hw)
        if not ecc.verify_digest(key.pub, digest, der):  # signer verified; the DER form too
            raise HsmKeyError(f"{key.file}: signature does not verify (internal error)")
        return der
