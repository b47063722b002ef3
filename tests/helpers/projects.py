"""Build small self-contained projects for tests: fresh keys and tiny distinctive payloads."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imgtool.keys import ecc

KEY_NAMES = ("vnd-fw", "vnd-man", "own-fw", "own-man")


def stand_in_bundle(keys: Path | None = None, tag: bytes = b"STAND-IN") -> bytes:
    """A structurally valid, unsigned Caliptra 1.x firmware bundle (marker CMAN, manifest size
    5884, FMC and runtime TOC entries pointing at 8 bytes each), built from spec/flash.md with
    plain struct. With ``keys``, its vendor key slot 0 and owner keys are the project's FW public
    keys (as in a real bundle), so that signatures by them check out; its own signatures are
    empty (use make_project(sample_bundle=True) for a signed one)."""
    import struct

    from independent import ecc_pub_hw

    out = bytearray(b"CMAN" + struct.pack("<I", 5884) + bytes(5884 - 8))
    if keys is not None:
        for prefix, ecc_off, lms_off in (("vnd-fw", 8, 8 + 4 * 96), ("own-fw", 3652, 3652 + 96)):
            if (keys / f"{prefix}-ecc-pubk.pem").exists():
                out[ecc_off : ecc_off + 96] = ecc_pub_hw(keys / f"{prefix}-ecc-pubk.pem")
            if (keys / f"{prefix}-lms-pubk.pem").exists():
                out[lms_off : lms_off + 48] = (keys / f"{prefix}-lms-pubk.pem").read_bytes()
    for i, off in enumerate((5884, 5892)):
        struct.pack_into("<II", out, 0x162C + 104 * i, i + 1, 1)
        struct.pack_into("<7I", out, 0x162C + 104 * i + 28, 1, 0, 0, 0, 0, off, 8)
    return bytes(out) + (tag + bytes(16))[:16]


STAND_IN_BUNDLE = stand_in_bundle()  # no keys at all


def payload(i: int, size: int) -> bytes:
    """A distinctive payload: 'IMGii' repeated, cut to size."""
    unit = f"IMG{i:02d}".encode()
    return (unit * (size // len(unit) + 1))[:size]


@dataclass
class Project:
    root: Path
    cfg: Path
    keys: Path
    prebuilt: Path
    out: Path

    def args(self, *extra: str) -> list[str]:
        return [
            "--cfg",
            str(self.cfg),
            "--key-dir",
            str(self.keys),
            "--prebuilt-dir",
            str(self.prebuilt),
            *extra,
        ]

    def doit_cmd(self, *args: str) -> list[str]:
        """`python -m doit` on this project with the repository's dodo.py."""
        import sys

        repo = Path(__file__).resolve().parents[2]
        return [
            sys.executable,
            "-m",
            "doit",
            "-f",
            str(repo / "dodo.py"),
            "-d",
            str(self.root),
            *args,
            f"cfg={self.cfg}",
            f"key_dir={self.keys}",
            f"prebuilt_dir={self.prebuilt}",
        ]

    @property
    def man(self) -> Path:
        return self.out / "m.bin"

    @property
    def flash(self) -> Path:
        return self.out / "f.bin"


def ecc_keys(keys: Path) -> None:
    keys.mkdir(parents=True, exist_ok=True)
    for name in KEY_NAMES:
        if not (keys / f"{name}-ecc-prvk.pem").exists():
            ecc.generate_keypair(keys / f"{name}-ecc")


def lms_keys(keys: Path, kind: str = "h15-sparse") -> None:
    """LMS keys for the four roles. "h15-sparse" (default): H15/W4 keys, the only type
    Caliptra 1.x verifies (so `verify` accepts what they sign), made like the reference demo
    keys (only leaf 5 is real, so every signature reuses it: test keys only), in a fraction of
    a second. "h5": full-tree H5/W4 keys with real leaf state (32 leaves each), for tests of
    the leaf state; Caliptra does not verify that type."""
    import os

    from imgtool.keys import lms, lms_tree

    for name in KEY_NAMES:
        if (keys / f"{name}-lms-prvk.pem").exists():
            continue
        if kind == "h5":
            lms_tree.generate(keys / f"{name}-lms", lms.LMS_SHA256_M24_H5, lms.LMOTS_SHA256_N24_W4)
            continue
        assert kind == "h15-sparse", kind
        key = lms.LmsPrivateKey(
            lms.LMS_SHA256_M24_H15, lms.LMOTS_SHA256_N24_W4, os.urandom(16), os.urandom(24)
        )
        pub = lms.LmsPublicKey(key.lms_type, key.ots_type, key.I, lms.sparse_root(key))
        keys.mkdir(parents=True, exist_ok=True)
        (keys / f"{name}-lms-prvk.pem").write_bytes(key.to_bytes())
        (keys / f"{name}-lms-pubk.pem").write_bytes(pub.to_bytes())


def key_section(section: str, prefix: str, ecc_on: bool, lms_on: bool) -> str:
    lines = [f"[{section}]"]
    if ecc_on:
        lines += [
            f'ecc_pub_key = "{prefix}-ecc-pubk.pem"',
            f'ecc_priv_key = "{prefix}-ecc-prvk.pem"',
        ]
    if lms_on:
        lines += [
            f'lms_pub_key = "{prefix}-lms-pubk.pem"',
            f'lms_priv_key = "{prefix}-lms-prvk.pem"',
        ]
    return "\n".join(lines) + "\n"


def make_project(
    root: Path,
    *,
    sizes: tuple[int, ...] = (40, 64, 33, 128, 7),
    fmt: str = "aspeed",
    vendor: bool = True,
    owner: bool = True,
    lms: bool = False,
    version: int = 1,
    flags: int = 0,
    security_version: int = 3,
    vendor_signature: str = "generate",
    caliptra: bytes | str | None = "stand-in",
    mcu: bytes = b"MCU-RUNTIME-0123",
    extra_runtime: str = "",
    extra_manifest: str = "",
    load_stages: tuple[int, ...] | None = None,
    sample_bundle: bool = False,
    lms_kind: str = "h15-sparse",
) -> Project:
    """A project with len(sizes) SoC images (fw_id 2..) plus the MCU runtime (fw_id 1)."""
    keys, pre, out = root / "keys", root / "prebuilt", root / "out"
    pre.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    ecc_keys(keys)
    if lms or sample_bundle:
        lms_keys(keys, lms_kind)
    (pre / "mcu.bin").write_bytes(mcu)
    if sample_bundle:
        from imgtool.demo import sample_bundle as make_bundle

        caliptra = make_bundle(keys)
    elif caliptra == "stand-in":  # an unsigned bundle holding this project's FW public keys
        caliptra = stand_in_bundle(keys)
    if isinstance(caliptra, bytes):
        (pre / "caliptra-fw.bin").write_bytes(caliptra)
    text = (
        f"[manifest_config]\nversion = {version}\nflags = {flags}\n"
        f'security_version = {security_version}\nprj_name = "test"\nformat = "{fmt}"\n'
        f'vendor_signature = "{vendor_signature}"\n{extra_manifest}\n'
    )
    for section, prefix, on in (
        ("vendor_fw_key_config", "vnd-fw", vendor),
        ("vendor_man_key_config", "vnd-man", vendor),
        ("owner_fw_key_config", "own-fw", owner),
        ("owner_man_key_config", "own-man", owner),
    ):
        text += key_section(section, prefix, on, on and lms)
    cal_name = "caliptra-fw.bin" if caliptra is not None else ""
    text += f'[image_runtime_list]\ncaliptra_file = "{cal_name}"\nmcu_file = "mcu.bin"\n'
    text += extra_runtime + "\n"
    text += (
        '[[image_metadata_list]]\nfile = "mcu.bin"\nsource = 1\nfw_id = 1\n'
        "ignore_auth_check = false\nload_stage = 0\n"
    )
    for i, size in enumerate(sizes):
        (pre / f"img{i}.bin").write_bytes(payload(i, size))
        stage = load_stages[i] if load_stages else (1 if i % 2 else 0)
        text += (
            f'\n[[image_metadata_list]]\nfile = "img{i}.bin"\nsource = 1\nfw_id = {i + 2}\n'
            f"ignore_auth_check = {'true' if i == 2 else 'false'}\nload_stage = {stage}\n"
        )
    cfg = root / "project.toml"
    cfg.write_text(text)
    return Project(root, cfg, keys, pre, out)
