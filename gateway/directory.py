"""The agency directory (danh bạ cơ quan): levels, agencies, the hierarchy and its successors.

Pure values: :meth:`Directory.from_mapping` takes what a YAML file holds and returns an immutable
directory or raises :class:`DirectoryError` naming the entry. Levels are data: the file lists
them from the top (central) down, so a reorganisation (the district level abolished in 2025)
is an edit of the file, not of the code. Credentials are not here: they live hashed in the store.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.envelope import AGENCY_CODE_RE, AgencyAddress, SubtreeAddress
from gateway.errors import DirectoryError, FieldError, UnprocessableRequest
from gateway.signatures import SignaturePolicy


class DeliveryMode(enum.StrEnum):
    PUSH = "push"  # the gateway POSTs to the agency's HTTPS endpoint
    PULL = "pull"  # the agency reads its inbox through the API
    HUB = "hub"  # reached through the central document hub (Trục liên thông văn bản quốc gia)
    AMQP = "amqp"  # the agency consumes its own queue with its own RabbitMQ user
    PORTAL = "portal"  # a public-service portal: dossier progress pushed to its endpoint


class WireFormat(enum.StrEnum):
    JSON = "json"
    EDXML = "edxml"


@dataclass(frozen=True, slots=True)
class Level:
    code: str  # e.g. "province"
    name: str  # e.g. "Cấp tỉnh"
    rank: int  # 0 is the top


@dataclass(frozen=True, slots=True)
class Agency:
    code: str
    name: str
    level: str
    parent: str | None
    mode: DeliveryMode = DeliveryMode.PULL
    endpoint: str | None = None
    format: WireFormat = WireFormat.JSON
    successor: str | None = None  # the agency that took over after a merger (cơ quan kế thừa)
    signature_policy: SignaturePolicy | None = None  # None: the gateway's default policy
    certificates: tuple[str, ...] = ()  # PEM files of the agency's signing certificates

    @property
    def active(self) -> bool:
        return self.successor is None


@dataclass(frozen=True, slots=True)
class Resolution:
    """Who a message goes to, after subtrees are expanded and successors followed."""

    recipients: tuple[str, ...]
    redirects: Mapping[str, str] = field(default_factory=dict)  # addressed -> successor


def _is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Directory:
    levels: tuple[Level, ...]
    agencies: Mapping[str, Agency]
    children: Mapping[str, tuple[str, ...]]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Any, *, allow_insecure_push: bool = False) -> Directory:
        if not isinstance(data, Mapping):
            raise DirectoryError("directory: the document must be a mapping with levels, agencies")
        levels = _parse_levels(data.get("levels"))
        rank = {lv.code: lv.rank for lv in levels}
        raw_agencies = data.get("agencies")
        if not isinstance(raw_agencies, list) or not raw_agencies:
            raise DirectoryError("directory: 'agencies' must be a non-empty list")
        agencies: dict[str, Agency] = {}
        for index, raw in enumerate(raw_agencies):
            agency = _parse_agency(index, raw, rank, allow_insecure_push)
            if agency.code in agencies:
                raise DirectoryError(f"agencies[{index}] {agency.code}: duplicate agency code")
            agencies[agency.code] = agency
        children: dict[str, list[str]] = {code: [] for code in agencies}
        for index, agency in enumerate(agencies.values()):
            where = f"agencies[{index}] {agency.code}"
            if agency.parent is not None:
                parent = agencies.get(agency.parent)
                if parent is None:
                    raise DirectoryError(f"{where}: unknown parent {agency.parent}")
                if rank[parent.level] > rank[agency.level]:
                    raise DirectoryError(
                        f"{where}: level {agency.level} cannot sit under "
                        f"{parent.code} of the lower level {parent.level}"
                    )
                children[agency.parent].append(agency.code)
            if agency.successor is not None and agency.successor not in agencies:
                raise DirectoryError(f"{where}: unknown successor {agency.successor}")
        for index, agency in enumerate(agencies.values()):
            _check_no_cycle(f"agencies[{index}] {agency.code}", agency.code, agencies)
        return cls(levels, agencies, {k: tuple(v) for k, v in children.items()})

    # -- queries ------------------------------------------------------------------------------
    def __contains__(self, code: object) -> bool:
        return code in self.agencies

    def __len__(self) -> int:
        return len(self.agencies)

    def get(self, code: str) -> Agency:
        try:
            return self.agencies[code]
        except KeyError:
            raise UnprocessableRequest(f"unknown agency {code}") from None

    def _known(self, code: str, pointer: str) -> None:
        if code not in self.agencies:
            raise UnprocessableRequest(
                f"unknown agency {code}", errors=[FieldError(pointer, "not in the directory")]
            )

    def descendants(self, code: str) -> Iterator[Agency]:
        """Every agency below ``code``, depth first, in file order."""
        for child in self.children.get(code, ()):
            yield self.agencies[child]
            yield from self.descendants(child)

    def ancestors(self, code: str) -> Iterator[Agency]:
        parent = self.agencies[code].parent
        while parent is not None:
            yield self.agencies[parent]
            parent = self.agencies[parent].parent

    def current(self, code: str) -> str:
        """The agency that now answers for ``code``: itself, or its last successor."""
        seen = {code}
        while (successor := self.agencies[code].successor) is not None:
            if successor in seen:  # from_mapping refuses cycles; defend anyway
                raise DirectoryError(f"{code}: successor cycle")
            seen.add(successor)
            code = successor
        return code

    def resolve(
        self, addresses: Sequence[AgencyAddress | SubtreeAddress], *, sender: str
    ) -> Resolution:
        """Expand addresses to recipient codes (deduplicated, never the sender itself)."""
        wanted: list[str] = []
        for index, address in enumerate(addresses):
            where = f"/header/to/{index}"
            if isinstance(address, AgencyAddress):
                self._known(address.agency, f"{where}/agency")
                wanted.append(address.agency)
                continue
            self._known(address.under, f"{where}/under")
            if address.level is not None and address.level not in {lv.code for lv in self.levels}:
                raise UnprocessableRequest(
                    f"unknown level {address.level!r}",
                    errors=[FieldError(f"{where}/level", "not a level of the directory")],
                )
            if address.include_self:
                wanted.append(address.under)
            wanted.extend(
                a.code
                for a in self.descendants(address.under)
                if a.active and (address.level is None or a.level == address.level)
            )
        recipients: list[str] = []
        redirects: dict[str, str] = {}
        for code in wanted:
            final = self.current(code)
            if final != code:
                redirects[code] = final
            if final != sender and final not in recipients:
                recipients.append(final)
        if not recipients:
            raise UnprocessableRequest(
                "the addresses resolve to no recipient other than the sender",
                errors=[FieldError("/header/to", "no recipient")],
            )
        return Resolution(tuple(recipients), redirects)


def load_directory(path: Path, *, allow_insecure_push: bool = False) -> Directory:
    """Read and check a directory file (YAML). The one I/O function of this module."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DirectoryError(f"{path}: cannot read directory file: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DirectoryError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Directory.from_mapping(data, allow_insecure_push=allow_insecure_push)
    except DirectoryError as exc:
        raise DirectoryError(f"{path}: {exc.detail}") from None


def _parse_levels(raw: Any) -> tuple[Level, ...]:
    if not isinstance(raw, list) or not raw:
        raise DirectoryError("directory: 'levels' must be a non-empty list, top level first")
    levels: list[Level] = []
    for rank, item in enumerate(raw):
        if not isinstance(item, Mapping) or not isinstance(item.get("code"), str):
            raise DirectoryError(f"levels[{rank}]: needs a 'code' and a 'name'")
        if any(lv.code == item["code"] for lv in levels):
            raise DirectoryError(f"levels[{rank}] {item['code']}: duplicate level")
        levels.append(Level(item["code"], str(item.get("name", item["code"])), rank))
    return tuple(levels)


_AGENCY_KEYS = {"code", "name", "level", "parent", "delivery", "format", "successor", "signature"}


def _parse_agency(
    index: int, raw: Any, rank: Mapping[str, int], allow_insecure_push: bool
) -> Agency:
    if not isinstance(raw, Mapping):
        raise DirectoryError(f"agencies[{index}]: must be a mapping")
    code = raw.get("code")
    where = f"agencies[{index}] {code}"
    if not isinstance(code, str) or not AGENCY_CODE_RE.fullmatch(code):
        raise DirectoryError(f"{where}: malformed agency code (expected e.g. 000.00.00.H57)")
    unknown = set(raw) - _AGENCY_KEYS
    if unknown:
        raise DirectoryError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DirectoryError(f"{where}: needs a name")
    level = raw.get("level")
    if level not in rank:
        raise DirectoryError(f"{where}: unknown level {level!r} (known: {', '.join(rank)})")
    parent = raw.get("parent")
    successor = raw.get("successor")
    for key, value in (("parent", parent), ("successor", successor)):
        malformed = not isinstance(value, str) or not AGENCY_CODE_RE.fullmatch(value)
        if value is not None and malformed:
            raise DirectoryError(f"{where}: malformed {key} code {value!r}")
    if parent == code:
        raise DirectoryError(f"{where}: an agency cannot be its own parent")
    delivery = raw.get("delivery") or {"mode": "pull"}
    try:
        mode = DeliveryMode(delivery.get("mode", "pull"))
        wire = WireFormat(raw.get("format", "json"))
    except (ValueError, AttributeError) as exc:
        raise DirectoryError(f"{where}: {exc}") from None
    endpoint = delivery.get("endpoint")
    if mode in {DeliveryMode.PUSH, DeliveryMode.PORTAL}:
        parts = urlsplit(str(endpoint or ""))
        secure = parts.scheme == "https" or (
            parts.scheme == "http" and (allow_insecure_push or _is_loopback(parts.hostname))
        )
        if not parts.hostname or not secure:
            raise DirectoryError(f"{where}: {mode.value} delivery needs an https:// endpoint")
    elif endpoint is not None:
        raise DirectoryError(f"{where}: an endpoint is only for push and portal delivery")
    policy, certificates = _parse_signature(where, raw.get("signature"))
    return Agency(
        code=code,
        name=name.strip(),
        level=str(level),
        parent=parent,
        mode=mode,
        endpoint=str(endpoint) if endpoint else None,
        format=wire,
        successor=successor,
        signature_policy=policy,
        certificates=certificates,
    )


def _parse_signature(where: str, raw: Any) -> tuple[SignaturePolicy | None, tuple[str, ...]]:
    """``signature: {policy: require, certificates: [certs/h57.pem]}`` (both optional)."""
    if raw is None:
        return None, ()
    if not isinstance(raw, Mapping) or set(raw) - {"policy", "certificates"}:
        raise DirectoryError(f"{where}: signature takes only 'policy' and 'certificates'")
    policy = None
    if raw.get("policy") is not None:
        try:
            policy = SignaturePolicy(raw["policy"])
        except ValueError:
            known = ", ".join(p.value for p in SignaturePolicy)
            raise DirectoryError(
                f"{where}: unknown signature policy {raw['policy']!r} (known: {known})"
            ) from None
    certificates = raw.get("certificates") or []
    if not isinstance(certificates, list) or not all(
        isinstance(c, str) and c for c in certificates
    ):
        raise DirectoryError(f"{where}: signature certificates must be a list of PEM file paths")
    return policy, tuple(certificates)


def _check_no_cycle(where: str, code: str, agencies: Mapping[str, Agency]) -> None:
    for attribute in ("parent", "successor"):
        seen = {code}
        current: str | None = getattr(agencies[code], attribute)
        while current is not None:
            if current in seen:
                raise DirectoryError(f"{where}: {attribute} cycle through {current}")
            seen.add(current)
            current = getattr(agencies[current], attribute)


def with_endpoint(directory: Directory, code: str, endpoint: str) -> Directory:
    """A copy where ``code`` is pushed to ``endpoint`` (the demo serves its own endpoint)."""
    agencies = dict(directory.agencies)
    old = agencies[code]
    agencies[code] = dataclasses.replace(old, mode=DeliveryMode.PUSH, endpoint=endpoint)
    return Directory(directory.levels, agencies, directory.children)


def codes(agencies: Iterable[Agency]) -> list[str]:
    return [a.code for a in agencies]
