"""/sign/caliptra algo=ecc with keys on a PKCS#11 token (SoftHSM2): the key store's
``<key>-ecc-prvk.pkcs11`` URI files (imgtool/server/hsmkeys.py), over HTTP on loopback.

Signatures are checked with `cryptography` against the public key the token exported at keygen;
tenant isolation (another tenant's token, another machine's token named in a key store file);
a wrong PIN (not retried), a missing object, token or public key, a module that is not allowed,
PIN settings in a key store file; and no PIN in the server log, the audit log or any response.
The key store file checks run without SoftHSM2 too."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from srvfixtures import MACHINE, Server, _add_token, start_server

from imgtool.cli.main import main
from imgtool.keys import pkcs11
from imgtool.server import hsmkeys
from imgtool.server.hsmkeys import HsmKeyError, HsmKeys

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
import softhsm  # noqa: E402

DIGEST = bytes(range(48))
OTHER = "bmc-b"  # the "other" tenant's machine (srvfixtures)
LAB = ("bmc-c", "bmc-d")  # machines of a third token, added after the server started


def _verify(pub_pem: bytes, der: bytes, digest: bytes = DIGEST) -> bool:
    """An ECDSA P-384 check with `cryptography` only (not the tool's own ecc module)."""
    key = load_pem_public_key(pub_pem)
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"
    try:
        key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA384())))
    except Exception:  # noqa: BLE001 - InvalidSignature, or a malformed DER
        return False
    return True


# ---------------------------------------------------------------- key store files (no token)
def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text,says",
    [
        ("pkcs11:token=t;object=k?pin-value=123456", "pin-value is refused"),
        ("pkcs11:token=t;object=k?pin-source=file:/etc/shadow", "pin-source is refused"),
        ("pkcs11:token=t;object=k?module-name=softhsm2", "'module-name' is refused"),
        ("pkcs11:token=t;object=k;x-pin=123456", "'x-pin' is refused"),
        ("pkcs11:token=t;object=k;type=public", "type must be private"),
        ("pkcs11:token=t;object=k\npkcs11:token=u;object=k", "one line"),
        ("pkcs11:token=t;object=k\x00", "one line of printable ASCII"),
        ("/keys/own-fw-ecc-prvk.pem", "not a PKCS#11 URI"),
        ("pkcs11:token=t", "names no key"),
        ("pkcs11:object=k", "names no token"),
        ("", "one line"),
    ],
)
def test_key_store_file_is_parsed_strictly(tmp_path: Path, text: str, says: str) -> None:
    f = _write(tmp_path / "own-fw-ecc-prvk.pkcs11", text)
    with pytest.raises(HsmKeyError) as exc:
        hsmkeys.parse_file(f)
    assert says in str(exc.value), str(exc.value)
    assert "123456" not in str(exc.value) and "shadow" not in str(exc.value)
    assert exc.value.public == "Signing error: cannot use the key" and exc.value.status == 500


def test_key_store_file_accepts_a_uri_with_trailing_newline(tmp_path: Path) -> None:
    f = _write(tmp_path / "k.pkcs11", "pkcs11:token=bmc-a;object=own-fw-ecc\n")
    assert hsmkeys.parse_file(f).object == "own-fw-ecc"
    _write(tmp_path / "big.pkcs11", "pkcs11:token=t;object=" + "k" * 5000)
    with pytest.raises(HsmKeyError, match="larger than 4096"):
        hsmkeys.parse_file(tmp_path / "big.pkcs11")


def _store(tmp_path: Path, machine: str, name: str, uri: str, pub: bool = True) -> Path:
    d = tmp_path / "store" / machine / "caliptra"
    _write(d / f"{name}-ecc-prvk.pkcs11", uri + "\n")
    if pub:
        from imgtool.keys import ecc

        prefix = tmp_path / "gen" / f"{machine}-{name}"
        prefix.parent.mkdir(exist_ok=True)
        if not Path(f"{prefix}-pubk.pem").exists():
            ecc.generate_keypair(prefix)
        shutil.copy(f"{prefix}-pubk.pem", d / f"{name}-ecc-pubk.pem")
    return d / f"{name}-ecc-prvk.pem"


def test_module_allow_list_and_token_ownership(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checked before any module is loaded (no SoftHSM2 needed)."""
    monkeypatch.setenv(pkcs11.PIN_ENV, "not-used-here")
    allowed = _write(tmp_path / "lib" / "allowed.so", "not really a module")
    evil = _write(tmp_path / "lib" / "evil.so", "not really a module")
    root = tmp_path / "store"
    priv = _store(tmp_path, "m1", "own-fw", f"pkcs11:token=t1;object=k?module-path={evil}")
    keys = HsmKeys(root, (allowed,), scan_interval=0)
    with pytest.raises(HsmKeyError, match="is not one of the server's"):
        keys.load("m1", priv)
    with pytest.raises(HsmKeyError, match="no PKCS#11 module is allowed"):
        HsmKeys(root, ()).load("m1", priv)
    # a symlink to the allowed module is the allowed module (compared by real path)
    (tmp_path / "lib" / "link.so").symlink_to(allowed)
    _store(tmp_path, "m1", "own-fw", f"pkcs11:token=t1;object=k?module-path={tmp_path}/lib/link.so")
    key = keys.load("m1", priv)
    assert f"module-path={allowed}" in key.uri and "pin-source" not in key.uri
    # without module-path: the server's first allowed module
    _store(tmp_path, "m1", "own-man", "pkcs11:token=t1;object=k2")
    assert f"module-path={allowed}" in keys.load("m1", priv.with_name("own-man-ecc-prvk.pem")).uri
    # the same machine may keep several keys on its token; another machine may not name it
    m2 = _store(tmp_path, "m2", "vnd-fw", "pkcs11:token=t1;object=k3")
    with pytest.raises(HsmKeyError, match="also named by machine 'm1'"):
        keys.load("m2", m2)
    with pytest.raises(HsmKeyError, match="also named by machine 'm2'"):  # whoever asks first
        keys.load("m1", priv)
    # same label, different serials: two tokens
    _store(tmp_path, "m2", "vnd-fw", "pkcs11:token=t1;serial=B;object=k3")
    _store(tmp_path, "m1", "own-fw", "pkcs11:token=t1;serial=A;object=k")
    (root / "m1" / "caliptra" / "own-man-ecc-prvk.pkcs11").unlink()
    assert keys.load("m1", priv).machine == "m1"
    assert keys.load("m2", m2).machine == "m2"
    # a PEM and a URI file for one key; no public key file
    _write(priv, "-----BEGIN PRIVATE KEY-----\n")
    with pytest.raises(HsmKeyError, match="exists too"):
        keys.load("m1", priv)
    priv.unlink()
    (root / "m1" / "caliptra" / "own-fw-ecc-pubk.pem").unlink()
    with pytest.raises(HsmKeyError, match="no public key file own-fw-ecc-pubk.pem"):
        keys.load("m1", priv)


def test_token_scan_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another machine's files are indexed at most every scan_interval seconds; the asking
    machine's own file is read on every request."""
    monkeypatch.setenv(pkcs11.PIN_ENV, "not-used-here")
    mod = _write(tmp_path / "lib" / "m.so", "x")
    root = tmp_path / "store"
    a = _store(tmp_path, "m1", "own-fw", "pkcs11:token=t1;object=k")
    keys = HsmKeys(root, (mod,), scan_interval=3600)
    keys.load("m1", a)  # indexes the key store
    b = _store(tmp_path, "m2", "vnd-fw", "pkcs11:token=t1;object=k3")
    with pytest.raises(HsmKeyError, match="also named by machine 'm1'"):
        keys.load("m2", b)  # the newcomer: at once
    assert keys.load("m1", a).machine == "m1"  # m1's index is not an hour old yet
    keys._index_at -= 3600  # an hour later
    with pytest.raises(HsmKeyError, match="also named by machine 'm2'"):
        keys.load("m1", a)


def test_pin_dir_file_must_be_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pkcs11.PIN_ENV, raising=False)
    mod = _write(tmp_path / "lib" / "m.so", "x")
    priv = _store(tmp_path, "m1", "own-fw", "pkcs11:token=t1;object=k")
    root = tmp_path / "store"
    with pytest.raises(HsmKeyError, match="no PIN on this server"):
        HsmKeys(root, (mod,)).load("m1", priv)
    pins = tmp_path / "pins"
    pins.mkdir()
    keys = HsmKeys(root, (mod,), pins)
    with pytest.raises(HsmKeyError, match="PIN file .*m1.pin: No such file"):
        keys.load("m1", priv)
    pin = _write(pins / "m1.pin", "secret-pin-77\n")
    pin.chmod(0o644)
    with pytest.raises(HsmKeyError, match="readable by others") as exc:
        keys.load("m1", priv)
    assert "secret-pin-77" not in str(exc.value)
    pin.chmod(0o600)
    key = keys.load("m1", priv)
    assert f"pin-source=file:{pins}/m1.pin" in key.uri and key.shown == "pkcs11:token=t1;object=k"


class _Stub:
    """Stands in for the PKCS#11 signer: counts logins, answers with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    def __call__(self, uri: str, pub: object) -> _Stub:
        return self

    def sign_digest(self, digest: bytes) -> bytes:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize(
    "error,remembered",
    [
        ("token is locked (CKR_PIN_LOCKED; not retried)", True),
        ("wrong PIN (CKR_PIN_INCORRECT; not retried)", True),
        ("the PIN is not accepted by the token", True),
        ("no such token", False),  # may appear later (a token plugged in): asked again
        ("no EC private key object on the token", False),
    ],
)
def test_a_locked_token_is_not_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str, remembered: bool
) -> None:
    """SoftHSM2 never locks a token, so the lock-out path runs against a stand-in signer."""
    import imgtool.signing

    monkeypatch.setenv(pkcs11.PIN_ENV, "pin-not-logged-9")
    mod = _write(tmp_path / "lib" / "m.so", "x")
    priv = _store(tmp_path, "m1", "own-fw", "pkcs11:token=t1;object=k")
    keys = HsmKeys(tmp_path / "store", (mod,))
    key = keys.load("m1", priv)
    kind = pkcs11.Pkcs11LoginError if remembered else pkcs11.Pkcs11Error  # as keys/pkcs11 raises
    stub = _Stub(kind(f"{key.uri}: {error}"))
    monkeypatch.setattr(imgtool.signing, "ecc_key_signer", stub)
    for _ in range(5):
        with pytest.raises(HsmKeyError) as exc:
            keys.sign_digest_der(keys.load("m1", priv), DIGEST)
        assert error in str(exc.value) and "pkcs11:token=t1;object=k" in str(exc.value)
        assert "module-path" not in str(exc.value)  # the URI as the file gives it
    assert stub.calls == (1 if remembered else 5)
    assert keys.logins_refused == (4 if remembered else 0)
    # another key on that token: no login either (one failed login per fix, not per key)
    other = _store(tmp_path, "m1", "own-man", "pkcs11:token=t1;object=k2")
    with pytest.raises(HsmKeyError):
        keys.sign_digest_der(keys.load("m1", other), DIGEST)
    assert stub.calls == (1 if remembered else 6)
    if not remembered:
        return
    # a changed key store file is tried again (once)
    uri_file = hsmkeys.uri_file(priv)
    uri_file.write_text(uri_file.read_text())  # rewritten (the operator fixed something)
    os.utime(uri_file, ns=(1, 1))
    for _ in range(2):
        with pytest.raises(HsmKeyError):
            keys.sign_digest_der(keys.load("m1", priv), DIGEST)
    assert stub.calls == 2
    # any other token failure is one line too
    monkeypatch.setattr(imgtool.signing, "ecc_key_signer", _Stub(RuntimeError("boom")))
    os.utime(hsmkeys.uri_file(priv), ns=(2, 2))
    with pytest.raises(HsmKeyError, match="token error RuntimeError"):
        keys.sign_digest_der(keys.load("m1", priv), DIGEST)


def test_settings_pkcs11_modules(tmp_path: Path) -> None:
    from imgtool.errors import ServerError
    from imgtool.server.settings import Settings

    mod = _write(tmp_path / "a.so", "x")
    base = {"DIGSIGSERVER_KEYFILE_URI": str(tmp_path)}
    s = Settings.from_env({**base, "CPTRA_IMGTOOL_PKCS11_MODULES": f"{mod}:{mod}2"})
    assert s.pkcs11_modules == (mod, Path(f"{mod}2")) and s.pkcs11_pin_dir is None
    with pytest.raises(ServerError, match="a.so2: no such file"):
        s.check()  # refused at start-up, not at the first request
    s = Settings.from_env({**base, "CPTRA_IMGTOOL_PKCS11_MODULE": str(mod)})
    assert s.pkcs11_modules == (mod,)
    s.check()
    assert Settings.from_env(base).pkcs11_modules == ()  # none: no HSM key is usable
    assert s.pkcs11_scan_interval == 1.0
    assert (
        Settings.from_env({**base, "CPTRA_IMGTOOL_PKCS11_SCAN_INTERVAL": "0"}).pkcs11_scan_interval
        == 0
    )
    with pytest.raises(ServerError, match="must be 0..3600"):
        Settings.from_env({**base, "CPTRA_IMGTOOL_PKCS11_SCAN_INTERVAL": "-1"})
    with pytest.raises(ServerError, match="not an absolute path"):
        Settings.from_env({**base, "CPTRA_IMGTOOL_PKCS11_MODULES": "libsofthsm2.so"})
    s = Settings.from_env({**base, "CPTRA_IMGTOOL_PKCS11_PIN_DIR": str(tmp_path / "nope")})
    with pytest.raises(ServerError, match="PIN_DIR: .*not a directory"):
        s.check()


# ---------------------------------------------------------------- SoftHSM2
@dataclass
class Hsm:
    srv: Server
    tokens: dict[str, softhsm.Token]  # machine -> its token
    pubs: dict[str, bytes]  # "<machine>/<key>" -> the public key PEM keygen exported
    pin_dir: Path
    lab_token: str
    bodies: list[str] = field(default_factory=list)  # every response body (PIN check)
    obj: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return (self.srv.root.parent / "server.log").read_text(errors="replace")

    def pins(self) -> list[str]:
        return [t.pin for t in self.tokens.values()] + ["wrong-pin-for-c"]

    def sign(
        self, machine: str, key: str, token: str | None = None, digest: bytes = DIGEST
    ) -> httpx.Response:
        tok = token or (self.lab_token if machine in LAB else None)
        with self.srv.client(tok) as c:
            r = c.post(
                "/sign/caliptra",
                data={"machine": machine, "key": key, "algo": "ecc", "digest": digest.hex()},
            )
        self.bodies.append(r.text if r.status_code != 200 else r.content.hex())
        return r


def _init_token(tok: softhsm.Token, label: str) -> softhsm.Token:
    """A second token in the same SoftHSM2 configuration (the server sees one)."""
    pin = "user-pin-" + os.urandom(4).hex()
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin",
         softhsm.SO_PIN, "--pin", pin],
        env=tok.env(), check=True, capture_output=True,
    )  # fmt: skip
    return softhsm.Token(label, pin, tok.module, tok.conf, tok.dir)


def _keygen(tok: softhsm.Token, obj: str, pub: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setenv(pkcs11.PIN_ENV, tok.pin)
    assert main(["keygen", "--algo", "ecc", "--out", tok.uri(obj), "--pubkey-out", str(pub)]) == 0
    return pub.read_bytes()


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hsm]:
    """Tokens bmc-a-tok, bmc-b-tok, bmc-c-tok (one per machine), each with its keys generated
    on the token; the server runs with a module allow-list and a PIN directory (bmc-c's PIN
    file holds a wrong PIN), and no PIN in its environment."""
    tmp = tmp_path_factory.mktemp("srv-pkcs11")
    mp = pytest.MonkeyPatch()
    try:
        a = softhsm.make_token(tmp, mp, label="bmc-a-tok")
        toks = {MACHINE: a, OTHER: _init_token(a, "bmc-b-tok")}
        toks.update({m: _init_token(a, f"{m}-tok") for m in LAB})  # bmc-d-tok has no keys
        gen = tmp / "gen"
        gen.mkdir()
        pubs = {}
        for m, name in ((MACHINE, "own-fw"), (MACHINE, "own-man"), (OTHER, "vnd-fw"),
                        (LAB[0], "own-fw")):  # fmt: skip
            pubs[f"{m}/{name}"] = _keygen(toks[m], f"{name}-ecc", gen / f"{m}-{name}.pem", mp)
        pkcs11.reset_modules()  # the test process lets go of the token before the server starts
        pin_dir = tmp / "pins"
        pin_dir.mkdir(mode=0o700)
        for m, t in toks.items():
            p = pin_dir / f"{m}.pin"
            p.write_text("wrong-pin-for-c\n" if m == LAB[0] else t.pin + "\n")
            p.chmod(0o600)
        mp.delenv(pkcs11.PIN_ENV, raising=False)
        mp.delenv(pkcs11.MODULE_ENV, raising=False)
        srv = start_server(
            tmp,
            with_cst=False,
            env_extra={
                "CPTRA_IMGTOOL_PKCS11_MODULES": a.module,
                "CPTRA_IMGTOOL_PKCS11_PIN_DIR": str(pin_dir),
                "CPTRA_IMGTOOL_PKCS11_SCAN_INTERVAL": "0",  # see test_token_scan_interval
            },
        )
    finally:
        mp.undo()
    lab = _add_token(srv.root.parent / "tokens.json", "lab", ",".join(LAB), "caliptra")
    for key in ("own-fw", "own-man"):  # bmc-a's file keys replaced by token keys
        (srv.keys / f"{key}-ecc-prvk.pem").unlink()
        (srv.keys / f"{key}-ecc-pubk.pem").write_bytes(pubs[f"{MACHINE}/{key}"])
    _write(srv.keys / "own-fw-ecc-prvk.pkcs11", "pkcs11:token=bmc-a-tok;object=own-fw-ecc\n")
    _write(  # module-path given: the allowed module
        srv.keys / "own-man-ecc-prvk.pkcs11",
        f"pkcs11:token=bmc-a-tok;object=own-man-ecc?module-path={a.module}\n",
    )
    for m, key in ((OTHER, "vnd-fw"), (LAB[0], "own-fw")):
        d = srv.root / m / "caliptra"
        _write(d / f"{key}-ecc-prvk.pkcs11", f"pkcs11:token={toks[m].label};object={key}-ecc\n")
        (d / f"{key}-ecc-pubk.pem").write_bytes(pubs[f"{m}/{key}"])
    yield Hsm(srv, toks, pubs, pin_dir, lab)
    srv.proc.terminate()
    srv.proc.wait(timeout=10)


def _no_pin_anywhere(h: Hsm) -> None:
    texts = {"server log": h.log(), "audit log": h.srv.audit.read_text()}
    texts["responses"] = "\n".join(h.bodies)
    for what, text in texts.items():
        for pin in h.pins():
            assert pin not in text, f"a PIN in the {what}"


def test_server_signs_caliptra_ecc_with_the_token_key(hsm: Hsm) -> None:
    sigs = set()
    for key in ("own-fw", "own-man"):
        for _ in range(2):
            r = hsm.sign(MACHINE, key)
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "application/octet-stream"
            assert _verify(hsm.pubs[f"{MACHINE}/{key}"], r.content)
            assert not _verify(hsm.pubs[f"{MACHINE}/{key}"], r.content, bytes(48))
            sigs.add(r.content)
        other = "own-man" if key == "own-fw" else "own-fw"
        assert not _verify(hsm.pubs[f"{MACHINE}/{other}"], r.content)  # the named key signed
    assert len(sigs) == 4  # CKM_ECDSA is randomized: no repeats
    # the file keys of bmc-a still sign as before, beside the token keys
    r = hsm.sign(MACHINE, "vnd-fw")
    assert r.status_code == 200
    assert _verify((hsm.srv.keys / "vnd-fw-ecc-pubk.pem").read_bytes(), r.content)
    with hsm.srv.client() as c:  # /pubkey serves the public key file of a token key
        r = c.get("/pubkey", params={"machine": MACHINE, "key": "own-fw", "algo": "ecc"})
    assert r.status_code == 200 and r.content == hsm.pubs[f"{MACHINE}/own-fw"]
    recs = [json.loads(x) for x in hsm.srv.audit.read_text().splitlines()]
    signs = [x for x in recs if x.get("event") == "sign" and x.get("key") == "own-fw-ecc"]
    assert signs and signs[-1]["machine"] == MACHINE and "digest" in signs[-1]["inputs_sha256"]
    _no_pin_anywhere(hsm)


def test_a_tenant_uses_only_its_own_tokens(hsm: Hsm) -> None:
    other = hsm.srv.other_token  # allowed for bmc-b only
    assert hsm.sign(MACHINE, "own-fw", token=other).status_code == 403
    assert hsm.sign(LAB[0], "own-fw", token=other).status_code == 403
    r = hsm.sign(OTHER, "vnd-fw", token=other)  # its own token key: fine
    assert r.status_code == 200 and _verify(hsm.pubs[f"{OTHER}/vnd-fw"], r.content)
    assert not _verify(hsm.pubs[f"{MACHINE}/own-fw"], r.content)
    assert hsm.sign(OTHER, "own-fw", token=other).status_code == 404  # no such key for bmc-b
    # a key store file of bmc-b naming bmc-a's token: refused for both machines while it is
    # there (a token belongs to one machine), whichever asks first
    planted = hsm.srv.root / OTHER / "caliptra" / "vnd-man-ecc-prvk.pkcs11"
    _write(planted, "pkcs11:token=bmc-a-tok;object=own-fw-ecc\n")
    shutil.copy(hsm.srv.keys / "own-fw-ecc-pubk.pem", planted.with_name("vnd-man-ecc-pubk.pem"))
    try:
        r = hsm.sign(OTHER, "vnd-man", token=other)
        assert r.status_code == 500 and r.text == "Signing error: cannot use the key\n"
        assert "also named by machine 'bmc-a'" in hsm.log()
        assert hsm.sign(MACHINE, "own-fw").status_code == 500
        assert "also named by machine 'bmc-b'" in hsm.log()
    finally:
        planted.unlink()
    assert hsm.sign(MACHINE, "own-fw").status_code == 200
    _no_pin_anywhere(hsm)


def test_wrong_pin_is_one_error_and_not_retried(hsm: Hsm) -> None:
    r = hsm.sign(LAB[0], "own-fw")
    assert r.status_code == 500 and r.text == "Signing error: cannot use the key\n"
    log = hsm.log()
    line = next(x for x in log.splitlines() if "CKR_PIN_INCORRECT" in x)
    assert "machine=bmc-c" in line and "pkcs11:token=bmc-c-tok;object=own-fw-ecc" in line
    assert "pin-source" not in line  # the URI as the key store gives it
    assert hsm.sign(LAB[0], "own-fw").status_code == 500
    again = hsm.log()[len(log) :]
    assert "the token is not tried again until that file or the PIN file changes" in again
    # fixing the PIN file lets the next request log in
    pin = hsm.pin_dir / "bmc-c.pin"
    pin.write_text(hsm.tokens[LAB[0]].pin + "\n")
    r = hsm.sign(LAB[0], "own-fw")
    assert r.status_code == 200 and _verify(hsm.pubs[f"{LAB[0]}/own-fw"], r.content)
    pin.write_text("wrong-pin-for-c\n")  # as the fixture left it
    _no_pin_anywhere(hsm)


@pytest.mark.parametrize(
    "uri,says",
    [
        ("pkcs11:token=bmc-d-tok;object=no-such-key", "no EC private key object on the token"),
        ("pkcs11:token=no-such-tok;object=own-fw-ecc", "no such token"),
        (
            "pkcs11:token=bmc-d-tok;object=own-fw-ecc?module-path={copy}",
            "is not one of the server's CPTRA_IMGTOOL_PKCS11_MODULES",
        ),
        ("pkcs11:token=bmc-d-tok;object=own-fw-ecc?pin-source=file:{pin}", "pin-source is refused"),
        ("pkcs11:token=bmc-d-tok;object=own-fw-ecc?pin-value=1234", "pin-value is refused"),
    ],
)
def test_unusable_hsm_key_is_a_generic_500_and_one_log_line(hsm: Hsm, uri: str, says: str) -> None:
    d = hsm.srv.root / LAB[1] / "caliptra"
    d.mkdir(parents=True, exist_ok=True)
    copy = d.parent / "libcopy.so"  # a copy of the real module: not the allowed file
    shutil.copy(hsm.tokens[MACHINE].module, copy)
    pin = hsm.pin_dir / "bmc-a.pin"
    _write(d / "own-man-ecc-prvk.pkcs11", uri.format(copy=copy, pin=pin) + "\n")
    shutil.copy(hsm.srv.keys / "own-man-ecc-pubk.pem", d / "own-man-ecc-pubk.pem")
    before = len(hsm.log())
    r = hsm.sign(LAB[1], "own-man")
    assert r.status_code == 500 and r.text == "Signing error: cannot use the key\n"
    lines = [x for x in hsm.log()[before:].splitlines() if "machine=bmc-d" in x and says in x]
    assert len(lines) == 1, hsm.log()[before:]
    assert "1234" not in hsm.log()
    _no_pin_anywhere(hsm)


def test_missing_public_key_file_is_refused_before_signing(hsm: Hsm) -> None:
    pub = hsm.srv.keys / "own-man-ecc-pubk.pem"
    saved = pub.read_bytes()
    pub.unlink()
    try:
        r = hsm.sign(MACHINE, "own-man")
        assert r.status_code == 500 and "no public key file own-man-ecc-pubk.pem" in hsm.log()
        # a public key file of another key: the token's signature does not verify, no release
        pub.write_bytes(hsm.pubs[f"{MACHINE}/own-fw"])
        r = hsm.sign(MACHINE, "own-man")
        assert r.status_code == 500 and r.text == "Signing error: cannot use the key\n"
        assert "does not verify with the configured public key" in hsm.log()
    finally:
        pub.write_bytes(saved)
    assert hsm.sign(MACHINE, "own-man").status_code == 200
    _no_pin_anywhere(hsm)


def test_parallel_requests_all_verify(hsm: Hsm) -> None:
    """8 clients at once on one token (the server takes turns on it): all signatures good."""
    import concurrent.futures

    digests = [bytes([i]) * 48 for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        rs = list(ex.map(lambda d: hsm.sign(MACHINE, "own-fw", digest=d), digests))
    assert [r.status_code for r in rs] == [200] * 16
    assert all(
        _verify(hsm.pubs[f"{MACHINE}/own-fw"], r.content, d)
        for r, d in zip(rs, digests, strict=True)
    )
