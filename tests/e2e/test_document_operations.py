"""Statuses and document operations through the API: processing statuses only move forwards,
recalls and updates reach the recipients of their document and collect 15/16 answers, and the
versions of a document are linked."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from gateway.codecs import decode_obj, encode_edxml
from gateway.codecs.edxml import message_id_for
from tests.conftest import HUE, PHONG_DIEN, PROVINCE, Gateway, GatewayFactory, document

DISTRICT_B = "000.00.32.H57"


def status(sender: str, to: str, about: str, code: str, comment: str | None = None
           ) -> dict[str, Any]:
    body: dict[str, Any] = {"about": about, "code": code, "at": "2026-11-25T09:00:00+07:00"}
    if comment is not None:
        body["comment"] = comment
    return {"kind": "status", "header": {"sender": sender, "to": [{"agency": to}]}, "body": body}


def operation(sender: str, to: list[str], op: str, document_id: str, **body: Any
              ) -> dict[str, Any]:
    envelope = document(sender, [{"agency": a} for a in to], subject=f"{op} of {document_id}")
    envelope["body"].update({"operation": op, "document_id": document_id, **body})
    return envelope


async def accepted(gateway: Gateway, sender: str, envelope: dict[str, Any]) -> str:
    response = await gateway.send(sender, envelope)
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def refused(gateway: Gateway, sender: str, envelope: dict[str, Any], status: int,
                  pointer: str) -> dict[str, Any]:
    response = await gateway.send(sender, envelope)
    problem = await response.json()
    assert response.status == status, problem
    assert problem["errors"][0]["pointer"] == pointer, problem
    return dict(problem)


async def view(gateway: Gateway, agency: str, message_id: str) -> dict[str, Any]:
    response = await gateway.client.get(
        f"/api/v1/messages/{message_id}", headers=await gateway.auth(agency)
    )
    assert response.status == 200, await response.text()
    return dict(await response.json())


def recipient(view_: dict[str, Any], agency: str) -> dict[str, Any]:
    return next(r for r in view_["recipients"] if r["agency"] == agency)


async def test_processing_status_moves_only_forwards(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    about = await accepted(gateway, PROVINCE, document(PROVINCE, [{"agency": HUE}]))
    for code in ("03", "01", "05", "05", "04"):  # late 01 and 04, a repeated 05
        await accepted(gateway, HUE, status(HUE, PROVINCE, about, code))
    seen = recipient(await view(gateway, PROVINCE, about), HUE)
    assert seen["status"]["code"] == "05"
    applied = [e["detail"]["applied"] for e in await gateway.store.events(about)
               if e["event"] == "status_received"]
    assert applied == [True, False, True, False, False]
    # 02 after 03 is the same step: the first decision stands.
    await accepted(gateway, HUE, status(HUE, PROVINCE, about, "02", comment="thiếu hồ sơ"))
    assert recipient(await view(gateway, PROVINCE, about), HUE)["status"]["code"] == "05"


async def test_recall_reaches_the_recipients_and_collects_answers(gateway: Gateway) -> None:
    original = await accepted(
        gateway, PROVINCE, document(PROVINCE, [{"agency": HUE}, {"agency": PHONG_DIEN}])
    )
    # The recall names one recipient; it goes to every recipient of the document.
    recall = await accepted(gateway, PROVINCE, operation(
        PROVINCE, [HUE], "recall", original, operation_reason="Ban hành nhầm"
    ))
    recall_view = await view(gateway, PROVINCE, recall)
    assert sorted(r["agency"] for r in recall_view["recipients"]) == sorted([HUE, PHONG_DIEN])
    assert recall_view["operation"] == "recall"
    await gateway.wait_state(recall, HUE, "delivered")
    await gateway.wait_state(recall, PHONG_DIEN, "delivered")
    # Huế agrees, naming the document as edXML does; Phong Điền refuses, naming the recall.
    await accepted(gateway, HUE, status(HUE, PROVINCE, original, "15"))
    await accepted(gateway, PHONG_DIEN, status(PHONG_DIEN, PROVINCE, recall, "16",
                                               comment="Đã phát hành cho các xã"))
    # A second answer does not change the first.
    await accepted(gateway, HUE, status(HUE, PROVINCE, recall, "16", comment="đổi ý"))
    outcome = await view(gateway, PROVINCE, recall)
    assert recipient(outcome, HUE)["answer"]["code"] == "15"
    assert recipient(outcome, PHONG_DIEN)["answer"] == {
        "code": "16", "at": recipient(outcome, PHONG_DIEN)["answer"]["at"],
        "comment": "Đã phát hành cho các xã",
    }
    # A recipient sees only its own answer.
    assert [r["agency"] for r in (await view(gateway, HUE, recall))["recipients"]] == [HUE]
    # With every answer in, nothing waits for one: another 15 has nothing to answer.
    await refused(gateway, HUE, status(HUE, PROVINCE, original, "15"), 422, "/body/code")
    # The recall's timeline has every answer: the one naming the document as change_answered.
    answers = [(e["event"], e["agency"], e["detail"]["code"], e["detail"]["applied"])
               for e in await gateway.store.events(recall)
               if e["event"] in {"status_received", "change_answered"}]
    assert answers == [("change_answered", HUE, "15", True),
                       ("status_received", PHONG_DIEN, "16", True),
                       ("status_received", HUE, "16", False)]


async def test_recall_is_refused_where_it_has_no_document(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    original = await accepted(gateway, PROVINCE, document(PROVINCE, [{"agency": HUE}]))
    before = await gateway.store.counts()
    # to someone who never had it
    await refused(gateway, PROVINCE, operation(PROVINCE, [PHONG_DIEN], "recall", original),
                  422, "/header/to")
    # a document that does not exist
    await refused(gateway, PROVINCE, operation(PROVINCE, [HUE], "recall", str(uuid.uuid4())),
                  422, "/body/document_id")
    # another agency's document
    await refused(gateway, PHONG_DIEN, operation(PHONG_DIEN, [HUE], "recall", original),
                  422, "/body/document_id")
    # a recall without its document
    bad = operation(PROVINCE, [HUE], "recall", original)
    del bad["body"]["document_id"]
    await refused(gateway, PROVINCE, bad, 422, "/body")
    # 15 with no recall open, and a recall request (13) from someone other than the sender
    await refused(gateway, HUE, status(HUE, PROVINCE, original, "15"), 422, "/body/code")
    await refused(gateway, HUE, status(HUE, PROVINCE, original, "13"), 403, "/body/about")
    assert await gateway.store.counts() == before  # nothing stored, no recipient row


async def test_recall_request_status_13_is_answered(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    original = await accepted(
        gateway, PROVINCE, document(PROVINCE, [{"agency": HUE}, {"agency": PHONG_DIEN}])
    )
    request = await accepted(gateway, PROVINCE, status(PROVINCE, HUE, original, "13",
                                                       comment="Văn thư yêu cầu lấy lại"))
    await refused(gateway, PROVINCE, status(PROVINCE, DISTRICT_B, original, "13"), 422,
                  "/header/to")
    # Phong Điền was not asked: its 15 has nothing to answer.
    await refused(gateway, PHONG_DIEN, status(PHONG_DIEN, PROVINCE, original, "15"), 422,
                  "/body/code")
    await accepted(gateway, HUE, status(HUE, PROVINCE, original, "15"))
    answered = await view(gateway, PROVINCE, request)
    assert recipient(answered, HUE)["answer"]["code"] == "15"
    assert answered["about"] == original and answered["code"] == "13"


async def test_versions_are_linked(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    key = "000.00.00.H57,2026/11/20,15/CT-UBND"
    first = document(PROVINCE, [{"agency": HUE}])
    first["body"]["document_id"] = key
    original = await accepted(gateway, PROVINCE, first)
    # The same document id again is a conflict: an update or a replace says what changed.
    await refused(gateway, PROVINCE, first | {"header": {**first["header"]}}, 409,
                  "/body/document_id")
    # An update reaches the document's recipients and the one it adds.
    update = await accepted(gateway, PROVINCE, operation(PROVINCE, [PHONG_DIEN], "update", key))
    assert sorted(r["agency"] for r in (await view(gateway, PROVINCE, update))["recipients"]) == [
        HUE, PHONG_DIEN]
    # A replacement starts its own document and links the one it replaces.
    replacement = document(PROVINCE, [{"agency": HUE}])
    replacement["body"].update({
        "operation": "replace", "document_id": "000.00.00.H57,2026/11/24,16/CT-UBND",
        "replaces": [key],
    })
    replacing = await accepted(gateway, PROVINCE, replacement)
    versions = (await view(gateway, PROVINCE, original))["document"]
    assert versions["document_id"] == key
    assert [(v["id"], v["operation"], v["relation"]) for v in versions["versions"]] == [
        (original, "new", "self"), (update, "update", "self"), (replacing, "replace", "replaces")
    ]
    # Phong Điền sees the versions that were sent to it, not the first one.
    seen = (await view(gateway, PHONG_DIEN, update))["document"]["versions"]
    assert [v["id"] for v in seen] == [update]
    # A replacement that keeps the DocumentId it replaces (as vendors' packages do) is the
    # next version of that document.
    same = document(PROVINCE, [{"agency": HUE}])
    same["body"].update({"operation": "replace", "document_id": key, "replaces": [key, key]})
    kept = await accepted(gateway, PROVINCE, same)
    versions = (await view(gateway, PROVINCE, kept))["document"]["versions"]
    assert [v["id"] for v in versions][-1] == kept and versions[-1]["relation"] == "self"
    unknown = document(PROVINCE, [{"agency": HUE}])
    unknown["body"].update({"operation": "replace", "replaces": ["no such document"]})
    await refused(gateway, PROVINCE, unknown, 422, "/body/replaces/0")


async def test_same_message_id_sent_twice_at_once_is_one_message(
    make_gateway: GatewayFactory,
) -> None:
    # Found by the hub bridge: two pollers (or a resending system) racing with one package.
    gateway = await make_gateway(broker=False)
    envelope = document(PROVINCE, [{"agency": HUE}], id=str(uuid.uuid4()))
    answers = await asyncio.gather(*(gateway.send(PROVINCE, envelope) for _ in range(4)))
    assert [a.status for a in answers] == [202] * 4
    ids = {(await a.json())["id"] for a in answers}
    assert ids == {envelope["header"]["id"]}
    replayed = [a.headers.get("Idempotent-Replayed") for a in answers]
    assert replayed.count("true") == 3


async def test_recall_as_edxml_packages_with_the_same_document_id(
    make_gateway: GatewayFactory,
) -> None:
    # As real systems do it: the recall package carries the original's DocumentId.
    gateway = await make_gateway(broker=False)
    key = f"{HUE},2026/11/20,15/CT-UBND"
    original = document(HUE, [{"agency": PROVINCE}])
    original["body"]["document_id"] = key
    recall = operation(HUE, [PROVINCE], "recall", key, operation_reason="Ban hành nhầm")
    headers = {**await gateway.auth(HUE), "Content-Type": "application/xml"}
    ids = []
    for envelope in (original, recall):
        package = encode_edxml(decode_obj(envelope), gateway_extension=False)  # a vendor's
        response = await gateway.client.post("/api/v1/edxml/messages", data=package,
                                             headers=headers)
        assert response.status == 202, await response.text()
        ids.append((await response.json())["id"])
    assert ids[0] == str(message_id_for(key)) and ids[1] != ids[0]
    seen = await view(gateway, HUE, ids[1])
    assert seen["operation"] == "recall" and seen["document"]["document_id"] == key
    # The province answers about the document, as an edXML status package would.
    await accepted(gateway, PROVINCE, status(PROVINCE, HUE, ids[0], "15"))
    assert recipient(await view(gateway, HUE, ids[1]), PROVINCE)["answer"]["code"] == "15"
