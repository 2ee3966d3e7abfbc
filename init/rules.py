"""The redirect as data: settings in, ``iptables-restore`` text out; ``iptables-save`` text in,
"does it match?" out. Pure functions, so every decision here is unit-tested without root.

The rules, in the ``nat`` table, are upstream's (same chain names, so either program can take
over from the other)::

    OUTPUT:              -d METADATA_IP -p tcp --dport METADATA_PORT -j AZWI_PROXY_OUTPUT
    AZWI_PROXY_OUTPUT:   -m owner --uid-owner PROXY_UID -j ACCEPT
                         -j AZWI_PROXY_REDIRECT
    AZWI_PROXY_REDIRECT: -p tcp -j REDIRECT --to-ports PROXY_PORT

They are rendered exactly as ``iptables-save`` prints them (both backends print the same), so
"installed as expected" is a plain comparison of lines.

Idempotence: a restore transaction cannot say "delete this rule if present", so the apply text
is computed from the current ruleset. It re-declares both chains (which empties them) and
deletes *every* OUTPUT rule that jumps to AZWI_PROXY_OUTPUT, whatever its match (copies stacked
by a non-idempotent predecessor, or an older METADATA_IP/PORT), before appending the one jump.
However often it runs, one copy of each rule remains.
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass, field

from init.settings import Settings

TABLE = "nat"
OUTPUT = "OUTPUT"
OUTPUT_CHAIN = "AZWI_PROXY_OUTPUT"
REDIRECT_CHAIN = "AZWI_PROXY_REDIRECT"
OUR_CHAINS = (OUTPUT_CHAIN, REDIRECT_CHAIN)


@dataclass
class NatTable:
    """The ``nat`` table as ``iptables-save`` shows it: chains in order, each with its rules."""

    chains: dict[str, list[str]] = field(default_factory=dict)

    def rules(self, chain: str) -> list[str]:
        return self.chains.get(chain, [])

    def jumps_to_us(self) -> list[str]:
        """OUTPUT rules that jump to our chain, whoever added them."""
        return [rule for rule in self.rules(OUTPUT) if _target(rule) == OUTPUT_CHAIN]


def jump_rule(settings: Settings) -> str:
    return (
        f"-A {OUTPUT} -d {settings.metadata_ip}/32 -p tcp -m tcp"
        f" --dport {settings.metadata_port} -j {OUTPUT_CHAIN}"
    )


def chain_rules(settings: Settings) -> dict[str, list[str]]:
    return {
        OUTPUT_CHAIN: [
            f"-A {OUTPUT_CHAIN} -m owner --uid-owner {settings.proxy_uid} -j ACCEPT",
            f"-A {OUTPUT_CHAIN} -j {REDIRECT_CHAIN}",
        ],
        REDIRECT_CHAIN: [
            f"-A {REDIRECT_CHAIN} -p tcp -j REDIRECT --to-ports {settings.proxy_port}",
        ],
    }


def expected_rules(settings: Settings) -> list[str]:
    """Every rule the program installs, in ``iptables-save`` form (what it prints)."""
    rules = [jump_rule(settings)]
    for chain_body in chain_rules(settings).values():
        rules.extend(chain_body)
    return rules


def render_apply(settings: Settings, current: NatTable | None = None) -> str:
    """The one ``iptables-restore --noflush`` transaction that installs the redirect.

    ``current`` is the table as it is now; None renders for a table without our rules.
    """
    lines = [f"*{TABLE}"]
    lines += [f":{chain} - [0:0]" for chain in OUR_CHAINS]
    if current is not None:
        lines += [_as_delete(rule) for rule in current.jumps_to_us()]
    for chain_body in chain_rules(settings).values():
        lines += chain_body
    lines += [jump_rule(settings), "COMMIT", ""]
    return "\n".join(lines)


def render_cleanup(current: NatTable) -> str | None:
    """The transaction that removes our jump(s) and chains; None when none are present.

    Chains are emptied (re-declared) before ``-X`` because a chain with rules, or one still
    referenced, cannot be deleted. Nothing else in the table is touched.
    """
    present = [chain for chain in OUR_CHAINS if chain in current.chains]
    jumps = current.jumps_to_us()
    if not present and not jumps:
        return None
    lines = [f"*{TABLE}"]
    lines += [f":{chain} - [0:0]" for chain in present]
    lines += [_as_delete(rule) for rule in jumps]
    lines += [f"-X {chain}" for chain in present]
    lines += ["COMMIT", ""]
    return "\n".join(lines)


def mismatches(settings: Settings, current: NatTable) -> list[str]:
    """Why the installed rules differ from the expected ones; empty when they match exactly."""
    problems: list[str] = []
    jumps = current.jumps_to_us()
    want_jump = jump_rule(settings)
    if not jumps:
        problems.append(f"missing in {OUTPUT}: {want_jump}")
    elif jumps != [want_jump]:
        problems.append(
            f"{OUTPUT} should jump to {OUTPUT_CHAIN} once, as {want_jump!r};"
            f" found {len(jumps)}: " + "; ".join(jumps)
        )
    for chain, want in chain_rules(settings).items():
        if chain not in current.chains:
            problems.append(f"chain {chain} is missing")
        elif current.rules(chain) != want:
            have = current.rules(chain)
            problems.append(
                f"chain {chain} holds {'; '.join(have) or 'no rules'} instead of {'; '.join(want)}"
            )
    return problems


def installed_rules(current: NatTable) -> list[str]:
    """Our rules as they are in the table: the jump(s) and both chains' contents."""
    rules = current.jumps_to_us()
    for chain in OUR_CHAINS:
        rules += current.rules(chain)
    return rules


def parse_save(text: str) -> NatTable:
    """Read the ``nat`` section of ``iptables-save`` output; other tables are ignored."""
    table = NatTable()
    in_nat = False
    for raw in text.splitlines():
        line = " ".join(raw.split())
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            in_nat = line == f"*{TABLE}"
        elif not in_nat:
            continue
        elif line == "COMMIT":
            in_nat = False
        elif line.startswith(":"):
            table.chains.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A "):
            chain = line.split()[1]
            table.chains.setdefault(chain, []).append(line)
    return table


def _target(rule: str) -> str | None:
    try:
        words = shlex.split(rule)
    except ValueError:
        words = rule.split()
    for flag, value in itertools.pairwise(words):
        if flag in ("-j", "--jump"):
            return value
    return None


def _as_delete(rule: str) -> str:
    return "-D" + rule.removeprefix("-A")
