"""The one copy of the catalogue SQL keeps: the phase enum. Its labels are the Python
catalogue's phases, in order, so a phase added in Python fails here until the enum has it."""

from __future__ import annotations

import psycopg

from autopilot_api.discovery.catalogue import PHASE_NAMES
from autopilot_api.local.dataplane import LocalDataPlane
from tests.conftest import plane_info


def test_the_catalogues_phases_are_the_sql_enums_labels(data_plane: LocalDataPlane) -> None:
    with psycopg.connect(plane_info(data_plane).database_url) as conn:
        row = conn.execute("select enum_range(null::autopilot.session_phase)::text[]").fetchone()
    assert row is not None
    assert tuple(row[0]) == PHASE_NAMES
