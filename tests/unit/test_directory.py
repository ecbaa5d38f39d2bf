"""The agency directory: the sample file, resolution of addresses, and load errors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.directory import DeliveryMode, Directory, WireFormat, codes, load_directory
from gateway.envelope import AgencyAddress, SubtreeAddress
from gateway.errors import ConfigError, DirectoryError, UnprocessableRequest

SAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "directory.yaml"
PROVINCE = "000.00.00.H57"
DISTRICTS = ("000.00.31.H57", "000.00.32.H57", "000.00.33.H57", "000.00.34.H57", "000.00.35.H57")
PHU_VANG = "000.00.34.H57"
MERGED = "000.25.34.H57"  # UBND xã Phú Mỹ (đã sáp nhập)
SUCCESSOR = "000.21.34.H57"  # UBND thị trấn Phú Đa
STTTT = "000.00.12.H57"  # the one push agency


@pytest.fixture(scope="module")
def sample() -> Directory:
    return load_directory(SAMPLE)


# -- the sample file ------------------------------------------------------------------------------
def test_sample_directory_loads(sample: Directory) -> None:
    assert len(sample) == 43  # 42 agencies and the provincial public-service portal
    assert PROVINCE in sample
    assert "999.99.99.Z99" not in sample
    by_level: dict[str, int] = {}
    for agency in sample.agencies.values():
        by_level[agency.level] = by_level.get(agency.level, 0) + 1
    assert by_level == {"central": 5, "province": 12, "district": 5, "commune": 21}


def test_levels_come_from_the_file(sample: Directory) -> None:
    assert [(lv.code, lv.rank) for lv in sample.levels] == [
        ("central", 0),
        ("province", 1),
        ("district", 2),
        ("commune", 3),
    ]
    assert sample.levels[1].name.startswith("Cấp tỉnh")


def test_levels_are_data_a_reorganised_hierarchy_loads() -> None:
    # The 2025 reform: no district level, communes directly under the province.
    data = {
        "levels": [{"code": "central", "name": "TW"}, {"code": "tinh"}, {"code": "xa"}],
        "agencies": [
            {"code": "000.00.00.H57", "name": "UBND tỉnh", "level": "tinh"},
            {"code": "000.01.00.H57", "name": "UBND xã A", "level": "xa", "parent": PROVINCE},
            {"code": "000.02.00.H57", "name": "UBND xã B", "level": "xa", "parent": PROVINCE},
        ],
    }
    directory = Directory.from_mapping(data)
    assert [lv.code for lv in directory.levels] == ["central", "tinh", "xa"]
    assert directory.levels[1].name == "tinh"  # the name defaults to the code
    resolution = directory.resolve([SubtreeAddress(under=PROVINCE, level="xa")], sender=PROVINCE)
    assert resolution.recipients == ("000.01.00.H57", "000.02.00.H57")
    with pytest.raises(UnprocessableRequest, match="district"):
        directory.resolve([SubtreeAddress(under=PROVINCE, level="district")], sender=PROVINCE)


def test_sample_agency_fields(sample: Directory) -> None:
    push = sample.get(STTTT)
    assert push.mode is DeliveryMode.PUSH
    assert push.endpoint is not None and push.endpoint.startswith("https://")
    assert push.parent == PROVINCE
    assert push.level == "province"
    assert sample.get(PROVINCE).format is WireFormat.EDXML
    assert sample.get(PROVINCE).parent is None
    commune = sample.get("000.21.35.H57")
    assert commune.mode is DeliveryMode.PULL and commune.endpoint is None
    assert commune.format is WireFormat.JSON
    assert [a.code for a in sample.ancestors("000.21.35.H57")] == ["000.00.35.H57", PROVINCE]
    assert sample.get(MERGED).successor == SUCCESSOR and not sample.get(MERGED).active
    assert sample.current(MERGED) == SUCCESSOR
    assert sample.current(SUCCESSOR) == SUCCESSOR


def test_every_sample_agency_is_under_a_root(sample: Directory) -> None:
    for code, agency in sample.agencies.items():
        chain = [a.code for a in sample.ancestors(code)]
        assert len(chain) == len(set(chain))
        if agency.parent is not None:
            assert code in sample.children[agency.parent]


def test_get_unknown_agency(sample: Directory) -> None:
    with pytest.raises(UnprocessableRequest, match=r"999\.99\.99\.Z99"):
        sample.get("999.99.99.Z99")


# -- resolve ---------------------------------------------------------------------------------------
def test_resolve_one_agency(sample: Directory) -> None:
    resolution = sample.resolve([AgencyAddress(agency=STTTT)], sender=PROVINCE)
    assert resolution.recipients == (STTTT,)
    assert dict(resolution.redirects) == {}


def test_resolve_several_agencies_keeps_order_and_deduplicates(sample: Directory) -> None:
    addresses = [
        AgencyAddress(agency="000.00.00.G22"),
        AgencyAddress(agency=STTTT),
        AgencyAddress(agency="000.00.00.G22"),
        AgencyAddress(agency="000.21.35.H57"),
    ]
    resolution = sample.resolve(addresses, sender=PROVINCE)
    assert resolution.recipients == ("000.00.00.G22", STTTT, "000.21.35.H57")


def test_resolve_subtree_with_level_gives_the_five_districts(sample: Directory) -> None:
    resolution = sample.resolve(
        [SubtreeAddress(under=PROVINCE, level="district")], sender="000.00.00.G22"
    )
    assert resolution.recipients == DISTRICTS
    assert PROVINCE not in resolution.recipients


def test_resolve_subtree_include_self(sample: Directory) -> None:
    resolution = sample.resolve(
        [SubtreeAddress(under=PROVINCE, level="district", include_self=True)],
        sender="000.00.00.G22",
    )
    assert resolution.recipients == (PROVINCE, *DISTRICTS)


def test_resolve_whole_subtree(sample: Directory) -> None:
    resolution = sample.resolve([SubtreeAddress(under=PHU_VANG)], sender=PROVINCE)
    # Its communes, without the merged one (inactive; its successor is already in the list).
    assert resolution.recipients == (
        "000.21.34.H57",
        "000.22.34.H57",
        "000.23.34.H57",
        "000.24.34.H57",
    )
    everything = sample.resolve([SubtreeAddress(under=PROVINCE)], sender="000.00.00.G22")
    assert len(everything.recipients) == 36 - 1  # the whole province but itself and the merged
    assert MERGED not in everything.recipients


def test_merged_commune_is_redirected_to_its_successor(sample: Directory) -> None:
    resolution = sample.resolve([AgencyAddress(agency=MERGED)], sender=PROVINCE)
    assert resolution.recipients == (SUCCESSOR,)
    assert dict(resolution.redirects) == {MERGED: SUCCESSOR}


def test_merged_and_successor_together_is_one_recipient(sample: Directory) -> None:
    resolution = sample.resolve(
        [AgencyAddress(agency=MERGED), AgencyAddress(agency=SUCCESSOR)], sender=PROVINCE
    )
    assert resolution.recipients == (SUCCESSOR,)
    assert dict(resolution.redirects) == {MERGED: SUCCESSOR}


def test_sender_is_never_a_recipient(sample: Directory) -> None:
    resolution = sample.resolve(
        [SubtreeAddress(under=PROVINCE, level="district", include_self=True)],
        sender=PROVINCE,
    )
    assert resolution.recipients == DISTRICTS
    resolution = sample.resolve(
        [AgencyAddress(agency="000.00.31.H57"), AgencyAddress(agency=STTTT)],
        sender="000.00.31.H57",
    )
    assert resolution.recipients == (STTTT,)


def test_addressing_only_oneself_is_unprocessable(sample: Directory) -> None:
    with pytest.raises(UnprocessableRequest, match="sender"):
        sample.resolve([AgencyAddress(agency=PROVINCE)], sender=PROVINCE)
    with pytest.raises(UnprocessableRequest):  # a commune has no children
        sample.resolve([SubtreeAddress(under="000.21.35.H57")], sender=PROVINCE)


def test_successor_as_sender_excludes_the_merged_address(sample: Directory) -> None:
    with pytest.raises(UnprocessableRequest):
        sample.resolve([AgencyAddress(agency=MERGED)], sender=SUCCESSOR)


@pytest.mark.parametrize(
    "address",
    [AgencyAddress(agency="999.99.99.Z99"), SubtreeAddress(under="999.99.99.Z99")],
)
def test_unknown_agency_is_unprocessable(sample: Directory, address: Any) -> None:
    with pytest.raises(UnprocessableRequest, match=r"999\.99\.99\.Z99") as info:
        sample.resolve([AgencyAddress(agency=STTTT), address], sender=PROVINCE)
    assert info.value.status == 422


def test_unknown_level_is_unprocessable(sample: Directory) -> None:
    with pytest.raises(UnprocessableRequest, match="ward"):
        sample.resolve([SubtreeAddress(under=PROVINCE, level="ward")], sender=PROVINCE)


def test_codes_helper(sample: Directory) -> None:
    assert codes(sample.descendants(PHU_VANG)) == [
        "000.21.34.H57",
        "000.22.34.H57",
        "000.23.34.H57",
        "000.24.34.H57",
        MERGED,
    ]


# -- load errors ----------------------------------------------------------------------------------
LEVELS = [{"code": "central"}, {"code": "province"}, {"code": "district"}]


def _agency(code: str, level: str = "province", **extra: Any) -> dict[str, Any]:
    return {"code": code, "name": f"Cơ quan {code}", "level": level, **extra}


def _valid() -> dict[str, Any]:
    return {
        "levels": copy.deepcopy(LEVELS),
        "agencies": [
            _agency("000.00.00.H57"),
            _agency("000.00.31.H57", "district", parent="000.00.00.H57"),
            _agency("000.00.32.H57", "district", parent="000.00.00.H57"),
        ],
    }


def _with(*agencies: dict[str, Any]) -> dict[str, Any]:
    data = _valid()
    data["agencies"].extend(agencies)
    return data


def _error(data: Any, **kwargs: Any) -> str:
    with pytest.raises(DirectoryError) as info:
        Directory.from_mapping(data, **kwargs)
    assert isinstance(info.value, ConfigError)
    return info.value.detail


def test_minimal_directory_loads() -> None:
    directory = Directory.from_mapping(_valid())
    assert directory.children["000.00.00.H57"] == ("000.00.31.H57", "000.00.32.H57")


@pytest.mark.parametrize("code", ["000.00.00.h57", "00.00.00.H57", "000-00-00-H57", "", 57, None])
def test_malformed_code(code: Any) -> None:
    detail = _error(_with(_agency(code)))
    assert "agencies[3]" in detail
    assert "malformed agency code" in detail


def test_malformed_code_with_trailing_newline() -> None:
    # AGENCY_CODE_RE ends in "$", which Python also matches before a final newline.
    detail = _error(_with(_agency("000.00.33.H57\n", "district")))
    assert "agencies[3]" in detail
    assert "malformed agency code" in detail


def test_duplicate_code() -> None:
    detail = _error(_with(_agency("000.00.31.H57", "district", parent="000.00.00.H57")))
    assert detail.startswith("agencies[3] 000.00.31.H57:")
    assert "duplicate" in detail


def test_unknown_parent() -> None:
    detail = _error(_with(_agency("000.00.33.H57", "district", parent="000.00.00.H99")))
    assert detail.startswith("agencies[3] 000.00.33.H57:")
    assert "unknown parent 000.00.00.H99" in detail


def test_malformed_parent() -> None:
    detail = _error(_with(_agency("000.00.33.H57", "district", parent="H57")))
    assert "agencies[3] 000.00.33.H57" in detail and "malformed parent" in detail


def test_own_parent() -> None:
    detail = _error(_with(_agency("000.00.33.H57", "district", parent="000.00.33.H57")))
    assert "agencies[3] 000.00.33.H57" in detail and "own parent" in detail


def test_parent_cycle() -> None:
    data = _with(
        _agency("000.00.41.H57", "district", parent="000.00.42.H57"),
        _agency("000.00.42.H57", "district", parent="000.00.41.H57"),
    )
    detail = _error(data)
    assert "agencies[3] 000.00.41.H57" in detail
    assert "parent cycle" in detail


def test_successor_cycle() -> None:
    data = _with(
        _agency("000.00.41.H57", "district", parent="000.00.00.H57", successor="000.00.42.H57"),
        _agency("000.00.42.H57", "district", parent="000.00.00.H57", successor="000.00.41.H57"),
    )
    detail = _error(data)
    assert "agencies[3] 000.00.41.H57" in detail
    assert "successor cycle" in detail


def test_unknown_successor() -> None:
    detail = _error(_with(_agency("000.00.33.H57", "district", successor="000.00.99.H57")))
    assert "agencies[3] 000.00.33.H57" in detail and "unknown successor 000.00.99.H57" in detail


def test_unknown_level() -> None:
    detail = _error(_with(_agency("000.00.33.H57", "commune")))
    assert detail.startswith("agencies[3] 000.00.33.H57:")
    assert "unknown level 'commune'" in detail
    assert "central, province, district" in detail


def test_higher_level_under_lower_level() -> None:
    detail = _error(_with(_agency("000.00.12.H57", "province", parent="000.00.31.H57")))
    assert "agencies[3] 000.00.12.H57" in detail and "cannot sit under" in detail


@pytest.mark.parametrize(
    "delivery",
    [
        {"mode": "push"},
        {"mode": "push", "endpoint": "http://qlvb.example.gov.vn/receive"},
        {"mode": "push", "endpoint": "ftp://qlvb.example.gov.vn/receive"},
        {"mode": "push", "endpoint": "https:///receive"},
        {"mode": "push", "endpoint": "qlvb.example.gov.vn/receive"},
    ],
)
def test_push_needs_an_https_endpoint(delivery: dict[str, Any]) -> None:
    detail = _error(_with(_agency("000.00.12.H57", delivery=delivery)))
    assert detail.startswith("agencies[3] 000.00.12.H57:")
    assert "https://" in detail


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://qlvb.example.gov.vn/receive",
        "http://localhost:8081/receive",
        "http://127.0.0.1:8081/receive",
        "http://[::1]:8081/receive",
    ],
)
def test_push_endpoints_allowed(endpoint: str) -> None:
    directory = Directory.from_mapping(
        _with(_agency("000.00.12.H57", delivery={"mode": "push", "endpoint": endpoint}))
    )
    agency = directory.get("000.00.12.H57")
    assert agency.mode is DeliveryMode.PUSH
    assert agency.endpoint == endpoint


def test_plain_http_push_only_when_insecure_push_is_allowed() -> None:
    data = _with(
        _agency("000.00.12.H57", delivery={"mode": "push", "endpoint": "http://qlvb:8081/in"})
    )
    _error(data)
    directory = Directory.from_mapping(data, allow_insecure_push=True)
    assert directory.get("000.00.12.H57").endpoint == "http://qlvb:8081/in"


def test_endpoint_on_a_pull_agency() -> None:
    for delivery in (
        {"mode": "pull", "endpoint": "https://qlvb.example.gov.vn/receive"},
        {"endpoint": "https://qlvb.example.gov.vn/receive"},
    ):
        detail = _error(_with(_agency("000.00.12.H57", delivery=delivery)))
        assert detail.startswith("agencies[3] 000.00.12.H57:")
        assert "only for push" in detail


@pytest.mark.parametrize(
    "extra", [{"delivery": {"mode": "email"}}, {"format": "xml"}, {"delivery": "push"}]
)
def test_unknown_mode_or_format(extra: dict[str, Any]) -> None:
    assert "agencies[3] 000.00.12.H57" in _error(_with(_agency("000.00.12.H57", **extra)))


def test_unknown_key() -> None:
    detail = _error(_with(_agency("000.00.12.H57", endpoint="https://x.gov.vn", token="s")))
    assert detail.startswith("agencies[3] 000.00.12.H57:")
    assert "unknown keys endpoint, token" in detail


def test_agency_needs_a_name() -> None:
    detail = _error(_with({"code": "000.00.12.H57", "name": "  ", "level": "province"}))
    assert "agencies[3] 000.00.12.H57" in detail and "name" in detail


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (None, "mapping"),
        ([], "mapping"),
        ({"agencies": [_agency("000.00.00.H57")]}, "'levels'"),
        ({"levels": [], "agencies": [_agency("000.00.00.H57")]}, "'levels'"),
        ({"levels": LEVELS}, "'agencies'"),
        ({"levels": LEVELS, "agencies": []}, "'agencies'"),
        ({"levels": [{"code": "a"}, {"code": "a"}], "agencies": []}, "levels[1] a: duplicate"),
        ({"levels": [{"name": "x"}], "agencies": []}, "levels[0]"),
        ({"levels": LEVELS, "agencies": ["000.00.00.H57"]}, "agencies[0]: must be a mapping"),
    ],
)
def test_malformed_document(data: Any, fragment: str) -> None:
    assert fragment in _error(data)


# -- load_directory (the file) --------------------------------------------------------------------
def test_load_error_names_the_file_and_the_entry(tmp_path: Path) -> None:
    data = _with(_agency("000.00.31.H57", "district", parent="000.00.00.H57"))
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(DirectoryError) as info:
        load_directory(path)
    assert info.value.detail.startswith(f"{path}: agencies[3] 000.00.31.H57:")


def test_load_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "directory.yaml"
    path.write_text("levels: [\n  {code: central\nagencies: x", encoding="utf-8")
    with pytest.raises(DirectoryError, match="not valid YAML") as info:
        load_directory(path)
    assert str(path) in info.value.detail


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(DirectoryError, match="cannot read") as info:
        load_directory(path)
    assert str(path) in info.value.detail


def test_load_passes_allow_insecure_push(tmp_path: Path) -> None:
    data = _with(_agency("000.00.12.H57", delivery={"mode": "push", "endpoint": "http://q/in"}))
    path = tmp_path / "directory.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(DirectoryError, match="https://"):
        load_directory(path)
    assert load_directory(path, allow_insecure_push=True).get("000.00.12.H57").mode is (
        DeliveryMode.PUSH
    )
