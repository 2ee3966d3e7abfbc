"""Projected service-account tokens, written the way kubelet writes them.

The proxy must follow a token file whose path never changes while its target does: kubelet
swaps a ``..data`` symlink atomically on rotation. Reproducing that layout byte for byte is
what lets tests catch a proxy that caches an inode or an open file descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from proxy.devissuer.signing import SigningKey
from proxy.wellknown import TOKEN_EXCHANGE_AUDIENCE

DEFAULT_SUBJECT = "system:serviceaccount:default:workload"
DEFAULT_FILENAME = "azure-identity-token"
DEFAULT_LIFETIME = 3600.0
ROTATE_AT_FRACTION = 0.8
"""kubelet refreshes a projected token once 80% of its lifetime has passed."""

_DATA_DIR = "..data"
_DATA_TMP = "..data_tmp"


def mint_service_account_token(
    key: SigningKey,
    issuer_url: str,
    subject: str = DEFAULT_SUBJECT,
    audience: str = TOKEN_EXCHANGE_AUDIENCE,
    lifetime: float = DEFAULT_LIFETIME,
    *,
    now: float | None = None,
) -> str:
    """A token shaped like kubelet's projected SA token (``aud`` is a list, as there).

    ``now`` lets callers backdate a token, e.g. to produce one that is already expired.
    """
    issued = int(time.time() if now is None else now)
    namespace, _, name = subject.removeprefix("system:serviceaccount:").partition(":")
    claims = {
        "aud": [audience],
        "exp": issued + int(lifetime),
        "iat": issued,
        "nbf": issued,
        "iss": issuer_url,
        "jti": str(uuid.uuid4()),
        "sub": subject,
        "kubernetes.io": {
            "namespace": namespace,
            "serviceaccount": {"name": name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, subject))},
        },
    }
    return key.sign(claims)


def write_projected_token(directory: Path, filename: str, token: str, *, mode: int = 0o644) -> Path:
    """Write ``token`` with kubelet's atomic-writer layout; return the user-visible path.

    Layout: ``..<timestamp>.<rand>/<filename>`` holds the data, ``..data`` links to that
    directory and ``<filename>`` links to ``..data/<filename>``. A rotation writes a new
    timestamped directory, renames a fresh symlink over ``..data`` (atomic), then removes
    the old directory, so a reader resolving the path sees either the old or the new token.
    """
    directory.mkdir(parents=True, exist_ok=True)
    data_link = directory / _DATA_DIR
    old_target = os.readlink(data_link) if data_link.is_symlink() else None

    prefix = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    ts_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    os.chmod(ts_dir, 0o755)
    payload = ts_dir / filename
    fd = os.open(payload, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(token)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(payload, mode)

    tmp_link = directory / _DATA_TMP
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    os.symlink(ts_dir.name, tmp_link)
    os.rename(tmp_link, data_link)

    visible = directory / filename
    if not visible.is_symlink():
        os.symlink(f"{_DATA_DIR}/{filename}", visible)

    if old_target and old_target != ts_dir.name:
        shutil.rmtree(directory / old_target, ignore_errors=True)
    return visible


@dataclass
class ServiceAccountTokenSource:
    """Mints, writes and (optionally) keeps rotating the projected token of one pod.

    Runs on the event loop thread only, so rotations never interleave.
    """

    key: SigningKey
    issuer_url: str
    directory: Path
    filename: str = DEFAULT_FILENAME
    subject: str = DEFAULT_SUBJECT
    audience: str = TOKEN_EXCHANGE_AUDIENCE
    lifetime: float = DEFAULT_LIFETIME
    rotations: int = 0
    next_rotation_at: float = 0.0
    expires_on: int = 0
    _rescheduled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def path(self) -> Path:
        return self.directory / self.filename

    def rotate(self, *, lifetime: float | None = None, subject: str | None = None) -> Path:
        """Mint and atomically write a fresh token; reschedule the automatic rotation.

        A given ``lifetime`` or ``subject`` sticks for later automatic rotations, like a
        changed pod spec would.
        """
        if lifetime is not None:
            if lifetime <= 0:
                raise ValueError("lifetime must be positive")
            self.lifetime = lifetime
        if subject is not None:
            self.subject = subject
        lifetime = self.lifetime
        now = time.time()
        token = mint_service_account_token(
            self.key, self.issuer_url, self.subject, self.audience, lifetime, now=now
        )
        path = write_projected_token(self.directory, self.filename, token)
        self.rotations += 1
        self.expires_on = int(now) + int(lifetime)
        self.next_rotation_at = now + max(ROTATE_AT_FRACTION * lifetime, 1.0)
        self._rescheduled.set()
        return path

    async def auto_rotate(self) -> None:
        """Rotate at 80% of each token's lifetime until cancelled, as kubelet does."""
        while True:
            delay = self.next_rotation_at - time.time()
            if delay <= 0:
                self.rotate()
                continue
            self._rescheduled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._rescheduled.wait(), timeout=delay)
