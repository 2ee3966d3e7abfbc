"""The projected service-account token file: read when replaced, rotation, expiry, secrecy."""

from __future__ import annotations

import base64
import builtins
import json
import os
from pathlib import Path
from typing import IO, Any

import pytest

from proxy import watchedfile
from proxy.assertion import AssertionSource
from proxy.devissuer.satoken import write_projected_token
from proxy.tokens.errors import CredentialUnavailable
from tests.support.clock import T0, FakeClock
from tests.support.rotation import read_while_rotating

NAME = "azure-identity-token"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(exp: float | None = T0 + 3600, sub: str = "system:serviceaccount:ns:app") -> str:
    claims: dict[str, Any] = {
        "iss": "https://oidc.example.com/",
        "sub": sub,
        "aud": ["api://AzureADTokenExchange"],
    }
    if exp is not None:
        claims["exp"] = int(exp)
    header = b64(json.dumps({"alg": "RS256", "kid": "k1"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.{b64(b'signature-bytes')}"


class OpenCounter:
    """Counts the opens of one path by `proxy.watchedfile` (shadows the builtin there only)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.count = 0

    def __call__(self, file: str, *args: Any, **kwargs: Any) -> IO[Any]:
        if file == self.path:
            self.count += 1
        handle: IO[Any] = builtins.open(file, *args, **kwargs)  # noqa: SIM115 (a wrapper)
        return handle


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def token_path(tmp_path: Path) -> Path:
    return tmp_path / NAME


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch, token_path: Path) -> OpenCounter:
    counter = OpenCounter(token_path)
    monkeypatch.setattr(watchedfile, "open", counter, raising=False)
    return counter


def replace(path: Path, content: str) -> None:
    """Write a new file and rename it over `path`, as an atomic writer does."""
    staging = path.with_name(path.name + ".new")
    staging.write_text(content)
    os.replace(staging, path)


def credential_error(source: AssertionSource) -> str:
    with pytest.raises(CredentialUnavailable) as raised:
        source.current()
    return raised.value.description


# -- failures ----------------------------------------------------------------------------


def test_missing_file(token_path: Path, clock: FakeClock) -> None:
    message = credential_error(AssertionSource(str(token_path), clock))
    assert str(token_path) in message
    assert "does not exist" in message


@pytest.mark.parametrize("content", ["", "\n", "  \n\t"])
def test_empty_file(token_path: Path, clock: FakeClock, content: str) -> None:
    token_path.write_text(content)
    message = credential_error(AssertionSource(str(token_path), clock))
    assert str(token_path) in message
    assert "empty" in message


@pytest.mark.parametrize(
    "content",
    [
        "secret-opaque-credential",
        "secret.two-parts",
        "eyJhbGciOiJSUzI1NiJ9.bm90LWpzb24tc2VjcmV0.c2ln",  # payload is not JSON
        "eyJhbGciOiJSUzI1NiJ9.e.c2ln",  # payload is not base64
        "a.b.c.d-secret",
    ],
)
def test_not_a_jwt(token_path: Path, clock: FakeClock, content: str) -> None:
    token_path.write_text(content)
    message = credential_error(AssertionSource(str(token_path), clock))
    assert str(token_path) in message
    assert "not a JWT" in message
    assert content not in message
    assert "secret" not in message.replace(str(token_path), "")


def test_not_ascii(token_path: Path, clock: FakeClock) -> None:
    token_path.write_bytes("caf\u00e9.secret.token".encode())
    message = credential_error(AssertionSource(str(token_path), clock))
    assert str(token_path) in message
    assert "secret" not in message.replace(str(token_path), "")


def test_a_directory_is_unreadable_not_a_crash(tmp_path: Path, clock: FakeClock) -> None:
    message = credential_error(AssertionSource(str(tmp_path), clock))
    assert str(tmp_path) in message


def test_expired_token(token_path: Path, clock: FakeClock) -> None:
    jwt = make_jwt(exp=T0 - 1)
    token_path.write_text(jwt)
    message = credential_error(AssertionSource(str(token_path), clock))
    assert str(token_path) in message
    assert "expired" in message
    assert jwt not in message
    for part in jwt.split("."):
        assert part not in message


def test_token_expiring_now_is_already_expired(token_path: Path, clock: FakeClock) -> None:
    token_path.write_text(make_jwt(exp=T0))
    with pytest.raises(CredentialUnavailable):
        AssertionSource(str(token_path), clock).current()


def test_cached_token_is_not_used_past_its_exp(
    token_path: Path, clock: FakeClock, opens: OpenCounter
) -> None:
    token_path.write_text(make_jwt(exp=T0 + 600))
    source = AssertionSource(str(token_path), clock)
    assert source.current().expires_at == T0 + 600
    clock.now = T0 + 599
    source.current()
    clock.now = T0 + 600
    with pytest.raises(CredentialUnavailable):
        source.current()
    assert opens.count == 1


# -- reading and re-reading --------------------------------------------------------------


def test_a_valid_file_is_read_once(token_path: Path, clock: FakeClock, opens: OpenCounter) -> None:
    jwt = make_jwt()
    token_path.write_text(jwt + "\n")
    source = AssertionSource(str(token_path), clock)
    for _ in range(5):
        token = source.current()
        assert token.value == jwt
        assert token.expires_at == T0 + 3600
    assert opens.count == 1


def test_a_replaced_file_is_read_again(
    token_path: Path, clock: FakeClock, opens: OpenCounter
) -> None:
    first, second = make_jwt(sub="system:serviceaccount:ns:a"), make_jwt(exp=T0 + 7200)
    token_path.write_text(first)
    source = AssertionSource(str(token_path), clock)
    assert source() == first
    replace(token_path, second)
    assert source() == second
    assert source() == second
    assert opens.count == 2


def test_a_corrupt_signature_is_left_for_entra_to_name(token_path: Path, clock: FakeClock) -> None:
    header, payload, _ = make_jwt().split(".")
    forged = f"{header}.{payload}.{b64(b'signature')[::-1]}-"  # not even base64
    token_path.write_text(forged)
    assert AssertionSource(str(token_path), clock)() == forged


def test_call_returns_the_assertion(token_path: Path, clock: FakeClock) -> None:
    jwt = make_jwt()
    token_path.write_text(jwt)
    source = AssertionSource(str(token_path), clock)
    assert source() == jwt


def test_a_token_without_exp_is_served_with_unknown_expiry(
    token_path: Path, clock: FakeClock
) -> None:
    jwt = make_jwt(exp=None)
    token_path.write_text(jwt)
    token = AssertionSource(str(token_path), clock).current()
    assert token.value == jwt
    assert token.expires_at is None


def test_a_file_that_appears_later_is_picked_up(token_path: Path, clock: FakeClock) -> None:
    source = AssertionSource(str(token_path), clock)
    with pytest.raises(CredentialUnavailable):
        source.current()
    token_path.write_text(make_jwt())
    assert source.current().expires_at == T0 + 3600


def test_a_file_that_turns_bad_is_not_masked_by_the_old_token(
    token_path: Path, clock: FakeClock
) -> None:
    token_path.write_text(make_jwt())
    source = AssertionSource(str(token_path), clock)
    source.current()
    replace(token_path, "")
    with pytest.raises(CredentialUnavailable):
        source.current()
    token_path.unlink()
    with pytest.raises(CredentialUnavailable):
        source.current()


# -- kubelet's projected-volume rotation -------------------------------------------------


def kubelet_write(volume: Path, stamp: str, token: str) -> None:
    """Atomically point `..data` at a new timestamped directory holding `token`."""
    target = volume / f"..{stamp}"
    target.mkdir()
    (target / NAME).write_text(token)
    os.utime(target / NAME, ns=(1_000_000_000, 1_000_000_000))  # equal mtimes: no hint
    staging = volume / "..data_tmp"
    staging.symlink_to(target.name)
    os.rename(staging, volume / "..data")
    link = volume / NAME
    if not link.is_symlink():
        link.symlink_to(f"..data/{NAME}")


def test_kubelet_rotation_is_picked_up_at_the_same_path(
    tmp_path: Path, clock: FakeClock, opens: OpenCounter
) -> None:
    volume = tmp_path
    first = make_jwt(exp=T0 + 3600)
    second = make_jwt(exp=T0 + 7200)
    assert len(first) == len(second)  # same size: only the inode tells them apart
    kubelet_write(volume, "2024_01_01_00_00_00.1", first)
    source = AssertionSource(str(volume / NAME), clock)
    assert source() == first
    assert source() == first
    kubelet_write(volume, "2024_01_01_00_50_00.2", second)
    assert source() == second
    assert source.current().expires_at == T0 + 7200
    assert opens.count == 2


def test_rotation_replaces_an_expired_token(tmp_path: Path, clock: FakeClock) -> None:
    kubelet_write(tmp_path, "2024_01_01_00_00_00.1", make_jwt(exp=T0 + 60))
    source = AssertionSource(str(tmp_path / NAME), clock)
    source.current()
    clock.advance(120)
    with pytest.raises(CredentialUnavailable):
        source.current()
    fresh = make_jwt(exp=T0 + 3720)
    kubelet_write(tmp_path, "2024_01_01_00_02_00.2", fresh)
    assert source() == fresh


# -- secrecy -----------------------------------------------------------------------------


def test_repr_never_shows_the_token(token_path: Path, clock: FakeClock) -> None:
    jwt = make_jwt()
    token_path.write_text(jwt)
    source = AssertionSource(str(token_path), clock)
    token = source.current()
    for text in (repr(source), str(source), repr(token), str(token)):
        assert jwt not in text
        for part in jwt.split("."):
            assert part not in text
    assert "expires_at" in repr(token)


def test_an_absurd_exp_does_not_crash_the_reader(token_path: Path, clock: FakeClock) -> None:
    token_path.write_text(make_jwt(exp=10**400))
    assert AssertionSource(str(token_path), clock).current().expires_at is None


def test_reads_during_rotations_never_fail(tmp_path: Path, clock: FakeClock) -> None:
    """kubelet deletes the old payload directory right after swapping `..data`: a read that
    resolved the old link just before finds no file. The source reads again instead of
    failing the exchange (or flapping readiness) mid-rotation."""
    tokens = [make_jwt(exp=T0 + 3600), make_jwt(exp=T0 + 7200)]
    path = write_projected_token(tmp_path, NAME, tokens[0])
    source = AssertionSource(str(path), clock)

    def read() -> None:
        assert source() in tokens

    problems, reads = read_while_rotating(tmp_path, NAME, tokens, 1000, read)
    assert not problems and reads > 0


def test_a_file_still_missing_after_the_retries_is_reported(
    tmp_path: Path, clock: FakeClock
) -> None:
    source = AssertionSource(str(tmp_path / NAME), clock)
    with pytest.raises(CredentialUnavailable, match="does not exist"):
        source.current()
