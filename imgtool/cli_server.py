"""CLI: serve, token, sign-helper."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

from .errors import ServerError


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


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .server import Settings, create_app

    if args.insecure_no_auth and not _is_loopback(args.host):
        raise ServerError(
            f"--insecure-no-auth is allowed only on a loopback address, not {args.host}"
        )
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ServerError("--tls-cert and --tls-key go together")
    settings = Settings.from_env(
        tokens_file=args.tokens,
        audit_log=args.audit_log,
        insecure_no_auth=args.insecure_no_auth or None,
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        ssl_certfile=args.tls_cert,
        ssl_keyfile=args.tls_key,
        server_header=False,
        access_log=False,
    )
    return 0


def cmd_token_add(args: argparse.Namespace) -> int:
    from .server.auth import add_token

    machines = [m for m in args.machines.split(",") if m]
    endpoints = [e for e in args.endpoints.split(",") if e]
    if not machines:
        raise ServerError("--machines: name at least one machine (or *)")
    secret = add_token(args.tokens, args.id, machines, endpoints)
    print(secret)
    print(
        f"token {args.id!r} added to {args.tokens} (only its hash is stored; this is the only "
        "time the token is shown)",
        file=sys.stderr,
    )
    return 0


def cmd_sign_helper(args: argparse.Namespace) -> int:
    from .sign_client import sign_remote

    if args.by_file:
        if not args.input:
            raise ServerError("--by-file needs --input PATH")
        try:
            digest = Path(args.input).read_bytes()
        except OSError as exc:
            raise ServerError(f"{args.input}: {exc.strerror}") from None
    else:
        line = sys.stdin.readline().strip()
        try:
            digest = bytes.fromhex(line)
        except ValueError:
            raise ServerError("stdin: expected the digest as one line of hex") from None
    sig = sign_remote(
        args.server,
        args.machine,
        args.key,
        args.algo,
        digest,
        token_file=args.token_file,
        timeout=args.timeout,
        verify_tls=args.ca_cert or True,
    )
    if args.by_file:
        from .fileio import atomic_write

        atomic_write(Path(args.input), sig)
    else:
        print(sig.hex())
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the signing server (digsigserver-compatible)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9999)
    p.add_argument("--tokens", type=Path, help="tokens file (from `token add`)")
    p.add_argument(
        "--audit-log", type=Path, help="JSON-lines audit log (env CPTRA_IMGTOOL_AUDIT_LOG)"
    )
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="run without tokens (loopback addresses only)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("token", help="manage the server's bearer tokens")
    tsub = p.add_subparsers(dest="token_command", metavar="add")
    tsub.required = True
    t = tsub.add_parser("add", help="create a token (printed once; the file keeps its hash)")
    t.add_argument("--tokens", type=Path, required=True)
    t.add_argument("--id", required=True)
    t.add_argument("--machines", required=True, help="comma-separated machine names, or *")
    t.add_argument("--endpoints", default="imx,caliptra", help="imx,caliptra (default both)")
    t.set_defaults(func=cmd_token_add)

    p = sub.add_parser("sign-helper", help="a [sign_helper] command backed by the signing server")
    p.add_argument("--server", required=True, help="e.g. http://127.0.0.1:9999")
    p.add_argument("--machine", required=True)
    p.add_argument("--key", required=True, choices=["vnd-fw", "vnd-man", "own-fw", "own-man"])
    p.add_argument("--algo", required=True, choices=["ecc", "lms"])
    p.add_argument(
        "--token-file", type=Path, help="file holding the token (or CPTRA_IMGTOOL_TOKEN)"
    )
    p.add_argument("--by-file", action="store_true")
    p.add_argument("--input", help="digest file, overwritten with the signature (--by-file)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--ca-cert", help="CA bundle for an https server")
    p.set_defaults(func=cmd_sign_helper)
