"""A vendor's reference tree for OEM tests, made at test time (no /work/shared needed), and an
independent reading of Caliptra 1.x bundles (offsets from spec/flash.md, plain struct).

vendor_tree() lays out what ASPEED ships: config/<prj>-ecc-lms-manifest.toml (and
<prj>-ecc-manifest.toml), key/<prj>/ (or keys/<prj>/) with all four roles' keys (sparse H15
test LMS keys), prebuilt/<prj>/ with images and a bundle vendor- and owner-signed with the
"vendor's" FW keys, and vnd_sig/ with prebuilt vendor signatures made by the bundle's selected
vendor FW keys (vendor_signature = "prebuilt"), as the reference does.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from independent import PREBUILT_TBS, ecc_verify, lms_verify
from projects import ecc_keys, key_section, lms_keys, payload

# spec/flash.md: preamble @8: 4 ECC keys x 96, 32 LMS keys x 48, ECC idx, LMS idx, vendor ECC sig
# 96, vendor LMS sig 1620, owner ECC key 96, owner LMS key 48, owner ECC sig 96, owner LMS sig
# 1620, 8 reserved; header @0x1590 (156 bytes, owner_data its last 40)
V_ECC, V_LMS, V_IDX = 8, 8 + 4 * 96, 8 + 4 * 96 + 32 * 48
V_SIG = V_IDX + 8
O_KEYS = V_SIG + 96 + 1620
O_SIG = O_KEYS + 144
HEADER, HEADER_LEN = 0x1590, 156


@dataclass
class Parsed:
    vendor_ecc: bytes  # the selected slots
    vendor_lms: bytes
    vendor_block: bytes  # all 36 slots
    vendor_sig_ecc: bytes
    vendor_sig_lms: bytes
    owner_ecc: bytes
    owner_lms: bytes
    owner_sig_ecc: bytes
    owner_sig_lms: bytes
    vendor_tbs: bytes
    owner_tbs: bytes
    owner_data: bytes


def parse(data: bytes) -> Parsed:
    assert data[:4] == b"CMAN"
    ecc_idx, lms_idx = struct.unpack_from("<II", data, V_IDX)
    header = data[HEADER : HEADER + HEADER_LEN]
    return Parsed(
        data[V_ECC + 96 * ecc_idx : V_ECC + 96 * (ecc_idx + 1)],
        data[V_LMS + 48 * lms_idx : V_LMS + 48 * (lms_idx + 1)],
        data[V_ECC:V_IDX],
        data[V_SIG : V_SIG + 96],
        data[V_SIG + 96 : V_SIG + 96 + 1620],
        data[O_KEYS : O_KEYS + 96],
        data[O_KEYS + 96 : O_KEYS + 144],
        data[O_SIG : O_SIG + 96],
        data[O_SIG + 96 : O_SIG + 96 + 1620],
        header[:116],
        header,
        header[116:],
    )


def vendor_sigs_ok(p: Parsed) -> bool:
    return ecc_verify(p.vendor_ecc, p.vendor_tbs, p.vendor_sig_ecc) and lms_verify(
        p.vendor_lms, p.vendor_tbs, p.vendor_sig_lms
    )


def owner_sigs_ok(p: Parsed, ecc_pub: bytes, lms_pub: bytes | None) -> bool:
    ok = p.owner_ecc == ecc_pub and ecc_verify(ecc_pub, p.owner_tbs, p.owner_sig_ecc)
    if lms_pub is not None:
        ok = ok and p.owner_lms == lms_pub and lms_verify(lms_pub, p.owner_tbs, p.owner_sig_lms)
    return ok


def sha384(b: bytes) -> bytes:
    return hashlib.sha384(b).digest()


@dataclass
class Tree:
    root: Path
    prj: str
    keys: Path
    prebuilt: Path

    def config(self, ecc_only: bool = False) -> Path:
        suffix = "ecc" if ecc_only else "ecc-lms"
        return self.root / "config" / f"{self.prj}-{suffix}-manifest.toml"

    @property
    def bundle(self) -> Path:
        return self.prebuilt / "caliptra-fw.bin"


IMAGES = (40, 64, 36, 128)


def _config(prj: str, lms: bool, vendor_signature: str, caliptra: str) -> str:
    text = (
        "# a vendor reference config (test)\n\n[manifest_config]\nversion = 1\nflags = 0\n"
        f'security_version = 1\nprj_name = "{prj}"\nvendor_signature = "{vendor_signature}"\n\n'
    )
    for section, prefix in (
        ("vendor_fw_key_config", "vnd-fw"),
        ("vendor_man_key_config", "vnd-man"),
        ("owner_fw_key_config", "own-fw"),
        ("owner_man_key_config", "own-man"),
    ):
        text += key_section(section, prefix, True, lms) + "\n"
    text += f'[image_runtime_list]\ncaliptra_file = "{caliptra}"\nmcu_file = "mcu.bin"\n\n'
    text += (
        '[[image_metadata_list]]\nfile = "mcu.bin"\nsource = 1\nfw_id = 1\n'
        "ignore_auth_check = false\nload_stage = 0\n"
    )
    for i in range(len(IMAGES)):
        text += (
            f'\n[[image_metadata_list]]\nfile = "img{i}.bin"\nsource = 1\nfw_id = {i + 2}\n'
            f"ignore_auth_check = false\nload_stage = {i % 2}\n"
        )
    return text


def vendor_tree(
    root: Path,
    prj: str = "vendorref",
    *,
    key_folder: str = "key",
    vendor_signature: str = "prebuilt",
    caliptra_in_config: bool = True,
) -> Tree:
    from imgtool.demo import sample_bundle
    from imgtool.keys import ecc
    from imgtool.keys.lms_signer import LmsSigner

    keys, pre = root / key_folder / prj, root / "prebuilt" / prj
    ecc_keys(keys)
    lms_keys(keys)
    pre.mkdir(parents=True)
    (pre / "caliptra-fw.bin").write_bytes(sample_bundle(keys))
    (pre / "mcu.bin").write_bytes(b"MCU-RUNTIME-0123")
    for i, size in enumerate(IMAGES):
        (pre / f"img{i}.bin").write_bytes(payload(i, size))
    cal = "caliptra-fw.bin" if caliptra_in_config else ""
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "config" / f"{prj}-ecc-lms-manifest.toml").write_text(
        _config(prj, True, vendor_signature, cal)
    )
    (root / "config" / f"{prj}-ecc-manifest.toml").write_text(
        _config(prj, False, vendor_signature, cal)
    )
    if vendor_signature == "prebuilt":
        digest = sha384(PREBUILT_TBS)
        sig = root / "vnd_sig"
        sig.mkdir()
        der = ecc.sign_digest_der(ecc.load_private(keys / "vnd-fw-ecc-prvk.pem"), digest)
        (sig / "vnd_ecc_sig.der").write_bytes(der)
        lms_sig = LmsSigner.load(keys / "vnd-fw-lms-prvk.pem").sign_digest(digest)
        (sig / "vnd_lms_sig.der").write_bytes(lms_sig)
    return Tree(root, prj, keys, pre)
