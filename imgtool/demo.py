"""`make run`: a demo project with fresh keys and sample binaries, built by doit and verified.

python -m imgtool.demo [--root DIR] [--lms-height H]

Creates (once, git-ignored) config/demo.toml, keys/demo/ and prebuilt/demo/ with
`cptra-imgtool new-project demo`, fills prebuilt/demo/ with distinctive sample binaries and a
sample Caliptra 1.x firmware bundle signed with the demo FW keys, then runs
`doit flash cfg=config/demo.toml` and `cptra-imgtool verify`, and shows what the image holds.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

from . import bundle, ecc, lms

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
    vnd_lms = lms.LmsSigner.load(keys / "vnd-fw-lms-prvk.pem")
    own_lms = lms.LmsSigner.load(keys / "own-fw-lms-prvk.pem")
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


def fill_prebuilt(prebuilt: Path, keys: Path) -> list[str]:
    made = []
    for name, size in SAMPLE_SIZES.items():
        p = prebuilt / name
        if not p.exists():
            p.write_bytes(sample_payload(name, size))
            made.append(name)
    cal = prebuilt / "caliptra-fw.bin"
    if not cal.exists():
        cal.write_bytes(sample_bundle(keys))
        made.append(cal.name)
    return made


def _run(cmd: list[str], root: Path) -> int:
    print("$ " + " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd), flush=True)
    return subprocess.run(cmd, cwd=root, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    from .cli import main as cli_main

    p = argparse.ArgumentParser(prog="python -m imgtool.demo", description=__doc__)
    p.add_argument("--root", type=Path, default=Path("."), help="project root (default .)")
    p.add_argument(
        "--lms-height",
        type=int,
        default=5,
        help="LMS tree height of the demo keys (default 5: 32 signatures per key, "
        "quick to generate; production keys use 15)",
    )
    a = p.parse_args(argv)
    root = a.root.resolve()
    cfg = root / "config" / f"{DEMO}.toml"
    if not cfg.exists():
        print(f"creating the demo project (fresh ECC P-384 and LMS H{a.lms_height}/W4 keys)")
        rc = cli_main(["new-project", DEMO, "--root", str(root), "--lms-height", str(a.lms_height)])
        if rc:
            return rc
    else:
        print(f"using the existing demo project {cfg.relative_to(root)}")
    keys, pre = root / "keys" / DEMO, root / "prebuilt" / DEMO
    made = fill_prebuilt(pre, keys)
    if made:
        print(f"sample binaries written to {pre.relative_to(root)}/: {len(made)} files")
    pub = keys / "own-man-lms-pubk.pem"
    if pub.exists():
        key = lms.load_public(pub)
        print(
            f"demo LMS keys: H{key.height}/W4 (tree height {key.height}: {1 << key.height} "
            "one-time signatures per key; `cptra-imgtool lms-status` shows what is left)"
        )
    env_doit = [sys.executable, "-m", "doit"]
    if _run([*env_doit, "flash", f"cfg=config/{DEMO}.toml"], root):
        return 1
    if _run([*env_doit, "verify", f"cfg=config/{DEMO}.toml"], root):
        return 1
    image = root / "out" / f"{DEMO}-flash-image.bin"
    print(f"\nflash image: {image} ({os.path.getsize(image)} bytes)\n")
    return cli_main(["inspect", str(image)])


if __name__ == "__main__":
    sys.exit(main())
