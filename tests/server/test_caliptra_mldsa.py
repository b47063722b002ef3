"""/sign/caliptra and /pubkey with algo=mldsa (ML-DSA-87 over the RAW message, Caliptra 2.x),
over HTTP on loopback: signatures verified with dilithium-py and OpenSSL independently,
determinism, authentication, tenant isolation, size caps before the body is read, field and
algorithm mismatches, a broken key store, the audit log, the sign-helper command and
imgtool.signing2 through the server (a whole 2.x manifest)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from srvfixtures import MACHINE, Server, _add_token, start_server

from imgtool.keys import ecc, mldsa

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
import indep2  # noqa: E402

MSG = bytes(range(256)) * 40  # 10240 bytes, about a 2.x IMC
MAX_MESSAGE = 64 * 1024  # what the README documents (imgtool.signing2.MAX_MESSAGE)


def _seed(name: str) -> bytes:
    return hashlib.sha256(b"srv-" + name.encode()).digest()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose bmc-a has ML-DSA keys for own-man, own-fw (no -pubk.bin: derived) and
    vnd-fw, none for vnd-man; bmc-b (the "other" tenant) its own own-man key."""
    s = start_server(tmp_path_factory.mktemp("srv-mldsa"), with_cst=False)
    for name in ("own-man", "own-fw", "vnd-fw"):
        mldsa.generate_keypair(s.keys / f"{name}-mldsa", seed=_seed(name))
    (s.keys / "own-fw-mldsa-pubk.bin").unlink()
    mldsa.generate_keypair(s.root / "bmc-b" / "caliptra" / "own-man-mldsa", seed=_seed("b"))
    yield s
    s.proc.terminate()
    s.proc.wait(timeout=10)


def _form(message: bytes = MSG, **extra: str) -> dict[str, str]:
    return {
        "machine": MACHINE,
        "key": "own-man",
        "algo": "mldsa",
        "message": message.hex(),
        **extra,
    }


def _pub(s: Server, name: str = "own-man") -> bytes:
    return (s.keys / f"{name}-mldsa-pubk.bin").read_bytes()


def _audit(s: Server) -> list[dict[str, object]]:
    return [json.loads(x) for x in s.audit.read_text().splitlines()]


# ----------------------------------------------------------------------------- signing
def test_mldsa_signature_is_deterministic_and_verifies_independently(srv: Server) -> None:
    from dilithium_py.ml_dsa import ML_DSA_87

    with srv.client() as c:
        a = c.post("/sign/caliptra", data=_form())
        b = c.post("/sign/caliptra", data=_form())
    assert a.status_code == 200 and len(a.content) == 4627
    assert a.content == b.content  # deterministic ML-DSA (rnd = 0)
    pub = _pub(srv)
    assert indep2.mldsa_verify_dilithium(pub, MSG, a.content)
    assert indep2.mldsa_verify_openssl(pub, MSG, a.content)
    # the raw message is signed, not a digest of it
    assert not indep2.mldsa_verify_openssl(pub, hashlib.sha384(MSG).digest(), a.content)
    priv = (srv.keys / "own-man-mldsa-prvk.bin").read_bytes()
    assert a.content == ML_DSA_87.sign(priv, MSG, deterministic=True)


def test_empty_and_largest_messages(srv: Server) -> None:
    with srv.client() as c:
        for msg in (b"", bytes(MAX_MESSAGE)):
            r = c.post("/sign/caliptra", data=_form(msg))
            assert r.status_code == 200, r.text
            assert indep2.mldsa_verify_openssl(_pub(srv), msg, r.content)


def test_pubkey_file_or_derived(srv: Server) -> None:
    with srv.client() as c:
        r = c.get("/pubkey", params={"machine": MACHINE, "key": "own-man", "algo": "mldsa"})
        assert r.status_code == 200 and r.content == _pub(srv)
        # own-fw has no -pubk.bin: derived from the expanded private key, and it verifies
        r = c.get("/pubkey", params={"machine": MACHINE, "key": "own-fw", "algo": "mldsa"})
        assert r.status_code == 200 and len(r.content) == 2592
        pub, _ = __import__("dilithium_py.ml_dsa", fromlist=["ML_DSA_87"]).ML_DSA_87.key_derive(
            _seed("own-fw")
        )
        assert r.content == pub
        s = c.post("/sign/caliptra", data=_form(key="own-fw"))
        assert s.status_code == 200 and indep2.mldsa_verify_openssl(pub, MSG, s.content)
        r = c.get("/pubkey", params={"machine": MACHINE, "key": "vnd-man", "algo": "mldsa"})
        assert r.status_code == 404


# ----------------------------------------------------------------------------- access
def test_authentication(srv: Server) -> None:
    assert httpx.post(f"{srv.url}/sign/caliptra", data=_form()).status_code == 401
    with srv.client("not-a-token") as c:
        r = c.post("/sign/caliptra", data=_form())
    assert r.status_code == 401 and "Traceback" not in r.text


def test_tenant_isolation(srv: Server) -> None:
    """The other tenant's token (bmc-b only) cannot reach bmc-a's ML-DSA keys, and cannot tell
    them from a machine that does not exist; with its own machine it signs with its own key."""
    bodies = []
    with srv.client(srv.other_token) as c:
        for machine in ("nosuch", MACHINE):
            r = c.post("/sign/caliptra", data=_form(machine=machine))
            assert r.status_code == 403
            bodies.append((r.content, sorted(k for k in r.headers if k != "date")))
            p = c.get("/pubkey", params={"machine": machine, "key": "own-man", "algo": "mldsa"})
            assert p.status_code == 403
        assert bodies[0] == bodies[1] and MACHINE.encode() not in bodies[0][0]
        for bad in ("../bmc-a", "bmc-b/../bmc-a", "bmc-b/", "bmc-b\n"):
            assert c.post("/sign/caliptra", data=_form(machine=bad)).status_code in (400, 403)
        r = c.post("/sign/caliptra", data=_form(machine="bmc-b"))
        assert r.status_code == 200
        own_b = (srv.root / "bmc-b" / "caliptra" / "own-man-mldsa-pubk.bin").read_bytes()
        assert indep2.mldsa_verify_openssl(own_b, MSG, r.content)
        assert not indep2.mldsa_verify_openssl(_pub(srv), MSG, r.content)


@pytest.mark.parametrize(
    "change,status,text",
    [
        ({"digest": "00" * 48}, 400, "raw message, not a digest"),  # both fields
        ({"algo": "ecc"}, 400, "send 'digest', not 'message'"),
        ({"algo": "lms"}, 400, "send 'digest', not 'message'"),
        ({"algo": "MLDSA"}, 400, "algo must be one of ecc, lms, mldsa"),
        ({"algo": "mldsa65"}, 400, "algo must be one of"),
        ({"key": "own-man/../vnd-fw"}, 400, "key must be one of"),
        ({"message": "abc"}, 400, "message must be hex"),
        ({"message": "zz" * 8}, 400, "message must be hex"),
        ({"message": "00 11"}, 400, "message must be hex"),
        ({"message": "00\n11"}, 400, "control"),
        ({"key": "vnd-man"}, 404, "no vnd-man-mldsa key"),
    ],
)
def test_bad_requests(srv: Server, change: dict[str, str], status: int, text: str) -> None:
    with srv.client() as c:
        r = c.post("/sign/caliptra", data={**_form(), **change})
    assert r.status_code == status and text in r.text, r.text
    assert "Traceback" not in r.text and str(srv.root) not in r.text


def test_mldsa_without_message_and_digest_to_mldsa(srv: Server) -> None:
    with srv.client() as c:
        r = c.post("/sign/caliptra", data={"machine": MACHINE, "key": "own-man", "algo": "mldsa"})
        assert r.status_code == 400 and "missing form field 'message'" in r.text
        r = c.post(
            "/sign/caliptra",
            data={"machine": MACHINE, "key": "own-man", "algo": "mldsa", "digest": "00" * 48},
        )
        assert r.status_code == 400 and "not a digest" in r.text


# ----------------------------------------------------------------------------- size caps
def test_message_over_the_cap_is_413(srv: Server) -> None:
    with srv.client() as c:
        r = c.post("/sign/caliptra", data=_form(bytes(MAX_MESSAGE + 1)))
    assert r.status_code == 413


def test_oversized_body_is_refused_before_it_is_read(srv: Server) -> None:
    """A Content-Length over the /sign/caliptra cap (far below the 2 MB server-wide limit) is
    answered 413 at once, with the connection closed, though the body never came."""
    host, port = srv.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /sign/caliptra HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {srv.token}\r\n".encode()
            + b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1500000\r\n\r\nmachine=bmc-a"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 413"), data[:100]
    assert b"connection: close" in data.lower()


def test_streamed_body_over_the_cap_is_413(srv: Server) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"machine=bmc-a&key=own-man&algo=mldsa&message="
        for _ in range(20):
            yield b"00" * 10_000  # 400 kB of hex in all, no Content-Length

    r = httpx.post(
        f"{srv.url}/sign/caliptra",
        content=chunks(),
        headers={
            "Authorization": f"Bearer {srv.token}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert r.status_code == 413


# ----------------------------------------------------------------------------- key store
def test_broken_key_store_is_500_without_a_signature(srv: Server) -> None:
    """A -pubk.bin that is not the private key's, or a private key of the wrong size, is the
    operator's problem: 500, no signature, no "about to sign" record, nothing about the key."""
    keys = srv.keys
    mldsa.generate_keypair(keys / "tmp-a", seed=_seed("tmp-a"))
    shutil.copy(keys / "tmp-a-pubk.bin", keys / "vnd-man-mldsa-pubk.bin")
    shutil.copy(keys / "vnd-fw-mldsa-prvk.bin", keys / "vnd-man-mldsa-prvk.bin")
    before = len(_audit(srv))
    try:
        with srv.client() as c:
            r = c.post("/sign/caliptra", data=_form(key="vnd-man"))
            assert r.status_code == 500 and r.text.strip() == "Signing error: cannot use the key"
            (keys / "vnd-man-mldsa-pubk.bin").unlink()
            (keys / "vnd-man-mldsa-prvk.bin").write_bytes(bytes(100))
            r = c.post("/sign/caliptra", data=_form(key="vnd-man"))
            assert r.status_code == 500
            # repaired: the stat-keyed cache notices
            shutil.copy(keys / "vnd-fw-mldsa-prvk.bin", keys / "vnd-man-mldsa-prvk.bin")
            shutil.copy(keys / "vnd-fw-mldsa-pubk.bin", keys / "vnd-man-mldsa-pubk.bin")
            r = c.post("/sign/caliptra", data=_form(key="vnd-man"))
            assert r.status_code == 200
            assert indep2.mldsa_verify_openssl(_pub(srv, "vnd-fw"), MSG, r.content)
    finally:
        for n in ("vnd-man-mldsa", "tmp-a"):
            (keys / f"{n}-prvk.bin").unlink(missing_ok=True)
            (keys / f"{n}-pubk.bin").unlink(missing_ok=True)
    recs = _audit(srv)[before:]
    assert [r["result"] for r in recs if r["event"] == "request"] == [500, 500, 200]
    assert [r["event"] for r in recs].count("sign") == 1  # only the repaired one


# ----------------------------------------------------------------------------- audit
def test_audit_records_the_message_hash_never_the_message(srv: Server) -> None:
    msg = b"audit me " * 1000
    with srv.client() as c:
        assert c.post("/sign/caliptra", data=_form(msg)).status_code == 200
    recs = _audit(srv)
    ok = [
        r
        for r in recs
        if r["event"] == "request" and r.get("key") == "own-man-mldsa" and r["result"] == 200
    ][-1]
    intent = recs[recs.index(ok) - 1]
    assert intent["event"] == "sign" and intent["inputs_sha256"] == ok["inputs_sha256"]
    assert ok["inputs_sha256"] == {"message": hashlib.sha256(msg).hexdigest()}
    assert ok["token_id"] == "ci-builder" and ok["machine"] == MACHINE
    assert ok["endpoint"] == "caliptra"
    text = srv.audit.read_text() + (srv.audit.parent / "server.log").read_text()
    assert msg.hex()[:64] not in text and "Traceback" not in text
    priv = (srv.keys / "own-man-mldsa-prvk.bin").read_bytes()
    assert priv[:32].hex() not in text and srv.token not in text


# ----------------------------------------------------------------------------- clients
def _helper(srv: Server, tok: Path, *extra: str) -> list[str]:
    head = [sys.executable, "-m", "imgtool", "sign-helper", "--server", srv.url]
    return [*head, "--machine", MACHINE, "--key", "own-man", "--algo", "mldsa",
            "--token-file", str(tok), *extra]  # fmt: skip


@pytest.mark.parametrize("by_file", [False, True])
def test_sign_helper_command_mldsa(srv: Server, tmp_path: Path, by_file: bool) -> None:
    tok = tmp_path / "token"
    tok.write_text(srv.token)
    cmd = _helper(srv, tok, "--pubkey", str(srv.keys / "own-man-mldsa-pubk.bin"))
    if by_file:
        f = tmp_path / "msg.bin"
        f.write_bytes(MSG)
        r = subprocess.run([*cmd, "--by-file", "--input", str(f)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout == "", r.stderr
        sig = f.read_bytes()
    else:
        r = subprocess.run(cmd, input=MSG.hex() + "\n", capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        (line,) = r.stdout.splitlines()
        sig = bytes.fromhex(line)
    assert len(sig) == 4627 and indep2.mldsa_verify_dilithium(_pub(srv), MSG, sig)


def test_sign_helper_refuses_another_servers_key(srv: Server, tmp_path: Path) -> None:
    """--pubkey is not the server's key: no signature is requested (no sign record)."""
    tok = tmp_path / "token"
    tok.write_text(srv.token)
    other = tmp_path / "other"
    mldsa.generate_keypair(other, seed=_seed("other"))
    before = sum(1 for r in _audit(srv) if r["event"] == "sign")
    r = subprocess.run(
        _helper(srv, tok, "--pubkey", f"{other}-pubk.bin"),
        input=MSG.hex() + "\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == ""
    assert "no signature requested" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert sum(1 for r in _audit(srv) if r["event"] == "sign") == before
    r = subprocess.run(
        _helper(srv, tok), input=(b"\0" * (MAX_MESSAGE + 1)).hex() + "\n", capture_output=True,
        text=True,
    )  # fmt: skip
    assert r.returncode == 2 and "65536" in r.stderr


def test_signing2_through_the_server(srv: Server, tmp_path: Path) -> None:
    """sign2 with the server standing in for the private keys: ECC and ML-DSA signatures
    verified independently; a key set whose public key is not the server's is refused before
    any signature is requested, with the slot named."""
    from imgtool.config2 import KeySet2
    from imgtool.errors import SigningError
    from imgtool.signing2 import KeyHelpers, ServerRef, sign2

    tok = tmp_path / "token"
    tok.write_text(srv.token)
    keys = srv.keys
    ks = KeySet2(
        keys / "own-man-ecc-pubk.pem",
        None,
        keys / "own-man-lms-pubk.pem",
        None,
        keys / "own-man-mldsa-pubk.bin",
        None,
    )
    h = KeyHelpers(server=ServerRef(srv.url, MACHINE, "own-man", tok))
    e, p = sign2(ks, "mldsa", MSG, h, slot="own_imc_sig")
    hw = ecc.public_to_hw(ecc.load_public(ks.ecc_pub))
    assert indep2.ecc_verify_hw(hw, MSG, e) and indep2.mldsa_verify_dilithium(_pub(srv), MSG, p)
    e2, p2 = sign2(ks, "lms", MSG, h, slot="own_imc_sig")
    assert indep2.ecc_verify_hw(hw, MSG, e2)
    assert indep2.lms_verify(ks.lms_pub.read_bytes(), MSG, p2)
    other = tmp_path / "other"
    mldsa.generate_keypair(other, seed=_seed("other2"))
    wrong = KeySet2(ks.ecc_pub, None, ks.lms_pub, None, Path(f"{other}-pubk.bin"), None)
    with pytest.raises(
        SigningError, match=r"^vnd_pub_sig: signing server: .*no signature requested"
    ):
        sign2(wrong, "mldsa", MSG, h, slot="vnd_pub_sig")


def test_whole_2x_manifest_signed_through_the_server(
    srv: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2.x ATM2 manifest (PQC type 1) whose eight signatures all come from the live server
    (ECC and ML-DSA for four key sets; a token added while it runs): every signature checked
    with cryptography, dilithium-py and OpenSSL."""
    from projects2 import SECTIONS, make_project2

    from imgtool import build2, signing2
    from imgtool.config2 import KeySet2, load_config2

    machine = "bmc-2x"
    prj = make_project2(tmp_path / "p")
    store = srv.root / machine / "caliptra"
    store.mkdir(parents=True)
    for _, prefix in SECTIONS:
        for algo, ext in (("ecc", "pem"), ("mldsa", "bin")):
            for kind in ("prvk", "pubk"):
                shutil.copy(prj.keys / f"{prefix}-{algo}-{kind}.{ext}", store)
    tok = tmp_path / "token"
    tok.write_text(_add_token(srv.audit.parent / "tokens.json", "builder-2x", machine))
    cfg = load_config2(prj.cfg, key_dir=prj.keys, prebuilt_dir=prj.prebuilt)
    prefix_of = {ks.ecc_pub.name: p for (s, p) in SECTIONS for ks in [cfg.keys[s]]}

    def via_server(ks: KeySet2, pqc: str, msg: bytes) -> tuple[bytes, bytes]:
        public = KeySet2(ks.ecc_pub, None, ks.lms_pub, None, ks.mldsa_pub, None)
        ref = signing2.ServerRef(srv.url, machine, prefix_of[ks.ecc_pub.name], tok)
        return signing2.sign2(public, pqc, msg, signing2.KeyHelpers(server=ref))

    local = build2.build_manifest2(cfg, "mldsa")
    monkeypatch.setattr(build2, "sign2", via_server)
    man = build2.build_manifest2(cfg, "mldsa")
    assert man == local  # deterministic ECDSA and ML-DSA: the server's manifest is the same
    cov = indep2.atm2_covered(man)
    pairs = {
        "vnd_pub_sig": ("vendor_fw_key_config", "vendor_pub"),
        "own_pub_sig": ("owner_fw_key_config", "owner_pub"),
        "vnd_imc_sig": ("vendor_man_key_config", "vendor_imc"),
        "own_imc_sig": ("owner_man_key_config", "owner_imc"),
    }
    for slot, (section, what) in pairs.items():
        ks = cfg.keys[section]
        e = indep2.atm2_field(man, f"{slot}_ecc", 96)
        p = indep2.atm2_field(man, f"{slot}_pqc", 4628)
        assert indep2.ecc_verify_hw(ecc.public_to_hw(ecc.load_public(ks.ecc_pub)), cov[what], e)
        assert indep2.pqc_verify("mldsa", ks.mldsa_pub.read_bytes(), cov[what], p), slot
    signed = [r for r in _audit(srv) if r.get("token_id") == "builder-2x" and r["event"] == "sign"]
    assert sorted(r["key"] for r in signed) == sorted(  # type: ignore[type-var]
        f"{p}-{a}" for (_, p) in SECTIONS for a in ("ecc", "mldsa")
    )


def test_parallel_mldsa_requests(srv: Server) -> None:
    """Many clients at once: every answer is a correct signature of its own message (or a
    429 with Retry-After when the queue is full), and the server still answers afterwards."""
    import concurrent.futures

    def one(i: int) -> tuple[int, bytes, bytes]:
        msg = MSG + i.to_bytes(2, "big")
        with srv.client() as c:
            r = c.post("/sign/caliptra", data=_form(msg))
        return r.status_code, msg, r.content

    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        results = list(ex.map(one, range(24)))
    assert {code for code, _, _ in results} <= {200, 429}
    ok = [(m, sig) for code, m, sig in results if code == 200]
    assert len(ok) >= 12
    for m, sig in ok:
        assert indep2.mldsa_verify_openssl(_pub(srv), m, sig)
    assert httpx.get(f"{srv.url}/healthz").status_code == 200
