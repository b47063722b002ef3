"""The ASGI app (Starlette): /sign/imx, /sign/caliptra, /pubkey, /healthz.

Every request is authenticated (bearer token, scoped to machines and endpoints), size-limited
while it streams in, counted against a job limit (429 beyond it), and written to the audit log.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from .. import ecc
from ..errors import ImgtoolError, LmsStateError, ServerError
from ..lms_signer import LmsSigner
from . import validate
from .audit import AuditLog
from .auth import Token, authenticate, load_tokens
from .imx import CSF_INPUT, ImxError, check_csf, run_cst, unpack_keys
from .settings import Settings

log = logging.getLogger("imgtool.server")


class BodyTooLarge(Exception):
    pass


class Reject(Exception):
    """Answer with ``status`` and a one-line text; the request is over."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass
class Ctx:
    endpoint: str
    client: str
    token: Token | None = None
    machine: str = ""
    key: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    too_large: bool = False
    started: float = field(default_factory=time.monotonic)


class SigningService:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        if settings.tokens_file is None and not settings.insecure_no_auth:
            raise ServerError(
                "no tokens file: refusing to start without authentication "
                "(give --tokens FILE, or --insecure-no-auth on a loopback address)"
            )
        self.tokens = load_tokens(settings.tokens_file) if settings.tokens_file else None
        self.audit = AuditLog(settings.audit_log)
        self.jobs = asyncio.Semaphore(settings.max_jobs)
        self.work_root = settings.work_dir or Path(tempfile.gettempdir())
        self._ecc_keys: dict[Path, tuple[int, Any]] = {}
        self._lms_locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # ------------------------------------------------------------------ plumbing
    def _auth(self, request: Request, ctx: Ctx) -> None:
        if self.tokens is None:
            return
        ctx.token = authenticate(self.tokens, request.headers.get("authorization"))
        if ctx.token is None:
            raise Reject(401, "missing or invalid bearer token")

    def _allow(self, ctx: Ctx, machine: str) -> None:
        if ctx.token is not None and not ctx.token.allows(machine, ctx.endpoint):
            raise Reject(403, f"token not allowed for machine {machine!r} / {ctx.endpoint}")

    def _limited(self, request: Request, ctx: Ctx) -> Request:
        limit = self.s.request_max_size
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise Reject(413, f"request body larger than {limit} bytes")
        seen = 0

        async def receive() -> dict[str, Any]:
            nonlocal seen
            msg = dict(await request.receive())
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    ctx.too_large = True  # form parsers may wrap the exception: remember it
                    raise BodyTooLarge
            return msg

        return Request(request.scope, receive)

    async def _handle(
        self, request: Request, endpoint: str, body: Callable[[Request, Ctx], Awaitable[Response]]
    ) -> Response:
        ctx = Ctx(endpoint, request.client.host if request.client else "")
        status = 500
        try:
            self._auth(request, ctx)
            response = await body(request, ctx)
            status = response.status_code
            return response
        except Reject as r:
            status = r.status
            return PlainTextResponse(r.text + "\n", status_code=r.status)
        except BodyTooLarge:
            status = 413
            return PlainTextResponse("request body too large\n", status_code=413)
        except ImxError as exc:
            status = exc.status
            log.warning("%s: %s", endpoint, exc.detail or exc.public)
            return PlainTextResponse(exc.public + "\n", status_code=exc.status)
        except HTTPException as exc:  # raised by Starlette's form parsers (limits, bad bodies)
            status = 413 if ctx.too_large else exc.status_code
            return PlainTextResponse(f"{exc.detail}\n", status_code=status)
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            if ctx.too_large:
                status = 413
                return PlainTextResponse("request body too large\n", status_code=413)
            log.error("%s: internal error (%s)", endpoint, type(exc).__name__)
            return PlainTextResponse("Signing error\n", status_code=500)
        finally:
            ms = round((time.monotonic() - ctx.started) * 1000, 1)
            self.audit.record(
                token_id=ctx.token.id if ctx.token else None,
                client=ctx.client,
                endpoint=endpoint,
                machine=ctx.machine,
                key=ctx.key,
                inputs_sha256=ctx.inputs,
                result=status,
                duration_ms=ms,
            )
            log.info(
                "%s %s machine=%s token=%s -> %s (%.1f ms)",
                request.method,
                endpoint,
                ctx.machine or "-",
                ctx.token.id if ctx.token else "-",
                status,
                ms,
            )

    @staticmethod
    def _field(form: FormData, name: str, default: str | None = None) -> str:
        value = form.get(name)
        if value is None:
            if default is not None:
                return default
            raise Reject(400, f"missing form field {name!r}")
        if not isinstance(value, str):
            raise Reject(400, f"form field {name!r} must be a value, not a file")
        return value

    @staticmethod
    def _upload(form: FormData, name: str) -> UploadFile:
        value = form.get(name)
        if not isinstance(value, UploadFile):
            raise Reject(400, f"missing file upload {name!r}")
        return value

    def _machine_dir(self, machine: str, sub: str) -> Path:
        if not validate.machine_ok(machine):
            raise Reject(400, "invalid machine name")
        d = self.s.keyfile_root / machine / sub
        if not d.is_dir():
            raise Reject(404, f"unknown machine {machine!r}")
        return d

    # ------------------------------------------------------------------ /sign/imx
    async def sign_imx(self, request: Request) -> Response:
        return await self._handle(request, "imx", self._sign_imx)

    async def _sign_imx(self, request: Request, ctx: Ctx) -> Response:
        async with self._limited(request, ctx).form(max_files=2, max_fields=8) as form:
            machine = self._field(form, "machine")
            ctx.machine = machine if validate.machine_ok(machine) else "(invalid)"
            soctype = self._field(form, "soctype")
            cstversion = self._field(form, "cstversion")
            backend = self._field(form, "backend", "ssl")
            if soctype not in validate.SOCTYPES:
                raise Reject(400, f"unsupported soctype (allowed: {', '.join(validate.SOCTYPES)})")
            if not validate.CST_VERSION_RE.match(cstversion):
                raise Reject(400, "invalid cstversion")
            if backend not in validate.BACKENDS:
                raise Reject(400, "unsupported backend (this server offers: ssl)")
            keys_dir = self._machine_dir(machine, "imxsign")
            self._allow(ctx, machine)
            archive = keys_dir / "imx-cst-keys.tar.gz"
            if not archive.is_file():
                raise Reject(404, f"no i.MX keys for machine {machine!r}")
            cst = self.s.imx_cst_base / f"cst-{cstversion}" / "linux64" / "bin" / "cst"
            if not cst.is_file():
                raise Reject(400, f"cst {cstversion} is not available")
            csf_up, art_up = self._upload(form, "csf"), self._upload(form, "artifact")
            art_name = art_up.filename or ""
            if not validate.upload_name_ok(art_name):
                raise Reject(400, "artifact file name not allowed")
            csf_bytes = await csf_up.read()
            try:
                csf_text = csf_bytes.decode("utf-8")
            except UnicodeDecodeError:
                raise Reject(400, "CSF is not UTF-8 text") from None
            ctx.inputs["csf"] = hashlib.sha256(csf_bytes).hexdigest()
            if self.jobs.locked():
                raise Reject(429, "too many signing jobs in progress; retry later")
            async with self.jobs:
                work = Path(tempfile.mkdtemp(prefix="cptra-imx-", dir=self.work_root))
                try:
                    unpack_keys(archive, work, self.s.tar_max_bytes, self.s.tar_max_files)
                    check_csf(csf_text, work)
                    (work / CSF_INPUT).write_bytes(csf_bytes)
                    ctx.inputs["artifact"] = await _save(art_up, work / art_name)
                    out = await run_cst(cst, work, self.s.subprocess_timeout)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
        return Response(
            out,
            media_type="application/octet-stream",
            headers={"Content-Disposition": 'attachment; filename="artifact.signed"'},
        )

    # ------------------------------------------------------------------ /sign/caliptra
    async def sign_caliptra(self, request: Request) -> Response:
        return await self._handle(request, "caliptra", self._sign_caliptra)

    def _caliptra_key(self, ctx: Ctx, machine: str, key: str, algo: str, kind: str) -> Path:
        ctx.machine = machine if validate.machine_ok(machine) else "(invalid)"
        if key not in validate.CALIPTRA_KEYS:
            raise Reject(400, f"key must be one of {', '.join(validate.CALIPTRA_KEYS)}")
        if algo not in validate.CALIPTRA_ALGOS:
            raise Reject(400, "algo must be ecc or lms")
        ctx.key = f"{key}-{algo}"
        d = self._machine_dir(machine, "caliptra")
        self._allow(ctx, machine)
        p = d / f"{key}-{algo}-{kind}.pem"
        if not p.is_file():
            raise Reject(404, f"no {key} {algo} key for machine {machine!r}")
        return p

    async def _sign_caliptra(self, request: Request, ctx: Ctx) -> Response:
        async with self._limited(request, ctx).form(max_files=0, max_fields=8) as form:
            machine = self._field(form, "machine")
            key, algo = self._field(form, "key"), self._field(form, "algo")
            digest_hex = self._field(form, "digest")
        priv = self._caliptra_key(ctx, machine, key, algo, "prvk")
        if not validate.DIGEST_RE.match(digest_hex):
            raise Reject(400, "digest must be 96 hex characters (SHA-384)")
        digest = bytes.fromhex(digest_hex)
        ctx.inputs["digest"] = hashlib.sha256(digest).hexdigest()
        if algo == "ecc":
            sig = ecc.sign_digest_der(self._ecc_key(priv), digest)
        else:
            if self.jobs.locked():
                raise Reject(429, "too many signing jobs in progress; retry later")
            async with self.jobs:
                sig = await asyncio.to_thread(self._lms_sign, priv, digest)
        return Response(sig, media_type="application/octet-stream")

    def _ecc_key(self, path: Path) -> Any:
        mtime = path.stat().st_mtime_ns
        cached = self._ecc_keys.get(path)
        if cached is None or cached[0] != mtime:
            cached = (mtime, ecc.load_private(path))
            self._ecc_keys[path] = cached
        return cached[1]

    def _lms_sign(self, priv: Path, digest: bytes) -> bytes:
        with self._locks_guard:
            lock = self._lms_locks.setdefault(priv, threading.Lock())
        with lock:
            try:
                return LmsSigner.load(priv).sign_digest(digest)
            except LmsStateError as exc:
                log.error("caliptra: %s", exc)  # names the key file, never key material
                raise Reject(500, "Signing error: the LMS key has no usable leaf left") from None
            except ImgtoolError as exc:
                log.error("caliptra: %s", exc)
                raise Reject(500, "Signing error") from None

    # ------------------------------------------------------------------ /pubkey, /healthz
    async def pubkey(self, request: Request) -> Response:
        async def body(req: Request, ctx: Ctx) -> Response:
            q = req.query_params
            p = self._caliptra_key(
                ctx, q.get("machine", ""), q.get("key", ""), q.get("algo", ""), "pubk"
            )
            return Response(p.read_bytes(), media_type="application/octet-stream")

        return await self._handle(request, "caliptra", body)

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")


async def _save(upload: UploadFile, dest: Path) -> str:
    """Stream an upload into ``dest`` (created exclusively); returns its SHA-256."""
    h = hashlib.sha256()
    with open(dest, "xb") as out:
        while chunk := await upload.read(1 << 16):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def create_app(settings: Settings) -> Starlette:
    """The app factory. Raises ServerError when the settings are unusable."""
    service = SigningService(settings)
    logging.getLogger("imgtool.server").setLevel(settings.log_level)
    app = Starlette(
        debug=False,
        routes=[
            Route("/sign/imx", service.sign_imx, methods=["POST"]),
            Route("/sign/caliptra", service.sign_caliptra, methods=["POST"]),
            Route("/pubkey", service.pubkey, methods=["GET"]),
            Route("/healthz", service.healthz, methods=["GET"]),
        ],
    )
    app.state.service = service
    return app
