"""owner-sign-bundle: the OEM's owner keys into a vendor-signed Caliptra 1.x bundle.

Every result is read back with the independent bundle reader of tests/helpers/oem.py (struct
offsets from spec/flash.md, `cryptography` and `hsslms`), and checked with `verify --fuses`
from the fuse values `cptra-imgtool fuses` computes for it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from independent import ecc_pub_hw
from oem import (
    HEADER,
    O_KEYS,
    O_SIG,
    Tree,
    owner_sigs_ok,
    parse,
    sha384,
    vendor_sigs_ok,
    vendor_tree,
)
from projects import ecc_keys, lms_keys

from imgtool.cli.main import main
from imgtool.keys import lms, lms_tree
from imgtool.keys.lms_signer import LmsSigner

PY = sys.executable


def _cfg(
    root: Path, keys: Path, *, lms_on: bool = True, caliptra: str = "", extra: str = ""
) -> Path:
    text = '[manifest_config]\nprj_name = "oem"\n\n[owner_fw_key_config]\n'
    text += 'ecc_pub_key = "own-fw-ecc-pubk.pem"\n'
    if "[sign_helper]" not in extra or "owner_ecc_fw" not in extra:
        text += 'ecc_priv_key = "own-fw-ecc-prvk.pem"\n'
    if lms_on:
        text += 'lms_pub_key = "own-fw-lms-pubk.pem"\n'
        if "owner_lms_fw" not in extra:
            text += 'lms_priv_key = "own-fw-lms-prvk.pem"\n'
    text += f'\n[image_runtime_list]\ncaliptra_file = "{caliptra}"\n\n'
    text += '[[image_metadata_list]]\nfile = ""\nfw_id = 1\n' + extra
    cfg = root / "oem.toml"
    cfg.write_text(text)
    return cfg


def _owner(root: Path, full_tree: bool = False) -> Path:
    """Owner keys of the OEM: ECC, and an H15/W4 LMS key (sparse test key, or a full tree)."""
    keys = root / "oemkeys"
    ecc_keys(keys)
    if full_tree:
        lms_tree.generate(keys / "own-fw-lms", lms.LMS_SHA256_M24_H15, lms.LMOTS_SHA256_N24_W4)
    else:
        lms_keys(keys)
    return keys


def _sign(cfg: Path, keys: Path, src: Path | None, out: Path, *extra: str) -> int:
    args = ["owner-sign-bundle", "--cfg", str(cfg), "--key-dir", str(keys), "--out", str(out)]
    if src is not None:
        args += ["--in", str(src)]
    return main([*args, *extra])


def _fuses(bundle: Path, out: Path, *extra: str) -> Path:
    assert main(["fuses", "--caliptra-fw", str(bundle), "--out", str(out), *extra]) == 0
    return out


def _verify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["verify", *args])
    return rc, capsys.readouterr().out


def _check_resigned(before: bytes, after: bytes, keys: Path, lms_on: bool = True) -> None:
    """Independently: only the owner keys, owner signatures and owner_data changed; the vendor
    signatures still verify with the original vendor keys; the owner ones with the new keys."""
    a, b = parse(before), parse(after)
    assert len(after) == len(before)
    owner = set(range(O_KEYS, O_SIG + 96 + 1620)) | set(range(HEADER + 116, HEADER + 156))
    changed = {i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y}
    assert changed and changed <= owner
    assert (b.vendor_block, b.vendor_tbs) == (a.vendor_block, a.vendor_tbs)
    assert vendor_sigs_ok(a) and vendor_sigs_ok(b)
    ecc_pub = ecc_pub_hw(keys / "own-fw-ecc-pubk.pem")
    lms_pub = (keys / "own-fw-lms-pubk.pem").read_bytes() if lms_on else None
    assert owner_sigs_ok(b, ecc_pub, lms_pub)
    if not lms_on:
        assert b.owner_lms == bytes(48) and b.owner_sig_lms == bytes(1620)
    assert sha384(b.owner_ecc + b.owner_lms) != sha384(a.owner_ecc + a.owner_lms)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return vendor_tree(tmp_path / "vendor")


def test_owner_sign_a_made_bundle_and_verify_it_from_its_fuses(
    tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _owner(tmp_path)
    cfg = _cfg(tmp_path, keys)
    out = tmp_path / "oem-caliptra-fw.bin"
    capsys.readouterr()
    assert _sign(cfg, keys, tree.bundle, out) == 0
    text = capsys.readouterr().out
    before, after = tree.bundle.read_bytes(), out.read_bytes()
    _check_resigned(before, after, keys)
    own_hash = sha384(parse(after).owner_ecc + parse(after).owner_lms).hex()
    assert f"owner_pk_hash = {own_hash}" in text and "vendor signatures unchanged" in text
    fuses = _fuses(out, tmp_path / "f.toml")
    rc, vout = _verify(capsys, str(out), "--fuses", str(fuses))
    assert rc == 0, vout
    # the fuses of the vendor's bundle: the owner hash differs, the vendor hash does not
    old = _fuses(tree.bundle, tmp_path / "old.toml").read_text().splitlines()
    new = fuses.read_text().splitlines()
    assert [ln for ln in old if ln.startswith("vendor_pk_hash")] == [
        ln for ln in new if ln.startswith("vendor_pk_hash")
    ]
    assert [ln for ln in old if ln.startswith("owner_pk_hash")] != [
        ln for ln in new if ln.startswith("owner_pk_hash")
    ]
    # the vendor's own fuses do not boot it (the owner hash fuse is the OEM's now)
    rc, vout = _verify(capsys, str(out), "--fuses", str(tmp_path / "old.toml"))
    assert rc == 1 and "bundle.fuse.owner_pk_hash" in vout
    # re-signing a re-signed bundle works too (a new owner key later): same vendor part
    again = tmp_path / "again.bin"
    assert _sign(cfg, keys, out, again) == 0
    _check_resigned(before, again.read_bytes(), keys)


def test_default_input_is_the_configs_caliptra_file(tree: Tree, tmp_path: Path) -> None:
    keys = _owner(tmp_path)
    pre = tmp_path / "prebuilt" / "oem"
    pre.mkdir(parents=True)
    shutil.copy(tree.bundle, pre / "vendor.bin")
    cfg = _cfg(tmp_path, keys, caliptra="vendor.bin")
    out = pre / "caliptra-fw.bin"
    args = ["--prebuilt-dir", str(pre)]
    assert _sign(cfg, keys, None, out, *args) == 0
    _check_resigned(tree.bundle.read_bytes(), out.read_bytes(), keys)
    # the config's caliptra_file may be the output when the input is another file
    cfg2 = _cfg(tmp_path, keys, caliptra="caliptra-fw.bin")
    assert _sign(cfg2, keys, pre / "vendor.bin", out, *args) == 0


def test_owner_data(tree: Tree, tmp_path: Path) -> None:
    keys = _owner(tmp_path)
    cfg = _cfg(tmp_path, keys)
    out = tmp_path / "o.bin"
    opts = ["--not-before", "20250101000000Z", "--not-after", "20451231235959Z", "--epoch", "258"]
    assert _sign(cfg, keys, tree.bundle, out, *opts) == 0
    od = parse(out.read_bytes()).owner_data
    assert od[:15] == b"20250101000000Z" and od[15:30] == b"20451231235959Z"
    assert od[30:32] == bytes([2, 1]) and od[32:] == bytes(8)  # epoch u16 LE, reserved kept
    _check_resigned(tree.bundle.read_bytes(), out.read_bytes(), keys)
    # without the options owner_data is kept; one option changes only its field
    kept = tmp_path / "k.bin"
    assert _sign(cfg, keys, out, kept, "--epoch", "7") == 0
    od2 = parse(kept.read_bytes()).owner_data
    assert od2[:30] == od[:30] and od2[30:32] == bytes([7, 0])


@pytest.mark.parametrize(
    ("opts", "needle"),
    [
        (["--not-before", "2025"], "--not-before '2025': expected YYYYMMDDHHMMSSZ"),
        (["--not-before", "20251301000000Z"], "not a valid date"),
        (["--not-after", "2025010100000\u00e9Z"], "expected YYYYMMDDHHMMSSZ"),
        (["--not-after", "20250101000000Z\n"], "expected YYYYMMDDHHMMSSZ"),
        (["--not-before", "20300101000000Z", "--not-after", "20250101000000Z"], "is after"),
        (["--epoch", "65536"], "--epoch"),
        (["--epoch", "-1"], "--epoch"),
    ],
)
def test_bad_owner_data_is_one_line(
    tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str], opts: list[str], needle: str
) -> None:
    keys = _owner(tmp_path)
    cfg = _cfg(tmp_path, keys)
    out = tmp_path / "o.bin"
    capsys.readouterr()
    assert _sign(cfg, keys, tree.bundle, out, *opts) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_refusals_sign_nothing(
    tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bundles it does not understand, outputs that would overwrite an input, keys it cannot
    use: exit 2, one line naming the problem, no output, no LMS leaf spent."""
    keys = _owner(tmp_path, full_tree=True)
    left = LmsSigner.load(keys / "own-fw-lms-prvk.pem").leaves_left()
    cfg = _cfg(tmp_path, keys)
    good = tree.bundle.read_bytes()
    bad = tmp_path / "bad"
    bad.mkdir()

    def variant(name: str, data: bytes) -> Path:
        p = bad / name
        p.write_bytes(data)
        return p

    flip_vsig = bytearray(good)
    flip_vsig[8 + 4 * 96 + 32 * 48 + 8 + 10] ^= 1  # inside the vendor ECC signature
    flip_hdr = bytearray(good)
    flip_hdr[HEADER + 2] ^= 1  # the revision: covered by the vendor signatures
    flip_fmc = bytearray(good)
    flip_fmc[6000] ^= 1  # the FMC image: its TOC digest no longer matches
    flip_vlms = bytearray(good)
    flip_vlms[8 + 4 * 96 + 32 * 48 + 8 + 96 + 100] ^= 1
    cases = {
        "garbage": (variant("g.bin", b"garbage" * 100), "not a Caliptra firmware bundle"),
        "empty": (variant("e.bin", b""), "not a Caliptra firmware bundle"),
        "2.x": (variant("2.bin", b"CMN2" + bytes(6000)), "2.x"),
        "truncated": (variant("t.bin", good[:5000]), "truncated"),
        "vendor ECC sig": (variant("v.bin", bytes(flip_vsig)), "bundle.sig.vendor.ecc"),
        "vendor LMS sig": (variant("l.bin", bytes(flip_vlms)), "bundle.sig.vendor.lms"),
        "header": (variant("h.bin", bytes(flip_hdr)), "bundle.sig.vendor"),
        "fmc": (variant("f.bin", bytes(flip_fmc)), "bundle.fmc.digest"),
        "trailing": (variant("x.bin", good + b"JUNK"), "bundle.trailing"),
        "missing": (bad / "nope.bin", "file not found"),
        "directory": (bad, "is a directory"),
    }
    out = tmp_path / "out.bin"
    for what, (src, needle) in cases.items():
        capsys.readouterr()
        assert _sign(cfg, keys, src, out) == 2, what
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (what, err)
        assert not out.exists(), what
    # outputs: the input itself, through a symlink or a hard link, a key file, a directory
    src = tmp_path / "vendor.bin"
    src.write_bytes(good)
    os.symlink(src, tmp_path / "link.bin")
    os.link(src, tmp_path / "hard.bin")
    for target, needle in (
        (src, "would overwrite the input bundle"),
        (tmp_path / "link.bin", "would overwrite the input bundle"),
        (tmp_path / "hard.bin", "would overwrite the input bundle"),
        (keys / "own-fw-ecc-pubk.pem", "would overwrite the input"),
        (cfg, "would overwrite the input"),
        (tmp_path, "names a directory"),
    ):
        capsys.readouterr()
        assert _sign(cfg, keys, src, target) == 2, target
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (target, err)
    assert src.read_bytes() == good and (keys / "own-fw-ecc-pubk.pem").read_bytes().startswith(b"-")
    # no bundle to start from
    capsys.readouterr()
    assert _sign(cfg, keys, None, out) == 2
    assert "give --in" in capsys.readouterr().err
    assert LmsSigner.load(keys / "own-fw-lms-prvk.pem").leaves_left() == left
    # and a good one spends exactly one leaf
    assert _sign(cfg, keys, src, out) == 0
    assert LmsSigner.load(keys / "own-fw-lms-prvk.pem").leaves_left() == left - 1
    _check_resigned(good, out.read_bytes(), keys)


def test_owner_keys_it_cannot_use(
    tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _owner(tmp_path)
    out = tmp_path / "o.bin"
    # an H5 owner LMS key: Caliptra 1.x verifies only H15/W4
    h5 = tmp_path / "h5"
    ecc_keys(h5)
    lms_keys(h5, "h5")
    cfg = _cfg(tmp_path, h5)
    capsys.readouterr()
    assert _sign(cfg, h5, tree.bundle, out) == 2
    err = capsys.readouterr().err
    assert "LMS_SHA256_M24_H15" in err and not out.exists()
    # --force: made, verified as a part without LMS verification would check it
    assert _sign(cfg, h5, tree.bundle, out, "--force") == 0
    text = capsys.readouterr().out
    assert "--no-lms-verify" in text and "boots only where the LMS verify fuse is off" in text
    _check_resigned(tree.bundle.read_bytes(), out.read_bytes(), h5)
    out.unlink()
    # a missing private key, a missing public key, a public key that is not the private key's
    (keys / "own-fw-ecc-prvk.pem").rename(tmp_path / "away.pem")
    cfg = _cfg(tmp_path, keys)
    capsys.readouterr()
    assert _sign(cfg, keys, tree.bundle, out) == 2
    assert "owner_fw_key_config.ecc_priv_key: key file not found" in capsys.readouterr().err
    other = tmp_path / "other"
    ecc_keys(other)
    shutil.copy(other / "own-fw-ecc-prvk.pem", keys / "own-fw-ecc-prvk.pem")
    assert _sign(cfg, keys, tree.bundle, out) == 2
    assert "does not match the configured public key" in capsys.readouterr().err
    (keys / "own-fw-ecc-pubk.pem").unlink()
    assert _sign(cfg, keys, tree.bundle, out) == 2
    assert "owner_fw_key_config.ecc_pub_key: key file not found" in capsys.readouterr().err
    assert not out.exists()


def test_ecc_only_owner(tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = _owner(tmp_path)
    cfg = _cfg(tmp_path, keys, lms_on=False)
    out = tmp_path / "o.bin"
    capsys.readouterr()
    assert _sign(cfg, keys, tree.bundle, out) == 0
    assert "--no-lms-verify" in capsys.readouterr().out
    _check_resigned(tree.bundle.read_bytes(), out.read_bytes(), keys, lms_on=False)
    rc, vout = _verify(
        capsys, str(out), "--fuses", str(_fuses(out, tmp_path / "e.toml", "--no-lms-verify"))
    )
    assert rc == 0, vout
    rc, vout = _verify(capsys, str(out), "--fuses", str(_fuses(out, tmp_path / "l.toml")))
    assert rc == 1 and "bundle.sig.owner.lms" in vout


# ---------------------------------------------------------------------------- helpers, server
def _helper_cfg(tmp_path: Path, keys: Path, ecc_cmd: str, lms_cmd: str, by_file: bool) -> Path:
    extra = (
        f"\n[sign_helper]\nowner_ecc_fw_key_sign_helper = {ecc_cmd!r}\n"
        f"owner_lms_fw_key_sign_helper = {lms_cmd!r}\nby_file = {'true' if by_file else 'false'}\n"
    )
    return _cfg(tmp_path, keys, extra=extra.replace("'", '"'))


def _local_helper(keys: Path, algo: str, by_file: bool = False) -> str:
    """The reference helper command line, backed by a local key file (`sign-helper --key-file`);
    by file, the tool appends --input PATH."""
    key = f"{keys}/own-fw-{algo}-prvk.pem"
    flag = " --by-file" if by_file else ""
    return f"{PY} -m imgtool sign-helper --key-file {key} --algo {algo} --key fw{flag}"


@pytest.fixture
def server(tmp_path: Path) -> tuple[str, Path, Path]:
    """A signing server whose machine oem-bmc holds the OEM's owner FW keys (H15)."""
    from srvfixtures import _add_token, free_port

    store = tmp_path / "keystore"
    keys = store / "oem-bmc" / "caliptra"
    ecc_keys(keys)
    lms_keys(keys)
    tokens = tmp_path / "tokens.json"
    token = _add_token(tokens, "oem-ci", "oem-bmc", "caliptra")
    token_file = tmp_path / "token"
    token_file.write_text(token)
    port = free_port()
    env = {**os.environ, "DIGSIGSERVER_KEYFILE_URI": f"file://{store}"}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - for the server's life
    proc = subprocess.Popen(
        [PY, "-m", "imgtool", "serve", "--port", str(port), "--tokens", str(tokens),
         "--audit-log", str(tmp_path / "audit.jsonl")],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail((tmp_path / "server.log").read_text())
        time.sleep(0.1)
    try:
        yield url, keys, token_file
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


sys.path.insert(0, str(Path(__file__).parent / "server"))


def test_helpers_and_the_server_give_bundles_that_verify(
    tree: Tree,
    tmp_path: Path,
    server: tuple[str, Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """stdin helper, by-file helper, signing server, local key files: the same owner keys give
    the same ECC signature (RFC 6979) and bundles that verify."""
    url, keys, token_file = server
    results = {}
    cfg = _cfg(tmp_path, keys)
    results["key files"] = tmp_path / "files.bin"
    assert _sign(cfg, keys, tree.bundle, results["key files"]) == 0
    for by_file in (False, True):
        ecc_cmd, lms_cmd = (_local_helper(keys, a, by_file) for a in ("ecc", "lms"))
        cfg = _helper_cfg(tmp_path, keys, ecc_cmd, lms_cmd, by_file)
        name = "by-file helper" if by_file else "stdin helper"
        results[name] = tmp_path / f"{name.replace(' ', '-')}.bin"
        assert _sign(cfg, keys, tree.bundle, results[name]) == 0, name
    remote = (
        f"{PY} -m imgtool sign-helper --server {url} --machine oem-bmc --key own-fw "
        f"--token-file {token_file} --pubkey {keys}/own-fw-{{a}}-pubk.pem --algo {{a}}"
    )
    cfg = _helper_cfg(tmp_path, keys, remote.format(a="ecc"), remote.format(a="lms"), False)
    results["server"] = tmp_path / "server.bin"
    assert _sign(cfg, keys, tree.bundle, results["server"]) == 0
    before = tree.bundle.read_bytes()
    ecc_sigs = set()
    for name, path in results.items():
        after = path.read_bytes()
        _check_resigned(before, after, keys)
        ecc_sigs.add(parse(after).owner_sig_ecc)
        rc, vout = _verify(capsys, str(path), "--fuses", str(_fuses(path, tmp_path / "f.toml")))
        assert rc == 0, (name, vout)
    assert len(ecc_sigs) == 1
    assert "oem-ci" in (tmp_path / "audit.jsonl").read_text()


def test_a_helper_with_the_wrong_key_is_refused(
    tree: Tree, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys = _owner(tmp_path)
    other = tmp_path / "other"
    ecc_keys(other)
    cfg = _helper_cfg(
        tmp_path, keys, _local_helper(other, "ecc"), _local_helper(keys, "lms"), False
    )
    out = tmp_path / "o.bin"
    capsys.readouterr()
    assert _sign(cfg, keys, tree.bundle, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not verify with the expected public key" in err[0]
    assert not out.exists()


# ---------------------------------------------------------------------------- reference data
@pytest.mark.parametrize("prj", ["ast2700-default", "ast2700a1-default"])
def test_reference_bundles(
    ref: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], prj: str
) -> None:
    keys = _owner(tmp_path)
    cfg = _cfg(tmp_path, keys)
    src = ref / "prebuilt" / prj / "caliptra-fw.bin"
    out = tmp_path / "o.bin"
    assert _sign(cfg, keys, src, out) == 0
    before = src.read_bytes()
    _check_resigned(before, out.read_bytes(), keys)
    # the original vendor keys are the ones the vendor signatures were made with
    refkeys = ref / "key" / prj
    assert parse(out.read_bytes()).vendor_ecc == ecc_pub_hw(refkeys / "vnd-fw-ecc-pubk.pem")
    rc, vout = _verify(capsys, str(out), "--fuses", str(_fuses(out, tmp_path / "f.toml")))
    assert rc == 0, vout


# ------------------------------------------------------------------ sign-helper --key-file
def _helper_run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "imgtool", "sign-helper", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_key_file_helper_protocols(tmp_path: Path) -> None:
    """stdin: digest hex in, DER / LMS slot hex out; by file: the digest file is overwritten
    with the raw signature. Each checked with `cryptography` / `hsslms` here."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    from hsslms import LMS_Pub
    from independent import lms_exact

    keys = _owner(tmp_path, full_tree=True)
    digest = sha384(b"a manifest")
    r = _helper_run("--key-file", str(keys / "own-fw-ecc-prvk.pem"), "--algo", "ecc",
                    "--key", "fw", stdin=digest.hex() + "\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    pub = serialization.load_pem_public_key((keys / "own-fw-ecc-pubk.pem").read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(bytes.fromhex(r.stdout.strip()), digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
    f = tmp_path / "d.bin"
    f.write_bytes(digest)
    lkey = keys / "own-fw-lms-prvk.pem"
    r = _helper_run("--key-file", str(lkey), "--algo", "lms", "--by-file", "--input", str(f))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    slot = f.read_bytes()
    assert len(slot) == 1620
    LMS_Pub((keys / "own-fw-lms-pubk.pem").read_bytes()).verify(digest, lms_exact(slot))
    assert lms.sig_q(slot) == 0  # a full-tree key: its first leaf, recorded
    assert LmsSigner.load(lkey).leaves_left() == (1 << 15) - 1


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (["--algo", "ecc"], "ab" * 48, "--server, --machine, --key needed (or --key-file K)"),
        (["--algo", "ecc", "--key-file", "{k}/own-fw-ecc-prvk.pem"], "xyz", "one line of hex"),
        (["--algo", "ecc", "--key-file", "{k}/own-fw-ecc-prvk.pem"], "ab" * 47, "47-byte digest"),
        (["--algo", "lms", "--key-file", "{k}/own-fw-lms-prvk.pem"], "ab" * 49, "49-byte digest"),
        (
            [
                "--algo",
                "lms",
                "--key-file",
                "{k}/own-fw-lms-prvk.pem",
                "--by-file",
                "--input",
                "{t}/short.bin",
            ],
            "",
            "holds 47 bytes",
        ),  # fmt: skip
        (
            [
                "--algo",
                "lms",
                "--key-file",
                "{k}/own-fw-lms-prvk.pem",
                "--by-file",
                "--input",
                "{t}/huge.bin",
            ],
            "",
            "more than 4096 bytes",
        ),  # fmt: skip
        (["--algo", "lms", "--key-file", "{k}/own-fw-lms-prvk.pem", "--by-file"], "", "--input"),
        (["--algo", "ecc", "--key-file", "{k}/own-fw-lms-prvk.pem"], "ab" * 48, "not a PEM"),
        (
            [
                "--algo",
                "ecc",
                "--key-file",
                "{k}/own-fw-ecc-prvk.pem",
                "--pubkey",
                "{t}/other/own-fw-ecc-pubk.pem",
            ],
            "ab" * 48,
            "does not match --pubkey",
        ),  # fmt: skip
        (
            ["--algo", "ecc", "--key-file", "{k}/own-fw-ecc-prvk.pem", "--server", "http://x"],
            "ab" * 48,
            "no --server",
        ),  # fmt: skip
    ],
)
def test_key_file_helper_bad_input(
    tmp_path: Path, args: list[str], stdin: str, needle: str
) -> None:
    keys = _owner(tmp_path, full_tree=True)
    ecc_keys(tmp_path / "other")
    (tmp_path / "short.bin").write_bytes(bytes(47))
    (tmp_path / "huge.bin").write_bytes(bytes(1 << 20))
    args = [a.format(k=keys, t=tmp_path) for a in args]
    r = _helper_run(*args, stdin=stdin + "\n")
    assert r.returncode == 2 and r.stdout == ""
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert LmsSigner.load(keys / "own-fw-lms-prvk.pem").leaves_left() == 1 << 15
    assert (tmp_path / "short.bin").read_bytes() == bytes(47)
