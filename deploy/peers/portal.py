"""A public-service portal (Cổng dịch vụ công tỉnh) taking dossier progress: a real aiohttp
server for the tests and the demo, speaking what :class:`adapters.one_stop_shop.PortalTransport`
sends, written from its documented protocol rather than by importing it (so that a change on
one side alone shows).

``POST /api/CapNhatTienDoHoSoMC``
    One progress update (cập nhật tiến độ hồ sơ). In this order:

    1. the next scripted answer, if any (below);
    2. the signature: ``X-Lienthong-Timestamp`` (Unix seconds, within ``max_skew`` of now) and
       ``X-Lienthong-Signature: sha256=hex(HMAC-SHA256(secret, timestamp + "." + body))``,
       else 401;
    3. the payload: a JSON object with MaThongDiep (UUID, equal to ``X-Lienthong-Message-Id``
       when sent), MaHoSo, TrangThaiHoSo (1..10), NgayCapNhat (``yyyyMMddHHmmss``),
       NoiDungXuLy and DonViXuLy, else 400 with the reason;
    4. deduplication by MaThongDiep: a repeat with the same content answers 200 again and
       changes nothing; the same id with other content is 409;
    5. the update is appended to the dossier's progress history: 200
       ``{"error_code": 0, "message": ...}``.

``GET /api/TienDoHoSo/{MaHoSo}``
    The dossier's history, oldest first (signed like a POST with an empty body).

``POST /api/_script``
    ``{"answers": [503, "reset", "slow", "refuse", ...]}`` appends scripted answers (signed).

Scripted answers, one per progress request: an HTTP status (answered with that status, nothing
applied); ``"reset"`` (the connection dropped, nothing applied); ``"slow"`` (applied, but the
answer comes ``slow_seconds`` later, after the gateway's timeout); ``"refuse"`` (200 with
``error_code: -1``, the national portal's way of refusing). Then it answers normally.

Run it alone: ``PORTAL_SECRET=... python -m deploy.peers.portal --port 8090``. The secret comes
from the environment, not the command line, where every user of the machine could read it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import re
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

PROGRESS_PATH = "/api/CapNhatTienDoHoSoMC"
HISTORY_PATH = "/api/TienDoHoSo/{code}"
SCRIPT_PATH = "/api/_script"

_DOSSIER_CODE = re.compile(r"^\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}-\d{6}-\d{4,6}$")
_AGENCY_CODE = re.compile(r"^\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}$")

Answer = int | str


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class PortalPeer:
    """The portal's state: each dossier's progress, what it refused, what it was asked."""

    secret: str
    slow_seconds: float = 3.0
    max_skew: float = 300.0
    script: deque[Answer] = field(default_factory=deque)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # MaHoSo -> updates
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)  # MaThongDiep -> update
    requests: Counter[str] = field(default_factory=Counter)  # MaThongDiep (or "?") -> requests
    refusals: list[tuple[int, str]] = field(default_factory=list)  # (status, reason)
    repeats: int = 0  # requests for an update applied already: answered, not applied again
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def fail_next(self, *answers: Answer) -> None:
        self.script.extend(answers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(PROGRESS_PATH, self.progress)
        app.router.add_get(HISTORY_PATH, self.get_history)
        app.router.add_post(SCRIPT_PATH, self.add_script)
        return app

    # -- handlers --------------------------------------------------------------------------
    async def progress(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests[request.headers.get("X-Lienthong-Message-Id") or "?"] += 1
        answer = self.script.popleft() if self.script else None
        if answer == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if isinstance(answer, int):
            return _answer(answer, -1, "scripted failure")
        try:
            self._authenticate(request, body)
            update = _validate(request, body)
            duplicate = self._apply(update)
        except _Refused as exc:
            self.refusals.append((exc.status, exc.reason))
            return _answer(exc.status, -1, exc.reason)
        if answer == "refuse":
            return _answer(200, -1, "scripted refusal")
        if answer == "slow":  # applied, but the answer comes too late for the gateway
            await asyncio.sleep(self.slow_seconds)
        message = "Đã nhận trước đó (trùng)" if duplicate else "Cập nhật tiến độ thành công"
        return _answer(200, 0, message, duplicate=duplicate)

    async def get_history(self, request: web.Request) -> web.Response:
        try:
            self._authenticate(request, b"")
        except _Refused as exc:
            return _answer(exc.status, -1, exc.reason)
        code = request.match_info["code"]
        return web.json_response({"MaHoSo": code, "TienDo": self.history.get(code, [])})

    async def add_script(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self._authenticate(request, body)
            answers = orjson.loads(body).get("answers")
        except _Refused as exc:
            return _answer(exc.status, -1, exc.reason)
        except (orjson.JSONDecodeError, AttributeError):
            answers = None
        if not isinstance(answers, list) or not all(_is_answer(a) for a in answers):
            return _answer(400, -1, "answers must be a list of HTTP statuses, reset, slow, refuse")
        self.fail_next(*answers)
        return _answer(200, 0, f"{len(self.script)} answers scripted")

    # -- the rules -------------------------------------------------------------------------
    def _authenticate(self, request: web.Request, body: bytes) -> None:
        stamp = request.headers.get("X-Lienthong-Timestamp", "")
        signature = request.headers.get("X-Lienthong-Signature", "")
        if not stamp.isdigit() or not signature:
            raise _Refused(401, "missing X-Lienthong-Timestamp or X-Lienthong-Signature")
        if abs(time.time() - int(stamp)) > self.max_skew:
            raise _Refused(401, "X-Lienthong-Timestamp outside the accepted window")
        mac = hmac.new(self.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
        if not hmac.compare_digest(signature, f"sha256={mac.hexdigest()}"):
            raise _Refused(401, "bad signature")

    def _apply(self, update: dict[str, Any]) -> bool:
        """Apply once per MaThongDiep; True if it was a repeat."""
        key = update["MaThongDiep"]
        earlier = self.applied.get(key)
        if earlier is not None:
            if earlier != update:
                raise _Refused(409, "MaThongDiep already used for another update")
            self.repeats += 1
            return True
        self.applied[key] = update
        self.history.setdefault(update["MaHoSo"], []).append(update)
        self.arrived.set()
        return False


def _validate(request: web.Request, body: bytes) -> dict[str, Any]:
    try:
        update = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Refused(400, "body is not JSON") from None
    if not isinstance(update, dict):
        raise _Refused(400, "body must be a JSON object")
    key = update.get("MaThongDiep")
    try:
        uuid.UUID(str(key))
    except ValueError:
        raise _Refused(400, "MaThongDiep: must be a UUID") from None
    header = request.headers.get("X-Lienthong-Message-Id")
    if header is not None and header != key:
        raise _Refused(400, "MaThongDiep: differs from X-Lienthong-Message-Id")
    if not isinstance(update.get("MaHoSo"), str) or not _DOSSIER_CODE.match(update["MaHoSo"]):
        raise _Refused(400, "MaHoSo: missing or malformed")
    status = update.get("TrangThaiHoSo")
    if isinstance(status, bool) or not isinstance(status, int) or not 1 <= status <= 10:
        raise _Refused(400, "TrangThaiHoSo: must be an integer from 1 to 10")
    try:
        datetime.strptime(str(update.get("NgayCapNhat")), "%Y%m%d%H%M%S")
    except ValueError:
        raise _Refused(400, "NgayCapNhat: not yyyyMMddHHmmss") from None
    if not isinstance(update.get("NoiDungXuLy"), str) or not update["NoiDungXuLy"].strip():
        raise _Refused(400, "NoiDungXuLy: required")
    unit = update.get("DonViXuLy")
    if not isinstance(unit, str) or not _AGENCY_CODE.match(unit):
        raise _Refused(400, "DonViXuLy: missing or not an agency code")
    return update


def _answer(status: int, code: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error_code": code, "message": message, **extra}, status=status)


def _is_answer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and 100 <= value <= 599) or value in {
        "reset", "slow", "refuse"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.peers.portal",
        description="A public-service portal taking the gateway's dossier progress updates. "
        "The shared secret is read from the environment variable PORTAL_SECRET.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--slow-seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    secret = os.environ.get("PORTAL_SECRET", "")
    if not secret:
        sys.stderr.write("PORTAL_SECRET is not set: the portal needs the shared secret\n")
        return 2
    peer = PortalPeer(secret, slow_seconds=args.slow_seconds)
    web.run_app(peer.app(), host=args.host, port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
