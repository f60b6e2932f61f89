"""The business case against hand-computed examples (README, "The business case"), and an
independent reference in exact fractions for the bounds of every ROI input."""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from autopilot_api.discovery.catalogue import ROI_INPUTS
from autopilot_api.schemas.discovery import business_case_public
from autopilot_api.services.business_case import (
    BusinessCase,
    compute_business_case,
    missing_inputs,
    percent,
    quoted_figures,
    summary_sentences,
    usd,
)

# The README's worked example (and the offline journey's inputs).
EXAMPLE = {
    "laborRate": 35,
    "utilization": 0.8,
    "maintenanceFactor": 0.1,
    "manualMonthlySpend": 12000,
    "manualMonthlyHours": 400,
}


def entries(**values: float) -> dict[str, Any]:
    """As the sessions table stores them."""
    return {
        key: {"value": value, "source": "user", "updatedAt": "2026-01-01T00:00:00Z"}
        for key, value in values.items()
    }


def case_of(**values: float) -> BusinessCase:
    case = compute_business_case(entries(**values))
    assert case is not None
    return case


def prices(case: BusinessCase) -> dict[int, Decimal]:
    return {p.months: p.max_price for p in case.max_price_for_payback}


def test_the_worked_example_of_the_readme() -> None:
    case = case_of(**EXAMPLE)
    assert case.cost_basis == "statedSpend"
    assert case.monthly_manual_cost == Decimal("12000.00")
    assert case.cross_check is not None
    assert case.cross_check.hours_times_rate == Decimal("14000.00")  # 400 h × $35
    assert case.cross_check.difference == Decimal("-2000.00")
    assert case.cross_check.difference_percent == Decimal("-14.29")  # -2000 / 14000
    assert case.automated_hours_per_month == Decimal("320.00")
    assert case.monthly_saving == Decimal("9600.00")  # 0.8 × 12000
    assert case.yearly_saving == Decimal("115200.00")
    # 12 × 9600 / 1.1 = 104727.2727…, 24 × 9600 / 1.2, 36 × 9600 / 1.3 = 265846.1538…
    assert prices(case) == {
        12: Decimal("104727.27"),
        24: Decimal("192000.00"),
        36: Decimal("265846.15"),
    }
    assert [p.yearly_maintenance for p in case.max_price_for_payback] == [
        Decimal("10472.73"),
        Decimal("19200.00"),
        Decimal("26584.62"),
    ]
    assert case.inputs_used == {
        "utilization": 0.8,
        "maintenanceFactor": 0.1,
        "manualMonthlySpend": 12000,
        "manualMonthlyHours": 400,
    }
    assert case.inputs_unused == ("laborRate",)  # only in the cross-check
    assert case.inputs_missing == ()


def test_without_a_stated_spend_the_cost_is_hours_times_rate() -> None:
    case = case_of(laborRate=28.5, manualMonthlyHours=160, utilization=0.5, maintenanceFactor=0.2)
    assert case.cost_basis == "hoursTimesRate"
    assert "No monthly spend was stated" in case.cost_basis_reason
    assert case.cross_check is None
    assert case.monthly_manual_cost == Decimal("4560.00")  # 160 × 28.5
    assert case.monthly_saving == Decimal("2280.00")
    assert case.yearly_saving == Decimal("27360.00")
    # 27360 / 1.2; 54720 / 1.4 = 39085.714…; 82080 / 1.6
    assert prices(case) == {
        12: Decimal("22800.00"),
        24: Decimal("39085.71"),
        36: Decimal("51300.00"),
    }
    assert case.automated_hours_per_month == Decimal("80.00")
    assert list(case.inputs_used) == [
        "laborRate",
        "utilization",
        "maintenanceFactor",
        "manualMonthlyHours",
    ]
    assert case.inputs_missing == ("manualMonthlySpend",)
    assert case.inputs_unused == ()


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, ["laborRate", "utilization", "maintenanceFactor", "manualMonthlyHours"]),
        ({"manualMonthlySpend": 100, "utilization": 0.5}, ["maintenanceFactor"]),
        ({"manualMonthlySpend": 100, "maintenanceFactor": 0.5}, ["utilization"]),
        ({"manualMonthlyHours": 10, "utilization": 0.5, "maintenanceFactor": 0.1}, ["laborRate"]),
        ({"laborRate": 10, "utilization": 0.5, "maintenanceFactor": 0.1}, ["manualMonthlyHours"]),
    ],
)
def test_null_until_the_inputs_it_needs_are_there(
    given: dict[str, float], missing: list[str]
) -> None:
    assert compute_business_case(entries(**given)) is None
    assert business_case_public(entries(**given)) is None
    assert missing_inputs(given) == missing


def test_plain_numbers_are_read_and_anything_else_is_not_an_input() -> None:
    assert compute_business_case(EXAMPLE) == compute_business_case(entries(**EXAMPLE))
    odd = {**entries(**EXAMPLE), "utilization": {"value": True}, "laborRate": {"value": "35"}}
    assert compute_business_case(odd) is None  # utilization is not a number: missing


def test_zero_hours_cost_nothing_and_nothing_pays_back() -> None:
    case = case_of(laborRate=35, manualMonthlyHours=0, utilization=0.8, maintenanceFactor=0.1)
    assert case.monthly_manual_cost == Decimal("0.00")
    assert case.monthly_saving == Decimal("0.00")
    assert set(prices(case).values()) == {Decimal("0.00")}


def test_zero_hours_beside_a_stated_spend_is_a_cross_check_without_a_percentage() -> None:
    case = case_of(**{**EXAMPLE, "manualMonthlyHours": 0})
    assert case.monthly_manual_cost == Decimal("12000.00")
    assert case.cross_check is not None
    assert case.cross_check.hours_times_rate == Decimal("0.00")
    assert case.cross_check.difference == Decimal("12000.00")
    assert case.cross_check.difference_percent is None
    assert case.automated_hours_per_month == Decimal("0.00")


def test_utilisation_zero_saves_nothing() -> None:
    case = case_of(**{**EXAMPLE, "utilization": 0})
    assert case.monthly_saving == Decimal("0.00")
    assert case.yearly_saving == Decimal("0.00")
    assert set(prices(case).values()) == {Decimal("0.00")}


@pytest.mark.parametrize(
    ("maintenance", "expected"),
    [
        # S = 12000: 12 × S, 24 × S, 36 × S when maintenance is free …
        (0, {12: "144000.00", 24: "288000.00", 36: "432000.00"}),
        # … and divided by 1 + N/12 when a year of it costs the whole price.
        (1, {12: "72000.00", 24: "96000.00", 36: "108000.00"}),
    ],
)
def test_utilisation_one_saves_the_whole_cost(maintenance: float, expected: dict[int, str]) -> None:
    case = case_of(**{**EXAMPLE, "utilization": 1, "maintenanceFactor": maintenance})
    assert case.monthly_saving == case.monthly_manual_cost == Decimal("12000.00")
    assert case.yearly_saving == Decimal("144000.00")
    assert prices(case) == {months: Decimal(price) for months, price in expected.items()}


def test_the_largest_price_is_rounded_down_so_it_still_pays_back() -> None:
    # 36 × 1000 / 1.3 = 27692.307…: half-up would give .31, which no longer pays back.
    case = case_of(manualMonthlySpend=1000, utilization=1, maintenanceFactor=0.1)
    assert prices(case)[36] == Decimal("27692.30")
    for price in case.max_price_for_payback:
        n, saving, m = Decimal(price.months), case.monthly_saving, case.maintenance_factor
        assert n * saving >= price.max_price * (1 + n * m / 12)
        assert n * saving < (price.max_price + Decimal("0.01")) * (1 + n * m / 12)


def test_money_is_rounded_to_cents_half_up() -> None:
    case = case_of(manualMonthlySpend=1000.005, utilization=0.333, maintenanceFactor=0)
    assert case.monthly_manual_cost == Decimal("1000.01")
    assert case.monthly_saving == Decimal("333.00")  # 0.333 × 1000.01 = 333.00333


# --- the bounds of every input, against an independent reference in exact fractions -----
def _half_up(amount: Fraction) -> Fraction:
    cents = amount * 100
    whole = int(cents)  # toward zero; the amounts here are non-negative
    return Fraction(whole + (1 if cents - whole >= Fraction(1, 2) else 0), 100)


def _floor(amount: Fraction) -> Fraction:
    return Fraction(int(amount * 100), 100)


def reference(values: dict[str, float]) -> dict[str, Fraction]:
    f = {key: Fraction(repr(value)) for key, value in values.items()}
    if "manualMonthlySpend" in f:
        cost = _half_up(f["manualMonthlySpend"])
    else:
        cost = _half_up(f["manualMonthlyHours"] * f["laborRate"])
    saving = _half_up(f["utilization"] * cost)
    m = f["maintenanceFactor"]
    result = {"cost": cost, "saving": saving, "yearly": 12 * saving}
    for n in (12, 24, 36):
        result[f"p{n}"] = _floor(n * saving / (1 + n * m / 12))
    return result


TYPICAL = {
    "laborRate": 31.75,
    "utilization": 0.65,
    "maintenanceFactor": 0.15,
    "manualMonthlySpend": 8250.5,
    "manualMonthlyHours": 310,
}
BOUNDS = [
    pytest.param(spec.key, bound, id=f"{spec.key}={bound}")
    for spec in ROI_INPUTS
    for bound in (spec.minimum, spec.maximum)
    if bound is not None
]


@pytest.mark.parametrize(("key", "bound"), BOUNDS)
@pytest.mark.parametrize("with_spend", [True, False], ids=["spend", "hours-x-rate"])
def test_every_input_at_its_catalogue_bound(key: str, bound: float, with_spend: bool) -> None:
    values = {**TYPICAL, key: bound}
    if not with_spend and key != "manualMonthlySpend":
        del values["manualMonthlySpend"]
    case = case_of(**values)
    expected = reference(values)
    assert Fraction(case.monthly_manual_cost) == expected["cost"]
    assert Fraction(case.monthly_saving) == expected["saving"]
    assert Fraction(case.yearly_saving) == expected["yearly"]
    for price in case.max_price_for_payback:
        assert Fraction(price.max_price) == expected[f"p{price.months}"]


def test_every_input_at_its_bounds_gives_json_figures() -> None:
    """Every ROI input has an upper bound, and the business case at all of them is finite
    JSON (never Infinity, which is not JSON)."""
    assert all(spec.maximum is not None for spec in ROI_INPUTS)
    values = {spec.key: spec.maximum for spec in ROI_INPUTS}
    public = business_case_public(entries(**values))
    assert public is not None
    json.dumps(public.model_dump(mode="json"), allow_nan=False)


# --- how figures are quoted -----------------------------------------------------------
def test_figures_are_quoted_with_cents_and_percentages_without_noise() -> None:
    assert usd(Decimal("104727.27")) == "$104,727.27"
    assert usd(Decimal("192000")) == "$192,000.00"
    assert usd(Decimal("-2000")) == "-$2,000.00"
    assert percent(Decimal("0.8")) == "80%"
    assert percent(Decimal("0.125")) == "12.5%"
    assert percent(Decimal("1")) == "100%"
    case = case_of(**EXAMPLE)
    figures = quoted_figures(case)
    assert figures["monthlySaving"] == "$9,600.00"
    assert figures["largestPriceThatPaysBack"]["within 36 months"] == "$265,846.15"
    sentences = summary_sentences(case)
    for quoted in ("$12,000.00", "$14,000.00", "80%", "$9,600.00", "$115,200.00"):
        assert quoted in sentences
    for quoted in ("$104,727.27", "$192,000.00", "$265,846.15", "10%"):
        assert quoted in sentences
