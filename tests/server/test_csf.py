"""The CSF checks: a corpus of hostile CSF descriptions (each 400 naming the line, cst never
started), the lexer against the real cst, and the canonical form cst is given."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import imx_pki
import pytest
from srvfixtures import FAKE_CST_OK, IMX_MACHINE, Server

from imgtool.server import csf as C

CSF_OK = imx_pki.csf_text("flash.bin")
SRK_LINE = 'File = "crts/SRK_1_2_3_4_table.bin"'
ARCHIVE = {
    "crts/SRK_1_2_3_4_table.bin",
    f"crts/{imx_pki.CSF}_crt.pem",
    f"crts/{imx_pki.IMG}_crt.pem",
    f"keys/{imx_pki.CSF}_key.pem",
    "keys/key_pass.txt",
}


def srk(value: str) -> bytes:
    return CSF_OK.replace(SRK_LINE, f"File = {value}").encode("latin-1")


def add(text: str) -> bytes:
    return (CSF_OK + text).encode("latin-1")


HOSTILE: dict[str, bytes] = {
    # a character before the quote: cst's lexer drops it and reads the absolute path
    "bang-prefix": srk('!"/work/abs/crt.pem"'),
    "dash-prefix": srk('-"/abs/crt.pem"'),
    "colon-prefix": srk(':"/abs/crt.pem"'),
    "tilde-prefix": srk('~"crts/SRK_1_2_3_4_table.bin"'),
    "slash-prefix": srk('/"etc/passwd"'),
    "at-prefix": srk('@"/proc/1/cwd/keys/x_key.pem"'),
    "absolute": srk('"/etc/passwd"'),
    "unquoted-absolute": srk("/etc/shadow"),
    "unquoted-relative": srk("crts/SRK_1_2_3_4_table.bin"),
    "dotdot": srk('"../../keystore/bmc-a/caliptra/own-man-ecc-prvk.pem"'),
    "dotdot-inner": srk('"crts/../../x.pem"'),
    "dot-component": srk('"./crts/SRK_1_2_3_4_table.bin"'),
    "empty-component": srk('"crts//SRK_1_2_3_4_table.bin"'),
    "backslashes": srk('"crts\\..\\..\\etc\\passwd"'),
    "private-key": srk(f'"keys/{imx_pki.CSF}_key.pem"'),
    "key-pass": srk('"keys/key_pass.txt"'),
    "proc-self-cwd": srk('"proc/self/cwd/crts/SRK_1_2_3_4_table.bin"'),
    "a-directory": srk('"crts"'),
    "names-the-artifact": srk('"flash.bin"'),  # uploaded by the client, not from the archive
    "names-the-output": srk('"csf-output.bin"'),
    "not-in-archive": srk('"crts/other_crt.pem"'),
    # a symlink in a key archive is refused when it is unpacked (test_key_archive_is_unpacked_
    # safely[symlink]), so a link's name is never among the archive's files
    "symlinked-name": srk('"crts/SRK_table_link.bin"'),
    "trailing-space": srk('"crts/SRK_1_2_3_4_table.bin "'),
    "space-inside": srk('"crts/SRK 1.bin"'),
    "non-ascii-name": srk('"crts/\u00e9.pem"'),
    "comment-hides-path": srk('"crts/SRK_1_2_3_4_table.bin" # "/etc/passwd"'),
    "two-strings": srk('"crts/SRK_1_2_3_4_table.bin", "/etc/passwd"'),
    "continuation-hides-text": CSF_OK.replace(
        "Source index = 0", 'Source index = 0 \\ "/etc/passwd"'
    ).encode(),
    "comment-after-value": CSF_OK.replace("Version = 4.3", "Version = 4.3 # x").encode(),
    "last-line-comment-no-newline": add('# File = "/etc/passwd"'),
    "number-as-file": srk("0x1234"),
    "secret-key-section": add(
        '\n[Install Secret Key]\n    Key = "dek.bin"\n    Key length = 128\n'
    ),
    "decrypt-section": add('\n[Decrypt Data]\n    Blocks = 0x1 0x0 0x10 "flash.bin"\n'),
    "ahab-certificate": add('\n[Install Certificate]\n    File = "crts/SRK_1_2_3_4_table.bin"\n'),
    "hsm-mode": CSF_OK.replace("Version = 4.3", "Version = 4.3\n    Mode = HSM").encode(),
    "ahab-target": CSF_OK.replace("Version = 4.3", "Target = AHAB\n    Version = 4.3").encode(),
    "not-hab4": CSF_OK.replace("Version = 4.3", "Version = 1.0").encode(),
    "unknown-keyword": CSF_OK.replace(
        "Source index = 0", 'Source index = 0\n    Source = "/etc/passwd"'
    ).encode(),
    "keyword-twice": CSF_OK.replace(
        "Source index = 0", 'Source index = 0\n    File = "crts/SRK_1_2_3_4_table.bin"'
    ).encode(),
    "section-twice": add('\n[Install SRK]\n    File = "crts/SRK_1_2_3_4_table.bin"\n'),
    "keyword-first": b'File = "/etc/passwd"\n' + CSF_OK.encode(),
    "broken-section": CSF_OK.replace("[Install CSFK]", "[Install CSFK").encode(),
    "blocks-absolute": CSF_OK.replace('0x8000 "flash.bin"', '0x8000 "/etc/passwd"').encode(),
    "blocks-other-file": CSF_OK.replace('0x8000 "flash.bin"', '0x8000 "crts/x.bin"').encode(),
    "blocks-key-archive": CSF_OK.replace(
        '0x8000 "flash.bin"', f'0x8000 "keys/{imx_pki.CSF}_key.pem"'
    ).encode(),
    "overlong-line": CSF_OK.replace("[Unlock]", "# " + "x" * 2000 + "\n[Unlock]").encode(),
    "too-large": CSF_OK.encode() + (b"# padding\n" * 7000),
    "nul-in-name": srk('"crts/SRK_1_2_3_4_table.bin\0/../../etc/passwd"'),
    "nul-in-comment": add("# a\0b\n"),
    "escape-byte": add("# \x1b[2J\n"),
    "lone-cr": srk('\r"/etc/passwd"'),
    "vertical-tab": srk('\x0b"/etc/passwd"'),
    "non-utf8": add("# \xff\xfe\n"),
    "empty": b"",
    "only-comments": b"# nothing\n",
}


def test_corpus_is_big_enough() -> None:
    assert len(HOSTILE) >= 30


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_csf_is_refused_by_the_checks(name: str) -> None:
    with pytest.raises(C.CsfError) as err:
        parsed = C.parse(HOSTILE[name])
        C.check_files(parsed, ARCHIVE, "flash.bin")
    msg = str(err.value)
    assert msg.startswith("CSF") and "\n" not in msg and len(msg) < 300


def _sign_records(server: Server, data: bytes) -> list[dict[str, object]]:
    h = hashlib.sha256(data).hexdigest()
    recs = [json.loads(x) for x in server.audit.read_text().splitlines()]
    return [r for r in recs if r.get("event") == "sign" and r["inputs_sha256"].get("csf") == h]  # type: ignore[union-attr]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_csf_over_http_is_400_and_cst_never_runs(server: Server, name: str) -> None:
    data = HOSTILE[name]
    files = {
        "csf": ("csf.txt", data, "text/plain"),
        "artifact": ("flash.bin", os.urandom(0x8000), "application/octet-stream"),
    }
    form = {"machine": IMX_MACHINE, "soctype": "mx8m", "cstversion": FAKE_CST_OK}
    with server.client() as c:
        r = c.post("/sign/imx", data=form, files=files)
    assert r.status_code == 400, r.text
    assert r.text.startswith("CSF") and len(r.text.strip().splitlines()) == 1
    if name not in ("too-large", "empty", "only-comments"):
        assert "line" in r.text
    # cst starts only after an "about to sign" audit record: there is none for this CSF
    assert _sign_records(server, data) == []
    assert not any(server.work.iterdir())


def test_line_numbers_name_the_offending_line() -> None:
    with pytest.raises(C.CsfError, match="line 10"):
        C.parse(HOSTILE["bang-prefix"])
    with pytest.raises(C.CsfError, match="line 30"):
        C.parse(HOSTILE["last-line-comment-no-newline"])


def test_good_csf_round_trips_and_allows_the_usual_forms() -> None:
    variants = [
        CSF_OK,
        CSF_OK.replace("\n", "\r\n"),  # CRLF
        CSF_OK.replace("    ", "\t"),
        CSF_OK.replace("[Install SRK]", "[install srk]").replace("File =", "FILE ="),
        "# a comment line\n" + CSF_OK,
        CSF_OK.replace(
            'Blocks = 0x40480000 0x0 0x8000 "flash.bin"',
            'Blocks = 0x40480000 0x0 0x4000 "flash.bin", \\\n'
            '        0x40484000 0x4000 0x4000 "flash.bin"',
        ),
    ]
    for text in variants:
        parsed = C.parse(text.encode())
        C.check_files(parsed, ARCHIVE, "flash.bin")
        again = C.parse(C.render(parsed))
        assert C.render(again) == C.render(parsed)
        assert again.files == parsed.files and again.blocks == parsed.blocks


def test_lexer_reads_what_cst_reads() -> None:
    """The tokenizer's FILENAME for the tricky forms, as cst's flex rules define them."""

    def names(text: bytes) -> list[str]:
        return [t.text for t in C.tokenize(text) if t.kind == C.FILENAME]

    assert names(b'File = !"/abs/x"\n') == ["/abs/x"]
    assert names(b'File = "a" # "b"\n') == ['a" # "b']  # greedy: first to last quote
    assert names(b'File = "a\\b"\n') == ["a/b"]
    assert names(b'# File = "x"\n') == []  # a comment (newline follows)
    assert names(b'# File = "x"') == ["x"]  # no newline: '#' alone is skipped, the rest is read
    assert names(b'Key = \\ "hidden"\nFile = "y"\n') == ["y"]  # continuation drops the rest
    kinds = [t.kind for t in C.tokenize(b"Version = 4.3\n")]
    assert kinds == [C.WORD, C.EQUALS, C.NUMBER, C.DOT, C.NUMBER, C.EOL, C.EOL]


needs_cst = pytest.mark.skipif(
    imx_pki.cst_available() is not None, reason=str(imx_pki.cst_available())
)


@needs_cst
@pytest.mark.parametrize(
    "value",
    [
        '!"/nonexistent/a.bin"',
        '"crts/none.bin" # "/nonexistent/b.bin"',
        '"crts\\none.bin"',
        '-"crts/none2.bin"',
    ],
)
def test_lexer_agrees_with_the_real_cst(tmp_path: Path, value: str) -> None:
    """Run NXP's cst (unsandboxed, in a scratch dir, on a missing file) and compare the name it
    says it looked for with the FILENAME our tokenizer extracts."""
    pki = imx_pki.make_pki(tmp_path / "imx")
    cst = imx_pki.install_cst(tmp_path / "nxp")
    work = tmp_path / "w"
    shutil.copytree(pki.root, work)
    data = srk(value)
    (work / "csf-input.txt").write_bytes(data)
    (work / "flash.bin").write_bytes(os.urandom(0x8000))
    r = subprocess.run(
        [str(cst), "-i", "csf-input.txt", "-o", "out.bin"],
        cwd=work,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    ours = next(t.text for t in C.tokenize(data) if t.kind == C.FILENAME)
    assert r.returncode != 0
    assert f"File not present {ours}" in r.stdout + r.stderr
    with pytest.raises(C.CsfError):
        C.check_files(C.parse(data), ARCHIVE, "flash.bin")


def _refusal(check: Callable[[bytes], None], data: bytes) -> str | None:
    try:
        check(data)
    except C.CsfError as exc:
        return str(exc)
    return None


def test_text_fast_path_refuses_exactly_what_the_line_loop_refuses() -> None:
    """_text_checks skips the per-byte loop for clean text; over every single-byte change of a
    real CSF (each byte 0..255 at several places), CR placements, line lengths and counts,
    it must refuse exactly what the loop refuses, with the same message."""
    base = imx_pki.csf_text("flash.bin").encode()
    cases = [base, base.replace(b"\n", b"\r\n"), base + b"\r", base.replace(b"\n", b"\r\r\n", 1)]
    for pos in (0, 5, len(base) // 2, len(base) - 2, len(base) - 1):
        for byte in range(256):
            cases.append(base[:pos] + bytes([byte]) + base[pos + 1 :])
    line = b"# " + b"x" * (C.MAX_LINE - 2)
    cases += [line + b"\n" + base, line + b"x\n" + base, base + line, base + line + b"\r"]
    cases += [b"#\n" * (C.MAX_LINES - 2) + base[:10], b"#\n" * (C.MAX_LINES - 1) + b"#"]
    cases += [b"#\n" * C.MAX_LINES, b"[Header]\r\r", b"[Header]\rx\n", b"\r"]
    refused = 0
    for data in cases:
        want = None if len(data) > C.MAX_BYTES else _refusal(C._line_checks, data)
        if not data.strip():
            continue
        assert _refusal(C._text_checks, data) == want, data[:60]
        refused += want is not None
    assert refused > 500  # the cases do exercise the refusals
