"""Finding and running ``iptables-save`` / ``iptables-restore`` for the right backend.

The kernel has two independent rule stores: nf_tables (``iptables-nft``, Debian's default) and
the legacy x_tables (``iptables-legacy``). Rules written to one are invisible in the other, so
a redirect installed with the wrong one can silently lose to rules in the other. The choice
follows kube-proxy's iptables-wrapper and istio: ``IPTABLES_BACKEND`` forces one; otherwise the
backend that already holds more rules wins (nft on a tie), and with no rules anywhere
``iptables-nft`` if it works, else ``iptables-legacy``, else whatever plain ``iptables`` is.
A backend that cannot even be read here (e.g. legacy without CAP_NET_RAW) does not count.

Binaries are looked up on ``PATH`` only, as a shell script would.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from init.settings import Backend

# Generous for a busy node, short enough that a wedged binary fails the init container.
TIMEOUT_SECONDS = 30.0
# How long iptables-legacy may wait for the xtables lock held by another writer.
LOCK_WAIT_SECONDS = 5

_PERMISSION_HINTS = ("permission denied", "operation not permitted", "you must be root")


class IptablesError(Exception):
    """An iptables command failed; the message is one line for the log."""


class IptablesNotFound(IptablesError):
    """No usable iptables binary on PATH."""


class IptablesPermissionDenied(IptablesError):
    """iptables was refused by the kernel: not root, or no CAP_NET_ADMIN."""


@dataclass(frozen=True)
class Iptables:
    """One backend's save/restore pair. ``name`` is "nft", "legacy" or "iptables" (plain)."""

    name: str
    save: str
    restore: str

    @property
    def label(self) -> str:
        """The command's name as a user would type it, for messages."""
        return _command(self.name)

    def save_nat(self) -> str:
        """The current ``nat`` table in ``iptables-save`` format."""
        return _run([self.save, "-t", "nat"], stdin=None)

    def restore_noflush(self, text: str) -> None:
        """Apply ``text`` as one transaction: all of it or, on any error, none of it."""
        _run([self.restore, "--noflush", f"--wait={LOCK_WAIT_SECONDS}"], stdin=text)


CAP_NET_ADMIN = 12


def has_net_admin(status_path: str = "/proc/self/status") -> bool | None:
    """Whether this process may change netfilter rules; None when it cannot tell.

    Checked up front so that "not root" is one clear line instead of an iptables error.
    """
    try:
        with open(status_path, encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def find(name: str, which: Callable[[str], str | None] = shutil.which) -> Iptables | None:
    """The backend's binaries, or None when either is missing."""
    prefix = _command(name)
    save, restore = which(f"{prefix}-save"), which(f"{prefix}-restore")
    if save is None or restore is None:
        return None
    return Iptables(name=name, save=save, restore=restore)


def rule_count(iptables: Iptables) -> int | None:
    """How many rules the backend holds in all its tables; None when it does not work here."""
    try:
        text = _run([iptables.save], stdin=None)
    except IptablesError:
        # Permission errors included: iptables-legacy also needs CAP_NET_RAW, which a container
        # given only NET_ADMIN lacks, and that must not stop nft from being used.
        return None
    return sum(1 for line in text.splitlines() if line.startswith("-A "))


def choose(counts: Mapping[Backend, int | None]) -> Backend | None:
    """Pick among working backends (count not None): most rules first, nft on a tie."""
    working = {name: count for name, count in counts.items() if count is not None}
    if not working:
        return None
    order: tuple[Backend, ...] = ("nft", "legacy")
    return max(
        (name for name in order if name in working),
        key=lambda name: (working[name], name == "nft"),
    )


def discover(
    forced: Backend | None,
    which: Callable[[str], str | None] = shutil.which,
    probe: Callable[[Iptables], int | None] = rule_count,
) -> Iptables:
    """The backend to use; raise IptablesNotFound when there is none."""
    if forced is not None:
        found = find(forced, which)
        if found is None:
            raise IptablesNotFound(
                f"IPTABLES_BACKEND={forced} but iptables-{forced}-save/-restore are not on PATH"
            )
        return found
    candidates: dict[Backend, Iptables] = {}
    for name in ("nft", "legacy"):
        found = find(name, which)
        if found is not None:
            candidates[name] = found
    picked = choose({name: probe(found) for name, found in candidates.items()})
    if picked is not None:
        return candidates[picked]
    plain = find("iptables", which)
    if plain is None:
        raise IptablesNotFound(
            "no iptables on PATH: need iptables-nft-save/-restore, iptables-legacy-save/-restore"
            " or iptables-save/-restore (Debian package 'iptables')"
        )
    return plain


def _command(name: str) -> str:
    return "iptables" if name == "iptables" else f"iptables-{name}"


def _run(argv: list[str], stdin: str | None) -> str:
    try:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_SECONDS,
            check=False,
        )
    except FileNotFoundError:
        raise IptablesNotFound(f"{argv[0]} not found") from None
    except PermissionError:
        raise IptablesPermissionDenied(f"{argv[0]}: not allowed to execute") from None
    except subprocess.TimeoutExpired:
        raise IptablesError(f"{argv[0]} did not finish within {TIMEOUT_SECONDS:.0f} s") from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.split()) or f"exit status {done.returncode}"
        message = f"{' '.join(argv)} failed: {detail}"
        if any(hint in detail.lower() for hint in _PERMISSION_HINTS):
            raise IptablesPermissionDenied(message)
        raise IptablesError(message)
    return done.stdout
