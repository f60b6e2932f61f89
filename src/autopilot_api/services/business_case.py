"""The business case: what the manual work costs today, what automation saves at the stated
utilisation, and the largest price that still pays back, computed from the ROI inputs.

Pure and exact: inputs become `Decimal`s (from their shortest decimal form, so 0.1 is 0.1),
money is rounded to cents once per figure, and each figure is derived from the rounded figure
before it, so a visitor can redo every step from what is shown. The agent quotes these
figures and never calculates (README, "The business case").

Definitions (USD, months):
- monthly manual cost C: the stated `manualMonthlySpend` when given (the visitor's own figure
  for what the work costs, overheads and agency fees included); else `manualMonthlyHours` ×
  `laborRate`. When both are there, hours × rate is reported as a cross-check.
- monthly saving S = `utilization` × C (the share of the manual work automation takes);
  yearly saving = 12 × S.
- maintenance: a year of it costs `maintenanceFactor` × price P. P pays back within N months
  when N × S ≥ P + (N / 12) × maintenanceFactor × P, so the largest such price is
  P_max(N) = N × S / (1 + N × maintenanceFactor / 12), rounded down to the cent (rounded up
  it would no longer pay back).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Context, Decimal, localcontext
from typing import Any, Final, Literal

from autopilot_api.discovery.catalogue import ROI_INPUT_KEYS

CostBasis = Literal["statedSpend", "hoursTimesRate"]

PAYBACK_MONTHS: Final[tuple[int, ...]] = (12, 24, 36)
CENT: Final = Decimal("0.01")
MONTHS_PER_YEAR: Final = Decimal(12)
# Enough digits for any product of two finite floats' decimal forms, so nothing rounds
# before the one rounding to cents; the exponent range covers them too.
_EXACT: Final = Context(prec=1000, Emax=100_000, Emin=-100_000)

COST_BASIS_REASONS: Final[Mapping[CostBasis, str]] = {
    "statedSpend": "The monthly spend you stated is what the manual work costs you, "
    "overheads included; hours × rate is shown beside it as a cross-check.",
    "hoursTimesRate": "No monthly spend was stated, so the cost is the monthly hours "
    "times the fully loaded labor rate.",
}
MAINTENANCE_DEFINITION: Final = (
    "A year of maintenance costs maintenanceFactor × the price; a price P pays back within "
    "N months when N × monthly saving ≥ P + N/12 × maintenanceFactor × P."
)


@dataclass(frozen=True, slots=True)
class CostCrossCheck:
    """Hours × rate beside a stated spend: how far apart the two readings are."""

    hours_times_rate: Decimal
    difference: Decimal  # stated spend − hours × rate
    difference_percent: Decimal | None  # of hours × rate; None when that is 0


@dataclass(frozen=True, slots=True)
class PaybackPrice:
    months: int
    max_price: Decimal
    yearly_maintenance: Decimal  # maintenanceFactor × max_price


@dataclass(frozen=True, slots=True)
class BusinessCase:
    monthly_manual_cost: Decimal
    cost_basis: CostBasis
    cost_basis_reason: str
    cross_check: CostCrossCheck | None
    utilization: Decimal
    automated_hours_per_month: Decimal | None
    monthly_saving: Decimal
    yearly_saving: Decimal
    maintenance_factor: Decimal
    max_price_for_payback: tuple[PaybackPrice, ...]
    inputs_used: dict[str, float]
    inputs_unused: tuple[str, ...]
    inputs_missing: tuple[str, ...]


def roi_values(roi_inputs: Mapping[str, Any]) -> dict[str, float]:
    """The stored ROI inputs as plain numbers: entries `{value, source, …}` or numbers."""
    values: dict[str, float] = {}
    for key in ROI_INPUT_KEYS:
        entry = roi_inputs.get(key)
        value = entry.get("value") if isinstance(entry, Mapping) else entry
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[key] = value
    return values


def missing_inputs(values: Mapping[str, float]) -> list[str]:
    """What the business case still needs: utilization, maintenanceFactor, and a cost
    (manualMonthlySpend, or manualMonthlyHours and laborRate), in the catalogue's order."""
    needed = {"utilization", "maintenanceFactor"}
    if "manualMonthlySpend" not in values:
        needed |= {"manualMonthlyHours", "laborRate"}
    return [key for key in ROI_INPUT_KEYS if key in needed and key not in values]


def _decimal(value: float) -> Decimal:
    return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)


def _cents(amount: Decimal, rounding: str = ROUND_HALF_UP) -> Decimal:
    return amount.quantize(CENT, rounding=rounding)


def _fits_json(*amounts: Decimal) -> bool:
    # A figure past a float's range would be Infinity on the wire: no business case then.
    return all(math.isfinite(float(amount)) for amount in amounts)


def compute_business_case(roi_inputs: Mapping[str, Any]) -> BusinessCase | None:
    """The business case, or None until the inputs it needs are stored."""
    values = roi_values(roi_inputs)
    if missing_inputs(values):
        return None
    with localcontext(_EXACT):
        return _compute(values)


def _compute(values: dict[str, float]) -> BusinessCase | None:
    given = {key: _decimal(value) for key, value in values.items()}
    utilization = given["utilization"]
    maintenance = given["maintenanceFactor"]
    hours, rate = given.get("manualMonthlyHours"), given.get("laborRate")
    hours_times_rate = _cents(hours * rate) if hours is not None and rate is not None else None

    used = ["utilization", "maintenanceFactor"]
    cross_check: CostCrossCheck | None = None
    if "manualMonthlySpend" in given:
        basis: CostBasis = "statedSpend"
        cost = _cents(given["manualMonthlySpend"])
        used.append("manualMonthlySpend")
        if hours_times_rate is not None:
            difference = cost - hours_times_rate
            percent = _cents(difference / hours_times_rate * 100) if hours_times_rate else None
            cross_check = CostCrossCheck(hours_times_rate, difference, percent)
    else:
        basis = "hoursTimesRate"
        assert hours_times_rate is not None  # missing_inputs() said so
        cost = hours_times_rate
        used += ["manualMonthlyHours", "laborRate"]

    automated_hours = None
    if hours is not None:
        automated_hours = _cents(utilization * hours)
        if "manualMonthlyHours" not in used:
            used.append("manualMonthlyHours")

    monthly_saving = _cents(utilization * cost)
    yearly_saving = MONTHS_PER_YEAR * monthly_saving
    prices = []
    for months in PAYBACK_MONTHS:
        n = Decimal(months)
        max_price = _cents(
            n * monthly_saving / (1 + n * maintenance / MONTHS_PER_YEAR), ROUND_FLOOR
        )
        prices.append(PaybackPrice(months, max_price, _cents(maintenance * max_price)))

    figures = [cost, monthly_saving, yearly_saving, *(p.max_price for p in prices)]
    if cross_check is not None:
        figures += [cross_check.hours_times_rate, cross_check.difference]
    if not _fits_json(*figures):
        return None
    return BusinessCase(
        monthly_manual_cost=cost,
        cost_basis=basis,
        cost_basis_reason=COST_BASIS_REASONS[basis],
        cross_check=cross_check,
        utilization=utilization,
        automated_hours_per_month=automated_hours,
        monthly_saving=monthly_saving,
        yearly_saving=yearly_saving,
        maintenance_factor=maintenance,
        max_price_for_payback=tuple(prices),
        inputs_used={key: values[key] for key in ROI_INPUT_KEYS if key in used},
        inputs_unused=tuple(key for key in ROI_INPUT_KEYS if key in values and key not in used),
        inputs_missing=tuple(key for key in ROI_INPUT_KEYS if key not in values),
    )


# --- words: how the figures are quoted (the offline agent, the prompts' data) ----------
def usd(amount: Decimal) -> str:
    """$104,727.27: always cents, so a figure reads the same wherever it is quoted."""
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.2f}"


def percent(fraction: Decimal) -> str:
    """0.8 → 80%; 0.125 → 12.5%."""
    scaled = (fraction * 100).normalize()
    return f"{scaled:f}%"


def quoted_figures(case: BusinessCase) -> dict[str, Any]:
    """The figures as the agent may quote them: formatted, nothing left to compute."""
    figures: dict[str, Any] = {
        "monthlyManualCost": usd(case.monthly_manual_cost),
        "costBasis": case.cost_basis,
        "costBasisReason": case.cost_basis_reason,
        "utilization": percent(case.utilization),
        "monthlySaving": usd(case.monthly_saving),
        "yearlySaving": usd(case.yearly_saving),
        "maintenance": f"{percent(case.maintenance_factor)} of the price per year",
        "largestPriceThatPaysBack": {
            f"within {p.months} months": usd(p.max_price) for p in case.max_price_for_payback
        },
    }
    if case.automated_hours_per_month is not None:
        figures["automatedHoursPerMonth"] = f"{case.automated_hours_per_month:f}"
    if case.cross_check is not None:
        figures["crossCheckHoursTimesRate"] = usd(case.cross_check.hours_times_rate)
    return figures


def summary_sentences(case: BusinessCase) -> str:
    """The business case in a few sentences, every figure computed above."""
    if case.cost_basis == "statedSpend":
        cost = (
            f"The manual work costs {usd(case.monthly_manual_cost)} a month (the spend you stated"
        )
        if case.cross_check is not None:
            cost += f"; hours × rate gives {usd(case.cross_check.hours_times_rate)}"
        cost += ")."
    else:
        cost = (
            f"The manual work costs {usd(case.monthly_manual_cost)} a month "
            "(monthly hours × labor rate)."
        )
    saving = (
        f" At {percent(case.utilization)} utilisation, automation saves "
        f"{usd(case.monthly_saving)} a month, {usd(case.yearly_saving)} a year."
    )
    prices = ", ".join(
        f"within {p.months} months up to {usd(p.max_price)}" for p in case.max_price_for_payback
    )
    payback = (
        f" It pays back, with maintenance at {percent(case.maintenance_factor)} of the price "
        f"a year, {prices}."
    )
    return cost + saving + payback
