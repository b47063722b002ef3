"""A sign helper for tests, with the reference helpers' command line:
``--algo ecc|lms --key fw|man [--by-file --input F]``. Keys come from $DEMO_SIGN_HELPER_KEYS
(own-fw-ecc-prvk.pem, own-man-lms-prvk.pem, ...). stdin mode: digest hex in, signature hex out.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from imgtool.keys import ecc


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--algo", default="ecc", choices=["ecc", "lms"])
    p.add_argument("--key", required=True, choices=["fw", "man"])
    p.add_argument("--by-file", action="store_true")
    p.add_argument("--input")
    a = p.parse_args()
    keys = Path(os.environ["DEMO_SIGN_HELPER_KEYS"])
    priv = keys / f"own-{a.key}-{a.algo}-prvk.pem"
    if a.by_file:
        digest = Path(a.input).read_bytes()
    else:
        digest = bytes.fromhex(sys.stdin.readline().strip())
    if a.algo == "ecc":
        sig = ecc.sign_digest_der(ecc.load_private(priv), digest)
    else:
        from imgtool.keys.lms_signer import LmsSigner

        sig = LmsSigner.load(priv, signer="helper").sign_digest(digest)
    if a.by_file:
        Path(a.input).write_bytes(sig)
    else:
        print(sig.hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
