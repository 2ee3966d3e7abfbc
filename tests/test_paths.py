"""The canonical reading of request paths, and the routes it leads to."""

from __future__ import annotations

import pytest

from proxy.paths import IDENTITY, INVALID, NOT_FOUND, Route, canonical_path, route_for
from tests.support.identity_paths import REFUSED_SPELLINGS, TOKEN_SPELLINGS


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/metadata/identity/oauth2/token", "/metadata/identity/oauth2/token"),
        ("/metadata//identity///oauth2/token", "/metadata/identity/oauth2/token"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/.", "/a/b/"),
        ("/a/b/..", "/a/"),
        ("/../../a", "/a"),
        ("/a;x/b;y=1", "/a/b"),
        ("/a%2Fb", "/a/b"),
        ("/a%252Fb", "/a/b"),
        ("/a\\b", "/a/b"),
        ("/A/B", "/A/B"),
        ("/", "/"),
        ("", "/"),
        ("/a/", "/a/"),
    ],
)
def test_canonical_path(raw: str, canonical: str) -> None:
    assert canonical_path(raw) == canonical


@pytest.mark.parametrize(
    "raw",
    [
        "/%C4%B1dentity",  # non-ASCII: a case-folding match could read it as "identity"
        "/a%00b",
        "/a%0Ab",
        "/a b",
        "/a%20b",
        "/%2525252525",  # still encoded after every round
        "/\u0131dentity",
    ],
)
def test_unreadable_paths_have_no_canonical_form(raw: str) -> None:
    assert canonical_path(raw) is None


def test_every_token_spelling_routes_to_the_token_endpoint() -> None:
    assert {target: route_for(target) for target in TOKEN_SPELLINGS} == {
        target: Route("token") for target in TOKEN_SPELLINGS
    }


def test_no_refused_spelling_is_forwarded() -> None:
    for target in REFUSED_SPELLINGS:
        assert route_for(target) in (IDENTITY, INVALID, NOT_FOUND), target


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/metadata/instance?api-version=2021-02-01", "/metadata/instance"),
        ("/metadata/instance/", "/metadata/instance/"),
        ("/METADATA/Instance/compute/userData", "/METADATA/Instance/compute/userData"),
        ("/metadata/attested/document", "/metadata/attested/document"),
        ("/metadata/loadbalancer", "/metadata/loadbalancer"),
        ("/metadata/scheduledevents", "/metadata/scheduledevents"),
        ("/metadata/versions", "/metadata/versions"),
        (
            "/metadata/instance/network/interface/0/ipv4",
            "/metadata/instance/network/interface/0/ipv4",
        ),
        ("http://169.254.169.254/metadata//instance/./compute", "/metadata/instance/compute"),
    ],
)
def test_allowlisted_categories_are_forwarded_canonically(target: str, forwarded: str) -> None:
    assert route_for(target) == Route("metadata", forwarded)


@pytest.mark.parametrize(
    ("target", "route"),
    [
        ("/metadata", NOT_FOUND),
        ("/metadata/", NOT_FOUND),
        ("/metadata/other", NOT_FOUND),
        ("/metadata/instancex", NOT_FOUND),
        ("/metadata/instance/a..b", INVALID),
        ("/metadata/instance/a.", INVALID),
        ("/metadata/instance/x%20y", INVALID),
        ("/readyz", Route("readyz")),
        ("/healthz", Route("healthz")),
        ("/nothing", NOT_FOUND),
    ],
)
def test_everything_else(target: str, route: Route) -> None:
    assert route_for(target) == route


@pytest.mark.parametrize(
    "target",
    [
        "/msi/token?resource=x&api-version=2019-08-01",
        "/msi/token/?resource=x",  # msrestazure appends "/?resource="
        "/MSI/token/",  # App Service itself spelled MSI_ENDPOINT so
        "http://127.0.0.1:8000/msi/token",
    ],
)
def test_app_service_endpoint(target: str) -> None:
    assert route_for(target) == Route("appservice")


def test_app_service_neighbours_are_not_found() -> None:
    assert route_for("/msi/tokens") == NOT_FOUND
    assert route_for("/msi") == NOT_FOUND
