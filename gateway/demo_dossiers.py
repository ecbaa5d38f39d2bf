"""The dossier part of ``lienthong demo``: dossiers (hồ sơ) received at communes' one-stop
shops, handed to their district or on to the province and back, through the real API.

* Phú Mỹ's neighbour receives a building-permit dossier, the district decides: on time.
* A dossier returned by the district for a missing paper (trả lại, thiếu giấy tờ), completed
  and handed over again, then decided.
* A land dossier the district passes on to the province, which decides and sends the result
  back to the commune where the citizen waits.
* A late dossier: the district apologises with a new date (phiếu xin lỗi và hẹn lại); it
  counts as late all the same.
* A dossier a district hands to a commune that has been merged: the gateway redirects it to
  the successor (cơ quan kế thừa), and the trace says so.
* One dossier still in progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol


class AgencyClient(Protocol):
    agency: str

    async def send(self, envelope: dict[str, Any], key: str) -> dict[str, Any]: ...

    async def get(self, path: str) -> dict[str, Any]: ...


@dataclass
class Outcome:
    code: str
    story: str
    expect_phase: str
    expect_timeliness: set[str]
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (self.view.get("phase") == self.expect_phase
                and self.view.get("timeliness") in self.expect_timeliness)


PROCEDURES = {
    "xay-dung": ("1.001612.000.00.00.H57", "Cấp giấy phép xây dựng nhà ở riêng lẻ"),
    "dat-dai": ("1.003003.000.00.00.H57", "Đăng ký biến động quyền sử dụng đất"),
    "ho-tich": ("1.001193.000.00.00.H57", "Đăng ký khai sinh có yếu tố nước ngoài"),
}


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def dossier(code: str, sender: str, to: str, procedure: str, *, received: datetime,
            appointment: datetime, route: Sequence[tuple[str, float]], step: int,
            applicant: str) -> dict[str, Any]:
    procedure_code, procedure_name = PROCEDURES[procedure]
    return {
        "kind": "dossier",
        "header": {"sender": sender, "to": [{"agency": to}]},
        "body": {
            "code": code, "procedure_code": procedure_code, "procedure_name": procedure_name,
            "applicant": {"name": applicant, "identity": "046190001234"},
            "receiving_agency": code.split("-")[0],
            "received_at": _iso(received), "appointment_at": _iso(appointment),
            "route": [{"agency": a, "working_days": d} for a, d in route],
            "current_step": step,
        },
    }


def status(code: str, sender: str, to: str, action: str, **body: Any) -> dict[str, Any]:
    return {
        "kind": "dossier_status",
        "header": {"sender": sender, "to": [{"agency": to}]},
        "body": {"dossier": code, "action": action, "at": _iso(datetime.now(UTC)), **body},
    }


async def run(clients: dict[str, AgencyClient], now: datetime, day: str) -> list[Outcome]:
    """Play the stories; ``clients`` holds a client for every agency named below."""
    c = clients
    province, huong_tra, phu_vang, phong_dien = (
        "000.00.00.H57", "000.00.33.H57", "000.00.34.H57", "000.00.35.H57")
    commune_pd, commune_ht, successor = "000.21.35.H57", "000.21.33.H57", "000.21.34.H57"
    soon, later = now + timedelta(days=14), now + timedelta(days=30)
    outcomes: list[Outcome] = []

    async def send(agency: str, envelope: dict[str, Any], key: str) -> str:
        return str((await c[agency].send(envelope, f"demo-{day}-{key}"))["id"])

    # 1. On time: commune -> district -> result.
    code = f"{commune_pd}-{day}-0001"
    h = await send(commune_pd, dossier(code, commune_pd, phong_dien, "xay-dung", received=now,
                                       appointment=soon, route=[(phong_dien, 10)], step=0,
                                       applicant="Trần Thị Bình"), "d1-h")
    await send(phong_dien, status(code, phong_dien, commune_pd, "accept", about=h), "d1-a")
    await send(phong_dien, status(code, phong_dien, commune_pd, "result"), "d1-r")
    outcomes.append(Outcome(code, "xã -> huyện, kết quả đúng hạn", "completed",
                            {"early", "on_time"}))

    # 2. Returned for a missing paper, handed over again, decided.
    code = f"{commune_pd}-{day}-0002"
    body = dossier(code, commune_pd, phong_dien, "ho-tich", received=now, appointment=soon,
                   route=[(phong_dien, 5)], step=0, applicant="Nguyễn Văn Cường")
    h = await send(commune_pd, body, "d2-h1")
    await send(phong_dien, status(code, phong_dien, commune_pd, "return", about=h,
                                  reason="Thiếu bản sao giấy tờ tùy thân của người nước ngoài"),
               "d2-ret")
    h = await send(commune_pd, body, "d2-h2")
    await send(phong_dien, status(code, phong_dien, commune_pd, "accept", about=h), "d2-a")
    await send(phong_dien, status(code, phong_dien, commune_pd, "result"), "d2-r")
    outcomes.append(Outcome(code, "huyện trả lại (thiếu giấy tờ), bổ sung, kết quả",
                            "completed", {"early", "on_time"}))

    # 3. Passed on to the province, which decides; the result goes back to the commune.
    code = f"{commune_ht}-{day}-0003"
    route = [(huong_tra, 7), (province, 8)]
    h = await send(commune_ht, dossier(code, commune_ht, huong_tra, "dat-dai", received=now,
                                       appointment=later, route=route, step=0,
                                       applicant="Lê Thị Hoa"), "d3-h1")
    await send(huong_tra, status(code, huong_tra, commune_ht, "accept", about=h), "d3-a1")
    up = dossier(code, huong_tra, province, "dat-dai", received=now, appointment=later,
                 route=route, step=1, applicant="Lê Thị Hoa")
    h = await send(huong_tra, up, "d3-h2")
    await send(province, status(code, province, huong_tra, "accept", about=h), "d3-a2")
    await send(province, status(code, province, commune_ht, "result"), "d3-r")
    outcomes.append(Outcome(code, "xã -> huyện -> tỉnh, kết quả về xã", "completed",
                            {"early", "on_time"}))

    # 4. Late: received weeks ago, appointment passed; the district apologises.
    code = f"{commune_pd}-{day}-0004"
    h = await send(commune_pd, dossier(code, commune_pd, phong_dien, "xay-dung",
                                       received=now - timedelta(days=30),
                                       appointment=now - timedelta(days=2),
                                       route=[(phong_dien, 10)], step=0,
                                       applicant="Phạm Văn Đức"), "d4-h")
    await send(phong_dien, status(code, phong_dien, commune_pd, "accept", about=h), "d4-a")
    await send(phong_dien, status(code, phong_dien, commune_pd, "apology",
                                  reason="Chờ ý kiến thẩm định của Sở Xây dựng",
                                  appointment_at=_iso(now + timedelta(days=5))), "d4-apology")
    await send(phong_dien, status(code, phong_dien, commune_pd, "result"), "d4-r")
    outcomes.append(Outcome(code, "trễ hạn: phiếu xin lỗi, hẹn lại, vẫn tính trễ",
                            "completed", {"late"}))

    # 5. Handed to a merged commune: redirected to its successor.
    code = f"{phu_vang}-{day}-0005"
    h = await send(phu_vang, dossier(code, phu_vang, "000.25.34.H57", "ho-tich", received=now,
                                     appointment=soon, route=[], step=0,
                                     applicant="Hoàng Thị Lan"), "d5-h")
    await send(successor, status(code, successor, phu_vang, "accept", about=h), "d5-a")
    await send(successor, status(code, successor, phu_vang, "result"), "d5-r")
    outcomes.append(Outcome(code, "gửi xã đã sáp nhập: chuyển cơ quan kế thừa", "completed",
                            {"early", "on_time"}))

    # 6. Still with the district.
    code = f"{commune_ht}-{day}-0006"
    h = await send(commune_ht, dossier(code, commune_ht, huong_tra, "xay-dung", received=now,
                                       appointment=soon, route=[(huong_tra, 10)], step=0,
                                       applicant="Võ Văn Em"), "d6-h")
    await send(huong_tra, status(code, huong_tra, commune_ht, "accept", about=h), "d6-a")
    outcomes.append(Outcome(code, "đang xử lý tại huyện", "held", {"on_time"}))

    for outcome in outcomes:
        receiving = outcome.code.split("-")[0]
        outcome.view = await c[receiving].get(f"/api/v1/dossiers/{outcome.code}")
    return outcomes


AGENCIES = ("000.00.00.H57", "000.00.33.H57", "000.00.34.H57", "000.00.35.H57",
            "000.21.35.H57", "000.21.33.H57", "000.21.34.H57")
