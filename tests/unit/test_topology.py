"""RabbitMQ topology values: quorum queues that never drop, shards, retry tiers, definitions."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.directory import DeliveryMode, Directory, load_directory
from gateway.settings import DEFAULT_DIRECTORY, Settings
from gateway.topology import (
    AGENCY_QUEUE_MAX_BYTES,
    AGENCY_QUEUE_MAX_LENGTH,
    Binding,
    Exchange,
    Queue,
    Topology,
    amqp_agencies,
    build,
    definitions,
)

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS_FILE = ROOT / "deploy" / "rabbitmq" / "definitions.json"
AMQP_AGENCY = "000.00.04.H57"  # Sở Kế hoạch và Đầu tư, AMQP-native in the sample directory


@pytest.fixture(scope="module")
def topology() -> Topology:
    return build(Settings())


def _queue(topology: Topology, name: str) -> Queue:
    [queue] = [q for q in topology.queues if q.name == name]
    return queue


def _retry_queues(topology: Topology) -> list[Queue]:
    return [_queue(topology, topology.retry_exchange(t)) for t in range(5)]


def test_names(topology: Topology) -> None:
    assert topology.delivery_exchange == "lienthong.delivery"
    assert topology.dead_exchange == "lienthong.dead"
    assert topology.shard_queue(3) == "lienthong.delivery.3"
    assert topology.retry_exchange(0) == "lienthong.retry.5000ms"
    assert topology.retry_delays_ms == (5000, 30000, 300000, 1800000, 7200000)
    names = [q.name for q in topology.queues]
    assert len(names) == len(set(names)) == 8 + 5 + 2
    exchanges = [e.name for e in topology.exchanges]
    assert len(exchanges) == len(set(exchanges)) == 4 + 5
    assert topology.agency_exchange == "lienthong.agency"
    assert topology.agency_queue(AMQP_AGENCY) == "lienthong.agency.000.00.04.H57"
    assert topology.agencies == ()  # no directory: the shared part only


def test_every_queue_is_a_durable_quorum_queue(topology: Topology) -> None:
    for queue in topology.queues:
        assert queue.durable, queue.name
        assert queue.args["x-queue-type"] == "quorum", queue.name
    for exchange in topology.exchanges:
        assert exchange.durable, exchange.name


def test_queues_dead_letter_at_least_once_and_never_drop(topology: Topology) -> None:
    exchanges = {e.name for e in topology.exchanges}
    checked = [q for q in topology.queues if q.name != topology.parking_queue]
    assert len(checked) == len(topology.queues) - 1
    for queue in checked:
        args = queue.args
        assert args["x-dead-letter-exchange"] in exchanges, queue.name
        assert isinstance(args["x-delivery-limit"], int) and args["x-delivery-limit"] > 0
        assert args["x-dead-letter-strategy"] == "at-least-once", queue.name
        assert args["x-overflow"] == "reject-publish", queue.name


def test_dead_letter_chain(topology: Topology) -> None:
    for shard in range(topology.shards):
        queue = _queue(topology, topology.shard_queue(shard))
        assert queue.args["x-dead-letter-exchange"] == topology.dead_exchange
        assert queue.args["x-delivery-limit"] == Settings().delivery_limit
        assert "x-message-ttl" not in queue.args
    dead = _queue(topology, topology.dead_queue)
    assert dead.args["x-dead-letter-exchange"] == "lienthong.parking"
    assert Binding("lienthong.parking", topology.parking_queue) in topology.bindings
    assert Binding(topology.dead_exchange, topology.dead_queue) in topology.bindings


def test_shard_queues_are_bound_with_their_shard_key(topology: Topology) -> None:
    assert Exchange(topology.delivery_exchange, "direct") in topology.exchanges
    shard_bindings = [b for b in topology.bindings if b.exchange == topology.delivery_exchange]
    assert shard_bindings == [
        Binding(topology.delivery_exchange, f"lienthong.delivery.{k}", f"shard.{k}")
        for k in range(8)
    ]


def test_retry_queues_wait_then_return_to_the_delivery_exchange(topology: Topology) -> None:
    for tier, queue in enumerate(_retry_queues(topology)):
        delay = topology.retry_delays_ms[tier]
        assert queue.name == f"lienthong.retry.{delay}ms"
        assert queue.args["x-message-ttl"] == delay
        assert queue.args["x-dead-letter-exchange"] == topology.delivery_exchange
        # No routing key override: the message keeps shard.K and returns to its own shard.
        assert "x-dead-letter-routing-key" not in queue.args
        assert Exchange(queue.name, "fanout") in topology.exchanges
        assert Binding(queue.name, queue.name, "") in topology.bindings
    assert not any("x-dead-letter-routing-key" in q.args for q in topology.queues)


def test_build_follows_settings() -> None:
    settings = Settings(namespace="lt-test", shards=3, retry_delays=(0.25, 2.0), delivery_limit=5)
    topology = build(settings)
    assert [q.name for q in topology.queues] == [
        "lt-test.delivery.0",
        "lt-test.delivery.1",
        "lt-test.delivery.2",
        "lt-test.retry.250ms",
        "lt-test.retry.2000ms",
        "lt-test.dead",
        "lt-test.parking",
    ]
    assert _queue(topology, "lt-test.retry.250ms").args["x-message-ttl"] == 250
    assert _queue(topology, "lt-test.delivery.2").args["x-delivery-limit"] == 5
    assert all(0 <= topology.shard_of(f"000.00.{i:02d}.H57") < 3 for i in range(100))


def test_retry_tier() -> None:
    topology = build(Settings())
    assert [topology.retry_tier(a) for a in (0, 1, 2, 5, 6, 100)] == [0, 0, 1, 4, 4, 4]


@given(st.text())
def test_shard_of_is_stable_and_in_range(recipient: str) -> None:
    topology = build(Settings())
    shard = topology.shard_of(recipient)
    assert 0 <= shard < topology.shards
    assert topology.shard_of(recipient) == shard
    assert build(Settings()).shard_of(recipient) == shard
    assert topology.routing_key(recipient) == f"shard.{shard}"


def test_shard_of_does_not_change_between_releases() -> None:
    # Pinned: a changed mapping would move an agency's pending messages to another shard.
    topology = build(Settings())
    pinned = {"000.00.00.H57": 1, "000.00.12.H57": 2, "000.21.35.H57": 6, "000.00.00.G22": 3}
    assert {code: topology.shard_of(code) for code in pinned} == pinned


def test_shard_of_spreads_the_sample_directory() -> None:
    topology = build(Settings())
    directory = load_directory(ROOT / "deploy" / "directory.yaml")
    counts = Counter(topology.shard_of(code) for code in directory.agencies)
    assert len(counts) >= topology.shards // 2
    assert max(counts.values()) <= len(directory) // 2


def test_queue_equality_includes_arguments() -> None:
    a = Queue("lienthong.delivery.0", arguments=(("x-delivery-limit", 20),))
    b = Queue("lienthong.delivery.0", arguments=(("x-delivery-limit", 21),))
    c = Queue("lienthong.delivery.0", arguments=(("x-delivery-limit", 20),))
    assert a != b
    assert hash(a) != hash(b)
    assert a == c and hash(a) == hash(c)
    assert len({a, b, c}) == 2
    assert Queue("q") != Queue("q", durable=False)
    assert Exchange("e", "direct") != Exchange("e", "fanout")


def test_changed_settings_change_the_queue_values() -> None:
    default = build(Settings())
    changed = build(Settings(delivery_limit=21))
    unchanged = {"lienthong.dead", "lienthong.parking"}  # their limits do not follow the setting
    for old, new in zip(default.queues, changed.queues, strict=True):
        assert old.name == new.name
        assert (old == new) is (old.name in unchanged), old.name


def test_definitions_list_the_same_names(topology: Topology) -> None:
    document = definitions(topology, vhost="/lt")
    assert document["vhosts"] == [{"name": "/lt"}]
    assert [e["name"] for e in document["exchanges"]] == [e.name for e in topology.exchanges]
    assert [q["name"] for q in document["queues"]] == [q.name for q in topology.queues]
    assert [(b["source"], b["destination"], b["routing_key"]) for b in document["bindings"]] == [
        (b.exchange, b.queue, b.routing_key) for b in topology.bindings
    ]
    for entry in document["exchanges"] + document["queues"] + document["bindings"]:
        assert entry["vhost"] == "/lt"
    for entry, queue in zip(document["queues"], topology.queues, strict=True):
        assert entry["arguments"] == queue.args
        assert entry["durable"] is True and entry["auto_delete"] is False
    json.dumps(document)  # serialisable as it is


def test_committed_definitions_match_the_code() -> None:
    committed = json.loads(DEFINITIONS_FILE.read_text(encoding="utf-8"))
    directory = load_directory(DEFAULT_DIRECTORY)
    assert committed == definitions(build(Settings(), directory)), (
        "deploy/rabbitmq/definitions.json is out of date: "
        "run `lienthong topology export -o deploy/rabbitmq/definitions.json`"
    )


# -- AMQP-native agencies -----------------------------------------------------------------------
def _with_amqp(directory: Directory, *codes: str) -> Directory:
    agencies = dict(directory.agencies)
    for code in codes:
        agencies[code] = dataclasses.replace(agencies[code], mode=DeliveryMode.AMQP)
    return Directory(directory.levels, agencies, directory.children)


def test_the_sample_directory_has_one_amqp_agency() -> None:
    directory = load_directory(DEFAULT_DIRECTORY)
    assert amqp_agencies(directory) == (AMQP_AGENCY,)
    topology = build(Settings(), directory)
    assert topology.agencies == (AMQP_AGENCY,)
    shared = build(Settings())
    # The agency's queue is added; nothing of the shared part changes.
    assert topology.queues[: len(shared.queues)] == shared.queues
    assert topology.exchanges == shared.exchanges
    assert [q.name for q in topology.queues[len(shared.queues):]] == [
        "lienthong.agency.000.00.04.H57"
    ]


def test_agency_queues_are_bound_by_code_dead_letter_and_are_bounded() -> None:
    directory = _with_amqp(load_directory(DEFAULT_DIRECTORY), "000.00.10.H57", "000.00.00.G22")
    topology = build(Settings(delivery_limit=7), directory)
    assert topology.agencies == ("000.00.00.G22", "000.00.04.H57", "000.00.10.H57")  # sorted
    assert Exchange("lienthong.agency", "direct") in topology.exchanges
    for code in topology.agencies:
        queue = _queue(topology, f"lienthong.agency.{code}")
        assert queue.durable
        assert queue.args == {
            "x-queue-type": "quorum",
            "x-delivery-limit": 7,
            "x-dead-letter-exchange": "lienthong.dead",
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # a full queue nacks our publish: nothing dropped
            "x-max-length": AGENCY_QUEUE_MAX_LENGTH,
            "x-max-length-bytes": AGENCY_QUEUE_MAX_BYTES,
        }
        assert "x-message-ttl" not in queue.args
        assert Binding("lienthong.agency", queue.name, code) in topology.bindings
    agency_bindings = [b for b in topology.bindings if b.exchange == topology.agency_exchange]
    assert len(agency_bindings) == 3


def test_agency_queue_limits_can_be_chosen() -> None:
    topology = build(Settings(), load_directory(DEFAULT_DIRECTORY), agency_max_length=2,
                     agency_max_bytes=4096)
    args = _queue(topology, topology.agency_queue(AMQP_AGENCY)).args
    assert (args["x-max-length"], args["x-max-length-bytes"]) == (2, 4096)
