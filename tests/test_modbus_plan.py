"""The read plan: neighbouring registers merged within the 125-register limit and the max gap,
never more requests than the minimum, and a refused request split into gapless pieces."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from citygw.config.profiles import find_profile
from citygw.drivers.modbus.plan import MAX_REGISTERS, ReadPlan, minimum_requests
from citygw.drivers.modbus.registers import WIDTH, DataType, Field


def reg(address: int, kind: DataType = DataType.U16, *, function: int = 3, name: str = "") -> Field:
    length = 1 if function in (1, 2) else WIDTH[kind]
    return Field(
        name=name or f"voltage:{address}",
        quantity="voltage",
        unit="V",
        function=function,
        address=address,
        type=DataType.BOOL if function in (1, 2) else kind,
        length=length,
    )


def spans(plan: ReadPlan) -> list[tuple[int, int, int]]:
    return [(r.function, r.address, r.count) for r in plan.requests]


def test_neighbours_merge_and_a_wide_gap_splits() -> None:
    fields = [reg(0, DataType.F32), reg(2, DataType.F32), reg(10), reg(40)]
    # registers 4-9 are unused: a gap of 6; 11-39: a gap of 29
    assert spans(ReadPlan.build(fields, max_gap=5)) == [(3, 0, 4), (3, 10, 1), (3, 40, 1)]
    assert spans(ReadPlan.build(fields, max_gap=6)) == [(3, 0, 11), (3, 40, 1)]
    assert spans(ReadPlan.build(fields, max_gap=124)) == [(3, 0, 41)]


def test_the_125_register_limit_and_functions_apart() -> None:
    fields = [reg(0), reg(123, DataType.F32), reg(0, function=4), reg(5, function=2), reg(120, function=2)]
    # 0..124 is 125 registers: the f32 at 123-124 just fits
    assert spans(ReadPlan.build(fields, max_gap=124)) == [(2, 5, 116), (3, 0, 125), (4, 0, 1)]
    fields = [reg(0), reg(124, DataType.F32)]  # 0..125 would be 126 registers: two requests
    assert spans(ReadPlan.build(fields, max_gap=124)) == [(3, 0, 1), (3, 124, 2)]


def test_split_reads_no_unused_address() -> None:
    fields = [reg(0), reg(1), reg(5), reg(9, DataType.U32)]
    plan = ReadPlan.build(fields, max_gap=10)
    (request,) = plan.requests
    assert not request.gapless
    assert spans(plan.split(request)) == [(3, 0, 2), (3, 5, 1), (3, 9, 2)]
    assert all(r.gapless for r in plan.split(request).requests)


def test_describe() -> None:
    (request,) = ReadPlan.build(
        [reg(0, DataType.F32, function=4), reg(74, DataType.F32, function=4)], max_gap=124
    ).requests
    assert request.describe() == "read input registers 0-75 (function 4, 76 registers)"


def test_sdm630_profile_needs_the_minimum_requests() -> None:
    profile = find_profile("eastron-sdm630")
    plan = ReadPlan.build(profile.fields, max_gap=profile.max_gap)
    assert spans(plan) == [(4, 0x0000, 76), (4, 0x00C8, 26)]
    assert len(plan.requests) == minimum_requests(profile.fields) == 2
    for name in ("eastron-sdm120", "xy-md02", "senseair-s8"):
        profile = find_profile(name)
        assert len(ReadPlan.build(profile.fields, max_gap=profile.max_gap).requests) == 1, name


layouts = st.lists(
    st.tuples(
        st.integers(0, 600),
        st.sampled_from([DataType.U16, DataType.F32, DataType.F64]),
        st.sampled_from([3, 4]),
    ),
    min_size=1,
    max_size=40,
)


@given(layouts, st.integers(0, 124))
def test_every_field_is_read_once_within_limits(layout: list[tuple[int, DataType, int]], gap: int) -> None:
    fields = [reg(a, kind, function=f, name=f"v{i}") for i, (a, kind, f) in enumerate(layout)]
    plan = ReadPlan.build(fields, max_gap=gap)
    seen = [f for r in plan.requests for f in r.fields]
    assert sorted(f.name for f in seen) == sorted(f.name for f in fields)
    for request in plan.requests:
        assert request.count <= MAX_REGISTERS
        for spec in request.fields:
            assert spec.function == request.function
            assert request.address <= spec.address and spec.end <= request.end
    if gap == 124:  # any gap allowed: the greedy plan is the minimum
        assert len(plan.requests) == minimum_requests(fields)
