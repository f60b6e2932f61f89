"""Odd input gets a 4xx that names what is wrong, never a 500 (issue 15, item 1), through HTTP.

Each input here once answered 500: a lone surrogate in a string, a non-finite number in
free-form JSON, JSON nested hundreds deep, an If-Match version too long for `int()`, a
validly signed token whose `exp` or `nbf` is `1e400`. Bodies are sent as raw JSON text,
because Python's own encoder would never write them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts

from autopilot_api.api.json_body import JSONBodyRoute
from autopilot_api.core.config import Settings
from autopilot_api.core.security import SUPABASE_AUDIENCE, SUPABASE_USER_ROLE
from autopilot_api.main import create_app
from tests.fixtures.factories import make_user, start_session, token_issuer

ASYNC = pytest.mark.asyncio(loop_scope="session")
JSON = {"Content-Type": "application/json"}
SURROGATE = '"\\ud800"'  # JSON text for a lone high surrogate: valid JSON, not valid Unicode
SEARCH = "/api/v1/search-sessions"


def problem(response: httpx.Response, field: str) -> dict[str, Any]:
    """The 422 names `field` (as the client wrote it) and nothing else."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error", error
    assert error["category"] == "user_fixable", error
    fields = [detail["field"] for detail in error["details"]]
    assert fields == [field], error["details"]
    detail: dict[str, Any] = error["details"][0]
    return detail


def search_body(query: str) -> str:
    return f'{{"searchQuery": {query}, "companies": ["Acme"]}}'


def nested(depth: int, leaf: str = "1") -> str:
    """JSON text of `depth` objects, one inside the other."""
    return '{"a": ' * depth + leaf + "}" * depth


@ASYNC
class TestStringsPostgresCannotStore:
    async def test_a_lone_surrogate_in_a_session_answer(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        body = f'{{"answers": {{"facility_location": {{"value": {SURROGATE}}}}}}}'
        response = await client.put("/api/v1/sessions/me", content=body, headers=JSON)
        detail = problem(response, "answers.facility_location.value")
        assert "surrogate" in detail["msg"]

    async def test_a_lone_surrogate_in_a_discovery_answer(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        user = make_user(settings)
        body = f'{{"answers": {{"facility_location": {{"value": {SURROGATE}}}}}}}'
        response = await client.put(
            "/api/v1/discovery", content=body, headers={**JSON, **user.headers}
        )
        problem(response, "answers.facility_location.value")

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            (f'{{"metadata": {{"utm": {SURROGATE}}}}}', "metadata.utm"),
            (f'{{"metadata": {{{SURROGATE}: 1}}}}', "metadata"),  # a key
            ('{"metadata": {"x": ["ok", "\\udfff"]}}', "metadata.x[1]"),
            ('{"timeframe": "soon\\ud83d"}', "timeframe"),
            ('{"metadata": {"utm": "a\\u0000b"}}', "metadata.utm"),  # NUL: named, too
        ],
    )
    async def test_every_string_of_a_body_is_checked(
        self, client: httpx.AsyncClient, body: str, field: str
    ) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", content=body, headers=JSON)
        problem(response, field)

    async def test_a_lone_surrogate_in_a_search_and_a_message(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.post(
            SEARCH, content=f'{{"searchQuery": {{}}, "companies": [{SURROGATE}]}}', headers=JSON
        )
        problem(response, "companies[0]")
        created = await client.post("/api/v1/conversations")
        assert created.status_code == 201, created.text
        response = await client.post(
            f"/api/v1/conversations/{created.json()['id']}/messages",
            content='{"content": "hi \\udc00"}',
            headers=JSON,
        )
        problem(response, "content")

    async def test_a_valid_pair_still_goes_through(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        body = '{"answers": {"facility_location": {"value": "Ulm \\ud83d\\ude00"}}}'
        response = await client.put("/api/v1/sessions/me", content=body, headers=JSON)
        assert response.status_code == 200, response.text
        assert response.json()["answers"]["facility_location"]["value"] == "Ulm \U0001f600"


@ASYNC
class TestNonFiniteNumbers:
    @pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
    async def test_inside_a_search_query(self, client: httpx.AsyncClient, number: str) -> None:
        await start_session(client)
        response = await client.post(
            SEARCH, content=search_body(f'{{"salary": {{"min": {number}}}}}'), headers=JSON
        )
        detail = problem(response, "searchQuery.salary.min")
        assert "finite" in detail["msg"]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ('{"metadata": {"score": NaN}}', "metadata.score"),
            ('{"metadata": {"scores": [1, 2e400]}}', "metadata.scores[1]"),
            (
                '{"answers": {"facility_size_sqft": {"value": 1e999}}}',
                "answers.facility_size_sqft.value",
            ),
            ('{"roiInputs": {"laborRate": Infinity}}', "roiInputs.laborRate"),
        ],
    )
    async def test_anywhere_in_a_body(
        self, client: httpx.AsyncClient, body: str, field: str
    ) -> None:
        await start_session(client)
        response = await client.put("/api/v1/sessions/me", content=body, headers=JSON)
        problem(response, field)


@ASYNC
class TestNestingDepth:
    async def test_metadata_700_deep(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        body = f'{{"metadata": {nested(700)}}}'
        response = await client.put("/api/v1/sessions/me", content=body, headers=JSON)
        detail = problem(response, "metadata" + ".a" * 31)
        assert "32" in detail["msg"]

    async def test_a_search_query_just_over_and_just_under_the_cap(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        # The body is one level: searchQuery's objects get the other 31 of 32.
        fits = await client.post(SEARCH, content=search_body(nested(31)), headers=JSON)
        assert fits.status_code == 201, fits.text
        too_deep = await client.post(SEARCH, content=search_body(nested(32)), headers=JSON)
        problem(too_deep, "searchQuery" + ".a" * 31)

    async def test_arrays_count_as_levels(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        body = '{"metadata": {"x": ' + "[" * 40 + "]" * 40 + "}}"
        response = await client.put("/api/v1/sessions/me", content=body, headers=JSON)
        problem(response, "metadata.x" + "[0]" * 30)

    async def test_deeper_than_the_parser_goes_is_still_a_422(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        body = f'{{"metadata": {nested(100_000)}}}'
        response = await client.put("/api/v1/sessions/me", content=body, headers=JSON)
        assert response.status_code == 422, response.text


@ASYNC
class TestIfMatchVersions:
    async def test_a_5000_digit_version(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me",
            json={"timeframe": "soon"},
            headers={"If-Match": '"v' + "9" * 5000 + '"'},
        )
        detail = problem(response, "header If-Match")
        assert '"v3"' in detail["msg"]

    async def test_a_version_no_integer_column_holds_is_stale(
        self, client: httpx.AsyncClient
    ) -> None:
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me",
            json={"timeframe": "soon"},
            headers={"If-Match": '"v99999999999"'},
        )
        assert response.status_code == 412, response.text

    async def test_digits_int_cannot_read(self, client: httpx.AsyncClient) -> None:
        # "²" counts as a digit for str.isdigit() but not for int(): latin-1 byte 0xB2.
        await start_session(client)
        response = await client.put(
            "/api/v1/sessions/me", json={"timeframe": "soon"}, headers={"If-Match": b'"v\xb2"'}
        )
        assert response.status_code == 412, response.text

    async def test_the_current_version_still_matches(self, client: httpx.AsyncClient) -> None:
        await start_session(client)
        etag = (await client.get("/api/v1/sessions/me")).headers["ETag"]
        response = await client.put(
            "/api/v1/sessions/me", json={"timeframe": "soon"}, headers={"If-Match": etag}
        )
        assert response.status_code == 200, response.text


def signed_token(settings: Settings, claims_json: str) -> str:
    """An HS256 token signed with the service's secret, its claims given as raw JSON text."""
    assert settings.supabase_jwt_secret

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    signing_input = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(claims_json.encode())
    signature = hmac.new(
        settings.supabase_jwt_secret.encode(), signing_input.encode(), hashlib.sha256
    ).digest()
    return signing_input + "." + b64(signature)


def claims(settings: Settings, **raw: str) -> str:
    """Valid user claims as JSON text, with `raw` numeric claims spliced in as written."""
    base = {
        "iss": token_issuer(settings),
        "sub": "8a1f0c1e-3c1d-4b51-9a7e-0a4a3f1d2b3c",
        "aud": SUPABASE_AUDIENCE,
        "role": SUPABASE_USER_ROLE,
        "exp": 4_000_000_000,
        "iat": 1_700_000_000,
    }
    text = json.dumps({key: value for key, value in base.items() if key not in raw})
    return text[:-1] + "".join(f', "{key}": {value}' for key, value in raw.items()) + "}"


@ASYNC
class TestTokenNumbers:
    async def test_the_splice_makes_a_token_the_service_accepts(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        token = signed_token(settings, claims(settings, nbf="1700000000"))
        response = await client.get(
            "/api/v1/discovery", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text

    @pytest.mark.parametrize(
        "raw",
        [
            {"exp": "1e400"},
            {"nbf": "1e400"},
            {"iat": "1e400"},
            {"nbf": "-1e400"},
            {"exp": "NaN"},
            {"nbf": "Infinity"},
            {"exp": "1" + "0" * 4000},  # an integer int() still reads, far past any date
            {"exp": "1" + "0" * 5000},  # one it refuses to read
            {"nbf": '"1700000000"'},
            {"nbf": "true"},
            {"app_metadata": "[" * 3000 + "]" * 3000},  # deeper than jose's parser goes
        ],
        ids=lambda raw: f"{next(iter(raw))}={next(iter(raw.values()))[:12]}",
    )
    async def test_an_unusable_numeric_claim_is_an_invalid_token(
        self, client: httpx.AsyncClient, settings: Settings, raw: dict[str, str]
    ) -> None:
        token = signed_token(settings, claims(settings, **raw))
        response = await client.get(
            "/api/v1/discovery", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_token"

    @pytest.mark.parametrize("offset", [120, 3600])
    async def test_a_token_not_yet_valid_is_refused(
        self, client: httpx.AsyncClient, settings: Settings, offset: int
    ) -> None:
        # nbf is checked here, not by jose: past the leeway (60 s), not before.
        token = signed_token(settings, claims(settings, nbf=str(int(time.time()) + offset)))
        response = await client.get(
            "/api/v1/discovery", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401, response.text

    async def test_a_token_valid_within_the_leeway_is_accepted(
        self, client: httpx.AsyncClient, settings: Settings
    ) -> None:
        token = signed_token(settings, claims(settings, nbf=str(int(time.time()) + 30)))
        response = await client.get(
            "/api/v1/discovery", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 200, response.text


@ASYNC
async def test_a_last_event_id_past_bigint(client: httpx.AsyncClient) -> None:
    await start_session(client)
    response = await client.get("/api/v1/events", headers={"Last-Event-ID": "9" * 30})
    problem(response, "header Last-Event-ID")


def test_every_route_with_a_body_checks_its_json(settings: Settings) -> None:
    """A router made without JSONBodyRoute would let all of the above through again."""
    checked = 0
    for context in iter_route_contexts(create_app(settings).routes):
        route = context.original_route
        if isinstance(route, APIRoute) and route.body_field is not None:
            assert isinstance(route, JSONBodyRoute), route.path
            checked += 1
    assert checked >= 5


@ASYNC
class TestMethodNotAllowed:
    @pytest.mark.parametrize(
        ("method", "path", "allowed"),
        [
            ("PATCH", "/api/v1/sessions/me", {"GET", "PUT", "DELETE"}),
            ("DELETE", "/api/v1/discovery", {"GET", "PUT"}),
            ("PUT", "/api/v1/search-sessions", {"GET", "POST", "DELETE"}),
            ("POST", "/healthz", {"GET"}),
            ("POST", "/static/docs/swagger-ui.css", {"GET", "HEAD"}),
        ],
    )
    async def test_allow_names_the_methods(
        self, client: httpx.AsyncClient, method: str, path: str, allowed: set[str]
    ) -> None:
        response = await client.request(method, path)
        assert response.status_code == 405, response.text
        assert set(response.headers["Allow"].split(", ")) == allowed

    async def test_every_documented_path(self, client: httpx.AsyncClient) -> None:
        """Allow lists exactly the methods /openapi.json documents for the path."""
        paths = (await client.get("/openapi.json")).json()["paths"]
        checked = 0
        for template, operations in paths.items():
            documented = {method.upper() for method in operations}
            unused = sorted({"GET", "PUT", "POST", "DELETE", "PATCH"} - documented)
            path = template.replace("{", "").replace("}", "")
            response = await client.request(unused[0], path)
            assert response.status_code == 405, (template, response.text)
            assert set(response.headers["Allow"].split(", ")) == documented, template
            checked += 1
        assert checked >= 10
