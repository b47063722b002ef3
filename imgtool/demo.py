"""`make run`: a demo project with fresh keys and sample binaries, built by doit and verified.

python -m imgtool.demo [--root DIR] [--lms-height H]

Creates (once, git-ignored) config/demo.toml, keys/demo/ and prebuilt/demo/ with
`cptra-imgtool new-project demo`, fills prebuilt/demo/ with distinctive sample binaries and a
sample Caliptra 1.x firmware bundle signed with the demo FW keys, then runs
`doit flash cfg=config/demo.toml`, computes the fuse values of the bundle (`cptra-imgtool
fuses`), verifies the image from those fuses alone (`cptra-imgtool verify --fuses`), and shows
what the image holds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

from .formats import bundle1 as bundle
from .keys import ecc, lms
from .keys.lms_signer import LmsSigner

DEMO = "demo"
# sizes like the reference AST2700 prebuilt binaries (bytes)
SAMPLE_SIZES = {
    "zephyr-mcu-runtime.bin": 61_432,
    "ddr4_pmu_train_imem.bin": 30_680,
    "ddr4_pmu_train_dmem.bin": 65_536,
    "ddr4_2d_pmu_train_imem.bin": 29_880,
    "ddr4_2d_pmu_train_dmem.bin": 65_536,
    "ddr5_pmu_train_imem.bin": 53_076,
    "ddr5_pmu_train_dmem.bin": 65_536,
    "dp_fw.bin": 16_384,
    "uefi_ast2700.bin": 40_960,
    "atf.bin": 31_035,
    "optee.bin": 441_488,
    "u-boot.bin": 793_904,
    "ssp.bin": 72_876,
    "tsp.bin": 70_840,
}


def sample_payload(name: str, size: int) -> bytes:
    """Deterministic, distinctive bytes: a SHA-256 stream seeded with the file name."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{name}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def _swap(b: bytes) -> bytes:
    return b"".join(b[i : i + 4][::-1] for i in range(0, len(b), 4))


def sample_bundle(keys: Path) -> bytes:
    """A Caliptra 1.x firmware bundle (sample FMC/runtime bytes) whose vendor key slot 0 and
    owner keys are the project's FW keys, signed with them, so that `verify` can check the
    whole chain from the bundle to the SoC manifest."""
    vnd_ecc = ecc.EccSigner.load(keys / "vnd-fw-ecc-prvk.pem")
    own_ecc = ecc.EccSigner.load(keys / "own-fw-ecc-prvk.pem")
    vnd_lms = LmsSigner.load(keys / "vnd-fw-lms-prvk.pem")
    own_lms = LmsSigner.load(keys / "own-fw-lms-prvk.pem")
    fmc = sample_payload("caliptra-fmc", 18_848)
    rt = sample_payload("caliptra-runtime", 83_416)
    fmc_off = bundle.MANIFEST_SIZE
    rt_off = fmc_off + len(fmc)

    def toc(ident: int, load: int, off: int, data: bytes) -> bytes:
        return (
            struct.pack("<II", ident, 1)
            + bytes(20)
            + struct.pack("<7I", 1, 0, 0, load, load, off, len(data))
            + _swap(hashlib.sha384(data).digest())
        )

    tocs = toc(1, 0x40000000, fmc_off, fmc) + toc(2, 0x40010000, rt_off, rt)
    header = (
        struct.pack("<II", 1, 0)
        + struct.pack("<5I", 0, 0, 0, 2, 1)
        + _swap(hashlib.sha384(tocs).digest())
        + bytes(40)
        + bytes(40)
    )
    assert len(header) == bundle.HEADER_LEN
    vdig = hashlib.sha384(header[: bundle.HEADER_LEN - bundle.OWNER_DATA_LEN]).digest()
    odig = hashlib.sha384(header).digest()
    pre = vnd_ecc.public_bytes() + bytes(96 * 3)
    pre += vnd_lms.public_bytes() + bytes(48 * 31)
    pre += struct.pack("<II", 0, 0)
    pre += vnd_ecc.sign_digest(vdig) + vnd_lms.sign_digest(vdig)
    pre += own_ecc.public_bytes() + own_lms.public_bytes()
    pre += own_ecc.sign_digest(odig) + own_lms.sign_digest(odig) + bytes(8)
    data = bundle.MARKER + struct.pack("<I", bundle.MANIFEST_SIZE) + pre + header + tocs
    assert len(data) == bundle.MANIFEST_SIZE
    return data + fmc + rt


def fill_prebuilt(cfg_path: Path, keys: Path) -> list[str]:
    """Write a sample binary for every file the config lists that does not exist yet: the
    Caliptra bundle (signed with the demo FW keys), the MCU runtime and the SoC images."""
    from .config import load_config

    cfg = load_config(cfg_path, key_dir=keys, check_files=False)
    made = []
    if cfg.caliptra_file is not None and not cfg.caliptra_file.exists():
        cfg.caliptra_file.parent.mkdir(parents=True, exist_ok=True)
        cfg.caliptra_file.write_bytes(sample_bundle(keys))
        made.append(cfg.caliptra_file.name)
    for path in {cfg.mcu_file, *(img.path for img in cfg.images)}:
        if path is not None and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(sample_payload(path.name, SAMPLE_SIZES.get(path.name, 4096)))
            made.append(path.name)
    return sorted(made)


def _run(cmd: list[str]) -> int:
    shown = list(cmd)
    if shown[:3] == [sys.executable, "-m", "imgtool"]:
        shown[:3] = ["cptra-imgtool"]
    elif shown[:2] == [sys.executable, "-m"]:
        shown[:2] = []
    print("$ " + " ".join(shown), flush=True)
    return subprocess.run(cmd, check=False).returncode


def _doit(cfg: str, *args: str) -> int:
    """`doit ARGS cfg=...` with the checkout's dodo.py, or the same tasks through
    `cptra-imgtool build` where there is no dodo.py (an installed cptra-imgtool)."""
    if Path("dodo.py").is_file():
        return _run([sys.executable, "-m", "doit", *args, f"cfg={cfg}"])
    return _run([sys.executable, "-m", "imgtool", "build", "--cfg", cfg, *args])


def main(argv: list[str] | None = None) -> int:
    from .cli.main import main as cli_main

    p = argparse.ArgumentParser(prog="python -m imgtool.demo", description=__doc__)
    p.add_argument("--root", type=Path, default=Path("."), help="project root (default .)")
    p.add_argument(
        "--lms-height",
        type=int,
        default=15,
        help="LMS tree height of new demo keys (default 15: the only height Caliptra 1.x "
        "verifies; 5 and 10 make test keys that `verify --fuses` rejects where LMS is checked)",
    )
    a = p.parse_args(argv)
    root = a.root.resolve()
    os.chdir(root)
    cfg = Path("config") / f"{DEMO}.toml"
    keys = Path("keys") / DEMO
    if not cfg.exists():
        print(f"creating the demo project (fresh ECC P-384 and LMS H{a.lms_height}/W4 keys)")
        force = ["--force"] if a.lms_height != 15 else []  # other heights: test keys only
        rc = cli_main(["new-project", DEMO, "--lms-height", str(a.lms_height), *force])
        if rc:
            return rc
    else:
        print(
            f"using the existing demo project {cfg} (delete it, keys/{DEMO}/ and "
            f"prebuilt/{DEMO}/ to start over)"
        )
    made = fill_prebuilt(cfg, keys)
    if made:
        print(f"sample binaries written to prebuilt/{DEMO}/: {', '.join(made)}")
    pub = keys / "own-man-lms-pubk.pem"
    if pub.exists():
        key = lms.load_public(pub)
        print(
            f"LMS keys: H{key.height}/W4, tree height {key.height} ({1 << key.height} one-time "
            f"signatures per key; `cptra-imgtool lms-status {keys}/own-man-lms-prvk.pem` shows "
            "what is left)"
        )
    else:
        print("LMS keys: none in this demo project (ECC P-384 only)")
    # the build shows every task (".  " ran, "-- " up to date)
    if _doit(str(cfg), "flash"):
        return 1
    image = Path("out") / f"{DEMO}-flash-image.bin"
    print(f"\nflash image: {root / image} ({os.path.getsize(image)} bytes)\n", flush=True)
    # the device's view: the fuse values this bundle needs, then verify from them alone
    bundle_file = Path("prebuilt") / DEMO / "caliptra-fw.bin"
    fuses_file = Path("out") / f"{DEMO}-fuses.toml"
    for cmd in (
        ["fuses", "--caliptra-fw", str(bundle_file), "--out", str(fuses_file)],
        ["verify", str(image), "--fuses", str(fuses_file), "--quiet"],
    ):
        print("$ cptra-imgtool " + " ".join(cmd), flush=True)
        if cli_main(cmd):
            return 1
    print(flush=True)
    return cli_main(["inspect", str(image)])


if __name__ == "__main__":
    sys.exit(main())
