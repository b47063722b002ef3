"""Independent implementations for Caliptra 2.x outputs: ATM2 manifest, 2.x flash image (FLSH v1
with 20-byte entries), fw_toc.bin (ATOC), the CMN2 firmware bundle, and the signature checks.

Written from spec/caliptra2.md and caliptra-sw image/types (879608b9) with plain struct
offsets; it imports nothing from imgtool. ECDSA P-384 with `cryptography`, LMS with `hsslms`,
ML-DSA-87 with `dilithium-py` (pure ML-DSA, empty context, over the raw covered bytes) or, when
the tool itself signs with dilithium-py, with `cryptography`'s ML-DSA (a different
implementation: OpenSSL's).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from independent import lms_verify as _lms_verify
from independent import word_swap

# --- ATM2 (spec/caliptra2.md table) ------------------------------------------------------------
ATM2 = {
    "marker": 0,
    "size": 4,
    "version": 8,
    "svn": 12,
    "flags": 16,
    "vnd_ecc_pub": 20,
    "vnd_pqc_pub": 116,
    "vnd_pub_sig_ecc": 2708,
    "vnd_pub_sig_pqc": 2804,
    "own_ecc_pub": 7432,
    "own_pqc_pub": 7528,
    "own_pub_sig_ecc": 10120,
    "own_pub_sig_pqc": 10216,
    "vnd_imc_sig_ecc": 14844,
    "vnd_imc_sig_pqc": 14940,
    "own_imc_sig_ecc": 19568,
    "own_imc_sig_pqc": 19664,
    "imc": 24292,
    "len": 34456,
}
ATM2_MARKER = 0x324D5441
ATM2_PREAMBLE = 24292
IMC_SLOTS = 127
IMC_ENTRY = 80
IMC_LEN = 4 + IMC_SLOTS * IMC_ENTRY  # 10164
IMC_LEN_80 = 4 + 80 * IMC_ENTRY  # what a fw-2.1.2+ runtime hashes
ECC_LEN = 96
PQC_PUB_SLOT = 2592
PQC_SIG_SLOT = 4628
MLDSA_SIG = 4627
LMS_SIG = 1620
LMS_PUB = 48


def u32(b: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", b, off)[0])


@dataclass
class ImcEntry:
    fw_id: int
    component_id: int
    classification: int
    flags: int
    load_address: int
    staging_address: int
    digest: bytes

    @property
    def image_source(self) -> int:
        return self.flags & 3

    @property
    def ignore_auth_check(self) -> bool:
        return bool(self.flags >> 2 & 1)

    @property
    def exec_bit(self) -> int:
        return self.flags >> 8 & 0x7F

    @property
    def load_stage(self) -> int:
        return self.flags >> 30 & 3


def atm2_field(man: bytes, name: str, size: int) -> bytes:
    off = ATM2[name]
    return man[off : off + size]


def atm2_imc(man: bytes) -> bytes:
    return man[ATM2["imc"] : ATM2["imc"] + IMC_LEN]


def atm2_entries(man: bytes, all_slots: bool = False) -> list[ImcEntry]:
    base = ATM2["imc"]
    n = IMC_SLOTS if all_slots else u32(man, base)
    out = []
    for i in range(n):
        o = base + 4 + i * IMC_ENTRY
        fw, comp, cls, flags, llo, lhi, slo, shi = struct.unpack_from("<8I", man, o)
        out.append(
            ImcEntry(fw, comp, cls, flags, llo | lhi << 32, slo | shi << 32, man[o + 32 : o + 80])
        )
    return out


def atm2_covered(man: bytes) -> dict[str, bytes]:
    """The bytes each signature pair covers (spec/caliptra2.md)."""
    return {
        "vendor_pub": man[8:2708],
        "owner_pub": man[7432:10120],
        "vendor_imc": atm2_imc(man),
        "owner_imc": atm2_imc(man),
    }


def check_atm2_structure(man: bytes) -> None:
    """Assert the fixed structure: marker, size, IMC slots, padding of the PQC slots."""
    assert u32(man, 0) == ATM2_MARKER
    assert u32(man, 4) == ATM2_PREAMBLE
    assert len(man) >= ATM2["len"]
    assert not any(man[ATM2["len"] :]), "manifest padding is zero"
    count = u32(man, ATM2["imc"])
    assert 1 <= count <= IMC_SLOTS
    for e in atm2_entries(man, all_slots=True)[count:]:
        assert (e.fw_id, e.component_id) == (0xFFFFFFFF, 0xFFFFFFFF)
        assert (e.classification, e.flags, e.load_address, e.staging_address) == (0, 0, 0, 0)
        assert not any(e.digest)
    ids = [e.fw_id for e in atm2_entries(man)]
    assert len(set(ids)) == len(ids)


# --- signatures --------------------------------------------------------------------------------
def ecc_verify_hw(pub_hw: bytes, covered: bytes, hw_sig: bytes) -> bool:
    raw = word_swap(pub_hw)
    try:
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"), ec.SECP384R1()
        ).public_key()
    except ValueError:
        return False
    s = word_swap(hw_sig)
    r_, s_ = int.from_bytes(s[:48], "big"), int.from_bytes(s[48:], "big")
    if not r_ or not s_:
        return False
    try:
        key.verify(
            utils.encode_dss_signature(r_, s_),
            hashlib.sha384(covered).digest(),
            ec.ECDSA(utils.Prehashed(hashes.SHA384())),
        )
    except InvalidSignature:
        return False
    return True


def lms_verify(pub48: bytes, covered: bytes, slot: bytes) -> bool:
    """LMS over SHA-384(covered) with hsslms; the slot's bytes past 1620 must be zero."""
    if any(slot[LMS_SIG:]):
        return False
    return _lms_verify(pub48, covered, slot[:LMS_SIG])


def mldsa_verify_dilithium(pub: bytes, covered: bytes, slot: bytes) -> bool:
    """Pure ML-DSA-87, empty context, raw message (dilithium-py)."""
    from dilithium_py.ml_dsa import ML_DSA_87

    if len(pub) != PQC_PUB_SLOT or any(slot[MLDSA_SIG:]):
        return False
    return bool(ML_DSA_87.verify(pub, covered, slot[:MLDSA_SIG], ctx=b""))


def mldsa_verify_openssl(pub: bytes, covered: bytes, slot: bytes) -> bool:
    """The same with `cryptography` (OpenSSL's ML-DSA)."""
    from cryptography.hazmat.primitives.asymmetric import mldsa

    if len(pub) != PQC_PUB_SLOT or any(slot[MLDSA_SIG:]):
        return False
    try:
        mldsa.MLDSA87PublicKey.from_public_bytes(pub).verify(slot[:MLDSA_SIG], covered)
    except (InvalidSignature, ValueError):
        return False
    return True


def pqc_verify(pqc: str, pub_slot: bytes, covered: bytes, sig_slot: bytes) -> bool:
    """``pqc``: "mldsa" (checked by BOTH ML-DSA implementations) or "lms"."""
    if pqc == "lms":
        if any(pub_slot[LMS_PUB:]):
            return False
        return lms_verify(pub_slot[:LMS_PUB], covered, sig_slot)
    ok1 = mldsa_verify_dilithium(pub_slot, covered, sig_slot)
    ok2 = mldsa_verify_openssl(pub_slot, covered, sig_slot)
    assert ok1 == ok2, "dilithium-py and OpenSSL disagree"
    return ok1


# --- 2.x flash image and fw_toc ----------------------------------------------------------------
def neg_sum(b: bytes) -> int:
    """0 - (byte sum), mod 2**32: the FLSH v1 (2.x) checksums."""
    return -sum(b) & 0xFFFFFFFF


@dataclass
class Flash2Entry:
    identifier: int
    offset: int
    size: int
    image_checksum: int
    entry_checksum: int


def check_flash2(data: bytes) -> list[Flash2Entry]:
    """Check the 2.x FLSH header, entries, checksums and layout; return the entries."""
    assert data[:4] == b"FLSH"
    version, count = struct.unpack_from("<HH", data, 4)
    assert version == 1
    assert u32(data, 8) == 16
    assert u32(data, 12) == neg_sum(data[:12]), "header checksum"
    out = []
    expect = 16 + 20 * count
    for i in range(count):
        o = 16 + 20 * i
        e = Flash2Entry(*struct.unpack_from("<5I", data, o))
        assert e.entry_checksum == neg_sum(data[o : o + 16]), f"entry {i} checksum"
        assert e.offset == expect, (hex(e.identifier), e.offset, expect)
        assert e.size % 4 == 0
        assert e.image_checksum == neg_sum(data[e.offset : e.offset + e.size]), f"image {i}"
        expect += e.size
        out.append(e)
    assert expect == len(data), (expect, len(data))
    return out


TOC_MAGIC = 0x434F5441
TOC_SLOTS = 32
TOC_NAMES_OFF = 16 + 20 * TOC_SLOTS  # 656
TOC_LEN = TOC_NAMES_OFF + 64 * TOC_SLOTS  # 2704


def check_fw_toc(toc: bytes, flash: bytes) -> list[tuple[int, str]]:
    """Check fw_toc.bin against its flash image; return (identifier, name) per image."""
    assert len(toc) == TOC_LEN
    assert u32(toc, 0) == TOC_MAGIC
    assert toc[4:12] == flash[4:12]
    assert u32(toc, 12) == neg_sum(toc[:12])
    count = struct.unpack_from("<H", flash, 6)[0]
    out = []
    for i in range(TOC_SLOTS):
        o = 16 + 20 * i
        name = toc[TOC_NAMES_OFF + 64 * i : TOC_NAMES_OFF + 64 * (i + 1)]
        if i >= count:
            assert not any(toc[o : o + 20]) and not any(name), f"slot {i} unused"
            continue
        ident, off, size, img_sum, ent_sum = struct.unpack_from("<5I", toc, o)
        fi, _, fs, fsum, _ = struct.unpack_from("<5I", flash, o)
        assert (ident, size, img_sum) == (fi, fs, fsum)
        assert off == TOC_NAMES_OFF + 64 * i
        assert ent_sum == neg_sum(toc[o : o + 16])
        text = name.rstrip(b"\0")
        assert b"\0" not in text and b"/" not in text
        out.append((ident, text.decode()))
    return out


# --- CMN2 firmware bundle (caliptra-sw image/types at 879608b9) --------------------------------
CMN2 = {
    "ecc_desc": 12,
    "pqc_desc": 208,
    "ecc_idx": 1748,
    "ecc_pub": 1752,
    "pqc_idx": 1848,
    "pqc_pub": 1852,
    "vnd_sig_ecc": 4444,
    "vnd_sig_pqc": 4540,
    "own_ecc_pub": 9168,
    "own_pqc_pub": 9264,
    "own_sig_ecc": 11856,
    "own_sig_pqc": 11952,
    "reserved": 16580,
    "header": 16588,
    "toc": 16748,
    "len": 16956,
}


def hw_hash(data: bytes) -> bytes:
    """SHA-384 in Caliptra's word format, as the key descriptors store it."""
    return word_swap(hashlib.sha384(data).digest())


@dataclass
class BundleKeys2:
    """What a test CMN2 bundle is made of (public keys in their stored form)."""

    pqc: str  # "mldsa" or "lms"
    vendor_ecc: list[bytes]  # hw format, 1..4
    vendor_pqc: list[bytes]  # raw ML-DSA 2592 / LMS 48, 1..4 (ML-DSA) or 1..32 (LMS)
    ecc_idx: int
    pqc_idx: int
    owner_ecc: bytes
    owner_pqc: bytes


def build_cmn2(
    keys: BundleKeys2,
    sign_ecc: object,
    sign_pqc: object,
    owner_sign_ecc: object,
    owner_sign_pqc: object,
    *,
    fmc: bytes = b"FMC!" * 16,
    runtime: bytes = b"RT.." * 32,
    svn: int = 3,
) -> bytes:
    """A CMN2 bundle signed by the given callables: ``sign_ecc(digest48) -> hw sig``,
    ``sign_pqc(covered_bytes) -> slot bytes`` (the signer hashes for LMS itself)."""
    pqc_type = 1 if keys.pqc == "mldsa" else 3
    out = bytearray(CMN2["len"])
    struct.pack_into("<4sIB", out, 0, b"CMN2", CMN2["len"], pqc_type)
    struct.pack_into("<HBB", out, CMN2["ecc_desc"], 1, 0, len(keys.vendor_ecc))
    for i, k in enumerate(keys.vendor_ecc):
        out[CMN2["ecc_desc"] + 4 + 48 * i : CMN2["ecc_desc"] + 52 + 48 * i] = hw_hash(k)
    struct.pack_into("<HBB", out, CMN2["pqc_desc"], 1, pqc_type, len(keys.vendor_pqc))
    for i, k in enumerate(keys.vendor_pqc):
        out[CMN2["pqc_desc"] + 4 + 48 * i : CMN2["pqc_desc"] + 52 + 48 * i] = hw_hash(k)
    struct.pack_into("<I", out, CMN2["ecc_idx"], keys.ecc_idx)
    out[CMN2["ecc_pub"] : CMN2["ecc_pub"] + 96] = keys.vendor_ecc[keys.ecc_idx]
    struct.pack_into("<I", out, CMN2["pqc_idx"], keys.pqc_idx)
    vp = keys.vendor_pqc[keys.pqc_idx]
    out[CMN2["pqc_pub"] : CMN2["pqc_pub"] + len(vp)] = vp
    out[CMN2["own_ecc_pub"] : CMN2["own_ecc_pub"] + 96] = keys.owner_ecc
    out[CMN2["own_pqc_pub"] : CMN2["own_pqc_pub"] + len(keys.owner_pqc)] = keys.owner_pqc
    # TOC and images
    fmc_off = CMN2["len"]
    rt_off = fmc_off + len(fmc)
    for i, (ident, img, off, load) in enumerate(
        ((1, fmc, fmc_off, 0x40000000), (2, runtime, rt_off, 0x40010000))
    ):
        o = CMN2["toc"] + 104 * i
        struct.pack_into("<II", out, o, ident, 1)
        struct.pack_into("<IIII", out, o + 40, load, load, off, len(img))
        out[o + 56 : o + 104] = hw_hash(img)
    h = CMN2["header"]
    toc_digest = hw_hash(bytes(out[CMN2["toc"] : CMN2["len"]]))
    struct.pack_into("<IIIIIII", out, h, 1, 0, keys.ecc_idx, keys.pqc_idx, 0, 2, 0)
    out[h + 28 : h + 76] = toc_digest
    struct.pack_into("<I", out, h + 76, svn)
    vendor_tbs = bytes(out[h : h + 120])
    owner_tbs = bytes(out[h : h + 160])
    out[CMN2["vnd_sig_ecc"] : CMN2["vnd_sig_ecc"] + 96] = sign_ecc(  # type: ignore[operator]
        hashlib.sha384(vendor_tbs).digest()
    )
    s = sign_pqc(vendor_tbs)  # type: ignore[operator]
    out[CMN2["vnd_sig_pqc"] : CMN2["vnd_sig_pqc"] + len(s)] = s
    out[CMN2["own_sig_ecc"] : CMN2["own_sig_ecc"] + 96] = owner_sign_ecc(  # type: ignore[operator]
        hashlib.sha384(owner_tbs).digest()
    )
    s = owner_sign_pqc(owner_tbs)  # type: ignore[operator]
    out[CMN2["own_sig_pqc"] : CMN2["own_sig_pqc"] + len(s)] = s
    return bytes(out) + fmc + runtime


def cmn2_vendor_pk_hash(bundle: bytes) -> bytes:
    """The vendor PK hash fuse value: SHA-384 of both key descriptors (1736 bytes)."""
    return hashlib.sha384(bundle[12:1748]).digest()


def cmn2_owner_pk_hash(bundle: bytes) -> bytes:
    """The owner PK hash fuse value: SHA-384 of the owner keys (96 + 2592 bytes)."""
    return hashlib.sha384(bundle[9168:11856]).digest()


# --- test signers (independent of imgtool) -----------------------------------------------------
class EccSigner:
    def __init__(self, seed: int) -> None:
        self.key = ec.derive_private_key(seed, ec.SECP384R1())

    @property
    def pub_hw(self) -> bytes:
        n = self.key.public_key().public_numbers()
        return word_swap(n.x.to_bytes(48, "big") + n.y.to_bytes(48, "big"))

    def __call__(self, digest: bytes) -> bytes:
        der = self.key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))
        r, s = utils.decode_dss_signature(der)
        return word_swap(r.to_bytes(48, "big") + s.to_bytes(48, "big"))


class MldsaSigner:
    """ML-DSA-87 with `cryptography` (seeded, deterministic keys for tests)."""

    def __init__(self, seed: int) -> None:
        from cryptography.hazmat.primitives.asymmetric import mldsa

        self.key = mldsa.MLDSA87PrivateKey.from_seed_bytes(seed.to_bytes(32, "big"))

    @property
    def pub(self) -> bytes:
        return self.key.public_key().public_bytes_raw()

    def __call__(self, msg: bytes) -> bytes:
        return self.key.sign(msg) + b"\0"


# --- test builders for ATM2 and the 2.x flash image (from the spec table) ----------------------
def imc_entry(
    fw_id: int,
    digest: bytes,
    *,
    component_id: int = 0,
    classification: int = 0,
    exec_bit: int = 0,
    load_stage: int = 1,
    load: int = 0,
    staging: int = 0,
) -> bytes:
    flags = (exec_bit & 0x7F) << 8 | (load_stage & 3) << 30
    return struct.pack(
        "<8I",
        fw_id,
        component_id,
        classification,
        flags,
        load & 0xFFFFFFFF,
        load >> 32,
        staging & 0xFFFFFFFF,
        staging >> 32,
    ) + bytes(digest)


def build_atm2(
    pqc: str,
    entries: list[bytes],
    vendor_fw: tuple[object, object],
    owner_fw: tuple[object, object],
    vendor_man: tuple[object, object],
    owner_man: tuple[object, object],
    *,
    svn: int = 1,
    flags: int = 1,
    pad_to: int = 0,
) -> bytes:
    """An ATM2 manifest; each key pair is (EccSigner, MldsaSigner or an LMS signer with .pub)."""
    m = bytearray(ATM2["len"])
    struct.pack_into("<5I", m, 0, ATM2_MARKER, ATM2_PREAMBLE, 1, svn, flags)

    def put(name: str, value: bytes) -> None:
        m[ATM2[name] : ATM2[name] + len(value)] = value

    put("vnd_ecc_pub", vendor_man[0].pub_hw)  # type: ignore[attr-defined]
    put("vnd_pqc_pub", vendor_man[1].pub)  # type: ignore[attr-defined]
    put("own_ecc_pub", owner_man[0].pub_hw)  # type: ignore[attr-defined]
    put("own_pqc_pub", owner_man[1].pub)  # type: ignore[attr-defined]
    imc = struct.pack("<I", len(entries)) + b"".join(entries)
    unused = struct.pack("<8I", 0xFFFFFFFF, 0xFFFFFFFF, 0, 0, 0, 0, 0, 0) + bytes(48)
    imc += unused * (IMC_SLOTS - len(entries))
    m[ATM2["imc"] : ATM2["imc"] + IMC_LEN] = imc

    def sign(pair: tuple[object, object], covered: bytes, ecc: str, pq: str) -> None:
        put(ecc, pair[0](hashlib.sha384(covered).digest()))  # type: ignore[operator]
        put(pq, pair[1](covered))  # type: ignore[operator]

    sign(vendor_fw, bytes(m[8:2708]), "vnd_pub_sig_ecc", "vnd_pub_sig_pqc")
    sign(owner_fw, bytes(m[7432:10120]), "own_pub_sig_ecc", "own_pub_sig_pqc")
    if flags & 1:
        sign(vendor_man, imc, "vnd_imc_sig_ecc", "vnd_imc_sig_pqc")
    sign(owner_man, imc, "own_imc_sig_ecc", "own_imc_sig_pqc")
    out = bytes(m)
    if pad_to:
        out += bytes(-len(out) % pad_to)
    return out


def build_flash2(images: list[tuple[int, bytes]]) -> bytes:
    """A 2.x flash image: (identifier, data) in order, each zero-padded to 4."""
    n = len(images)
    head = bytearray(b"FLSH" + struct.pack("<HHI", 1, n, 16))
    head += struct.pack("<I", neg_sum(bytes(head)))
    table = b""
    body = b""
    off = 16 + 20 * n
    for ident, data in images:
        data = data + bytes(-len(data) % 4)
        e = struct.pack("<4I", ident, off + len(body), len(data), neg_sum(data))
        table += e + struct.pack("<I", neg_sum(e))
        body += data
    return bytes(head) + table + body
