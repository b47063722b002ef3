"""Test fixtures for NXP's CST: the shim library, the cst wrapper, a HAB4 PKI, a key tarball.

Everything is generated at test time (nothing NXP-made is shipped).
"""

from __future__ import annotations

import datetime
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
PASSPHRASE = b"test-passphrase-1234"
CST_VERSION = "3.3.1"
SRK = [
    "SRK1_sha256_2048_65537_v3_ca",
    "SRK2_sha256_2048_65537_v3_ca",
    "SRK3_sha256_2048_65537_v3_ca",
    "SRK4_sha256_2048_65537_v3_ca",
]
CSF = "CSF1_1_sha256_2048_65537_v3_usr"
IMG = "IMG1_1_sha256_2048_65537_v3_usr"


def cst_available() -> str | None:
    """None when the real CST can be used here, else why not."""
    for tool in ("cst", "srktool", "csf_parser", "gcc", "openssl", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (make test installs imx-code-signing-tool via apt)"
    if libcrypto() is None:
        return "libcrypto.so.3 not found"
    return None


def libcrypto() -> str | None:
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/lib"):
        p = Path(d) / "libcrypto.so.3"
        if p.exists():
            return str(p)
    return None


def install_cst(base: Path) -> Path:
    """Compile the shim and place a wrapper at <base>/cst-3.3.1/linux64/bin/cst."""
    bindir = base / f"cst-{CST_VERSION}" / "linux64" / "bin"
    bindir.mkdir(parents=True)
    shim = bindir / "libpkey_shim.so"
    subprocess.run(
        [
            "gcc",
            "-shared",
            "-fPIC",
            "-O2",
            "-o",
            str(shim),
            str(HERE / "cst_fixture" / "pkey_shim.c"),
        ],
        check=True,
    )
    wrapper = bindir / "cst"
    wrapper.write_text(f'#!/bin/sh\nLD_PRELOAD="{libcrypto()} {shim}" exec /usr/bin/cst "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject_key: rsa.RSAPrivateKey, cn: str, issuer_key: rsa.RSAPrivateKey, issuer_cn: str, ca: bool
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(issuer_cn))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False
        )
    )
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    root: Path  # holds crts/, keys/ and the SRK table
    ca_cert: Path
    srk_certs: list[Path]
    tarball: Path


def make_pki(work: Path) -> Pki:
    """A 2048-bit RSA HAB4 PKI: CA -> SRK1..4 -> CSF1_1, IMG1_1 (under SRK1)."""
    crts, keys = work / "pki" / "crts", work / "pki" / "keys"
    crts.mkdir(parents=True)
    keys.mkdir()
    enc = serialization.BestAvailableEncryption(PASSPHRASE)

    def save(name: str, key: rsa.RSAPrivateKey, cert: x509.Certificate) -> Path:
        (keys / f"{name}_key.pem").write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
        )
        p = crts / f"{name}_crt.pem"
        p.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return p

    def new_key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    ca_key = new_key()
    ca_cert = _cert(
        ca_key, "CA1_sha256_2048_65537_v3_ca", ca_key, "CA1_sha256_2048_65537_v3_ca", True
    )
    ca_path = save("CA1_sha256_2048_65537_v3_ca", ca_key, ca_cert)
    srk_paths = []
    srk1_key = None
    for name in SRK:
        k = new_key()
        srk_paths.append(save(name, k, _cert(k, name, ca_key, "CA1_sha256_2048_65537_v3_ca", True)))
        srk1_key = srk1_key or k
    assert srk1_key is not None
    for name in (CSF, IMG):
        k = new_key()
        save(name, k, _cert(k, name, srk1_key, SRK[0], False))
    (keys / "key_pass.txt").write_bytes(PASSPHRASE + b"\n" + PASSPHRASE + b"\n")
    if shutil.which("srktool") is None:  # the same table, written here (tests without CST)
        (crts / "SRK_1_2_3_4_table.bin").write_bytes(srk_table(srk_paths))
    else:
        _srktool(work)
    tarball = work / "imx-cst-keys.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for sub in ("crts", "keys"):
            tar.add(work / "pki" / sub, arcname=sub)
    return Pki(work / "pki", ca_path, srk_paths, tarball)


def srk_table(certs: list[Path]) -> bytes:
    """A HAB4 SRK table of RSA certificates, as srktool writes it (CA flag 0x80)."""
    entries = b""
    for p in certs:
        cert = x509.load_pem_x509_certificate(p.read_bytes())
        pub = cert.public_key()
        assert isinstance(pub, rsa.RSAPublicKey)
        n = pub.public_numbers()
        mod = n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")
        exp = n.e.to_bytes((n.e.bit_length() + 7) // 8, "big")
        ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        body = bytes([0x21, 0, 0, 0, 0x80 if ca else 0]) + len(mod).to_bytes(2, "big")
        body += len(exp).to_bytes(2, "big") + mod + exp
        entries += b"\xe1" + (len(body) + 3).to_bytes(2, "big") + body
    return b"\xd7" + (len(entries) + 4).to_bytes(2, "big") + b"\x40" + entries


def _srktool(work: Path) -> None:
    subprocess.run(
        [
            "srktool",
            "--hab_ver",
            "4",
            "--table",
            "crts/SRK_1_2_3_4_table.bin",
            "--efuses",
            "crts/SRK_1_2_3_4_fuse.bin",
            "--digest",
            "sha256",
            "--certs",
            ",".join(f"crts/{n}_crt.pem" for n in SRK),
        ],
        cwd=work / "pki",
        check=True,
        capture_output=True,
    )


def csf_text(artifact_name: str, size: int = 0x8000) -> str:
    return f"""[Header]
    Version = 4.3
    Hash Algorithm = sha256
    Engine = CAAM
    Engine Configuration = 0
    Certificate Format = X509
    Signature Format = CMS

[Install SRK]
    File = "crts/SRK_1_2_3_4_table.bin"
    Source index = 0

[Install CSFK]
    File = "crts/{CSF}_crt.pem"

[Authenticate CSF]

[Unlock]
    Engine = CAAM
    Features = MID

[Install Key]
    Verification index = 0
    Target Index = 2
    File = "crts/{IMG}_crt.pem"

[Authenticate Data]
    Verification index = 2
    Blocks = 0x40480000 0x0 0x{size:x} "{artifact_name}"
"""


def run_bare_cst(
    cst: Path, pki_root: Path, csf: str, artifact: bytes, name: str, work: Path
) -> bytes:
    """cst run by hand on the same inputs (for comparisons and the benchmark)."""
    shutil.copytree(pki_root, work, dirs_exist_ok=True)
    (work / "csf-input.txt").write_text(csf)
    (work / name).write_bytes(artifact)
    subprocess.run(
        [str(cst), "-i", "csf-input.txt", "-o", "out.bin"],
        cwd=work,
        check=True,
        capture_output=True,
        env={"PATH": os.environ.get("PATH", "/usr/bin")},
    )
    return (work / "out.bin").read_bytes()
