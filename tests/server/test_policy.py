"""The per-role certificate policy of /sign/imx (red-team finding F1): a CSF may install only
the SRK table for Install SRK, a CSF certificate for Install CSFK, an IMG certificate for Install
Key and an SRK certificate of a no-CA tree for Install NOCAK -- never the CA's or an SRK's
certificate in a role that makes cst sign with that key."""

from __future__ import annotations

import shutil
from pathlib import Path

import imx_pki
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from srvfixtures import IMX_MACHINE, Server

from imgtool.server import csf as csfmod
from imgtool.server import csfpolicy

CA = "crts/CA1_sha256_2048_65537_v3_ca_crt.pem"
SRK1 = f"crts/{imx_pki.SRK[0]}_crt.pem"
CSFC = f"crts/{imx_pki.CSF}_crt.pem"
IMGC = f"crts/{imx_pki.IMG}_crt.pem"
TABLE = "crts/SRK_1_2_3_4_table.bin"
FUSE = "crts/SRK_1_2_3_4_fuse.bin"


def csf(csfk: str = CSFC, key: str = IMGC, table: str = TABLE, size: int = 0x1000) -> str:
    t = imx_pki.csf_text("art.bin", size)
    t = t.replace(CSFC, "@CSFK@").replace(IMGC, "@KEY@")
    return t.replace("@CSFK@", csfk).replace("@KEY@", key).replace(TABLE, table)


def nocak_csf(cert: str, table: str = TABLE) -> str:
    return f"""[Header]
    Version = 4.3
    Hash Algorithm = sha256
    Engine = CAAM
    Engine Configuration = 0
    Certificate Format = X509
    Signature Format = CMS

[Install SRK]
    File = "{table}"
    Source index = 0

[Install NOCAK]
    File = "{cert}"

[Authenticate CSF]

[Authenticate Data]
    Verification index = 0
    Blocks = 0x40480000 0x0 0x1000 "art.bin"
"""


def _index(root: Path) -> dict[str, csfpolicy.FileInfo]:
    files = frozenset(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return csfpolicy.index_tree(root, files)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> imx_pki.Pki:
    return imx_pki.make_pki(tmp_path_factory.mktemp("policy"))


def make_nocak_pki(work: Path, stem: str = "SRK{}_sha256_2048_65537_v3_usr") -> Path:
    """A no-CA (fast authentication) tree: four self-signed SRK certificates, CA:FALSE."""
    crts = work / "crts"
    crts.mkdir(parents=True)
    names = [stem.format(i) for i in range(1, 5)]
    for n in names:
        k = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        c = imx_pki._cert(k, n, k, n, False)
        (crts / f"{n}_crt.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    table = imx_pki.srk_table([crts / f"{n}_crt.pem" for n in names])
    (crts / "SRK_1_2_3_4_table.bin").write_bytes(table)
    return work


HOSTILE = {
    "CA cert as CSF key": (csf(csfk=CA), 14, "CA certificate"),
    "SRK cert as CSF key": (csf(csfk=SRK1), 14, "CA certificate"),
    "CA cert as image key": (csf(key=CA), 25, "CA certificate"),
    "SRK cert as image key": (csf(key=SRK1), 25, "CA certificate"),
    "IMG cert as CSF key": (csf(csfk=IMGC), 14, "not a CSF certificate"),
    "CSF cert as image key": (csf(key=CSFC), 25, "not an IMG certificate"),
    "a certificate as SRK table": (csf(table=CSFC), 10, "not an SRK table"),
    "the fuse file as SRK table": (csf(table=FUSE), 10, "not an SRK table"),
    "the SRK table as image key": (csf(key=TABLE), 25, "not a certificate"),
    "CA-flag SRK cert as NOCAK": (nocak_csf(SRK1), 14, "CA certificate"),
    "CSF cert as NOCAK": (nocak_csf(CSFC), 14, "not an SRK certificate"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_certificate_in_the_wrong_role_is_refused(pki: imx_pki.Pki, name: str) -> None:
    text, line, why = HOSTILE[name]
    parsed = csfmod.parse(text.encode())
    with pytest.raises(csfmod.CsfError) as exc:
        csfpolicy.check_roles(parsed, _index(pki.root))
    assert exc.value.line == line
    assert why in str(exc.value)
    assert str(exc.value).startswith(f"CSF line {line}: ")


def test_the_usual_nxp_tree_passes(pki: imx_pki.Pki) -> None:
    csfpolicy.check_roles(csfmod.parse(csf().encode()), _index(pki.root))


def test_a_digsigserver_minimal_archive_passes(pki: imx_pki.Pki, tmp_path: Path) -> None:
    """digsigserver's documented archive: the SRK table and the CSF/IMG certificates and keys
    only (no CA or SRK certificates), here flat (no crts/ folder) and renamed: the issuer is
    found through the SRK table's keys, not through the names."""
    src = pki.root / "crts"
    shutil.copy(src / "SRK_1_2_3_4_table.bin", tmp_path / "srk-table.bin")
    shutil.copy(src / f"{imx_pki.CSF}_crt.pem", tmp_path / "csf.pem")
    shutil.copy(src / f"{imx_pki.IMG}_crt.pem", tmp_path / "img.pem")
    text = csf(csfk="csf.pem", key="img.pem", table="srk-table.bin")
    idx = _index(tmp_path)
    csfpolicy.check_roles(csfmod.parse(text.encode()), idx)
    # a renamed CSF certificate in the image role still fits the image role's crypto checks
    # (both are issued by the SRK): the NXP name in its CN still says CSF
    with pytest.raises(csfmod.CsfError, match="not an IMG certificate"):
        csfpolicy.check_roles(
            csfmod.parse(csf("csf.pem", "csf.pem", "srk-table.bin").encode()), idx
        )


def test_source_index_past_a_short_srk_table_is_refused(pki: imx_pki.Pki, tmp_path: Path) -> None:
    """A two-key SRK table: Source Index 2 is in HAB's range (the parser allows 0-3) but names
    no key of this table."""
    crts = tmp_path / "crts"
    shutil.copytree(pki.root / "crts", crts)
    (crts / "SRK_1_2_table.bin").write_bytes(imx_pki.srk_table(pki.srk_certs[:2]))
    text = csf(table="crts/SRK_1_2_table.bin")
    csfpolicy.check_roles(csfmod.parse(text.encode()), _index(tmp_path))
    bad = csfmod.parse(text.replace("Source index = 0", "Source index = 2").encode())
    with pytest.raises(csfmod.CsfError, match="line 11: Source Index must be below 2"):
        csfpolicy.check_roles(bad, _index(tmp_path))


def test_a_certificate_of_another_tree_is_refused(pki: imx_pki.Pki, tmp_path: Path) -> None:
    other = imx_pki.make_pki(tmp_path / "other")
    mixed = tmp_path / "mixed"
    shutil.copytree(pki.root / "crts", mixed / "crts")
    shutil.copy(other.root / "crts" / f"{imx_pki.IMG}_crt.pem", mixed / "crts" / "IMG9_crt.pem")
    text = csf(key="crts/IMG9_crt.pem")
    with pytest.raises(csfmod.CsfError, match="line 25: .* not issued by an SRK of"):
        csfpolicy.check_roles(csfmod.parse(text.encode()), _index(mixed))


def test_nocak_with_a_no_ca_tree(tmp_path: Path) -> None:
    root = make_nocak_pki(tmp_path)
    idx = _index(root)
    srk1 = "crts/SRK1_sha256_2048_65537_v3_usr_crt.pem"
    csfpolicy.check_roles(csfmod.parse(nocak_csf(srk1).encode()), idx)
    # the same SRK certificate as a CSF key: refused by its NXP name, and under a neutral
    # name because it is the SRK's own key
    with pytest.raises(csfmod.CsfError, match="line 14: .*not a CSF certificate"):
        csfpolicy.check_roles(csfmod.parse(csf(csfk=srk1).encode()), idx)
    neutral = make_nocak_pki(tmp_path / "neutral", "signer{}")  # no NXP names at all
    idx = _index(neutral)
    csfpolicy.check_roles(csfmod.parse(nocak_csf("crts/signer1_crt.pem").encode()), idx)
    with pytest.raises(csfmod.CsfError, match="line 14: .*is an SRK certificate"):
        csfpolicy.check_roles(csfmod.parse(csf(csfk="crts/signer1_crt.pem").encode()), idx)


def test_srk_table_parser_refuses_near_misses() -> None:
    assert csfpolicy.parse_srk_table(b"") is None
    assert csfpolicy.parse_srk_table(b"\xd7\x00\x04\x40") is None  # no keys
    assert csfpolicy.parse_srk_table(b"\xd7\x00\x05\x40\x00") is None  # not a key entry
    assert csfpolicy.parse_srk_table(b"\xd7\x00\x09\x40\xe1\x00\x05\x21\x00") is None


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_wrong_role_over_http_is_400_naming_the_line(server: Server, name: str) -> None:
    if server.pki is None:
        pytest.skip("no real CST here")
    text, line, why = HOSTILE[name]
    with server.client() as c:
        r = c.post(
            "/sign/imx",
            data={"machine": IMX_MACHINE, "soctype": "mx8m", "cstversion": imx_pki.CST_VERSION},
            files={"csf": ("csf.txt", text), "artifact": ("art.bin", bytes(0x1000))},
        )
    assert r.status_code == 400, r.text
    assert r.text.startswith(f"CSF line {line}: ") and why in r.text
