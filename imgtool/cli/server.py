"""CLI: serve, token (add, list, revoke), sign-helper."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from ..errors import ServerError


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host in ("", "*")


def cmd_serve(args: argparse.Namespace) -> int:
    from ..server import Settings, create_app
    from ..server.asgi import ServeOptions, run

    if args.insecure_no_auth and not _is_loopback(args.host):
        raise ServerError(
            f"--insecure-no-auth is allowed only on a loopback address, not {args.host}"
        )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ServerError("--tls-cert and --tls-key go together")
    settings = Settings.from_env(
        keyfile_root=args.keys,
        tokens_file=args.tokens,
        audit_log=args.audit_log,
        lms_state=args.state,
        max_jobs=args.max_jobs,
        insecure_no_auth=args.insecure_no_auth or None,
        allow_unsandboxed_cst=args.allow_unsandboxed_cst or None,
        no_audit_log=args.no_audit_log or None,
    )
    if args.no_audit_log and args.audit_log is not None:
        raise ServerError("--audit-log and --no-audit-log exclude each other")
    app = create_app(settings)
    service = app.state.service
    for info in service.startup_info():
        print(f"cptra-imgtool: {info}", file=sys.stderr, flush=True)
    for note in service.startup_notes():
        print(f"cptra-imgtool: warning: {note}", file=sys.stderr, flush=True)
    if _is_wildcard(args.host) and not args.tls_cert:
        print(
            f"cptra-imgtool: warning: listening on {args.host} (every interface) without TLS: "
            "bearer tokens and signatures cross the network in clear text (give --tls-cert "
            "and --tls-key, or bind to a loopback or private address behind a TLS proxy)",
            file=sys.stderr,
            flush=True,
        )
    opts = ServeOptions(
        host=args.host,
        port=args.port,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_connections=args.max_connections,
        max_per_client=args.max_per_client,
        max_body=settings.request_max_size,
        log_level=settings.log_level.lower(),
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    try:
        run(app, opts)
    finally:
        service.close()  # also done at lifespan shutdown; here for an early exit
    return 0


def _split(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def cmd_token_add(args: argparse.Namespace) -> int:
    from ..server.auth import add_token, parse_quota

    machines = _split(args.machines)
    if not machines:
        raise ServerError("--machines: name at least one machine (or *)")
    quota = parse_quota(args.lms_quota) if args.lms_quota else None
    secret = add_token(args.tokens, args.id, machines, _split(args.endpoints), quota)
    print(secret)
    print(
        f"token {args.id!r} added to {args.tokens} (only its hash is stored; this is the only "
        "time the token is shown)",
        file=sys.stderr,
    )
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from ..server.auth import load_tokens

    tokens = load_tokens(args.tokens)
    if args.json:
        doc = [
            {
                "id": t.id,
                "machines": list(t.machines),
                "endpoints": list(t.endpoints),
                "lms_quota": [t.lms_quota.count, t.lms_quota.period_s] if t.lms_quota else None,
            }
            for t in tokens
        ]
        print(json.dumps(doc, indent=1))
        return 0
    for t in tokens:
        quota = str(t.lms_quota) if t.lms_quota else "server default"
        print(
            f"{t.id}\tmachines={','.join(t.machines)}\tendpoints={','.join(t.endpoints)}"
            f"\tlms_quota={quota}"
        )
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from ..server.auth import revoke_token

    revoke_token(args.tokens, args.id)
    print(f"token {args.id!r} revoked in {args.tokens} (a running server sees it at once)")
    return 0


def cmd_sign_helper(args: argparse.Namespace) -> int:
    # the tool appends --input PATH in by-file mode: a command line without --by-file must not
    # then wait for stdin and leave PATH unsigned
    args.by_file = args.by_file or args.input is not None
    # a 2.x build tells its helpers the algorithm (imgtool.signing2.helper_env): a command line
    # whose --algo is another (an ECC helper configured for an ML-DSA slot) is refused here,
    # before a digest is signed as if it were a message or the other way round
    asked = os.environ.get("CPTRA_IMGTOOL_SIGN_ALGO", "")
    if asked and asked != args.algo:
        raise ServerError(
            f"sign-helper --algo {args.algo}, but the build asks for an {asked} signature "
            "(CPTRA_IMGTOOL_SIGN_ALGO): the config names the wrong helper command for this slot"
        )
    if args.key_file is not None:
        return _sign_with_key_file(args)
    missing = [o for o, v in (("--server", args.server), ("--machine", args.machine),
                              ("--key", args.key)) if not v]  # fmt: skip
    if missing:
        raise ServerError(f"sign-helper: {', '.join(missing)} needed (or --key-file K)")
    from ..sign_client import sign_remote

    if args.algo == "mldsa":  # the raw message, not a digest
        digest = _read_message(args)
    elif args.by_file:
        if not args.input:
            raise ServerError("--by-file needs --input PATH")
        try:
            with open(args.input, "rb") as fh:
                digest = fh.read(4097)  # a digest is 48 bytes: never read a large file whole
        except OSError as exc:
            raise ServerError(f"{args.input}: {exc.strerror}") from None
    else:
        line = sys.stdin.readline(4097).strip()
        try:
            digest = bytes.fromhex(line)
        except ValueError:
            raise ServerError("stdin: expected the digest as one line of hex") from None
    sig = sign_remote(
        args.server,
        args.machine,
        {"fw": "own-fw", "man": "own-man"}.get(args.key, args.key),  # the reference's names
        args.algo,
        digest,
        token_file=args.token_file,
        timeout=args.timeout,
        verify_tls=args.ca_cert or True,
        expect_pub=args.pubkey,
    )
    if args.by_file:
        from ..fileio import atomic_write

        atomic_write(Path(args.input), sig)
    else:
        print(sig.hex())
    return 0


def _read_message(args: argparse.Namespace) -> bytes:
    """The ML-DSA protocol's input: the raw message (by file: the --input file's bytes; stdin:
    one line of hex), at most signing2.MAX_MESSAGE bytes."""
    from .. import signing2

    if args.by_file:
        if not args.input:
            raise ServerError("--by-file needs --input PATH")
        return signing2.read_message_file(Path(args.input))
    line = sys.stdin.readline(2 * signing2.MAX_MESSAGE + 3)
    return signing2.parse_message_line(line)


def _sign_mldsa_key_file(args: argparse.Namespace) -> bytes:
    """ML-DSA-87 with a local expanded private key (deterministic); with --pubkey the key must
    be that public key's, checked before signing; verified before it is returned."""
    from ..errors import KeyFileError
    from ..keys import mldsa

    msg = _read_message(args)
    key = mldsa.MldsaPrivateKey.load(args.key_file)
    own = mldsa.public_from_private(key.raw)
    if args.pubkey is not None and mldsa.MldsaPublicKey.load(args.pubkey).raw != own:
        raise KeyFileError(f"{args.key_file}: private key does not match --pubkey {args.pubkey}")
    return key.sign(msg, own)


def _sign_with_key_file(args: argparse.Namespace) -> int:
    """The same protocols, signed with a local private key file (no server)."""
    from ..fileio import atomic_write
    from ..keys import key_file_signer

    if args.server or args.machine:
        raise ServerError("sign-helper: --key-file signs locally: no --server / --machine")
    if args.algo == "mldsa":
        sig = _sign_mldsa_key_file(args)
    elif args.by_file:
        if not args.input:
            raise ServerError("--by-file needs --input PATH")
        digest = key_file_signer.read_digest_file(Path(args.input))
        sig = key_file_signer.sign(args.key_file, args.algo, digest, args.pubkey)
    else:
        digest = key_file_signer.parse_digest_line(sys.stdin.readline(4097))
        sig = key_file_signer.sign(args.key_file, args.algo, digest, args.pubkey)
    if args.by_file:
        atomic_write(Path(args.input), sig)
    else:
        print(sig.hex())
    return 0


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return v


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the signing server (digsigserver-compatible)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9999)
    p.add_argument(
        "--keys", type=Path, help="key store directory (default: DIGSIGSERVER_KEYFILE_URI)"
    )
    p.add_argument("--tokens", type=Path, help="tokens file (from `token add`)")
    p.add_argument(
        "--audit-log",
        type=Path,
        help="JSON-lines audit log (env CPTRA_IMGTOOL_AUDIT_LOG; default "
        "server-audit.jsonl in the state directory: that of --state, else "
        "$XDG_STATE_HOME/cptra-imgtool)",
    )
    p.add_argument(
        "--no-audit-log",
        action="store_true",
        help="run without an audit log (not recommended: nothing is recorded)",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated proxy addresses whose X-Forwarded-For/-Proto is trusted "
        "(default: none; the connection's own address is used)",
    )
    p.add_argument(
        "--state", help="LMS leaf-state store: path or postgresql://... (env CPTRA_IMGTOOL_STATE)"
    )
    p.add_argument(
        "--max-jobs",
        type=_positive_int,
        help="concurrent i.MX jobs (env CPTRA_IMGTOOL_MAX_JOBS; default 4 per CPU; LMS: 1 per CPU)",
    )
    p.add_argument("--header-timeout", type=_positive_float, default=10.0, metavar="S")
    p.add_argument("--body-timeout", type=_positive_float, default=30.0, metavar="S")
    p.add_argument("--max-connections", type=_positive_int, default=4096)
    p.add_argument("--max-per-client", type=_positive_int, default=128)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="run without tokens (loopback addresses only)",
    )
    p.add_argument(
        "--allow-unsandboxed-cst",
        action="store_true",
        help="serve /sign/imx even where bwrap cannot sandbox cst",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="manage the server's bearer tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="add|list|revoke")
    tsub.required = True
    t = tsub.add_parser("add", help="create a token (printed once; the file keeps its hash)")
    t.add_argument("--tokens", type=Path, required=True)
    t.add_argument("--id", required=True)
    t.add_argument("--machines", required=True, help="comma-separated machine names, or *")
    t.add_argument("--endpoints", default="imx,caliptra", help="imx,caliptra (default both)")
    t.add_argument(
        "--lms-quota", help="LMS signatures allowed: N per day, or N/PERIOD (e.g. 50/1h)"
    )
    t.set_defaults(func=cmd_token_add)
    t = tsub.add_parser("list", help="list tokens (ids, scopes, quotas; never hashes)")
    t.add_argument("--tokens", type=Path, required=True)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_token_list)
    t = tsub.add_parser("revoke", help="remove a token (a running server stops accepting it)")
    t.add_argument("--tokens", type=Path, required=True)
    t.add_argument("--id", required=True)
    t.set_defaults(func=cmd_token_revoke)

    p = sub.add_parser(
        "sign-helper",
        help="a [sign_helper] command backed by the signing server (or a local --key-file)",
    )
    p.add_argument("--server", help="e.g. http://127.0.0.1:9999")
    p.add_argument("--machine")
    p.add_argument(
        "--key",
        choices=["vnd-fw", "vnd-man", "own-fw", "own-man", "fw", "man"],
        help="the server's key (fw / man: the reference helpers' names for own-fw / own-man)",
    )
    p.add_argument(
        "--key-file",
        type=Path,
        help="sign locally with this private key file instead of the server (the reference "
        "helper command line: --key-file K --algo ecc|lms [--by-file --input PATH])",
    )
    p.add_argument(
        "--algo",
        required=True,
        choices=["ecc", "lms", "mldsa"],
        help="ecc and lms sign the 48-byte SHA-384 digest; mldsa (ML-DSA-87, Caliptra 2.x) "
        "signs the RAW message (stdin: one line of hex; --by-file: the --input file's bytes, "
        "at most 64 KiB) and returns the 4627-byte signature",
    )
    p.add_argument(
        "--token-file", type=Path, help="file holding the token (or CPTRA_IMGTOOL_TOKEN)"
    )
    p.add_argument(
        "--pubkey",
        type=Path,
        help="expected public key: refuse to ask for a signature if the server's (or the "
        "--key-file's) differs",
    )
    p.add_argument("--by-file", action="store_true")
    p.add_argument(
        "--input",
        help="digest (mldsa: message) file, overwritten with the signature (--by-file)",
    )
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--ca-cert", help="CA bundle for an https server")
    p.set_defaults(func=cmd_sign_helper)
