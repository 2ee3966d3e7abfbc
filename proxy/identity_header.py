"""The App Service endpoint's shared secret: where the expected value comes from, and the check.

App Service gives each app a secret (`IDENTITY_HEADER`, `MSI_SECRET`) that every token
request must echo in a header: a server-side request forgery cannot add headers, so a
forged GET gets no token. The proxy reads the expected value from its own `IDENTITY_HEADER`
or from a file the app containers share (`--identity-header-file`, which wins). The file is
re-read when it changes (looked at no more than once a second), so a rotated secret needs no
restart. The value is compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable

from proxy.logs import get_logger, redact_secret
from proxy.watchedfile import WatchedFile

log = get_logger("proxy.identity_header")
RECHECK_SECONDS = 1.0


class IdentityHeaderSecret:
    """The expected secret, or none: with none, every request is refused."""

    def __init__(
        self,
        value: str | None = None,
        path: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._expected = None if path else _encoded(value)
        self._file = (
            WatchedFile(path, self._parse, min_interval=RECHECK_SECONDS, clock=clock)
            if path
            else None
        )
        self._unreadable = False
        self._current()  # read (and log) the file at start

    @property
    def configured(self) -> bool:
        """Whether any secret is expected now (a missing file means none)."""
        return self._current() is not None

    def matches(self, presented: str | None) -> bool:
        expected = self._current()
        if expected is None or presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected)

    def _current(self) -> bytes | None:
        if self._file is None:
            return self._expected
        try:
            expected = self._file.current()
        except OSError as exc:
            if not self._unreadable:
                log.warning(
                    "identity header file unreadable; the App Service endpoint refuses "
                    "every request until it is back",
                    path=self.path,
                    reason=exc.strerror,
                )
            self._unreadable = True
            return None
        self._unreadable = False
        return expected

    def _parse(self, content: bytes) -> bytes | None:
        expected = _encoded(content.decode("utf-8", "surrogateescape"))
        log.info("identity header file read", path=self.path, empty=expected is None)
        return expected


def _encoded(value: str | None) -> bytes | None:
    value = (value or "").strip()
    if not value:
        return None
    redact_secret(value)  # a malformed request carrying it must not put it in a log line
    return value.encode("utf-8", "surrogateescape")
