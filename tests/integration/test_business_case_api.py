"""`businessCase` on the wire: GET /sessions/me and GET /discovery carry the figures the
service computed from the ROI inputs, null until the inputs it needs are stored."""

from __future__ import annotations

import httpx
import pytest

from autopilot_api.core.config import Settings
from tests.fixtures.factories import make_user, start_session

ASYNC = pytest.mark.asyncio(loop_scope="session")

INPUTS = {
    "laborRate": 35,
    "utilization": 0.8,
    "maintenanceFactor": 0.1,
    "manualMonthlySpend": 12000,
    "manualMonthlyHours": 400,
}
# Hand-computed (README, "The business case").
EXPECTED = {
    "currency": "USD",
    "monthlyManualCost": 12000.0,
    "costBasis": "statedSpend",
    "crossCheck": {"hoursTimesRate": 14000.0, "difference": -2000.0, "differencePercent": -14.29},
    "utilization": 0.8,
    "automatedHoursPerMonth": 320.0,
    "monthlySaving": 9600.0,
    "yearlySaving": 115200.0,
    "maintenanceFactor": 0.1,
    "maxPriceForPayback": [
        {"months": 12, "maxPrice": 104727.27, "yearlyMaintenance": 10472.73},
        {"months": 24, "maxPrice": 192000.0, "yearlyMaintenance": 19200.0},
        {"months": 36, "maxPrice": 265846.15, "yearlyMaintenance": 26584.62},
    ],
    "inputsUsed": {
        "utilization": 0.8,
        "maintenanceFactor": 0.1,
        "manualMonthlySpend": 12000.0,
        "manualMonthlyHours": 400.0,
    },
    "inputsUnused": ["laborRate"],
    "inputsMissing": [],
}


def figures(case: dict[str, object]) -> dict[str, object]:
    return {key: value for key, value in case.items() if key in EXPECTED}


@ASYNC
async def test_the_session_carries_the_business_case_once_its_inputs_are_stored(
    client: httpx.AsyncClient,
) -> None:
    await start_session(client)
    partial = {key: INPUTS[key] for key in ("laborRate", "utilization", "manualMonthlySpend")}
    written = await client.put("/api/v1/sessions/me", json={"roiInputs": partial})
    assert written.status_code == 200, written.text
    assert written.json()["businessCase"] is None  # no maintenance factor yet
    await client.put(
        "/api/v1/sessions/me",
        json={"roiInputs": {"maintenanceFactor": 0.1, "manualMonthlyHours": 400}},
    )
    case = (await client.get("/api/v1/sessions/me")).json()["businessCase"]
    assert figures(case) == EXPECTED
    assert "stated" in case["costBasisReason"]
    assert "maintenanceFactor" in case["maintenanceDefinition"]
    # Removing an input it needs takes it away again.
    cleared = await client.put("/api/v1/sessions/me", json={"roiInputs": {"utilization": None}})
    assert cleared.json()["businessCase"] is None


@ASYNC
async def test_the_discovery_profile_carries_it_too(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = make_user(settings)
    empty = await client.get("/api/v1/discovery", headers=user.headers)
    assert empty.json()["businessCase"] is None
    without_spend = {k: v for k, v in INPUTS.items() if k != "manualMonthlySpend"}
    await client.put("/api/v1/discovery", json={"roiInputs": without_spend}, headers=user.headers)
    case = (await client.get("/api/v1/discovery", headers=user.headers)).json()["businessCase"]
    assert case["costBasis"] == "hoursTimesRate"
    assert case["monthlyManualCost"] == 14000.0  # 400 h × $35
    assert case["monthlySaving"] == 11200.0
    assert case["inputsMissing"] == ["manualMonthlySpend"]
    assert case["crossCheck"] is None


@ASYNC
async def test_the_openapi_document_describes_it(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    for response in ("SessionResponse", "DiscoveryProfileResponse"):
        assert "businessCase" in schemas[response]["properties"], response
    case = schemas["BusinessCasePublic"]["properties"]
    assert {"monthlyManualCost", "monthlySaving", "yearlySaving", "maxPriceForPayback"} <= set(case)
    assert "12, 24 and 36 months" in case["maxPriceForPayback"]["description"]
