"""The signing server, over HTTP on loopback: Caliptra signing, i.MX signing with NXP's CST,
authentication, and one negative test per digsigserver weakness (spec/signing.md)."""

from __future__ import annotations

import concurrent.futures
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import imx_pki
import pytest
from hsslms import LMS_Pub
from srvfixtures import FAKE_CST_HANG, FAKE_CST_OK, IMX_MACHINE, MACHINE, Server, start_server

from imgtool.keys import ecc, lms

DIGEST = bytes(range(48))
CSF_OK = imx_pki.csf_text("flash.bin")


def _imx_form(
    csf: str = CSF_OK,
    name: str = "flash.bin",
    machine: str = IMX_MACHINE,
    version: str = imx_pki.CST_VERSION,
    size: int = 0x8000,
    **extra: str,
) -> dict[str, object]:
    data = {"machine": machine, "soctype": "mx8m", "cstversion": version, **extra}
    files = {
        "csf": ("csf.txt", csf.encode(), "text/plain"),
        "artifact": (name, os.urandom(size), "application/octet-stream"),
    }
    return {"data": data, "files": files}


# ---------------------------------------------------------------- Caliptra
def test_healthz_needs_no_token(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").text == "ok\n"


def test_caliptra_ecc_and_lms(server: Server) -> None:
    with server.client() as c:
        r = c.post(
            "/sign/caliptra",
            data={"machine": MACHINE, "key": "own-man", "algo": "ecc", "digest": DIGEST.hex()},
        )
        assert r.status_code == 200
        pub = ecc.load_public(server.keys / "own-man-ecc-pubk.pem")
        assert ecc.verify_digest(pub, DIGEST, r.content)
        q = []
        for _ in range(2):
            r = c.post(
                "/sign/caliptra",
                data={"machine": MACHINE, "key": "own-fw", "algo": "lms", "digest": DIGEST.hex()},
            )
            assert r.status_code == 200 and len(r.content) == 1620
            LMS_Pub((server.keys / "own-fw-lms-pubk.pem").read_bytes()).verify(
                DIGEST, lms.slot_to_sig(r.content)
            )
            q.append(lms.sig_q(r.content))
        assert q[0] != q[1]  # the leaf state advances
        r = c.get("/pubkey", params={"machine": MACHINE, "key": "own-fw", "algo": "lms"})
        assert r.content == (server.keys / "own-fw-lms-pubk.pem").read_bytes()


@pytest.mark.parametrize(
    "field,value",
    [
        ("machine", "../bmc-a"),
        ("machine", "BMC A"),
        ("key", "own-man/../x"),
        ("algo", "rsa"),
        ("digest", "00" * 47),
        ("digest", "zz" * 48),
    ],
)
def test_caliptra_rejects_bad_fields_with_400(server: Server, field: str, value: str) -> None:
    data = {
        "machine": MACHINE,
        "key": "own-man",
        "algo": "ecc",
        "digest": DIGEST.hex(),
        field: value,
    }
    with server.client() as c:
        r = c.post("/sign/caliptra", data=data)
    assert r.status_code == 400 and "Traceback" not in r.text


@pytest.mark.parametrize("endpoint", ["caliptra", "pubkey", "imx"])
def test_unknown_and_foreign_machine_get_the_same_403(server: Server, endpoint: str) -> None:
    """Authorization comes before any lookup: a token cannot tell a machine that does not exist
    from another tenant's."""
    bodies = []
    with server.client(server.other_token) as c:  # allowed only for bmc-b (caliptra)
        for machine in ("nosuch", MACHINE, IMX_MACHINE):
            if endpoint == "caliptra":
                r = c.post(
                    "/sign/caliptra",
                    data={
                        "machine": machine,
                        "key": "own-man",
                        "algo": "ecc",
                        "digest": DIGEST.hex(),
                    },
                )
            elif endpoint == "pubkey":
                r = c.get("/pubkey", params={"machine": machine, "key": "own-man", "algo": "ecc"})
            else:
                r = c.post("/sign/imx", **_imx_form(machine=machine, version=FAKE_CST_OK))  # type: ignore[arg-type]
            assert r.status_code == 403, (machine, r.text)
            bodies.append((r.content, sorted(k for k in r.headers if k != "date")))
    assert bodies[0] == bodies[1] == bodies[2]
    assert b"nosuch" not in bodies[0][0] and MACHINE.encode() not in bodies[0][0]


def test_unknown_machine_for_an_allowed_token_is_404_without_traceback(server: Server) -> None:
    with server.client() as c:  # ci-builder may use bmc-a, which has no vnd keys here? it has
        r = c.post(
            "/sign/caliptra",
            data={"machine": IMX_MACHINE, "key": "own-man", "algo": "ecc", "digest": DIGEST.hex()},
        )
    assert r.status_code == 404 and "Traceback" not in r.text and len(r.text) < 200


def test_authentication_and_scope(server: Server) -> None:
    data = {"machine": MACHINE, "key": "own-man", "algo": "ecc", "digest": DIGEST.hex()}
    assert httpx.post(f"{server.url}/sign/caliptra", data=data).status_code == 401
    with server.client("not-a-token") as c:
        assert c.post("/sign/caliptra", data=data).status_code == 401
    with server.client(server.other_token) as c:  # only bmc-b, only caliptra
        assert c.post("/sign/caliptra", data=data).status_code == 403
        r = c.post("/sign/imx", **_imx_form())  # type: ignore[arg-type]
        assert r.status_code == 403
    with server.client() as c:
        assert (
            c.get(
                "/pubkey", params={"machine": MACHINE, "key": "own-man", "algo": "ecc"}
            ).status_code
            == 200
        )


def test_tokens_file_keeps_only_hashes(server: Server, tmp_path: Path) -> None:
    text = (server.audit.parent / "tokens.json").read_text()
    assert server.token not in text and server.other_token not in text
    assert json.loads(text)["tokens"][0]["sha256"]


def _helper_cmd(server: Server, token_file: Path, algo: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imgtool",
        "sign-helper",
        "--server",
        server.url,
        "--machine",
        MACHINE,
        "--key",
        "own-man",
        "--algo",
        algo,
        "--token-file",
        str(token_file),
    ]


def _run_helper(server: Server, tmp: Path, algo: str, by_file: bool) -> bytes:
    tok = tmp / "token"
    tok.write_text(server.token)
    cmd = _helper_cmd(server, tok, algo)
    if by_file:
        f = tmp / f"digest-{algo}.bin"
        f.write_bytes(DIGEST)
        r = subprocess.run([*cmd, "--by-file", "--input", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == ""
        return f.read_bytes()
    r = subprocess.run(cmd, input=DIGEST.hex() + "\n", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 1
    return bytes.fromhex(lines[0])


@pytest.mark.parametrize("by_file", [False, True])
@pytest.mark.parametrize("algo", ["ecc", "lms"])
def test_sign_helper_command(server: Server, tmp_path: Path, algo: str, by_file: bool) -> None:
    sig = _run_helper(server, tmp_path, algo, by_file)
    if algo == "ecc":
        assert ecc.verify_digest(ecc.load_public(server.keys / "own-man-ecc-pubk.pem"), DIGEST, sig)
    else:
        assert lms.load_public(server.keys / "own-man-lms-pubk.pem").verify(DIGEST, sig)


def test_sign_helper_bad_token_fails_cleanly(server: Server, tmp_path: Path) -> None:
    tok = tmp_path / "token"
    tok.write_text("wrong")
    r = subprocess.run(
        _helper_cmd(server, tok, "ecc"),
        input=DIGEST.hex() + "\n",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stdout == "" and "401" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "wrong" not in r.stderr


def test_manifest_signed_through_the_server(server: Server, tmp_path: Path) -> None:
    """An ASPEED manifest whose owner signatures all come from the live server (a machine with
    H15/W4 LMS keys, the only type Caliptra verifies; a token added while the server runs)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))
    from projects import ecc_keys, lms_keys, make_project
    from srvfixtures import _add_token

    from imgtool.cli.main import main

    machine = "bmc-h15"
    keys = server.root / machine / "caliptra"
    ecc_keys(keys)
    lms_keys(keys, "h15-sparse")
    token = _add_token(server.audit.parent / "tokens.json", "manifest-builder", machine)
    # the project (and its stand-in Caliptra bundle, which carries the owner keys) is made with
    # the server's owner keys; then their private halves go: only the server can sign
    (tmp_path / "keys").mkdir()
    for name in ("own-fw", "own-man"):
        for algo in ("ecc", "lms"):
            for kind in ("prvk", "pubk"):
                shutil.copy(keys / f"{name}-{algo}-{kind}.pem", tmp_path / "keys")
    prj = make_project(tmp_path, vendor=True, lms=True, sample_bundle=True)
    for name in ("own-fw", "own-man"):
        for algo in ("ecc", "lms"):
            (prj.keys / f"{name}-{algo}-prvk.pem").unlink()
    tok = tmp_path / "token"
    tok.write_text(token)
    helper = (
        f"{sys.executable} -m imgtool sign-helper --server {server.url} "
        f"--machine {machine} --token-file {tok}"
    )
    text = prj.cfg.read_text()
    for role in ("fw", "man"):
        for algo in ("ecc", "lms"):
            line = f'{algo}_priv_key = "own-{role}-{algo}-prvk.pem"\n'
            assert line in text
            text = text.replace(line, "")
    text += (
        "\n[sign_helper]\n"
        + "".join(
            f'owner_{a}_{r}_key_sign_helper = "{helper} --key own-{r} --algo {a}"\n'
            for a in ("ecc", "lms")
            for r in ("fw", "man")
        )
        + "by_file = false\n"
    )
    prj.cfg.write_text(text)
    assert main(["create-auth-man", *prj.args("--man", str(prj.man))]) == 0
    assert (
        main(
            [
                "verify",
                str(prj.man),
                "--key-dir",
                str(prj.keys),
                "--cfg",
                str(prj.cfg),
                "--prebuilt-dir",
                str(prj.prebuilt),
            ]
        )
        == 0
    )
    signed = [
        json.loads(x)
        for x in server.audit.read_text().splitlines()
        if '"manifest-builder"' in x and '"event": "sign"' in x
    ]
    assert sorted(r["key"] for r in signed) == [  # six owner signatures, all by the server
        "own-fw-ecc",
        "own-fw-ecc",
        "own-fw-lms",
        "own-fw-lms",
        "own-man-ecc",
        "own-man-lms",
    ]
    m = prj.man.read_bytes()
    for off, size in ((2024, 96), (2120, 1620), (3740, 96), (3836, 1620), (7172, 96), (7268, 1620)):
        assert any(m[off : off + size]), off  # all six owner slots came from the server


# ---------------------------------------------------------------- i.MX with the real CST
needs_cst = pytest.mark.skipif(
    imx_pki.cst_available() is not None, reason=str(imx_pki.cst_available())
)


@needs_cst
def test_imx_with_real_cst_and_plain_curl(server: Server, tmp_path: Path) -> None:
    assert server.pki is not None
    (tmp_path / "csf.txt").write_text(CSF_OK)
    artifact = os.urandom(0x8000)
    (tmp_path / "flash.bin").write_bytes(artifact)
    r = subprocess.run(
        [
            "curl",
            "-sS",
            "-f",
            "-H",
            f"Authorization: Bearer {server.token}",
            "-F",
            f"machine={IMX_MACHINE}",
            "-F",
            "soctype=mx8m",
            "-F",
            "cstversion=3.3.1",
            "-F",
            "csf=@csf.txt;type=text/plain",
            "-F",
            "artifact=@flash.bin",
            f"{server.url}/sign/imx",
            "-o",
            "csf.bin",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    csf = (tmp_path / "csf.bin").read_bytes()
    assert csf[0] == 0xD4
    parsed = subprocess.run(
        ["csf_parser", "-c", "csf.bin"], cwd=tmp_path, capture_output=True, text=True
    )
    assert parsed.returncode == 0
    out = tmp_path / "output"
    assert (out / "SRKTable.bin").exists() and (out / "sig1.bin").exists()
    pki = server.pki
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pki.ca_cert.read_bytes() + pki.srk_certs[0].read_bytes())
    img = pki.root / "crts" / f"{imx_pki.IMG}_crt.pem"
    verify = [
        "openssl",
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        str(out / "sig1.bin"),
        "-binary",
        "-certfile",
        str(img),
        "-CAfile",
        str(chain),
        "-purpose",
        "any",
        "-out",
        os.devnull,
        "-content",
    ]
    assert subprocess.run([*verify, "flash.bin"], cwd=tmp_path, capture_output=True).returncode == 0
    (tmp_path / "other.bin").write_bytes(os.urandom(0x8000))
    assert subprocess.run([*verify, "other.bin"], cwd=tmp_path, capture_output=True).returncode != 0
    assert not any(server.work.iterdir())


# ---------------------------------------------------------------- digsigserver's weaknesses
@pytest.mark.parametrize(
    "name", ["../evil.bin", "/tmp/abs.bin", "a/b.bin", "csf-input.txt", ".hidden", "keys"]
)
def test_upload_name_never_becomes_a_path(server: Server, name: str) -> None:
    with server.client() as c:
        r = c.post("/sign/imx", **_imx_form(name=name, version=FAKE_CST_OK))  # type: ignore[arg-type]
    assert r.status_code == 400
    assert not Path("/tmp/abs.bin").exists() and not (server.work.parent / "evil.bin").exists()


@pytest.mark.parametrize(
    "bad",
    [
        '"/etc/passwd"',
        '"../../keystore/bmc-a/caliptra/own-man-ecc-prvk.pem"',
        '"keys/CSF1_1_sha256_2048_65537_v3_usr_key.pem"',
        "/etc/shadow",
    ],
)
def test_csf_cannot_name_files_outside_the_work_dir(server: Server, bad: str) -> None:
    csf = CSF_OK.replace('File = "crts/SRK_1_2_3_4_table.bin"', f"File = {bad}")
    with server.client() as c:
        r = c.post("/sign/imx", **_imx_form(csf=csf, version=FAKE_CST_OK))  # type: ignore[arg-type]
    assert r.status_code == 400 and "CSF" in r.text


def test_machine_traversal_and_bad_parameters(server: Server) -> None:
    with server.client() as c:
        for extra in (
            {"machine": "../bmc-a"},
            {"soctype": "mx6"},
            {"cstversion": "3.3.1;rm"},
            {"backend": "hsm"},
        ):
            form = _imx_form(version=FAKE_CST_OK)
            form["data"] = {**form["data"], **extra}  # type: ignore[dict-item]
            r = c.post("/sign/imx", **form)  # type: ignore[arg-type]
            assert r.status_code == 400, (extra, r.text)


def test_backend_pkcs11_is_501_naming_why(server: Server) -> None:
    """digsigserver's backend=pkcs11 runs `cst -b pkcs11`; Debian's cst 3.3.1 has no -b (its HSM
    backend was removed, Debian bug #985763): a clear 501, before cst runs."""
    form = _imx_form(version=FAKE_CST_OK)
    form["data"] = {**form["data"], "backend": "pkcs11"}  # type: ignore[dict-item]
    with server.client() as c:
        r = c.post("/sign/imx", **form)  # type: ignore[arg-type]
    assert r.status_code == 501 and "no PKCS#11 backend" in r.text, r.text


def test_cst_missing_for_version_is_400(server: Server) -> None:
    with server.client() as c:
        r = c.post("/sign/imx", **_imx_form(version="1.2.3"))  # type: ignore[arg-type]
    assert r.status_code == 400 and "not available" in r.text


def test_cst_gets_minimal_env_and_no_secrets(server: Server) -> None:
    with server.client() as c:
        r = c.post("/sign/imx", **_imx_form(version=FAKE_CST_OK))  # type: ignore[arg-type]
    assert r.status_code == 200 and r.content[:1] == b"\xd4"
    log = r.content[5:].decode()  # the fake cst reports argv and its environment
    assert "argv:" in log and "-i csf-input.txt -o csf-output.bin" in log
    assert server.token not in log and "DIGSIGSERVER" not in log and "CPTRA_IMGTOOL" not in log
    assert imx_pki.PASSPHRASE.decode() not in log
    env_keys = {
        line.split("=", 1)[0]
        for line in log.splitlines()
        if "=" in line and not line.startswith("argv")
    }
    assert env_keys <= {"PATH", "LANG", "PWD", "SHLVL", "_", "OLDPWD"}


def test_cst_hang_times_out_and_server_still_answers(server: Server) -> None:
    with server.client() as c:
        r = c.post("/sign/imx", **_imx_form(version=FAKE_CST_HANG))  # type: ignore[arg-type]
    assert r.status_code == 500 and r.text.strip() == "Signing error"
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    assert not any(server.work.iterdir())


def test_oversize_body_is_413(server: Server) -> None:
    with server.client() as c:
        r = c.post("/sign/imx", **_imx_form(version=FAKE_CST_OK, size=3_000_000))  # type: ignore[arg-type]
    assert r.status_code == 413

    # no Content-Length: the body is counted while it streams in
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="artifact"; '
        f'filename="flash.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )

    def chunks():  # type: ignore[no-untyped-def]
        yield head.encode()
        for _ in range(40):
            yield b"x" * 100_000

    r = httpx.post(
        f"{server.url}/sign/imx",
        content=chunks(),
        headers={
            "Authorization": f"Bearer {server.token}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )
    assert r.status_code == 413
    assert not any(server.work.iterdir())


def _archive_with(tmp: Path, member: tarfile.TarInfo, data: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind", ["symlink", "hardlink", "absolute", "dotdot", "device", "too-big", "too-many"]
)
def test_key_archive_is_unpacked_safely(tmp_path: Path, kind: str) -> None:
    from imgtool.server.imx import ImxError, unpack_keys

    archive = tmp_path / "k.tar.gz"
    if kind == "too-many":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for i in range(300):
                ti = tarfile.TarInfo(f"crts/f{i}")
                ti.size = 1
                tar.addfile(ti, io.BytesIO(b"x"))
        archive.write_bytes(buf.getvalue())
    else:
        ti = tarfile.TarInfo({"absolute": "/tmp/evil", "dotdot": "../evil"}.get(kind, "crts/x"))
        data = None
        if kind == "symlink":
            ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            ti.type, ti.linkname = tarfile.LNKTYPE, "/etc/passwd"
        elif kind == "device":
            ti.type = tarfile.CHRTYPE
        else:
            data = b"x" * (2000 if kind == "too-big" else 1)
            ti.size = len(data)
        archive.write_bytes(_archive_with(tmp_path, ti, data))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ImxError):
        unpack_keys(archive, dest, max_bytes=1000, max_files=256)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_symlinked_key_archive_on_server_never_leaks(tmp_path: Path) -> None:
    """A key archive holding a symlink to a private key: refused, nothing returned."""
    s = start_server(tmp_path, with_cst=False)
    try:
        ti = tarfile.TarInfo("crts/SRK_1_2_3_4_table.bin")
        ti.type, ti.linkname = tarfile.SYMTYPE, str(s.keys / "own-man-ecc-prvk.pem")
        (s.root / IMX_MACHINE / "imxsign" / "imx-cst-keys.tar.gz").write_bytes(
            _archive_with(tmp_path, ti)
        )
        with s.client() as c:
            r = c.post("/sign/imx", **_imx_form(version=FAKE_CST_OK))  # type: ignore[arg-type]
        assert r.status_code == 500 and b"PRIVATE" not in r.content
        assert not any(s.work.iterdir())
    finally:
        s.proc.terminate()
        s.proc.wait(timeout=10)


def test_parallel_requests_with_job_limit(server: Server) -> None:
    def one(i: int) -> int:
        with server.client() as c:
            if i % 2:
                return c.post("/sign/imx", **_imx_form(version=FAKE_CST_OK)).status_code  # type: ignore[arg-type]
            return c.post(
                "/sign/caliptra",
                data={"machine": MACHINE, "key": "vnd-man", "algo": "ecc", "digest": DIGEST.hex()},
            ).status_code

    with concurrent.futures.ThreadPoolExecutor(50) as ex:
        codes = list(ex.map(one, range(50)))
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 25  # all ECC requests (no job slot needed) and some i.MX ones
    assert not any(server.work.iterdir())


def test_audit_log(server: Server) -> None:
    with server.client() as c:
        c.post(
            "/sign/caliptra",
            data={"machine": MACHINE, "key": "own-man", "algo": "ecc", "digest": DIGEST.hex()},
        )
    httpx.post(f"{server.url}/sign/caliptra", data={"machine": MACHINE})
    lines = server.audit.read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    reqs = [r for r in recs if r["event"] == "request"]
    ok = [r for r in reqs if r["result"] == 200 and r["endpoint"] == "caliptra"][-1]
    i = recs.index(ok)
    intent = recs[i - 1]  # the "about to sign" record comes first
    assert intent["event"] == "sign" and intent["inputs_sha256"] == ok["inputs_sha256"]
    assert ok["token_id"] == "ci-builder" and ok["machine"] == MACHINE
    assert ok["key"] == "own-man-ecc" and len(ok["inputs_sha256"]["digest"]) == 64
    assert {"time", "client", "duration_ms"} <= set(ok)
    assert any(r["result"] == 401 and r.get("token_id") is None for r in reqs)
    text = server.audit.read_text() + (server.audit.parent / "server.log").read_text()
    assert server.token not in text and server.other_token not in text
    assert "Traceback" not in text and "PRIVATE KEY" not in text


def test_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    env = {**os.environ, "DIGSIGSERVER_KEYFILE_URI": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "refusing to start" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "imgtool", "serve", "--host", "0.0.0.0", "--insecure-no-auth"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "loopback" in r.stderr


def test_lms_exhaustion_over_the_server(server: Server) -> None:
    data = {"machine": MACHINE, "key": "vnd-fw", "algo": "lms", "digest": DIGEST.hex()}
    with server.client() as c:
        qs = {lms.sig_q(c.post("/sign/caliptra", data=data).content) for _ in range(32)}
        assert qs == set(range(32))
        r = c.post("/sign/caliptra", data=data)
    assert r.status_code == 500 and "no usable leaf left" in r.text
    assert str(server.root) not in r.text and "prvk" not in r.text
