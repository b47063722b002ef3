"""The ASGI app (Starlette): /sign/imx, /sign/caliptra, /pubkey, /healthz.

Every request is authenticated (bearer token) and authorized for its (machine, endpoint) before
anything is looked up, size-limited while it streams in, queued for a bounded time when all job
slots are busy (then 429 with Retry-After), and written to the audit log -- every request,
including 404/405 and failed /healthz probes, with an "about to sign" record before any
signature is made. If a record cannot be written the request fails closed (5xx, no signature,
no LMS leaf spent).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from starlette.applications import Starlette
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..errors import ImgtoolError, LmsStateError, ServerError
from ..keys import ecc, lms
from ..keys.lms_signer import LmsSigner
from ..signing2 import DILITHIUM_LOCK, MAX_MESSAGE
from . import csf as csfmod
from . import csfpolicy, validate
from .audit import AuditError, AuditLog, FailureSummary
from .auth import Token, TokenStore, authenticate
from .hsmkeys import HsmKey, HsmKeyError, HsmKeys
from .imx import ImxError, check_csf_binary
from .keycache import KeyCache
from .quota import LmsQuota, QuotaExceeded
from .sandbox import Artifact, CstRunner
from .settings import Settings

log = logging.getLogger("imgtool.server")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

INLINE_ARTIFACT = 256 * 1024  # artifacts up to this size go to cst through memory, not the disk
# /sign/caliptra: ECC and LMS sign a digest, ML-DSA-87 the raw message (hex, at most
# signing2.MAX_MESSAGE bytes); a body beyond what the largest message needs is refused (413)
# before it is read, whatever DIGSIGSERVER_REQUEST_MAX_SIZE allows for /sign/imx
CALIPTRA_MAX_BODY = 2 * MAX_MESSAGE + 16 * 1024
HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")
FORBIDDEN = "forbidden: this token may not use that machine or endpoint\n"
ENDPOINTS = {"/sign/imx": "imx", "/sign/caliptra": "caliptra", "/pubkey": "pubkey"}


class BodyTooLarge(Exception):
    pass


class Reject(Exception):
    """Answer with ``status`` and a one-line text; the request is over."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


@dataclass
class Ctx:
    endpoint: str
    client: str
    method: str
    path: str = ""
    token: Token | None = None
    machine: str = ""
    key: str = ""
    inputs: dict[str, str] = field(default_factory=dict)
    too_large: bool = False
    signing: bool = False  # an "about to sign" record was written: a signature may follow
    lms_q: int | None = None
    started: float = field(default_factory=time.monotonic)


class JobSlots:
    """``n`` concurrent signing jobs; up to ``max_queue`` more wait up to ``timeout`` s."""

    def __init__(self, n: int, timeout: float, max_queue: int) -> None:
        self.n = n
        self.timeout = timeout
        self.max_queue = max_queue
        self.sem = asyncio.Semaphore(n)
        self.waiting = 0
        self.avg_s = 0.05  # moving average of a job's duration (for Retry-After)

    def retry_after(self) -> str:
        return str(max(1, min(60, math.ceil(self.avg_s * (self.waiting + 1) / self.n))))

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self.sem.locked() and self.waiting >= self.max_queue:
            raise Reject(429, "too many signing jobs queued; retry later", self._ra())
        self.waiting += 1
        try:
            await asyncio.wait_for(self.sem.acquire(), self.timeout)
        except TimeoutError:
            raise Reject(
                429, "too many signing jobs in progress; retry later", self._ra()
            ) from None
        finally:
            self.waiting -= 1
        t = time.monotonic()
        try:
            yield
        finally:
            self.avg_s = 0.8 * self.avg_s + 0.2 * (time.monotonic() - t)
            self.sem.release()

    def _ra(self) -> dict[str, str]:
        return {"Retry-After": self.retry_after()}


class SigningService:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        settings.check()
        if settings.tokens_file is None and not settings.insecure_no_auth:
            raise ServerError(
                "no tokens file: refusing to start without authentication "
                "(give --tokens FILE, or --insecure-no-auth on a loopback address)"
            )
        self.tokens = TokenStore(settings.tokens_file) if settings.tokens_file else None
        if settings.audit_log is None and not settings.no_audit_log:
            raise ServerError(
                "no audit log: give --audit-log FILE (or CPTRA_IMGTOOL_AUDIT_LOG), or "
                "--no-audit-log to run without one"
            )
        try:
            self.audit = AuditLog(settings.audit_log)
        except AuditError as exc:
            raise ServerError(f"audit log: {exc}") from None
        self.unauth = FailureSummary()  # unauthenticated 4xx: a burst in full, then counted
        self.quota: LmsQuota | None = None
        if settings.tokens_file is not None:
            qdb = settings.quota_db or settings.tokens_file.with_name(
                settings.tokens_file.name + ".lms-quota.sqlite3"
            )
            self.quota = LmsQuota(qdb)
        self.jobs = JobSlots(settings.jobs, settings.queue_timeout, settings.max_queue)
        self.lms_jobs = JobSlots(settings.lms_jobs, settings.queue_timeout, settings.max_queue)
        # ML-DSA-87 signing is pure Python too (dilithium-py): CPU-bound, and serialized
        # (one at a time: dilithium-py is not thread-safe, see signing2.DILITHIUM_LOCK)
        self.mldsa_jobs = JobSlots(1, settings.queue_timeout, settings.max_queue)
        # ECC keys on PKCS#11 tokens (hsmkeys.py): a token is used by one thread at a time
        # anyway (keys/pkcs11.py), so one slot, off the event loop
        self.hsm = HsmKeys(
            settings.keyfile_root,
            settings.pkcs11_modules,
            settings.pkcs11_pin_dir,
            settings.pkcs11_scan_interval,
        )
        self.hsm_jobs = JobSlots(1, settings.queue_timeout, settings.max_queue)
        self.work_root = settings.work_dir or Path(tempfile.gettempdir())
        if not self.work_root.is_dir():
            raise ServerError(f"{self.work_root}: work directory not found")
        _remove_stale_caches()
        self.cache_root = Path(tempfile.mkdtemp(prefix=f"{CACHE_PREFIX}{os.getpid()}-"))
        self.keys = KeyCache(
            self.cache_root / "trees", settings.tar_max_bytes, settings.tar_max_files
        )
        protected = [settings.keyfile_root, self.work_root, self.cache_root]
        protected += [p for p in (settings.tokens_file, settings.audit_log) if p is not None]
        why = CstRunner.probe()
        self.sandbox_problem = why
        self.imx_refused = why is not None and not settings.allow_unsandboxed_cst
        self.cst = CstRunner(
            sandbox=why is None,
            protected=protected,
            cache_dir=self.cache_root / "cst",
            work_dir=self.work_root,
            workers=settings.jobs,
        )
        self._ecc_keys: dict[Path, tuple[int, Any]] = {}
        self._pub_cache: dict[Path, tuple[int, bytes]] = {}
        self._mldsa_keys: dict[Path, tuple[tuple[int, ...], Any, bytes]] = {}
        self._lms_locks: dict[Path, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def startup_notes(self) -> list[str]:
        """What the operator must know at start-up (printed by `serve`)."""
        notes = []
        if self.s.audit_log is None:
            notes.append("no audit log (--no-audit-log): requests and signatures are NOT recorded")
        if self.sandbox_problem is not None:
            if self.imx_refused:
                notes.append(
                    f"cst sandbox not available ({self.sandbox_problem}): /sign/imx is refused; "
                    "start with --allow-unsandboxed-cst to run cst without a sandbox"
                )
            else:
                notes.append(
                    f"cst sandbox not available ({self.sandbox_problem}): running cst WITHOUT a "
                    "sandbox (--allow-unsandboxed-cst); the CSF checks are the only barrier"
                )
        return notes

    def startup_info(self) -> list[str]:
        """Facts printed at start-up (not warnings)."""
        out = []
        if self.s.audit_log is not None:
            out.append(f"audit log: {self.s.audit_log}")
        return out

    def close(self) -> None:
        """Remove the unpacked key trees (called when the server stops); write the last
        summary of unauthenticated failures."""
        summary = self.unauth.due(force=True)
        if summary is not None:
            try:
                self.audit.record(**summary)
            except AuditError as exc:
                log.error("audit log unavailable: %s", exc)
        self.keys.close()
        self.cst.close()
        shutil.rmtree(self.cache_root, ignore_errors=True)

    # ------------------------------------------------------------------ audit (middleware)
    def finish(self, ctx: Ctx, status: int) -> None:
        """The request's final audit record (and one log line). Raises AuditError."""
        ms = round((time.monotonic() - ctx.started) * 1000, 1)
        tid = ctx.token.id if ctx.token else None
        # one text line per authenticated request; anonymous 4xx (floods) only at DEBUG --
        # the audit log has every request either way
        log.log(
            logging.INFO if tid is not None or status >= 500 else logging.DEBUG,
            "%s %s machine=%s token=%s -> %s (%.1f ms)",
            ctx.method,
            ctx.endpoint if ctx.endpoint != "other" else validate.log_safe(ctx.path, 80),
            ctx.machine or "-",
            tid or "-",
            status,
            ms,
        )
        if ctx.endpoint == "healthz" and status == 200:
            return  # health probes are recorded only when they fail
        summary = self.unauth.due()
        if summary is not None:
            self.audit.record(**summary)
        if (
            ctx.token is None
            and 400 <= status < 500
            and not ctx.signing
            and not self.unauth.admit(ctx.endpoint, status, ctx.client)
        ):
            return  # counted in the next "unauthenticated_failures" record
        rec: dict[str, Any] = {
            "event": "request",
            "token_id": tid,
            "client": ctx.client,
            "method": ctx.method,
            "endpoint": ctx.endpoint,
            "machine": ctx.machine,
            "key": ctx.key,
            "inputs_sha256": ctx.inputs,
            "result": status,
            "duration_ms": ms,
        }
        if ctx.endpoint == "other":
            rec["path"] = validate.log_safe(ctx.path)
        if ctx.lms_q is not None:
            rec["lms_q"] = ctx.lms_q
        self.audit.record(**{k: v for k, v in rec.items() if v not in (None, "", {})})

    def about_to_sign(self, ctx: Ctx) -> None:
        """The record that must exist before a signature is made; fail closed without it."""
        try:
            self.audit.record(
                event="sign",
                token_id=ctx.token.id if ctx.token else None,
                client=ctx.client,
                endpoint=ctx.endpoint,
                machine=ctx.machine,
                key=ctx.key,
                inputs_sha256=ctx.inputs,
            )
        except AuditError as exc:
            log.error("audit log unavailable, refusing to sign: %s", exc)
            raise Reject(503, "Signing error: the audit log is unavailable") from None
        ctx.signing = True

    # ------------------------------------------------------------------ plumbing
    def _auth(self, request: Request, ctx: Ctx) -> None:
        if self.tokens is None:
            return
        tokens = self.tokens.current()
        if tokens is None:
            log.error("tokens file unusable, refusing every request: %s", self.tokens.error)
            raise Reject(503, "authentication unavailable")
        ctx.token = authenticate(tokens, request.headers.get("authorization"))
        if ctx.token is None:
            raise Reject(401, "missing or invalid bearer token")

    def _recheck(self, ctx: Ctx, endpoint: str) -> None:
        """After a queue wait: the token must still be in the tokens file (not revoked), with
        the same scope (re-read if the file changed meanwhile)."""
        if self.tokens is None or ctx.token is None:
            return
        tokens = self.tokens.current()
        if tokens is None:
            raise Reject(503, "authentication unavailable")
        now = next((t for t in tokens if t.sha256 == ctx.token.sha256), None)
        if now is None:  # the audit record keeps the id of the token that was revoked
            raise Reject(401, "missing or invalid bearer token")
        ctx.token = now
        if not now.allows(ctx.machine, endpoint):
            raise Reject(403, FORBIDDEN.strip())

    def _allow(self, ctx: Ctx, machine: str, endpoint: str) -> None:
        """Authorize (token, machine, endpoint) -- before anything about the machine is looked
        up, so an unknown machine and another tenant's machine get the same 403."""
        if not validate.machine_ok(machine):
            ctx.machine = "(invalid)"
            raise Reject(400, "invalid machine name")
        ctx.machine = machine
        if ctx.token is not None and not ctx.token.allows(machine, endpoint):
            raise Reject(403, FORBIDDEN.strip())

    def _limited(self, request: Request, ctx: Ctx, cap: int | None = None) -> Request:
        limit = self.s.request_max_size if cap is None else min(cap, self.s.request_max_size)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise Reject(413, f"request body larger than {limit} bytes")
        seen = 0

        async def receive() -> Message:
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
        self, request: Request, body: Callable[[Request, Ctx], Awaitable[Response]]
    ) -> Response:
        ctx: Ctx = request.scope["cptra_ctx"]
        try:
            self._auth(request, ctx)
            return await body(request, ctx)
        except Reject as r:
            return PlainTextResponse(r.text + "\n", status_code=r.status, headers=r.headers)
        except BodyTooLarge:
            return PlainTextResponse("request body too large\n", status_code=413)
        except ImxError as exc:
            log.warning("%s: %s", ctx.endpoint, validate.log_safe(exc.detail or exc.public, 300))
            return PlainTextResponse(exc.public + "\n", status_code=exc.status)
        except HTTPException as exc:  # raised by Starlette's form parsers (limits, bad bodies)
            status = 413 if ctx.too_large else exc.status_code
            return PlainTextResponse(f"{exc.detail}\n", status_code=status)
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            if ctx.too_large:
                return PlainTextResponse("request body too large\n", status_code=413)
            log.error("%s: internal error (%s)", ctx.endpoint, type(exc).__name__)
            return PlainTextResponse("Signing error\n", status_code=500)

    @staticmethod
    def _field(form: FormData, name: str, default: str | None = None) -> str:
        value = form.get(name)
        if value is None:
            if default is not None:
                return default
            raise Reject(400, f"missing form field {name!r}")
        if not isinstance(value, str):
            raise Reject(400, f"form field {name!r} must be a value, not a file")
        if not validate.printable(value):
            raise Reject(400, f"form field {name!r} has control or non-ASCII characters")
        return value

    @staticmethod
    def _upload(form: FormData, name: str) -> UploadFile:
        value = form.get(name)
        if not isinstance(value, UploadFile):
            raise Reject(400, f"missing file upload {name!r}")
        return value

    # ------------------------------------------------------------------ /sign/imx
    async def sign_imx(self, request: Request) -> Response:
        return await self._handle(request, self._sign_imx)

    async def _sign_imx(self, request: Request, ctx: Ctx) -> Response:
        async with self._limited(request, ctx).form(max_files=2, max_fields=8) as form:
            machine = self._field(form, "machine")
            soctype = self._field(form, "soctype")
            cstversion = self._field(form, "cstversion")
            backend = self._field(form, "backend", "ssl")
            self._allow(ctx, machine, "imx")
            if soctype not in validate.SOCTYPES:
                raise Reject(400, f"unsupported soctype (allowed: {', '.join(validate.SOCTYPES)})")
            if not validate.CST_VERSION_RE.fullmatch(cstversion):
                raise Reject(400, "invalid cstversion")
            if backend == "pkcs11":  # digsigserver's HSM route: `cst -b pkcs11`
                raise Reject(
                    501,
                    "backend pkcs11 is not available: this server's cst (Debian "
                    "imx-code-signing-tool) has no PKCS#11 backend; use backend=ssl",
                )
            if backend not in validate.BACKENDS:
                raise Reject(400, "unsupported backend (this server offers: ssl)")
            cst = self.s.imx_cst_base / f"cst-{cstversion}" / "linux64" / "bin" / "cst"
            if not cst.is_file():
                raise Reject(400, f"cst {cstversion} is not available")
            if self.imx_refused:
                raise Reject(503, "i.MX signing is disabled: no sandbox for cst on this server")
            csf_up, art_up = self._upload(form, "csf"), self._upload(form, "artifact")
            art_name = art_up.filename or ""
            if not validate.upload_name_ok(art_name):
                raise Reject(400, "artifact file name not allowed")
            csf_bytes = await csf_up.read(csfmod.MAX_BYTES + 1)
            ctx.inputs["csf"] = hashlib.sha256(csf_bytes).hexdigest()
            try:
                parsed = csfmod.parse(csf_bytes)
            except csfmod.CsfError as exc:
                raise Reject(400, str(exc)) from None
            archive = self.s.keyfile_root / machine / "imxsign" / "imx-cst-keys.tar.gz"
            async with self.jobs.slot():
                self._recheck(ctx, "imx")  # revoked or narrowed while it waited?
                tree = self.keys.acquire_cached(archive)
                if tree is None:  # first use or a changed archive: unpack off the loop
                    tree = await asyncio.to_thread(self.keys.acquire, archive)
                staged: Artifact | None = None
                try:
                    try:
                        csfmod.check_files(parsed, tree.files, art_name)
                        csfpolicy.check_roles(parsed, tree.index)
                    except csfmod.CsfError as exc:
                        raise Reject(400, str(exc)) from None
                    if art_name in tree.tops:
                        raise Reject(400, "artifact file name not allowed")
                    staged = await self._stage(art_up, art_name)
                    try:  # every block inside the artifact (cst reads past its end otherwise)
                        csfmod.check_files(parsed, tree.files, art_name, None, staged.size)
                    except csfmod.CsfError as exc:
                        raise Reject(400, str(exc)) from None
                    ctx.inputs["artifact"] = staged.sha256
                    self.about_to_sign(ctx)
                    binds = {name: tree.root / name for name in tree.tops}
                    out = await self.cst.run(
                        cst, csfmod.render(parsed), staged, binds, self.s.subprocess_timeout
                    )
                    check_csf_binary(out)  # never hand out what is not a HAB4 CSF
                finally:
                    if staged is not None and staged.path is not None:
                        await asyncio.to_thread(staged.close)  # a large file: off the loop
                    elif staged is not None:
                        staged.close()
                    self.keys.release(tree)
        return Response(
            out,
            media_type="application/octet-stream",
            headers={"Content-Disposition": 'attachment; filename="artifact.signed"'},
        )

    async def _stage(self, upload: UploadFile, name: str) -> Artifact:
        """The artifact ready for cst: a small one (already in memory) copied into a memory
        file here, a large one streamed into a work-dir file off the event loop."""
        if upload.size is not None and upload.size <= INLINE_ARTIFACT:
            data = await upload.read(INLINE_ARTIFACT + 1)
            if len(data) <= INLINE_ARTIFACT:
                return Artifact.from_bytes(name, data, self.work_root)
            await upload.seek(0)
        return await asyncio.to_thread(Artifact.from_stream, name, upload.file, self.work_root)

    # ------------------------------------------------------------------ /sign/caliptra
    async def sign_caliptra(self, request: Request) -> Response:
        return await self._handle(request, self._sign_caliptra)

    def _caliptra_key(self, ctx: Ctx, machine: str, key: str, algo: str) -> Path:
        """The private key path (authorized first; 404 only for an allowed machine)."""
        self._allow(ctx, machine, "caliptra")
        if key not in validate.CALIPTRA_KEYS:
            raise Reject(400, f"key must be one of {', '.join(validate.CALIPTRA_KEYS)}")
        if algo not in validate.CALIPTRA_ALGOS:
            raise Reject(400, f"algo must be one of {', '.join(validate.CALIPTRA_ALGOS)}")
        ctx.key = f"{key}-{algo}"
        ext = "bin" if algo == "mldsa" else "pem"  # ML-DSA: raw files as keygen writes them
        return self.s.keyfile_root / machine / "caliptra" / f"{key}-{algo}-prvk.{ext}"

    async def _sign_caliptra(self, request: Request, ctx: Ctx) -> Response:
        limited = self._limited(request, ctx, CALIPTRA_MAX_BODY)
        async with limited.form(max_files=0, max_fields=8, max_part_size=CALIPTRA_MAX_BODY) as form:
            machine = self._field(form, "machine")
            key, algo = self._field(form, "key"), self._field(form, "algo")
            has_digest, has_message = "digest" in form, "message" in form
            digest_hex = self._field(form, "digest") if has_digest else ""
            message_hex = self._field(form, "message") if has_message else ""
        priv = self._caliptra_key(ctx, machine, key, algo)
        if algo == "mldsa":
            return await self._sign_mldsa(ctx, priv, has_digest, has_message, message_hex)
        if has_message:
            raise Reject(400, f"algo {algo} signs a SHA-384 digest: send 'digest', not 'message'")
        if not has_digest:
            raise Reject(400, "missing form field 'digest'")
        if not validate.DIGEST_RE.fullmatch(digest_hex):
            raise Reject(400, "digest must be 96 hex characters (SHA-384)")
        digest = bytes.fromhex(digest_hex)
        if algo == "ecc" and self.hsm.has_key(priv):  # <key>-ecc-prvk.pkcs11: on a token
            ctx.inputs["digest"] = hashlib.sha256(digest).hexdigest()
            return await self._sign_hsm(ctx, priv, digest)
        if not priv.is_file():
            raise Reject(404, f"no {key} {algo} key for machine {machine!r}")
        ctx.inputs["digest"] = hashlib.sha256(digest).hexdigest()
        if algo == "ecc":
            k = self._ecc_key(priv)
            self.about_to_sign(ctx)
            sig = ecc.sign_digest_der(k, digest)
        else:
            async with self.lms_jobs.slot():
                self._recheck(ctx, "caliptra")  # revoked while it waited? (quota: below)
                if self.quota is not None and ctx.token is not None:
                    quota = ctx.token.lms_quota or self.s.lms_quota
                    try:
                        await asyncio.to_thread(self.quota.charge, ctx.token.id, quota)
                    except QuotaExceeded as exc:
                        raise Reject(
                            429,
                            "LMS signature quota of this token is used up; retry later",
                            {"Retry-After": str(exc.retry_after)},
                        ) from None
                self.about_to_sign(ctx)
                actor = f"token:{ctx.token.id}" if ctx.token else None
                sig = await asyncio.to_thread(self._lms_sign, priv, digest, actor=actor)
                ctx.lms_q = lms.sig_q(lms.slot_to_sig(sig))
        return Response(sig, media_type="application/octet-stream")

    async def _sign_hsm(self, ctx: Ctx, priv: Path, digest: bytes) -> Response:
        """ECC P-384 on a PKCS#11 token (hsmkeys.py): the key store's URI file checked, the
        signature verified against the public key file before it is returned. A failure is a
        generic 500 for the client and one log line naming the key file and URI (no PIN)."""
        async with self.hsm_jobs.slot():
            self._recheck(ctx, "caliptra")  # revoked while it waited?
            try:
                key: HsmKey = await asyncio.to_thread(self.hsm.load, ctx.machine, priv)
                self.about_to_sign(ctx)
                sig = await asyncio.to_thread(self.hsm.sign_digest_der, key, digest)
            except HsmKeyError as exc:
                log.error(
                    "caliptra: machine=%s key=%s: %s",
                    ctx.machine,
                    ctx.key,
                    validate.log_safe(str(exc), 400),
                )
                raise Reject(exc.status, exc.public) from None
        return Response(sig, media_type="application/octet-stream")

    async def _sign_mldsa(
        self, ctx: Ctx, priv: Path, has_digest: bool, has_message: bool, message_hex: str
    ) -> Response:
        """ML-DSA-87 over the raw message: deterministic, verified before it is returned."""
        if has_digest:
            raise Reject(
                400,
                "algo mldsa signs the raw message, not a digest: send it as 'message' (hex)",
            )
        if not has_message:
            raise Reject(400, "missing form field 'message'")
        if len(message_hex) > 2 * MAX_MESSAGE:
            raise Reject(413, f"message larger than {MAX_MESSAGE} bytes")
        if not HEX_RE.fullmatch(message_hex):
            raise Reject(400, "message must be hex (an even number of hex characters)")
        if not priv.is_file():
            raise Reject(404, f"no {ctx.key} key for machine {ctx.machine!r}")
        msg = bytes.fromhex(message_hex)
        ctx.inputs["message"] = hashlib.sha256(msg).hexdigest()
        async with self.mldsa_jobs.slot():
            self._recheck(ctx, "caliptra")  # revoked while it waited?
            key, pub = await asyncio.to_thread(self._mldsa_key, priv)
            self.about_to_sign(ctx)
            sig = await asyncio.to_thread(self._mldsa_sign, key, pub, msg)
        return Response(sig, media_type="application/octet-stream")

    def _mldsa_key(self, priv: Path) -> tuple[Any, bytes]:
        """The private key and the public key it must verify with: ``-pubk.bin`` beside it
        (checked to be this private key's), else derived from it. Cached by stat."""
        from ..keys import mldsa

        pub_path = _mldsa_pub_path(priv)
        try:
            ident = _stat_sig(priv) + _stat_sig(pub_path)
        except OSError as exc:
            log.error("caliptra: %s: %s", priv.name, exc.strerror)
            raise Reject(500, "Signing error: cannot read the key") from None
        cached = self._mldsa_keys.get(priv)
        if cached is not None and cached[0] == ident:
            return cached[1], cached[2]
        try:
            if priv.stat().st_size != mldsa.PRIV_LEN:
                raise ImgtoolError(f"{priv}: not a {mldsa.PRIV_LEN}-byte ML-DSA-87 private key")
            key = mldsa.MldsaPrivateKey.load(priv)
            with DILITHIUM_LOCK:
                derived = mldsa.public_from_private(key.raw)
            if pub_path.is_file():
                if pub_path.stat().st_size != mldsa.PUB_LEN:
                    raise ImgtoolError(f"{pub_path}: not a {mldsa.PUB_LEN}-byte public key")
                if mldsa.MldsaPublicKey.load(pub_path).raw != derived:
                    raise ImgtoolError(
                        f"{pub_path}: is not the public key of {priv.name} (key store broken)"
                    )
        except (ImgtoolError, OSError, ValueError) as exc:
            # names the key file, never key material
            log.error("caliptra: %s", validate.log_safe(str(exc), 300))
            raise Reject(500, "Signing error: cannot use the key") from None
        self._mldsa_keys[priv] = (ident, key, derived)
        return key, derived

    @staticmethod
    def _mldsa_sign(key: Any, pub: bytes, msg: bytes) -> bytes:
        try:
            with DILITHIUM_LOCK:  # deterministic; verified against pub inside
                return bytes(key.sign(msg, pub))
        except ImgtoolError as exc:
            log.error("caliptra: %s", exc)
            raise Reject(500, "Signing error") from None

    def _ecc_key(self, path: Path) -> Any:
        mtime = path.stat().st_mtime_ns
        cached = self._ecc_keys.get(path)
        if cached is None or cached[0] != mtime:
            try:
                cached = (mtime, ecc.load_private(path))
            except ImgtoolError as exc:
                log.error("caliptra: %s", exc)
                raise Reject(500, "Signing error") from None
            self._ecc_keys[path] = cached
        return cached[1]

    def _lms_sign(self, priv: Path, digest: bytes, *, actor: str | None = None) -> bytes:
        with self._locks_guard:
            lock = self._lms_locks.setdefault(priv, threading.Lock())
        with lock:
            try:
                return LmsSigner.load(
                    priv, signer="server", store=self.s.lms_state, actor=actor
                ).sign_digest(digest)
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
            for name in ("machine", "key", "algo"):
                if not validate.printable(q.get(name, "")):
                    raise Reject(400, f"parameter {name!r} has control or non-ASCII characters")
            key, algo = q.get("key", ""), q.get("algo", "")
            priv = self._caliptra_key(ctx, q.get("machine", ""), key, algo)
            data = await asyncio.to_thread(self._public_key, priv, algo)
            if data is None and priv.is_file():
                raise Reject(
                    404,
                    f"no public key file for the {key} {algo} key of machine {ctx.machine!r}, "
                    "and it is not a full-tree key known here (its public key is not derived)",
                )
            if data is None:
                raise Reject(404, f"no {key} {algo} key for machine {ctx.machine!r}")
            return Response(data, media_type="application/octet-stream")

        return await self._handle(request, body)

    def _public_key(self, priv: Path, algo: str) -> bytes | None:
        """``-pubk.pem`` beside the private key, or derived from the private key (ML-DSA: the
        raw 2592-byte key, checked against the private key when there is one)."""
        if algo == "mldsa":
            return self._mldsa_public(priv)
        pub = priv.with_name(priv.name.replace("-prvk.pem", "-pubk.pem"))
        if pub.is_file():
            return pub.read_bytes()
        if not priv.is_file():
            return None
        mtime = priv.stat().st_mtime_ns
        cached = self._pub_cache.get(priv)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        try:
            if algo == "ecc":
                data = (
                    ecc.load_private(priv)
                    .public_key()
                    .public_bytes(
                        serialization.Encoding.PEM,
                        serialization.PublicFormat.SubjectPublicKeyInfo,
                    )
                )
            else:
                lms_pub = _lms_public_from_private(priv, self.s.lms_state)
                if lms_pub is None:
                    return None  # 404: no public key file, and not derived (see above)
                data = lms_pub
        except ImgtoolError as exc:
            log.error("pubkey: %s", exc)
            raise Reject(500, "Signing error: cannot read the key") from None
        self._pub_cache[priv] = (mtime, data)
        return data

    def _mldsa_public(self, priv: Path) -> bytes | None:
        if priv.is_file():
            return self._mldsa_key(priv)[1]
        from ..keys import mldsa

        pub = _mldsa_pub_path(priv)
        if not pub.is_file():
            return None
        try:
            if pub.stat().st_size != mldsa.PUB_LEN:
                raise ImgtoolError(f"{pub}: not a {mldsa.PUB_LEN}-byte ML-DSA-87 public key")
            return mldsa.MldsaPublicKey.load(pub).raw
        except (ImgtoolError, OSError) as exc:
            log.error("pubkey: %s", exc)
            raise Reject(500, "Signing error: cannot read the key") from None

    async def healthz(self, request: Request) -> Response:
        problems = []
        if not self.s.keyfile_root.is_dir():
            problems.append("key store missing")
        if self.tokens is not None and self.tokens.current() is None:
            problems.append("tokens file unusable")
        if self.audit.last_error is not None:
            problems.append("audit log not writable")
        if problems:
            return PlainTextResponse("unhealthy: " + ", ".join(problems) + "\n", status_code=503)
        return PlainTextResponse("ok\n")


CACHE_PREFIX = "cptra-imgtool-keys-"


def _mldsa_pub_path(priv: Path) -> Path:
    return priv.with_name(priv.name.replace("-prvk.bin", "-pubk.bin"))


def _stat_sig(path: Path) -> tuple[int, ...]:
    """Identity of a file's content for the key caches ((0,) when it does not exist)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return (0,)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _remove_stale_caches() -> None:
    """Key caches left in the temp dir by servers that were killed (the pid in the name is
    gone); a live server's cache is never touched."""
    from .keycache import _rmtree

    for d in Path(tempfile.gettempdir()).glob(f"{CACHE_PREFIX}*-*"):
        pid = d.name[len(CACHE_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            if d.is_symlink() or d.stat().st_uid != os.getuid():
                continue
            os.kill(int(pid), 0)
            continue  # that server is still running
        except ProcessLookupError:
            pass
        except OSError:
            continue
        _rmtree(d)


def _lms_public_from_private(priv: Path, store: str | None) -> bytes | None:
    """An LMS public key computed from the private key only when it is a full-tree key this
    machine knows: the root the LMS state store recorded for it, else (its state file or tree
    cache beside it) the full tree's root, computed once, single-process. Otherwise None:
    without its ``-pubk.pem`` a key is never given the sparse demo tree's root, which would be
    wrong for a full-tree key whose state lives elsewhere (a client would pin a public key
    that no signature verifies against)."""
    from ..keys import lms_signer, lms_tree

    stored = lms_signer.stored_public_key(priv, store)
    if stored is not None:
        return stored.to_bytes()
    if not lms_signer.is_full_tree_key(priv, store):
        return None
    key = lms.load_private(priv)
    root = lms_tree.compute_tree(key, workers=1)[1]
    return lms.LmsPublicKey(key.lms_type, key.ots_type, key.I, root).to_bytes()


class AuditMiddleware:
    """Gives every HTTP request a Ctx, and writes its audit record before the response starts.
    When that write fails, a response that may carry a signature is replaced by a 503."""

    def __init__(self, app: Any, service: SigningService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # websocket (the server offers none) or anything else
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        has_body = any(
            (k == b"content-length" and v.strip() not in (b"", b"0")) or k == b"transfer-encoding"
            for k, v in scope.get("headers", ())
        )
        path = scope.get("path", "")
        endpoint = ENDPOINTS.get(path) or ("healthz" if path == "/healthz" else "other")
        client = scope.get("client")
        ctx = Ctx(endpoint, client[0] if client else "", validate.log_safe(scope["method"], 16))
        ctx.path = path
        scope["cptra_ctx"] = ctx
        blocked = False

        async def guarded(msg: Message) -> None:
            nonlocal blocked
            if blocked:
                return
            if msg["type"] == "http.response.start":
                if has_body and int(msg["status"]) >= 400:
                    # an error answered before (all of) the body was read: this connection
                    # closes after the response instead of waiting for the rest of the body
                    msg = {**msg, "headers": [*msg.get("headers", []), (b"connection", b"close")]}
                try:
                    self.service.finish(ctx, int(msg["status"]))
                except AuditError as exc:
                    log.error("audit log unavailable: %s", exc)
                    if ctx.signing or int(msg["status"]) < 400:
                        blocked = True
                        body = b"Signing error: the audit log is unavailable\n"
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 503,
                                "headers": [
                                    (b"content-type", b"text/plain; charset=utf-8"),
                                    (b"content-length", str(len(body)).encode()),
                                ],
                            }
                        )
                        await send({"type": "http.response.body", "body": body})
                        return
            await send(msg)

        await self.app(scope, receive, guarded)


def create_app(settings: Settings) -> Starlette:
    """The app factory. Raises ServerError when the settings are unusable."""
    service = SigningService(settings)
    logging.getLogger("imgtool.server").setLevel(settings.log_level)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            service.close()  # the unpacked key trees go when the server stops

    app = Starlette(
        debug=False,
        lifespan=lifespan,
        routes=[
            Route("/sign/imx", service.sign_imx, methods=["POST"]),
            Route("/sign/caliptra", service.sign_caliptra, methods=["POST"]),
            Route("/pubkey", service.pubkey, methods=["GET"]),
            Route("/healthz", service.healthz, methods=["GET"]),
        ],
    )
    app.add_middleware(AuditMiddleware, service=service)
    app.state.service = service
    return app
