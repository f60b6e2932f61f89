"""The demo SPA in headless Chromium (driven by Playwright), served from another
origin than the API: chat (streamed), answers filling in from the events stream, sign in
with a local development token, claim. Then the API confirms what the browser did.
Chromium: see tests/fixtures/chromium.py (CHROMIUM_PATH, or apt-get as root)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from autopilot_api.core.config import PROJECT_ROOT
from autopilot_api.core.security import mint_user_token
from autopilot_api.discovery.catalogue import QUESTION_BY_KEY, QUESTION_KEYS_IN_ORDER
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import make_settings
from tests.fixtures.browser import launch_chromium, start_spa_api
from tests.fixtures.factories import token_issuer, valid_value
from tests.fixtures.processes import ServiceProcess

pytestmark = pytest.mark.slow  # a real Chromium

ARTIFACTS = PROJECT_ROOT / ".artifacts"


@pytest.fixture(scope="module")
def api(
    data_plane: LocalDataPlane, spa_origin: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    service = start_spa_api(
        data_plane,
        spa_origin,
        tmp_path_factory.mktemp("e2e"),
        MESSAGE_RATE_LIMIT_PER_MINUTE="1000",
    )
    try:
        yield service
    finally:
        service.stop()


# What a visitor types for the questions after the first three, in asking order: each
# answer fits its question (the agent would ask again otherwise), typed as people type. A
# question not listed here is answered with its kind's example value.
TYPED_ANSWERS = {
    "number_of_sites": "2",
    "operating_hours_per_day": "16",
    "operating_days_per_week": "5",
    "primary_processes": "picking and packing",
    "daily_throughput_units": "12k",
    "sku_count": "4,500",
    "current_automation_level": "some automation",
    "biggest_bottleneck": "picking",
    "error_damage_rate": "2%",
    "floor_headcount": "40",
    "shifts_per_day": "2",
    "labor_turnover_rate": "45%",
    "hard_to_fill_roles": "forklift drivers",
    "average_hourly_wage": "$21/hour",
    "primary_goal": "reduce labor cost",
    "success_metric": "cost per order",
    "other_goals": "safety",
    "budget_range": "$250k-$500k",
    "budget_approved": "yes",
    "desired_timeline": "6-12 months",
    "decision_makers": "the COO",
    "financing_preference": "lease",
}


# The business case of the ROI answers typed below (35, 80%, 0.1, 12000, 400), as
# hand-computed in the README's worked example.
BUSINESS_CASE_FIGURES = (
    "$12,000.00",
    "$14,000.00",
    "$9,600.00",
    "$115,200.00",
    "$104,727.27",
    "$192,000.00",
    "$265,846.15",
)


def send(page: Page, text: str, replies: int) -> None:
    page.fill("#message", text)
    page.click("#send")
    page.wait_for_selector(f"body[data-replies='{replies}']", timeout=15_000)


def test_visitor_chats_sees_answers_live_signs_in_and_claims(
    api: ServiceProcess, spa_origin: str, data_plane: LocalDataPlane, chromium: str
) -> None:
    assert data_plane.info is not None
    user_id = uuid.uuid4()
    token = mint_user_token(
        data_plane.info.jwt_secret,
        issuer=token_issuer(make_settings(data_plane)),
        user_id=user_id,
        email="e2e@example.test",
    )
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "e2e-claimed-profile.png"

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{spa_origin}/index.html?api={api.base_url}")
        page.wait_for_selector("body[data-state='ready'][data-events='open']", timeout=15_000)
        # The agent opens with its first question, before the visitor types anything.
        page.wait_for_selector("body[data-replies='1']", timeout=15_000)
        first_question = QUESTION_BY_KEY[QUESTION_KEYS_IN_ORDER[0]].label
        assert first_question in page.inner_text(".msg.assistant")

        for count, answer in enumerate(["warehouse", "120000", "Columbus, Ohio"], start=1):
            send(page, answer, replies=count + 1)
            # The table fills in from the live events stream, not from the chat reply.
            page.wait_for_selector(f"body[data-answers='{count}']", timeout=15_000)
        replies = 4
        assert set(TYPED_ANSWERS) <= set(QUESTION_KEYS_IN_ORDER[3:])
        for key in QUESTION_KEYS_IN_ORDER[3:]:
            replies += 1
            send(page, TYPED_ANSWERS.get(key) or str(valid_value(key)), replies=replies)
        page.wait_for_selector("#phase:has-text('ROI analysis')", timeout=15_000)
        for roi_answer in ("35", "80%", "0.1", "12000", "400"):
            replies += 1
            send(page, roi_answer, replies=replies)
        page.wait_for_selector("#phase:has-text('Greenlight')", timeout=15_000)
        # The business case the API computed, in the page and in the agent's last reply.
        page.wait_for_selector("body[data-business-case='shown']", timeout=15_000)
        shown = page.inner_text("#business-case")
        last_reply = page.locator(".msg.assistant").last.inner_text()
        for figure in BUSINESS_CASE_FIGURES:
            assert figure in shown, figure
            assert figure in last_reply, figure
        assert "80% utilisation" in shown
        assert "No products selected yet" in shown

        page.fill("#token", token)
        page.click("#claim")
        page.wait_for_selector("body[data-state='claimed']", timeout=15_000)
        # The signed-in user's own stream, opened with a ticket.
        page.wait_for_selector("body[data-events='open']", timeout=15_000)
        assert page.inner_text("#answers-title") == "Saved to your profile"
        assert (
            page.inner_text("tr[data-key='facility_type'] td.value")
            == "warehouse / distribution center"
        )
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()

    headers = {"Authorization": f"Bearer {token}"}
    profile = httpx.get(f"{api.base_url}/api/v1/discovery", headers=headers).json()
    answers = {key: a["value"] for key, a in profile["answers"].items()}
    assert len(answers) == len(QUESTION_KEYS_IN_ORDER)
    assert answers["facility_type"] == "warehouse / distribution center"
    assert answers["facility_size_sqft"] == 120000
    assert answers["daily_throughput_units"] == 12000
    assert answers["sku_count"] == 4500
    assert answers["error_damage_rate"] == 2
    assert answers["budget_approved"] is True
    assert answers["financing_preference"] == "lease"
    assert answers["facility_location"] == "Columbus, Ohio"
    assert profile["phase"] == "greenlight"
    assert profile["roiInputs"]["laborRate"] == 35
    assert profile["roiInputs"]["utilization"] == 0.8
    conversations = httpx.get(f"{api.base_url}/api/v1/conversations", headers=headers).json()
    assert [c["owner"] for c in conversations] == ["user"]
    moved = httpx.get(
        f"{api.base_url}/api/v1/conversations/{conversations[0]['id']}",
        params={"limit": 200},
        headers=headers,
    ).json()
    user_lines = [m["content"] for m in moved["messages"] if m["role"] == "user"]
    assert user_lines[:3] == ["warehouse", "120000", "Columbus, Ohio"]
    assert len(user_lines) == len(QUESTION_KEYS_IN_ORDER) + 5
    assert moved["messages"][0]["content"].endswith(first_question)
    assert screenshot.stat().st_size > 10_000


def test_docs_page_renders_with_no_failed_request_or_console_error(
    api: ServiceProcess, chromium: str
) -> None:
    failures: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, chromium)
        page = browser.new_page()
        page.on("requestfailed", lambda request: failures.append(f"failed {request.url}"))
        page.on(
            "response",
            lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        page.on(
            "console", lambda m: failures.append(f"console {m.text}") if m.type == "error" else None
        )
        page.goto(f"{api.base_url}/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=15_000)
        title = page.inner_text(".swagger-ui .info .title")
        operations = page.locator(".opblock").count()
        browser.close()
    assert "autopilot-api" in title
    assert operations > 20
    assert failures == []
