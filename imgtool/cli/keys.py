"""CLI: keygen, lms-status, new-project."""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from ..errors import KeyFileError, LmsStateError
from ..fileio import atomic_write
from ..keys import ecc, lms, lms_scan, lms_state, lms_tree
from ..keys import lms_store as store_mod

log = logging.getLogger("imgtool")

# What Caliptra's ROM and runtime accept; anything else needs --force.
CALIPTRA_LMS = (lms.LMS_SHA256_M24_H15, lms.LMOTS_SHA256_N24_W4)
HEIGHT_TYPES = {
    5: lms.LMS_SHA256_M24_H5,
    10: lms.LMS_SHA256_M24_H10,
    15: lms.LMS_SHA256_M24_H15,
    20: lms.LMS_SHA256_M24_H20,
}
W_TYPES = {4: lms.LMOTS_SHA256_N24_W4, 8: lms.LMOTS_SHA256_N24_W8}
KEY_PREFIXES = ("vnd-fw", "vnd-man", "own-fw", "own-man")
DEMO_IMAGES = (
    ("zephyr-mcu-runtime.bin", 1, 0),
    ("ddr4_pmu_train_imem.bin", 2, 0),
    ("ddr4_pmu_train_dmem.bin", 3, 0),
    ("ddr4_2d_pmu_train_imem.bin", 4, 0),
    ("ddr4_2d_pmu_train_dmem.bin", 5, 0),
    ("ddr5_pmu_train_imem.bin", 6, 0),
    ("ddr5_pmu_train_dmem.bin", 7, 0),
    ("dp_fw.bin", 8, 0),
    ("uefi_ast2700.bin", 9, 0),
    ("atf.bin", 10, 1),
    ("optee.bin", 11, 1),
    ("u-boot.bin", 12, 1),
    ("ssp.bin", 13, 1),
    ("tsp.bin", 14, 1),
)


def _eta(seconds: float) -> str:
    s = max(0, round(seconds))
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def _progress(
    label: str,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.monotonic,
    every: float = 3.0,
) -> lms_tree.Progress:
    """Leaves done on stderr: a bar redrawn in place on a terminal (at most 10 times a second);
    otherwise (logs, CI) a line at most every ``every`` seconds with the leaves done and an ETA.
    Both end with a line saying how long it took."""
    out = stream if stream is not None else sys.stderr
    tty = out.isatty()
    interval = 0.1 if tty else every
    start = clock()
    last = float("-inf") if tty else start  # a terminal shows the bar at once

    def show(done: int, total: int) -> None:
        nonlocal last
        now = clock()
        elapsed = now - start
        if done >= total:
            end = f"{total}/{total} leaves in {elapsed:.1f} s"
            out.write(f"\r{label} [{'#' * 30}] {end}\x1b[K\n" if tty else f"{label}: {end}\n")
            out.flush()
            return
        eta = f"ETA {_eta(elapsed * (total - done) / done)}" if done else "ETA unknown"
        if now - last < interval:
            return
        last = now
        if tty:
            filled = 30 * done // total
            bar = "#" * filled + "." * (30 - filled)
            out.write(f"\r{label} [{bar}] {done}/{total} leaves, {eta}\x1b[K")
        else:
            out.write(f"{label}: {done}/{total} leaves ({100 * done // total}%), {eta}\n")
        out.flush()

    return show


def lms_types(height: int, w: int, force: bool) -> tuple[int, int]:
    if height not in HEIGHT_TYPES:
        raise KeyFileError(f"--height {height}: must be one of 5, 10, 15, 20")
    if w not in W_TYPES:
        raise KeyFileError(f"--w {w}: must be 4 or 8")
    types = (HEIGHT_TYPES[height], W_TYPES[w])
    if types != CALIPTRA_LMS and not force:
        raise KeyFileError(
            f"LMS H{height}/W{w}: Caliptra's ROM and runtime accept only H15/W4; "
            "pass --force to generate it anyway (tests, demos)"
        )
    return types


def make_lms_key(
    prefix: Path,
    height: int,
    w: int,
    force: bool,
    state: str | None = None,
    counter: str = "",
) -> tuple[Path, Path]:
    """``counter`` ("2/4 ") goes before the key's name on its progress bar."""
    lt, ot = lms_types(height, w, force)
    label = f"{counter}{prefix.name} LMS H{height}/W{w} tree"
    return lms_tree.generate(prefix, lt, ot, progress=_progress(label), store=state)


def _keygen_pkcs11(args: argparse.Namespace) -> int:
    """ECC P-384 key generated on a PKCS#11 token; its public key PEM to --pubkey-out."""
    from cryptography.hazmat.primitives import serialization

    from ..errors import KeyFileError
    from ..fileio import atomic_write
    from ..keys import pkcs11

    if args.algo != "ecc":
        raise KeyFileError(f"{args.out}: only --algo ecc keys can be generated on a token")
    if not args.pubkey_out:
        raise KeyFileError(f"{args.out}: --pubkey-out PATH is needed for a key on a token")
    pub_path = Path(args.pubkey_out)
    if pub_path.exists():
        raise KeyFileError(f"{pub_path}: already exists, refusing to overwrite")
    uri = pkcs11.parse_uri(args.out)
    pub = pkcs11.generate(uri)
    pem = pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic_write(pub_path, pem, mode=0o644)
    print(f"ECC P-384 key pair on the token: {uri} (private, not extractable), {pub_path}")
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    if str(args.out).startswith("pkcs11:"):
        return _keygen_pkcs11(args)
    out = Path(args.out)
    if args.algo == "ecc":
        priv, pub = ecc.generate_keypair(out)
        print(f"ECC P-384 key pair: {priv} (private, 0600), {pub}")
        return 0
    if args.algo == "mldsa":
        from ..keys import mldsa

        priv, pub = mldsa.generate_keypair(out)
        print(f"ML-DSA-87 key pair (raw FIPS 204): {priv} (private, 4896 B, 0600), {pub} (2592 B)")
        return 0
    priv, pub = make_lms_key(out, args.height, args.w, args.force, args.state)
    print(f"LMS H{args.height}/W{args.w} key pair: {priv} (private, 0600), {pub}")
    print(f"leaf state: {lms_state.state_path(priv)}  tree cache: {lms_tree.cache_path(priv)}")
    print(f"state store: {store_mod.open_store(args.state).description}")
    return 0


def _time(t: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):  # a time no calendar holds (an old import)
        return f"time {t:.6g}"


def _lms_init(
    args: argparse.Namespace,
    priv: Path,
    key: lms.LmsPrivateKey,
    pub: lms.LmsPublicKey,
    st: store_mod.StateStore,
) -> None:
    if lms.sparse_root(key) == pub.root:
        raise KeyFileError(
            f"{priv}: a sparse demo key (only leaf {lms.SPARSE_Q} is real): nothing to adopt"
        )
    if args.next_q is None and not args.scan:
        raise LmsStateError(
            "--init needs --next-q N (the first leaf never used anywhere) or --scan FILE... "
            "(manifests, flash images and bundles this key signed), or both"
        )
    h = key.height
    w = lms.LMOTS_PARAMS[key.ots_type][0]
    nodes = lms_tree.get_tree(priv, key, pub, progress=_progress(f"{priv.name} LMS H{h}/W{w} tree"))
    scan_next = 0
    if args.scan:
        found = lms_scan.used_leaves(args.scan, pub, nodes)
        if found:
            top = max(found, key=lambda u: u.q)
            scan_next = top.q + 1
            print(
                f"--scan: {len(found)} signature(s) by this key in {len(args.scan)} file(s); "
                f"highest leaf {top.q} ({top.where})"
            )
            if args.next_q is not None and args.next_q < scan_next:
                raise LmsStateError(
                    f"--next-q {args.next_q}: {top.where} holds this key's signature at leaf "
                    f"{top.q}; use --next-q {scan_next} or higher"
                )
        elif args.next_q is None:
            raise LmsStateError(
                f"--scan: no signature by this key in {len(args.scan)} file(s) (the wrong "
                "files?): refusing to adopt it at leaf 0 on no evidence; give --next-q N (the "
                "first leaf never used) as well if you know it"
            )
        else:
            print(f"--scan: no signature by this key in {len(args.scan)} file(s)")
        log.warning(
            "--scan sees only the files given: a signature by this key in any other image "
            "(shipped releases, CI, other machines) at or above the adopted leaf will be reused"
        )
    before = lms_state.witnesses(priv, pub, st)
    if args.next_q is not None:
        next_q = args.next_q
    else:
        next_q = max(scan_next, before.next_q)
    _adoption_warnings(priv, st, before, next_q)
    before = lms_state.init(priv, pub, st, next_q, confirm=args.confirm_adopt)
    was = (
        f" (was: file {before.file}, store {before.store})"
        if before.known
        else " (no state before)"
    )
    print(f"{priv}: full-tree key adopted; next leaf {next_q} of {1 << h}{was}")


def _adoption_warnings(
    priv: Path, st: store_mod.StateStore, before: lms_state.Witnesses, next_q: int
) -> None:
    """What adopting a key into this store (--init / --import) risks, on stderr."""
    sp = lms_state.state_path(priv).name
    if before.file_store is not None and before.file_store != st.store_id:
        log.warning(
            "%s was last used with another LMS state store (id %s): if that store, or a copy "
            "of this key folder signing through it, still signs with this key, both hand out "
            "the same leaves: retire it (`lms-status KEY --state OLD --export F`)",
            sp,
            before.file_store[:8],
        )
    if before.store is None or before.status != store_mod.LIVE:
        log.warning(
            "first use of this key on the %s: a signature by it that this store does not know "
            "(another store, a copied key folder, images not scanned) at leaf %d or above "
            "will be reused",
            st.description,
            next_q,
        )


def _status_doc(
    priv: Path, key: lms.LmsPrivateKey, pub: lms.LmsPublicKey, st: store_mod.StateStore, last: int
) -> dict[str, Any]:
    ident = store_mod.KeyIdentity.of(pub)
    h = key.height
    doc: dict[str, Any] = {
        "key": str(priv),
        "key_id": ident.key_id,
        "lms_type": pub.lms_type,
        "ots_type": pub.ots_type,
        "height": h,
        "w": lms.LMOTS_PARAMS[key.ots_type][0],
        "I": pub.I.hex(),
        "leaves": ident.leaves,
    }
    w = lms_state.witnesses(priv, ident, st)
    if w.file is None and w.store is None and w.max_logged_q is None:
        if lms.sparse_root(key) == pub.root and not lms_tree.cache_path(priv).exists():
            return {**doc, "sparse": True, "sparse_q": lms.SPARSE_Q}
        raise LmsStateError(
            f"{priv}: full-tree key with no leaf state: no {lms_state.state_path(priv).name} "
            f"and no row in the {st.description}; adopt it with `lms-status KEY --init "
            "--next-q N` or `--init --scan out/*.bin`"
        )
    return {
        **doc,
        "sparse": False,
        "file": {
            "path": str(lms_state.state_path(priv)),
            "next_q": w.file,
            "store_id": w.file_store,
        },
        "store": {
            "location": store_mod.redact(st.location),
            "kind": st.kind,
            "id": st.store_id,
            "status": w.status,
            "next_q": w.store,
            "log_size": w.log_size,
            "max_logged_q": w.max_logged_q,
        },
        "next_q": w.next_q,
        "used": w.next_q,
        "left": ident.leaves - w.next_q,
        "in_sync": w.file == w.store,
        "last_signatures": [r.as_dict() for r in st.signatures(ident, last)],
    }


def _print_status(doc: dict[str, Any], st: store_mod.StateStore | None) -> None:
    kind = f"H{doc['height']}/W{doc['w']}"
    if doc["sparse"]:
        print(
            f"{doc['key']}: sparse demo key {kind}: only leaf {lms.SPARSE_Q} is real and "
            "every signature reuses it"
        )
        return
    assert st is not None
    f, s = doc["file"], doc["store"]
    print(f"{doc['key']}: full-tree key {kind}, key id {doc['key_id'][:16]}, I={doc['I']}")
    ftxt = "missing" if f["next_q"] is None else f"next_q {f['next_q']}"
    stxt = "no record" if s["next_q"] is None else f"next_q {s['next_q']}"
    if s["status"] == store_mod.MOVED:
        stxt += " (handed off with --export: refuses to sign)"
    elif s["status"] == store_mod.HELPER:
        stxt += " (only sign-helper signatures logged: not adopted for local signing)"
    print(f"state file: {f['path']}: {ftxt}")
    print(f"store:      {st.description} (id {s['id'][:8]}): {stxt}, {s['log_size']} "
          "signature(s) logged")  # fmt: skip
    if f["store_id"] is not None and f["store_id"] != s["id"]:
        print(
            f"WARNING: the state file was last used with another store (id {f['store_id'][:8]}): "
            "signing refuses until the key is moved here (--export there, --import here) or "
            "adopted (--init)"
        )
    if not doc["in_sync"]:
        print(
            f"WARNING: the witnesses disagree (file {f['next_q']}, store {s['next_q']}); the "
            "next signature uses the higher one and moves the other forward"
        )
    print(f"leaves used: {doc['used']}  left: {doc['left']}  total: {doc['leaves']}")
    if doc["last_signatures"]:
        print("last signatures:")
        for r in doc["last_signatures"]:
            actor = f" actor {r['actor']}" if r["actor"] else ""
            print(
                f"  q={r['q']:<6} {_time(r['time'])} {r['host']} {r['signer']}{actor} "
                f"msg sha256 {r['msg_sha256'][:16]}"
            )


def cmd_lms_status(args: argparse.Namespace) -> int:
    priv = Path(args.key)
    key, pub = lms_tree.load_pair(priv, args.pub)
    if args.next_q is not None and not args.init:
        raise LmsStateError("--next-q goes with --init")
    if args.scan and not args.init:
        raise LmsStateError("--scan goes with --init")
    if args.keep_live and not args.export:
        raise LmsStateError("--keep-live goes with --export")
    if args.confirm_adopt and not (args.init or args.import_):
        raise LmsStateError("--confirm-adopt goes with --init or --import")
    if args.last < 0:
        raise LmsStateError(f"--last {args.last}: must be 0 or more")
    # only the explicit acts make a store; showing or exporting never does
    adopting = bool(args.init or args.import_)
    try:
        st = store_mod.open_store(args.state, create=adopting)
    except store_mod.StoreMissingError:
        if lms.sparse_root(key) == pub.root and not lms_tree.cache_path(priv).exists():
            st = None
        else:
            raise
    if st is None:  # a sparse demo key and no store: nothing to show but what it is
        doc = _sparse_doc(priv, key, pub)
    else:
        if args.init:
            _lms_init(args, priv, key, pub, st)
        elif args.export:
            exp = lms_state.export_state(priv, pub, st, keep_live=args.keep_live)
            atomic_write(Path(args.export), exp.data, mode=0o600)
            print(f"{priv}: state exported to {args.export} (next_q {exp.next_q})")
            if exp.handoff:
                print(
                    f"the {st.description} handed the key off: it refuses to sign with it from "
                    f"now on; `lms-status KEY --state NEW --import {args.export}` moves it there"
                )
            else:
                log.warning(
                    "--keep-live: the %s still signs with this key; importing this export into "
                    "another store that signs too hands out the same leaves twice",
                    st.description,
                )
        elif args.import_:
            _lms_import(args, priv, key, pub, st)
        doc = _status_doc(priv, key, pub, st, args.last)
    if args.json:
        print(json.dumps(doc, indent=1))
    elif st is None:
        _print_status(doc, None)
    else:
        _print_status(doc, st)
    return 0


def _sparse_doc(priv: Path, key: lms.LmsPrivateKey, pub: lms.LmsPublicKey) -> dict[str, Any]:
    ident = store_mod.KeyIdentity.of(pub)
    return {
        "key": str(priv),
        "key_id": ident.key_id,
        "lms_type": pub.lms_type,
        "ots_type": pub.ots_type,
        "height": key.height,
        "w": lms.LMOTS_PARAMS[key.ots_type][0],
        "I": pub.I.hex(),
        "leaves": ident.leaves,
        "sparse": True,
        "sparse_q": lms.SPARSE_Q,
    }


def _lms_import(
    args: argparse.Namespace,
    priv: Path,
    key: lms.LmsPrivateKey,
    pub: lms.LmsPublicKey,
    st: store_mod.StateStore,
) -> None:
    if lms.sparse_root(key) == pub.root:
        raise KeyFileError(
            f"{priv}: a sparse demo key (only leaf {lms.SPARSE_Q} is real): nothing to import"
        )
    src = Path(args.import_)
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise LmsStateError(f"{src}: cannot read ({exc.strerror})") from None
    ident = store_mod.KeyIdentity.of(pub)
    doc = lms_state.parse_export_doc(data, str(src), ident)  # checked before any warning
    _adoption_warnings(priv, st, lms_state.witnesses(priv, ident, st), doc.next_q)
    res = lms_state.import_state(priv, pub, st, data, str(src), confirm=args.confirm_adopt)
    print(
        f"{priv}: imported next_q {res.next_q} into the {st.description} "
        f"(was: file {res.before.file}, store {res.before.store})"
    )
    if res.handoff:
        print(
            f"the export was a handoff: the store it came from (id {str(res.source_store)[:8]}) "
            "refuses to sign with this key"
        )
    else:
        kind = "made with --keep-live" if res.handoff is False else "of the first format"
        log.warning(
            "the export was %s: the store it came from was NOT retired; if it still signs with "
            "this key, both stores hand out the same leaves: retire it (`lms-status KEY "
            "--state OLD --export F`)",
            kind,
        )


def _config_text(name: str, lms_on: bool) -> str:
    out = [
        "# Generated by cptra-imgtool new-project",
        "",
        "[manifest_config]",
        "version = 1",
        "flags = 0",
        "security_version = 1",
        f'prj_name = "{name}"',
        'format = "aspeed"',
        "# this project has its own vendor keys: sign the vendor endorsement with them",
        'vendor_signature = "generate"',
        "",
    ]
    for section, prefix in (
        ("vendor_fw_key_config", "vnd-fw"),
        ("vendor_man_key_config", "vnd-man"),
        ("owner_fw_key_config", "own-fw"),
        ("owner_man_key_config", "own-man"),
    ):
        out += [
            f"[{section}]",
            f'ecc_pub_key = "{prefix}-ecc-pubk.pem"',
            f'ecc_priv_key = "{prefix}-ecc-prvk.pem"',
        ]
        if lms_on:
            out += [
                f'lms_pub_key = "{prefix}-lms-pubk.pem"',
                f'lms_priv_key = "{prefix}-lms-prvk.pem"',
            ]
        out.append("")
    out += [
        "[image_runtime_list]",
        'caliptra_file = "caliptra-fw.bin"',
        'mcu_file = "zephyr-mcu-runtime.bin"',
        "",
    ]
    for file, fw_id, stage in DEMO_IMAGES:
        out += [
            "[[image_metadata_list]]",
            f'file = "{file}"',
            "source = 1",
            f"fw_id = {fw_id}",
            "ignore_auth_check = false",
            f"load_stage = {stage}",
            "",
        ]
    return "\n".join(out)


def key_maker(
    lms_height: int, force: bool, stream: TextIO | None = None
) -> Callable[[Path, str, str], None]:
    """make_key(prefix, algo, counter) for new-project: one key pair, one line on stderr (with
    or without a terminal) saying what was made and how long it took."""

    def make(prefix: Path, algo: str, counter: str) -> None:
        out = stream if stream is not None else sys.stderr
        if algo == "ecc":
            t0 = time.monotonic()
            ecc.generate_keypair(prefix)
            took = time.monotonic() - t0
            out.write(f"{counter}{prefix.name} ECC P-384 key pair: done in {took:.1f} s\n")
            out.flush()
            return
        make_lms_key(prefix, lms_height, 4, force, counter=counter)

    return make


def _lab_project(name: str, root: Path, lms_height: int, force: bool) -> dict[str, Any]:
    """No reference project (`new-project NAME` without --from): a lab project with its own
    vendor keys too, the vendor signature generated, and a README listing the binaries."""
    from ..new_project import check_free, layout

    root = root.resolve()
    check_free(root, name)
    lms_types(lms_height, 4, force)  # validate before writing anything
    cfg = root / "config" / f"{name}.toml"
    keys = layout(root, name)
    pre = root / "prebuilt" / name
    make = key_maker(lms_height, force)
    keys.mkdir(parents=True)
    steps = [(f"{prefix}-{algo}", algo) for prefix in KEY_PREFIXES for algo in ("ecc", "lms")]
    for n, (stem, algo) in enumerate(steps, 1):
        make(keys / stem, algo, f"{n}/{len(steps)} ")
    pre.mkdir(parents=True)
    lines = [
        f"# prebuilt/{name}/",
        "",
        f"Put the binaries that config/{name}.toml names here:",
        "",
        "- caliptra-fw.bin (Caliptra firmware bundle)",
    ]
    lines += [f"- {file} (fw_id {fw_id}, load_stage {stage})" for file, fw_id, stage in DEMO_IMAGES]
    (pre / "README.md").write_text("\n".join(lines) + "\n")
    cfg.parent.mkdir(parents=True, exist_ok=True)
    with open(cfg, "x", encoding="utf-8") as fh:
        fh.write(_config_text(name, True))
    from ..doit_tasks import DODO_PY

    dodo = root / "dodo.py"  # `doit flash cfg=config/NAME.toml`; an existing one is kept
    dodo_new = not dodo.exists()
    if dodo_new:
        dodo.write_text(DODO_PY)
    return {"config": cfg, "keys": keys, "prebuilt": pre, "dodo": dodo if dodo_new else None}


def _rel(root: Path, p: Path) -> str:
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return str(p)


def cmd_new_project(args: argparse.Namespace) -> int:
    root = Path(args.root)
    force = args.force
    if args.ref is None:
        print(
            "cptra-imgtool: note: no --from: a LAB project with its own vendor keys too (as "
            "--vendor-keys), for parts with no vendor fuses; an OEM starts from the vendor's "
            "reference project: --from CONFIG",
            file=sys.stderr,
            flush=True,
        )
        info = _lab_project(args.name, root, args.lms_height, force)
        print(f"config:   {_rel(root, info['config'])}")
        print(
            f"keys:     {_rel(root, info['keys'])} (ECC P-384 and LMS H{args.lms_height}/W4, "
            "owner and vendor)"
        )
        print(f"prebuilt: {_rel(root, info['prebuilt'])}")
        if info["dodo"] is not None:
            cfg = _rel(root, info["config"])
            print(f"dodo.py:  {_rel(root, info['dodo'])} (doit flash cfg={cfg})")
        return 0
    from .. import new_project

    if args.vendor_keys:
        print(
            "cptra-imgtool: note: --vendor-keys: fresh VENDOR keys too, a generated vendor "
            "signature and a test bundle vendor-signed with them: for lab parts with no vendor "
            "fuses only (a part with the vendor's fuses rejects it)",
            file=sys.stderr,
            flush=True,
        )

    def status(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    res = new_project.create(
        args.name,
        root,
        args.ref,
        lms_height=args.lms_height,
        force=force,
        ecc_only=args.ecc_only,
        vendor_keys=args.vendor_keys,
        allow_key_mismatch=args.allow_key_mismatch,
        make_key=key_maker(args.lms_height, force),
        status=status,
    )
    _print_project(root, res)
    return 0


def _print_project(root: Path, res: Any) -> None:
    from ..fuses import fuse_words

    ref = res.reference

    def r(p: Path) -> str:
        return _rel(root, p)

    name = res.config.stem
    print(f"config:   {r(res.config)} ({ref.config.name} with prj_name = {name!r}; images and "
          "settings kept)")  # fmt: skip
    kept = (
        "fresh vendor keys too (--vendor-keys)"
        if res.vendor_keys
        else f"the reference's vendor keys from {r(ref.key_dir)}"
    )
    print(f"keys:     {r(res.keys)} (new: {', '.join(res.made_keys)}; {kept})")
    print(f"prebuilt: {r(res.prebuilt)} (a copy of {r(ref.prebuilt_dir)})")
    for p in res.copied_sigs:
        print(f"vnd_sig:  {r(p)} (the reference's prebuilt vendor signature)")
    if res.dodo is not None:
        print(f"dodo.py:  {r(res.dodo)} (doit flash cfg={r(res.config)})")
    lms_flag = "" if res.lms and res.lms_verify else " --no-lms-verify"
    fuses = f"out/{name}-fuses.toml"
    if res.bundle is not None and res.owner_pk_hash is not None:
        print(f"bundle:   {r(res.bundle)} owner-signed; owner_pk_hash = {res.owner_pk_hash.hex()}")
        print("          fuse_owner_pk_hash[0..11] = "
              + " ".join(f"0x{w:08x}" for w in fuse_words(res.owner_pk_hash)))  # fmt: skip
    for m in res.missing:
        print(f"missing:  {m}: the reference has none; put yours into {r(res.prebuilt)}")
    for w in res.warnings:
        print(f"warning:  {w}")
    print("next:")
    if res.bundle is not None:
        print(f"  cptra-imgtool fuses --caliptra-fw {r(res.bundle)}{lms_flag} --out {fuses}")
    print(f"  cptra-imgtool create-auth-flash --cfg {r(res.config)}")
    if res.bundle is not None:
        extra = "" if res.bundle_in_config else f" --caliptra-fw {r(res.bundle)}"
        print(f"  cptra-imgtool verify out/{name}-flash-image.bin --fuses {fuses}{extra}")


def register(sub: Any) -> None:
    state_help = (
        "LMS state store: a SQLite file, sqlite:///PATH or postgresql://... "
        "(default $CPTRA_IMGTOOL_STATE, else $XDG_STATE_HOME/cptra-imgtool/lms-state.sqlite3)"
    )
    p = sub.add_parser("keygen", help="generate an ECC P-384 or LMS key pair")
    p.add_argument("--algo", required=True, choices=["ecc", "lms", "mldsa"])
    p.add_argument(
        "--out",
        required=True,
        help="PREFIX: writes PREFIX-prvk.pem, PREFIX-pubk.pem (mldsa: raw -prvk.bin, -pubk.bin)",
    )
    p.add_argument(
        "--pubkey-out",
        help="with --algo ecc --out pkcs11:URI (key generated on the token): public key PEM path",
    )
    p.add_argument("--height", type=int, default=15, help="LMS tree height (5, 10, 15, 20)")
    p.add_argument("--w", type=int, default=4, help="LM-OTS Winternitz parameter (4, 8)")
    p.add_argument("--force", action="store_true", help="allow LMS types Caliptra does not accept")
    p.add_argument("--state", help=state_help)
    p.set_defaults(func=cmd_keygen)

    p = sub.add_parser(
        "lms-status",
        help="show an LMS key's leaf state (file and store); adopt, export or import it",
    )
    p.add_argument("key", help="LMS private key file")
    p.add_argument("--pub", help="public key (default: the -pubk file beside the key)")
    p.add_argument("--state", help=state_help)
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p.add_argument(
        "--last", type=int, default=5, help="how many of the last signatures to show (default 5)"
    )
    act = p.add_mutually_exclusive_group()
    act.add_argument(
        "--init",
        action="store_true",
        help="adopt a full-tree key made elsewhere, or recover lost state: needs --next-q "
        "and/or --scan; never goes below what the file, the store or its log knows",
    )
    act.add_argument(
        "--export",
        metavar="FILE",
        help="hand the key off: write its state and log as JSON, and this store stops signing "
        "with it (unless --keep-live)",
    )
    act.add_argument(
        "--import",
        dest="import_",
        metavar="FILE",
        help="take a key over: merge an --export file into this store (refuses to go "
        "backwards); the state file then names this store",
    )
    p.add_argument(
        "--keep-live",
        action="store_true",
        help="with --export: a copy only, this store keeps signing (never import it into a "
        "store that signs too)",
    )
    p.add_argument(
        "--confirm-adopt",
        action="store_true",
        help="with --init: adopt a key neither the state file nor this store knows, or one this "
        "store handed off; with --import: an export whose store was not retired",
    )
    p.add_argument(
        "--next-q",
        type=int,
        default=None,
        help="with --init: the first leaf never used before",
    )
    p.add_argument(
        "--scan",
        nargs="+",
        metavar="FILE",
        help="with --init: manifests, flash images or Caliptra bundles to search for leaves "
        "this key already used (the next leaf is above the highest found)",
    )
    p.set_defaults(func=cmd_lms_status)

    p = sub.add_parser(
        "new-project",
        help="a project from a vendor reference config: its images and vendor setup, new owner "
        "keys, the bundle owner-signed",
        description="Create config/NAME.toml, the key folder (key/NAME/ where the tree has key/, "
        "else keys/NAME/) and prebuilt/NAME/ from a reference config: the config with prj_name "
        "= NAME (images and settings kept), a copy of its prebuilt folder, its vendor public keys "
        "and prebuilt vendor signatures, and fresh OWNER keys only; the copied Caliptra bundle "
        "is owner-signed with them. Never overwrites anything.",
    )
    p.add_argument("name")
    p.add_argument(
        "--from",
        dest="ref",
        metavar="CONFIG",
        help="a reference config file, or a reference project name in config/ (its "
        "NAME-ecc-lms-manifest.toml; with --ecc-only NAME-ecc-manifest.toml). Without it: a "
        "lab project with its own vendor keys",
    )
    p.add_argument(
        "--ecc-only", action="store_true", help="with a project name: its ECC-only config"
    )
    p.add_argument(
        "--lms-height",
        type=int,
        default=15,
        help="LMS tree height (default 15, the only one Caliptra 1.x verifies; others need "
        "--force)",
    )
    p.add_argument("--force", action="store_true", help="allow LMS types Caliptra does not accept")
    p.add_argument(
        "--vendor-keys",
        action="store_true",
        help="lab parts with no vendor fuses: fresh vendor keys too, a generated vendor "
        "signature, the bundle vendor-signed with them",
    )
    p.add_argument(
        "--allow-key-mismatch",
        action="store_true",
        help="create it even when the reference's vendor setup does not match its bundle",
    )
    p.add_argument("--root", default=".", help="project root (default: current directory)")
    p.set_defaults(func=cmd_new_project)
