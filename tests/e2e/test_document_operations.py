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
DISTRICT_C = "000.00.33.H57"
DISTRICT_D = "000.00.34.H57"


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


async def test_update_collects_answers_per_recipient(gateway: Gateway) -> None:
    key = "000.00.00.H57,2026/11/20,15/CT-UBND"
    first = document(PROVINCE, [{"agency": a} for a in (HUE, PHONG_DIEN, DISTRICT_B)])
    first["body"]["document_id"] = key
    original = await accepted(gateway, PROVINCE, first)
    # The update names one recipient and adds another; it goes to all of them.
    update = await accepted(gateway, PROVINCE, operation(
        PROVINCE, [HUE, DISTRICT_C], "update", key, operation_reason="Sửa thời hạn báo cáo"
    ))
    sent = await view(gateway, PROVINCE, update)
    assert sent["operation"] == "update"
    assert [r["agency"] for r in sent["recipients"]] == sorted(
        [HUE, PHONG_DIEN, DISTRICT_B, DISTRICT_C])
    for agency in (HUE, PHONG_DIEN, DISTRICT_B, DISTRICT_C):
        await gateway.wait_state(update, agency, "delivered")
    # Huế agrees, naming the update; Phong Điền refuses, naming the document as edXML does,
    # first without a reason (refused: nothing recorded), then with one.
    await accepted(gateway, HUE, status(HUE, PROVINCE, update, "15"))
    problem = await refused(gateway, PHONG_DIEN, status(PHONG_DIEN, PROVINCE, original, "16"),
                            422, "/body/comment")
    assert "16 needs a comment giving the reason" in problem["errors"][0]["detail"], problem
    assert "answer" not in recipient(await view(gateway, PROVINCE, update), PHONG_DIEN)
    await accepted(gateway, PHONG_DIEN, status(PHONG_DIEN, PROVINCE, original, "16",
                                               comment="Đã triển khai theo bản cũ"))
    # The agency the update added answers too, naming the document it received a version of.
    await accepted(gateway, DISTRICT_C, status(DISTRICT_C, PROVINCE, original, "15"))
    # (It did not receive the first version: no processing status about it; an agency that
    # received no version at all cannot answer.)
    await refused(gateway, DISTRICT_C, status(DISTRICT_C, PROVINCE, original, "03"), 403,
                  "/body/about")
    await refused(gateway, DISTRICT_D, status(DISTRICT_D, PROVINCE, original, "15"), 403,
                  "/body/about")
    # Quận B does not answer.
    outcome = await view(gateway, PROVINCE, update)
    hue, phong_dien = recipient(outcome, HUE), recipient(outcome, PHONG_DIEN)
    assert hue["answer"] == {"code": "15", "at": hue["answer"]["at"], "comment": None}
    assert phong_dien["answer"] == {"code": "16", "at": phong_dien["answer"]["at"],
                                    "comment": "Đã triển khai theo bản cũ"}
    assert recipient(outcome, DISTRICT_C)["answer"]["code"] == "15"
    pending = recipient(outcome, DISTRICT_B)
    assert "answer" not in pending and pending["state"] == "delivered"
    # The answers belong to the update, not to the document's first version.
    assert all("answer" not in r for r in (await view(gateway, PROVINCE, original))["recipients"])
    # A repeated answer and a late contradictory one change nothing: 202, not applied (naming
    # the update), or 422 (naming the document: nothing of it waits for an answer).
    await accepted(gateway, HUE, status(HUE, PROVINCE, update, "15"))
    await accepted(gateway, HUE, status(HUE, PROVINCE, update, "16", comment="đổi ý"))
    await accepted(gateway, PHONG_DIEN, status(PHONG_DIEN, PROVINCE, update, "15"))
    await refused(gateway, PHONG_DIEN, status(PHONG_DIEN, PROVINCE, original, "15"), 422,
                  "/body/code")
    await refused(gateway, DISTRICT_C, status(DISTRICT_C, PROVINCE, original, "16",
                                              comment="đổi ý"), 422, "/body/code")
    # Processing statuses about the update only move forwards too.
    await accepted(gateway, HUE, status(HUE, PROVINCE, update, "03"))
    await accepted(gateway, HUE, status(HUE, PROVINCE, update, "01"))
    later = await view(gateway, PROVINCE, update)
    assert recipient(later, HUE)["answer"] == hue["answer"]
    assert recipient(later, PHONG_DIEN)["answer"] == phong_dien["answer"]
    assert recipient(later, DISTRICT_C)["answer"] == recipient(outcome, DISTRICT_C)["answer"]
    assert "answer" not in recipient(later, DISTRICT_B)
    assert recipient(later, HUE)["status"]["code"] == "03"
    answers = [(e["event"], e["agency"], e["detail"]["code"], e["detail"]["applied"])
               for e in await gateway.store.events(update)
               if e["event"] in {"status_received", "change_answered"}]
    assert answers == [
        ("status_received", HUE, "15", True),
        ("change_answered", PHONG_DIEN, "16", True),
        ("change_answered", DISTRICT_C, "15", True),
        ("status_received", HUE, "15", False),
        ("status_received", HUE, "16", False),
        ("status_received", PHONG_DIEN, "15", False),
        ("status_received", HUE, "03", True),
        ("status_received", HUE, "01", False),
    ]
    # A recipient sees only its own answer.
    assert [r["agency"] for r in (await view(gateway, PHONG_DIEN, update))["recipients"]] == [
        PHONG_DIEN]
    # The versions are linked both ways: the document's first version lists the update, the
    # update names the document and lists the first version.
    expected = [(original, "new", "self"), (update, "update", "self")]
    for message_id in (original, update):
        linked = (await view(gateway, PROVINCE, message_id))["document"]
        assert linked["document_id"] == key
        assert [(v["id"], v["operation"], v["relation"]) for v in linked["versions"]] == expected
    assert [v["id"] for v in (await view(gateway, HUE, original))["document"]["versions"]] == [
        original, update]
    # The agency the update added sees the update only.
    assert [v["id"] for v in (await view(gateway, DISTRICT_C, update))["document"]["versions"]
            ] == [update]


async def test_replacement_links_to_what_it_replaces(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(broker=False)
    old_key = "000.00.00.H57,2026/11/20,15/CT-UBND"
    new_key = "000.00.00.H57,2026/11/24,16/CT-UBND"
    first = document(PROVINCE, [{"agency": HUE}, {"agency": PHONG_DIEN}])
    first["body"]["document_id"] = old_key
    original = await accepted(gateway, PROVINCE, first)
    replacement = document(PROVINCE, [{"agency": HUE}])
    replacement["body"].update({"operation": "replace", "document_id": new_key,
                                "replaces": [old_key], "operation_reason": "Sai thẩm quyền"})
    replacing = await accepted(gateway, PROVINCE, replacement)
    # The replacement is a document of its own, and says what it replaces.
    own = await view(gateway, PROVINCE, replacing)
    assert own["operation"] == "replace"
    assert own["envelope"]["body"]["replaces"] == [old_key]
    assert [r["agency"] for r in own["recipients"]] == [HUE]  # a replace goes where it says
    assert own["document"]["document_id"] == new_key
    assert [(v["id"], v["relation"]) for v in own["document"]["versions"]] == [
        (replacing, "self")]
    # The replaced document lists it; for its recipients only where it was sent to them.
    replaced = (await view(gateway, PROVINCE, original))["document"]
    assert replaced["document_id"] == old_key
    assert [(v["id"], v["operation"], v["relation"]) for v in replaced["versions"]] == [
        (original, "new", "self"), (replacing, "replace", "replaces")]
    assert [v["id"] for v in (await view(gateway, HUE, original))["document"]["versions"]] == [
        original, replacing]
    assert [v["id"] for v in (await view(gateway, PHONG_DIEN, original))["document"]["versions"]
            ] == [original]
    # An update of the replacement goes to its recipients, not to the replaced one's.
    update = await accepted(gateway, PROVINCE, operation(PROVINCE, [HUE], "update", new_key))
    assert [r["agency"] for r in (await view(gateway, PROVINCE, update))["recipients"]] == [HUE]
    # Recalling the replaced document still reaches its own recipients.
    recall = await accepted(gateway, PROVINCE, operation(PROVINCE, [HUE], "recall", old_key))
    assert [r["agency"] for r in (await view(gateway, PROVINCE, recall))["recipients"]] == sorted(
        [HUE, PHONG_DIEN])


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
