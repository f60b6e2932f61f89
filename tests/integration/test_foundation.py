"""The foundation through HTTP: health, errors, docs, migrations, and the anon key."""

from __future__ import annotations

import gc
import re
import shutil
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from autopilot_api.core.config import Settings
from autopilot_api.db import migrations
from autopilot_api.db.migrations import MIGRATIONS_DIR, upgrade_database
from autopilot_api.local.dataplane import LocalDataPlane, drop_database, with_database
from tests.conftest import browser_client, make_settings, plane_info, running_app

ASYNC = pytest.mark.asyncio(loop_scope="session")


@ASYNC
async def test_start_up_objects_are_out_of_the_collectors_sight_while_serving(
    settings: Settings,
) -> None:
    # Full collections under load scanned every object start-up made (the p99 of GET /me).
    async with running_app(settings):
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


@ASYNC
class TestHealth:
    async def test_healthz_answers(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}

    async def test_readyz_is_ok_with_the_data_plane_up(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/readyz")
        assert response.status_code == 200

    async def test_readyz_is_503_while_postgrest_is_down_and_recovers(
        self, client: httpx.AsyncClient, data_plane: LocalDataPlane
    ) -> None:
        assert data_plane.postgrest is not None
        data_plane.postgrest.stop()
        try:
            response = await client.get("/readyz")
            assert response.status_code == 503
            assert int(response.headers["Retry-After"]) > 0
            body = response.json()["error"]
            assert body["code"] == "data_plane_unavailable"
            assert body["category"] == "temporary"
        finally:
            data_plane.postgrest.start()
        recovered = await client.get("/readyz")
        assert recovered.status_code == 200


@ASYNC
class TestErrorEnvelope:
    async def test_unknown_route_is_404_envelope(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/api/v1/no-such-thing")
        assert response.status_code == 404
        assert response.json() == {
            "error": {
                "code": "not_found",
                "message": "No such resource.",
                "category": "user_fixable",
                "details": None,
            }
        }

    async def test_wrong_method_is_405_envelope(self, client: httpx.AsyncClient) -> None:
        response = await client.delete("/healthz")
        assert response.status_code == 405
        assert response.json()["error"]["code"] == "method_not_allowed"

    async def test_every_response_carries_a_request_id(self, client: httpx.AsyncClient) -> None:
        given = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert given.headers["X-Request-ID"] == "abc-123"
        made = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
        assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])


@ASYNC
class TestDocs:
    async def test_docs_page_links_no_other_host(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/docs")
        assert response.status_code == 200
        urls = re.findall(r"""(?:src|href|url)\s*[:=]\s*['"]([^'"]+)['"]""", response.text)
        assert urls, "the page should reference its assets"
        for url in urls:
            assert not re.match(r"^(https?:)?//", url), url

    async def test_docs_assets_are_served_locally(self, client: httpx.AsyncClient) -> None:
        page = (await client.get("/docs")).text
        for asset in re.findall(r"""(?:src|href)=['"](/[^'"]+)['"]""", page):
            assert (await client.get(asset)).status_code == 200, asset

    async def test_openapi_is_served(self, client: httpx.AsyncClient) -> None:
        spec = (await client.get("/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        assert "/readyz" in spec["paths"]


def _catalog_snapshot(database_url: str) -> list[tuple[str, ...]]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """
            select 'rel', c.relname, c.relkind::text, coalesce(array_to_string(c.relacl, ','), '')
            from pg_class c join pg_namespace n on n.oid = c.relnamespace
            where n.nspname in ('autopilot', 'autopilot_private', 'auth')
            union all
            select 'fn', p.oid::regprocedure::text, md5(p.prosrc),
                   coalesce(array_to_string(p.proacl, ','), '')
            from pg_proc p join pg_namespace n on n.oid = p.pronamespace
            where n.nspname in ('autopilot', 'autopilot_private', 'auth')
            union all
            select 'version', version_num, '', '' from autopilot_private.alembic_version
            order by 1, 2
            """
        ).fetchall()
    return [tuple(str(v) for v in row) for row in rows]


class TestMigrations:
    def test_rerunning_migrations_is_a_no_op(self, data_plane: LocalDataPlane) -> None:
        url = plane_info(data_plane).database_url
        before = _catalog_snapshot(url)
        assert upgrade_database(url) == []
        assert upgrade_database(url) == []
        assert _catalog_snapshot(url) == before

    def test_a_new_file_is_a_new_revision_and_only_it_runs(
        self, data_plane: LocalDataPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Adding a migration is adding a .sql file: no revision script to write."""
        server_url = plane_info(data_plane).database_url
        name = f"autopilot_new_file_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(with_database(server_url, "postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
        url = with_database(server_url, name)
        files = tmp_path / "migrations"
        shutil.copytree(MIGRATIONS_DIR, files)
        (files / "29991231000000_later.sql").write_text(
            "create table autopilot.later (id integer primary key);"
        )
        try:
            first = upgrade_database(url)
            monkeypatch.setattr(migrations, "MIGRATIONS_DIR", files)
            second = upgrade_database(url)
            third = upgrade_database(url)
            with psycopg.connect(url) as conn:
                head = conn.execute(
                    "select version_num from autopilot_private.alembic_version"
                ).fetchall()
                history = conn.execute(
                    "select version from supabase_migrations.schema_migrations order by 1"
                ).fetchall()
                table = conn.execute("select to_regclass('autopilot.later')::text").fetchone()
        finally:
            drop_database(server_url, name)
        assert first == [path.name for path in sorted(MIGRATIONS_DIR.glob("*.sql"))]
        assert second == ["29991231000000_later.sql"]
        assert third == []
        assert head == [("29991231000000",)]
        assert [version for (version,) in history][-1] == "29991231000000"
        assert table == ("autopilot.later",)


# Every function of our schemas that anon, authenticated or PUBLIC may execute. A function
# privilege only (USAGE on autopilot_private is withheld too, a second fence).
_EXECUTABLE_BY_API_ROLES = """
    select p.oid::regprocedure::text, r.rolname
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    cross join (values ('anon'), ('authenticated'), ('public')) as r(rolname)
    where n.nspname in ('autopilot', 'autopilot_private')
      and has_function_privilege(r.rolname, p.oid, 'execute')
"""


def _relations(database_url: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            """select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
               where n.nspname = 'autopilot' and c.relkind in ('r', 'p', 'v', 'm')"""
        ).fetchall()
    return [row[0] for row in rows]


class TestAnonKeyLockout:
    @ASYNC
    async def test_anon_key_reads_no_row_of_any_table_or_view(
        self, data_plane: LocalDataPlane, anon_rest: httpx.AsyncClient
    ) -> None:
        relations = _relations(plane_info(data_plane).database_url)
        for relation in relations:
            response = await anon_rest.get(f"/{relation}", params={"limit": "5"})
            refused = response.status_code in (401, 403)
            empty = response.status_code == 200 and response.json() == []
            assert refused or empty, (relation, response.status_code, response.text[:200])

    @ASYNC
    async def test_anon_key_cannot_execute_a_function_it_calls_correctly(
        self, rest: httpx.AsyncClient, anon_rest: httpx.AsyncClient, client: httpx.AsyncClient
    ) -> None:
        # Warm PostgREST's plan cache as the service role first: a cached plan must not
        # carry the service role's privileges over to anon.
        assert (await client.get("/readyz")).status_code == 200
        # Arguments PostgREST resolves to the function (the service key gets an answer),
        # so anon's refusal is a permission denied, never a function not found.
        call = {"p_token_hash": "0" * 64, "p_lifetime_seconds": 60}
        assert (await rest.post("/rpc/resolve_session", json=call)).status_code == 200
        for path, body in (("/rpc/resolve_session", call), ("/rpc/ping", {})):
            response = await anon_rest.post(path, json=body)
            assert response.status_code in (401, 403), (path, response.status_code)
            error = response.json()
            # Refused at the function itself, not at a table its body reads.
            assert error["code"] == "42501", response.text
            assert error["message"].startswith("permission denied for function"), error

    @ASYNC
    async def test_the_http_probe_sees_a_function_granted_to_anon(
        self, data_plane: LocalDataPlane, anon_rest: httpx.AsyncClient
    ) -> None:
        """The probe above is not vacuous: with a grant to anon, the same call succeeds."""
        url = plane_info(data_plane).database_url
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("grant execute on function autopilot.ping() to anon")
        try:
            response = await anon_rest.post("/rpc/ping", json={})
        finally:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("revoke execute on function autopilot.ping() from anon")
        assert response.status_code == 200
        assert response.json() == "ok"

    @ASYNC
    async def test_service_key_can_execute_what_anon_cannot(self, rest: httpx.AsyncClient) -> None:
        response = await rest.post("/rpc/ping", json={})
        assert response.status_code == 200
        assert response.json() == "ok"

    def test_no_function_is_executable_by_anon_authenticated_or_public(
        self, data_plane: LocalDataPlane
    ) -> None:
        with psycopg.connect(plane_info(data_plane).database_url) as conn:
            assert conn.execute(_EXECUTABLE_BY_API_ROLES + " limit 1").fetchall() == []
            (functions,) = conn.execute(
                "select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
                " where n.nspname in ('autopilot', 'autopilot_private')"
            ).fetchone() or (0,)
        assert functions > 40  # the check had something to look at

    def test_the_privilege_check_sees_a_grant(self, data_plane: LocalDataPlane) -> None:
        """Each way a function could leak is found (each granted in a rolled-back transaction)."""
        grants = [
            "grant execute on function autopilot.ping() to anon",
            "grant execute on function autopilot.ping() to authenticated",
            "grant execute on function autopilot_private.fail(integer, text, text, jsonb)"
            " to public",
        ]
        with psycopg.connect(plane_info(data_plane).database_url) as conn:
            for grant in grants:
                conn.execute(grant)  # type: ignore[arg-type]
                assert conn.execute(_EXECUTABLE_BY_API_ROLES).fetchall(), grant
                conn.rollback()

    def test_every_function_pins_an_empty_search_path(self, data_plane: LocalDataPlane) -> None:
        with psycopg.connect(plane_info(data_plane).database_url) as conn:
            unpinned = conn.execute(
                """select p.oid::regprocedure::text
                   from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                   where n.nspname in ('autopilot', 'autopilot_private')
                     and not coalesce(p.proconfig, '{}') @> array['search_path=""']"""
            ).fetchall()
        assert unpinned == []

    def test_nothing_in_the_exposed_schema_is_security_definer(
        self, data_plane: LocalDataPlane
    ) -> None:
        with psycopg.connect(plane_info(data_plane).database_url) as conn:
            definers = conn.execute(
                """select n.nspname, p.proname
                   from pg_proc p join pg_namespace n on n.oid = p.pronamespace
                   where n.nspname in ('autopilot', 'autopilot_private') and p.prosecdef
                   order by 1, 2"""
            ).fetchall()
        # Only the two that must act as the owner, both private (never exposed by PostgREST).
        assert definers == [
            ("autopilot_private", "handle_auth_user_deleted"),
            ("autopilot_private", "prune_session_events"),
        ]

    def test_every_table_has_row_level_security(self, data_plane: LocalDataPlane) -> None:
        with psycopg.connect(plane_info(data_plane).database_url) as conn:
            unprotected = conn.execute(
                """select c.relname from pg_class c join pg_namespace n on n.oid = c.relnamespace
                   where n.nspname = 'autopilot' and c.relkind in ('r', 'p')
                     and not c.relrowsecurity"""
            ).fetchall()
        assert unprotected == []


@ASYNC
class TestMetrics:
    async def test_metrics_count_requests_by_route_template_and_sessions(
        self, client: httpx.AsyncClient, data_plane: LocalDataPlane
    ) -> None:
        await client.post("/api/v1/sessions")
        await client.get("/api/v1/conversations/00000000-0000-0000-0000-000000000000")
        # /metrics is for operators: this app (not local mode) opens it to a METRICS_TOKEN.
        token = "metrics-token-of-the-test"
        async with running_app(make_settings(data_plane, metrics_token=token)) as app:
            async with browser_client(app) as operator:
                scrape = await operator.get(
                    "/metrics", headers={"Authorization": f"Bearer {token}"}
                )
        assert scrape.status_code == 200
        text = scrape.text
        assert (
            'autopilot_http_requests_total{method="POST",route="/api/v1/sessions",status="201"}'
            in text
        )
        assert 'route="/api/v1/conversations/{conversation_id}"' in text
        assert "00000000-0000" not in text
        assert "autopilot_sessions_created_total" in text
        assert "autopilot_http_request_duration_seconds_bucket" in text
