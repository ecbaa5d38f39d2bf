"""AMQP-native agencies, the pure parts: permission regexes, user names, URLs.

RabbitMQ matches a permission regex with ``re:run`` (PCRE, unanchored search), so the tests use
``re.search``: the anchors must do the work, and the escaped dots of an agency code must never
let one agency's user reach another's queue.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.amqp_native import (
    NOTHING,
    Account,
    CtlResult,
    access,
    agency_url,
    code_of_user,
    envelope_kind,
    exact,
    user_name,
    vhost_of,
)
from gateway.directory import load_directory
from gateway.errors import PermanentFailure
from gateway.settings import DEFAULT_DIRECTORY, Settings
from gateway.topology import build

AMQP_AGENCY = "000.00.04.H57"
codes = st.from_regex(r"\A\d{3}\.\d{2}\.\d{2}\.[A-Z]\d{2}\Z")


def _grants(pattern: str, name: str) -> bool:
    return re.search(pattern, name) is not None


def test_an_agency_reads_its_own_queue_and_nothing_else() -> None:
    directory = load_directory(DEFAULT_DIRECTORY)
    topology = build(Settings(), directory)
    grant = access(topology, AMQP_AGENCY)
    assert grant.user == "lienthong.000.00.04.H57"
    assert grant.queue == "lienthong.agency.000.00.04.H57"
    assert grant.permissions == ("^$", "^$", r"^lienthong\.agency\.000\.00\.04\.H57$")
    assert _grants(grant.read, grant.queue)
    others = [q.name for q in topology.queues if q.name != grant.queue]
    others += [e.name for e in topology.exchanges] + ["amq.default", "amq.direct"]
    others += [topology.agency_queue(code) for code in directory.agencies if code != AMQP_AGENCY]
    look_alikes = [
        "lienthong.agency.000x00.04.H57",  # what an unescaped dot would let through
        "lienthongxagency.000.00.04.H57",
        "lienthong.agency.000.00.04.H570",
        "lienthong.agency.000.00.04.H5",
        "xlienthong.agency.000.00.04.H57",
        "lienthong.agency.000.00.04.H57.extra",
        "other.lienthong.agency.000.00.04.H57",
    ]
    for name in others + look_alikes:
        assert not _grants(grant.read, name), name
        assert not _grants(grant.configure, name), name
        assert not _grants(grant.write, name), name
    # "^$" matches only the empty name, which RabbitMQ never checks: it checks the default
    # exchange as "amq.default" (the integration test sees a publish there refused).
    assert NOTHING == "^$" and not _grants(NOTHING, "amq.default")


@given(codes, codes)
def test_one_agencys_regex_never_matches_another_agencys_queue(a: str, b: str) -> None:
    topology = build(Settings(namespace="lt-h57_1.x"))  # every character a namespace may have
    read = access(topology, a).read
    assert _grants(read, topology.agency_queue(a))
    assert _grants(read, topology.agency_queue(b)) is (a == b)
    # Any one dot replaced by another character is another queue, and is refused.
    queue = topology.agency_queue(a)
    for i, char in enumerate(queue):
        if char == ".":
            assert not _grants(read, queue[:i] + "x" + queue[i + 1:])


def test_exact_escapes_what_pcre_would_read_as_syntax() -> None:
    name = "a.b-c_d+e*f(g)[h]{i}|j^k$l?m\\n"
    pattern = exact(name)
    assert _grants(pattern, name)
    assert not _grants(pattern, name.replace(".", "x", 1))
    assert not _grants(pattern, "z" + name) and not _grants(pattern, name + "z")


def test_user_names_are_ours_only_with_a_code() -> None:
    topology = build(Settings(namespace="lt"))
    assert user_name(topology, AMQP_AGENCY) == "lt.000.00.04.H57"
    assert code_of_user(topology, "lt.000.00.04.H57") == AMQP_AGENCY
    for other in ("guest", "lt.admin", "lt.000.00.04.H57x", "ltx.000.00.04.H57",
                  "lienthong.000.00.04.H57"):
        assert code_of_user(topology, other) is None, other


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "/"),
        ("amqp://127.0.0.1", "/"),
        ("amqp://h/%2F", "/"),
        ("amqps://u:p@h:5671/lienthong", "lienthong"),
        ("amqp://h/a%2Fb", "a/b"),
    ],
)
def test_vhost_of(url: str, vhost: str) -> None:
    assert vhost_of(url) == vhost


def test_agency_url_replaces_the_credentials_and_names_the_vhost() -> None:
    url = agency_url("amqps://guest:guest@mq.lienthong.gov.vn:5671/ignored?heartbeat=30",
                     "lienthong.000.00.04.H57", "p@ss:w/rd", "/")
    assert url == ("amqps://lienthong.000.00.04.H57:p%40ss%3Aw%2Frd@mq.lienthong.gov.vn:5671/"
                   "%2F?heartbeat=30")
    parts = urlsplit(url)
    assert (parts.username, parts.hostname, parts.port) == (
        "lienthong.000.00.04.H57", "mq.lienthong.gov.vn", 5671)
    assert vhost_of(url) == "/"
    assert "guest" not in url


def test_account_states() -> None:
    grant = access(build(Settings()), AMQP_AGENCY)

    def state(amqp_mode: bool, exists: bool, perms: tuple[str, str, str] | None) -> str:
        return Account(AMQP_AGENCY, grant, amqp_mode, exists, perms).state

    assert state(True, True, grant.permissions) == "granted"
    assert state(True, False, None) == "no user"
    assert state(True, True, (".*", ".*", ".*")) == "permissions differ"
    assert state(True, True, None) == "permissions differ"
    assert state(False, True, grant.permissions) == "orphan user"


def test_envelope_kind() -> None:
    assert envelope_kind(b'{"kind": "dossier", "header": {}}') == "dossier"
    for broken in (b"<xml/>", b"[]", b'{"header": {}}', b'{"kind": 3}'):
        with pytest.raises(PermanentFailure):
            envelope_kind(broken)


NODE_AWAY = """Error: unable to perform an operation on node 'rabbit@mq1'. Please see diagnostics \
information and suggestions below.

Most common reasons for this are:

 * Target node is unreachable (e.g. due to hostname resolution, TCP connection or firewall issues)

Current node details:
 * node name: 'rabbitmqcli-698-rabbit@localhost'
 * Erlang cookie hash: bAZ73f0G8Q8EDgZYNMMVlQ==
"""


@pytest.mark.parametrize(
    ("stderr", "expected"),
    [
        ('Error:\nUser "lt.000.00.04.H57" does not exist\n',
         'User "lt.000.00.04.H57" does not exist'),
        (NODE_AWAY, "unable to perform an operation on node 'rabbit@mq1'."),
        ("Error: something else\n", "something else"),
        ("odd output\n", "odd output"),
        ("", "exit status 70"),
    ],
)
def test_rabbitmqctl_errors_are_one_line_without_the_diagnostics(
    stderr: str, expected: str
) -> None:
    error = CtlResult(70, "", stderr).error()
    assert error == expected
    assert "cookie" not in error
