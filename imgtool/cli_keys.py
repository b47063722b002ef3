"""CLI: keygen, lms-status, new-project."""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from . import ecc, lms, lms_scan, lms_state, lms_tree
from . import store as store_mod
from .errors import ConfigError, KeyFileError, LmsStateError
from .fileio import atomic_write

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


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.algo == "ecc":
        priv, pub = ecc.generate_keypair(out)
        print(f"ECC P-384 key pair: {priv} (private, 0600), {pub}")
        return 0
    priv, pub = make_lms_key(out, args.height, args.w, args.force, args.state)
    print(f"LMS H{args.height}/W{args.w} key pair: {priv} (private, 0600), {pub}")
    print(f"leaf state: {lms_state.state_path(priv)}  tree cache: {lms_tree.cache_path(priv)}")
    print(f"state store: {store_mod.open_store(args.state).description}")
    return 0


def _time(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _lms_init(
    args: argparse.Namespace, priv: Path, key: lms.LmsPrivateKey, pub: lms.LmsPublicKey
) -> None:
    st = store_mod.open_store(args.state)
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
        else:
            print(f"--scan: no signature by this key in {len(args.scan)} file(s)")
    if args.next_q is not None:
        next_q = args.next_q
    else:
        next_q = max(scan_next, lms_state.witnesses(priv, pub, st).next_q)
    before = lms_state.init(priv, pub, st, next_q)
    was = (
        f" (was: file {before.file}, store {before.store})"
        if before.known
        else " (no state before)"
    )
    print(f"{priv}: full-tree key adopted; next leaf {next_q} of {1 << h}{was}")


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
    if not w.known and w.max_logged_q is None:
        if lms.sparse_root(key) == pub.root:
            return {**doc, "sparse": True, "sparse_q": lms.SPARSE_Q}
        raise LmsStateError(
            f"{priv}: full-tree key with no leaf state: no {lms_state.state_path(priv).name} "
            f"and no row in the {st.description}; adopt it with `lms-status KEY --init "
            "--next-q N` or `--init --scan out/*.bin`"
        )
    return {
        **doc,
        "sparse": False,
        "file": {"path": str(lms_state.state_path(priv)), "next_q": w.file},
        "store": {
            "location": store_mod.redact(st.location),
            "kind": st.kind,
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


def _print_status(doc: dict[str, Any], st: store_mod.StateStore) -> None:
    kind = f"H{doc['height']}/W{doc['w']}"
    if doc["sparse"]:
        print(
            f"{doc['key']}: sparse demo key {kind}: only leaf {lms.SPARSE_Q} is real and "
            "every signature reuses it"
        )
        return
    f, s = doc["file"], doc["store"]
    print(f"{doc['key']}: full-tree key {kind}, key id {doc['key_id'][:16]}, I={doc['I']}")
    ftxt = "missing" if f["next_q"] is None else f"next_q {f['next_q']}"
    stxt = "no record" if s["next_q"] is None else f"next_q {s['next_q']}"
    print(f"state file: {f['path']}: {ftxt}")
    print(f"store:      {st.description}: {stxt}, {s['log_size']} signature(s) logged")
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
    if args.last < 0:
        raise LmsStateError(f"--last {args.last}: must be 0 or more")
    st = store_mod.open_store(args.state)
    if args.init:
        _lms_init(args, priv, key, pub)
    elif args.export:
        data = lms_state.export_state(priv, pub, st)
        atomic_write(Path(args.export), data, mode=0o600)
        print(f"{priv}: state exported to {args.export}")
    elif args.import_:
        src = Path(args.import_)
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise LmsStateError(f"{src}: cannot read ({exc.strerror})") from None
        before, next_q = lms_state.import_state(priv, pub, st, data, str(src))
        print(
            f"{priv}: imported next_q {next_q} into the {st.description} "
            f"(was: file {before.file}, store {before.store})"
        )
    doc = _status_doc(priv, key, pub, st, args.last)
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        _print_status(doc, st)
    return 0


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


def new_project(
    name: str, root: Path, ref_prj: str | None, lms_height: int, lms_on: bool = True
) -> dict[str, Any]:
    from .config import _PRJ_RE

    if not _PRJ_RE.match(name):
        raise ConfigError(f"new-project: {name!r} is not a plain project name")
    cfg = root / "config" / f"{name}.toml"
    keys = root / "keys" / name
    pre = root / "prebuilt" / name
    src = root / "prebuilt" / ref_prj if ref_prj else None
    for p in (cfg, keys, pre):
        if p.exists():
            raise ConfigError(f"{p}: already exists, refusing to overwrite")
    if src is not None and not src.is_dir():
        raise ConfigError(f"--from {ref_prj}: {src} is not a directory")
    force = lms_height != 15
    lms_types(lms_height, 4, force)  # validate before writing anything
    keys.mkdir(parents=True)
    for n, prefix in enumerate(KEY_PREFIXES, 1):
        ecc.generate_keypair(keys / f"{prefix}-ecc")
        if lms_on:
            counter = f"{n}/{len(KEY_PREFIXES)} "
            make_lms_key(keys / f"{prefix}-lms", lms_height, 4, force, counter=counter)
    if src is not None:
        shutil.copytree(src, pre)
    else:
        pre.mkdir(parents=True)
        lines = [
            f"# prebuilt/{name}/",
            "",
            f"Put the binaries that config/{name}.toml names here:",
            "",
            "- caliptra-fw.bin (Caliptra firmware bundle)",
        ]
        lines += [
            f"- {file} (fw_id {fw_id}, load_stage {stage})" for file, fw_id, stage in DEMO_IMAGES
        ]
        (pre / "README.md").write_text("\n".join(lines) + "\n")
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(_config_text(name, lms_on))
    from .doit_tasks import DODO_PY

    dodo = root / "dodo.py"  # `doit flash cfg=config/NAME.toml`; an existing one is kept
    dodo_new = not dodo.exists()
    if dodo_new:
        dodo.write_text(DODO_PY)
    return {
        "config": cfg,
        "keys": keys,
        "prebuilt": pre,
        "lms_height": lms_height,
        "dodo": dodo if dodo_new else None,
    }


def cmd_new_project(args: argparse.Namespace) -> int:
    info = new_project(args.name, Path(args.root), args.ref, args.lms_height)
    print(f"config:   {info['config']}")
    print(f"keys:     {info['keys']} (ECC P-384 and LMS H{args.lms_height}/W4, owner and vendor)")
    print(f"prebuilt: {info['prebuilt']}")
    if info["dodo"] is not None:
        print(f"dodo.py:  {info['dodo']} (doit flash cfg={info['config']})")
    return 0


def register(sub: Any) -> None:
    state_help = (
        "LMS state store: a SQLite file, sqlite:///PATH or postgresql://... "
        "(default $CPTRA_IMGTOOL_STATE, else $XDG_STATE_HOME/cptra-imgtool/lms-state.sqlite3)"
    )
    p = sub.add_parser("keygen", help="generate an ECC P-384 or LMS key pair")
    p.add_argument("--algo", required=True, choices=["ecc", "lms"])
    p.add_argument("--out", required=True, help="PREFIX: writes PREFIX-prvk.pem, PREFIX-pubk.pem")
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
    act.add_argument("--export", metavar="FILE", help="write the key's state and log as JSON")
    act.add_argument(
        "--import",
        dest="import_",
        metavar="FILE",
        help="merge an --export file into this store (refuses to go backwards)",
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

    p = sub.add_parser("new-project", help="create config/NAME.toml, keys/NAME/, prebuilt/NAME/")
    p.add_argument("name")
    p.add_argument("--from", dest="ref", metavar="REF_PRJ", help="copy prebuilt/REF_PRJ/")
    p.add_argument("--lms-height", type=int, default=15, help="LMS tree height (default 15)")
    p.add_argument("--root", default=".", help="project root (default: current directory)")
    p.set_defaults(func=cmd_new_project)
