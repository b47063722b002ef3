"""Configs written the way the newest reference tool's AST2700 configs are (config/*.toml of
ASPEED's cptra_imgtool): reference keys only, disabled keys as comments, no keys of ours."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from projects import ecc_keys, lms_keys, payload

SECTIONS = (
    ("vendor_fw_key_config", "vnd-fw"),
    ("vendor_man_key_config", "vnd-man"),
    ("owner_fw_key_config", "own-fw"),
    ("owner_man_key_config", "own-man"),
)
FIELDS = (("ecc", "pub"), ("ecc", "priv"), ("lms", "pub"), ("lms", "priv"))


@dataclass
class Image:
    file: str  # "" = empty image
    fw_id: int
    load_stage: int = 0
    svn: int | None = None
    size: int = 0  # bytes of the sample payload written to prebuilt/ (when file != "")


@dataclass
class RefProject:
    root: Path
    prj: str
    cfg: Path
    keys: Path
    prebuilt: Path
    images: list[Image] = field(default_factory=list)

    def data(self, name: str) -> bytes:
        return (self.prebuilt / name).read_bytes() if name else b""

    def args(self, *extra: str) -> list[str]:
        return ["--cfg", str(self.cfg), *extra]


def write(
    root: Path,
    images: list[Image],
    *,
    prj: str = "ast2700-default",
    keys: dict[str, set[str]] | None = None,
    caliptra_file: str = "caliptra-fw.bin",
    caliptra: bytes | None = None,
    mcu_file: str = "zephyr-mcu-runtime.bin",
    manifest_extra: str = "",
    runtime_extra: str = "",
    lms: bool = False,
) -> RefProject:
    """A project laid out like the reference repository (config/, key/<prj>/, prebuilt/<prj>/;
    run the tool from ``root``). ``keys``: section prefix ("vnd-fw", ...) -> the enabled fields
    ("ecc_pub", "ecc_priv", "lms_pub", "lms_priv"); everything else is commented out."""
    keydir, pre, cfgdir = root / "key" / prj, root / "prebuilt" / prj, root / "config"
    pre.mkdir(parents=True, exist_ok=True)
    cfgdir.mkdir(parents=True, exist_ok=True)
    ecc_keys(keydir)
    if lms or caliptra is None:
        lms_keys(keydir)
    keys = keys or {}
    for n, img in enumerate(images):
        if img.file and not (pre / img.file).exists():
            (pre / img.file).write_bytes(payload(n, img.size or 40 + n))
    if mcu_file and not (pre / mcu_file).exists():
        (pre / mcu_file).write_bytes(payload(99, 61))
    if caliptra_file:
        if caliptra is None:
            from imgtool.demo import sample_bundle

            caliptra = sample_bundle(keydir)
        (pre / caliptra_file).write_bytes(caliptra)
    text = [
        "# Licensed under the Apache-2.0 license",
        "",
        "[manifest_config]",
        "version = 1",
        "flags = 0",
        "security_version = 1",
        f'prj_name = "{prj}"',
        *([manifest_extra] if manifest_extra else []),
        "",
    ]
    for section, prefix in SECTIONS:
        text.append(f"[{section}]")
        on = keys.get(prefix, set())
        for algo, kind in FIELDS:
            line = f'{algo}_{kind}_key = "{prefix}-{algo}-{kind}k.pem"'.replace("privk", "prvk")
            text.append(line if f"{algo}_{kind}" in on else f"# {line}")
        text.append("")
    text += [
        "[image_runtime_list]",
        f'caliptra_file = "{caliptra_file}"',
        *([runtime_extra] if runtime_extra else []),
        f'mcu_file = "{mcu_file}"',
        "",
    ]
    for img in images:
        text += [
            "[[image_metadata_list]]",
            f'file = "{img.file}"',
            "source = 1",
            f"fw_id = {img.fw_id}",
            "ignore_auth_check = false",
            f"load_stage = {img.load_stage}",
            *([f"svn = {img.svn}"] if img.svn is not None else []),
            "",
        ]
    cfg = cfgdir / f"{prj}-manifest.toml"
    cfg.write_text("\n".join(text))
    return RefProject(root, prj, cfg, keydir, pre, images)


ALL_KEYS = {p: {"ecc_pub", "ecc_priv", "lms_pub", "lms_priv"} for _, p in SECTIONS}
ECC_KEYS = {p: {"ecc_pub", "ecc_priv"} for _, p in SECTIONS}
OWNER_ECC_KEYS = {p: {"ecc_pub", "ecc_priv"} for p in ("own-fw", "own-man")}


def default_images(mcu: str = "zephyr-mcu-runtime.bin") -> list[Image]:
    """The 14 entries of the newest ast2700-default configs (fw_id 1 = the MCU runtime, svn 1)."""
    names = [
        "ddr4_pmu_train_imem.bin",
        "ddr4_pmu_train_dmem.bin",
        "ddr4_2d_pmu_train_imem.bin",
        "ddr4_2d_pmu_train_dmem.bin",
        "ddr5_pmu_train_imem.bin",
        "ddr5_pmu_train_dmem.bin",
        "dp_fw.bin",
        "uefi_ast2700.bin",
        "atf.bin",
        "optee.bin",
        "u-boot.bin",
        "ssp.bin",
        "tsp.bin",
    ]
    imgs = [Image(mcu, 1, 0, svn=1, size=61)]
    imgs += [
        Image(n, i + 2, 1 if i + 2 >= 10 else 0, size=37 + 13 * i) for i, n in enumerate(names)
    ]
    return imgs
