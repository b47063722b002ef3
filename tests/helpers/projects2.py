"""Caliptra 2.x test projects, written in the style of the reference 2.x configs
(`<soc>-<board>-ecc-lms-mldsa-manifest.toml`): ast2755-style (padding 256), ast2705-style
(component_id = fw_id), ast1040-style (mostly empty files)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from helpers.projects import KEY_NAMES, ecc_keys, lms_keys

from imgtool.keys import mldsa

SECTIONS = (
    ("vendor_fw_key_config", "vnd-fw"),
    ("vendor_man_key_config", "vnd-man"),
    ("owner_fw_key_config", "own-fw"),
    ("owner_man_key_config", "own-man"),
)


def mldsa_keys(keys: Path) -> None:
    keys.mkdir(parents=True, exist_ok=True)
    for name in KEY_NAMES:
        if not (keys / f"{name}-mldsa-prvk.bin").exists():
            seed = hashlib.sha256(name.encode()).digest()
            mldsa.generate_keypair(keys / f"{name}-mldsa", seed=seed)


@dataclass
class Project2:
    root: Path
    cfg: Path
    keys: Path
    prebuilt: Path
    style: str

    @property
    def man(self) -> Path:
        return self.root / "out" / "m.bin"

    @property
    def flash(self) -> Path:
        return self.root / "out" / "f.bin"

    def args(self, pqc: str = "1") -> list[str]:
        return [
            "--cfg",
            str(self.cfg),
            "--key-dir",
            str(self.keys),
            "--prebuilt-dir",
            str(self.prebuilt),
            "--pqc-key-type",
            pqc,
        ]


def _image(file: str, fw_id: int, comp: int, load: int, stage: int = 0) -> str:
    return (
        "[[image_metadata_list]]\n"
        f'file = "{file}"\nsource = 1\nfw_id = {fw_id:#x}\nignore_auth_check = false\n'
        f"load_stage = {stage}\nexec_bit = {fw_id & 0x7F}\ncomponent_id = {comp:#x}\n"
        f"classification = 0\nimage_load_address = {load:#x}\n"
        f"image_staging_address = {load + 0x1_0000_0000:#x}\n\n"
    )


def make_project2(root: Path, style: str = "ast2755", n_soc: int = 3, flags: int = 1) -> Project2:
    """A project with all keys (ECC, LMS, ML-DSA-87 for the four roles) and tiny distinctive
    payloads; ``style`` picks the reference config shape."""
    keys = root / "keys"
    ecc_keys(keys)
    lms_keys(keys)
    mldsa_keys(keys)
    pre = root / "prebuilt"
    pre.mkdir(parents=True, exist_ok=True)
    empty = style == "ast1040"
    (pre / "caliptra-fw.bin").write_bytes(b"CALIPTRA-FW-2X" * 7)
    (pre / "mcu-runtime.bin").write_bytes(b"" if empty else b"MCU-RUNTIME!" * 3 + b"x")
    text = (
        "[manifest_config]\nversion = 1\n"
        f'flags = {flags}\nsecurity_version = 3\nprj_name = "{style}-test"\n'
    )
    if style == "ast2755":
        text += "padding_align_size = 256\n"
    text += "\n"
    for section, prefix in SECTIONS:
        text += f"[{section}]\n"
        for algo, ext in (("ecc", "pem"), ("lms", "pem"), ("mldsa", "bin")):
            text += f'{algo}_pub_key = "{prefix}-{algo}-pubk.{ext}"\n'
            text += f'{algo}_priv_key = "{prefix}-{algo}-prvk.{ext}"\n'
        text += "\n"
    text += (
        '[image_runtime_list]\ncaliptra_file = "caliptra-fw.bin"\nmcu_file = "mcu-runtime.bin"\n\n'
    )
    text += _image("mcu-runtime.bin", 2, 2, 0x4000_0000)
    for i in range(n_soc):
        fw_id = 0x1000 + i
        name = f"soc-image-{i}.bin"
        data = b"" if empty and i > 0 else bytes([0x30 + i]) * (5 + 7 * i)
        (pre / name).write_bytes(data)
        comp = fw_id if style == "ast2705" else 0x100 + i
        text += _image(name, fw_id, comp, 0x8000_0000 + 0x10000 * i, stage=i % 3)
    cfg = root / f"{style}-evb-ecc-lms-mldsa-manifest.toml"
    cfg.write_text(text)
    return Project2(root, cfg, keys, pre, style)
