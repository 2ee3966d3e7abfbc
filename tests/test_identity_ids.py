"""Identity specs: what the webhook writes for the proxy is what the proxy reads back."""

from __future__ import annotations

import pytest

from proxy.identity_ids import IdentitySpec, IdentitySpecError, parse_specs

CLIENT = "11111111-2222-3333-4444-555555555555"
OBJECT_ID = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
RESOURCE_ID = "/subscriptions/s/resourcegroups/g/providers/Microsoft.ManagedIdentity/x/id"


@pytest.mark.parametrize(
    "spec",
    [
        IdentitySpec(CLIENT),
        IdentitySpec(CLIENT, object_id=OBJECT_ID),
        IdentitySpec(CLIENT, resource_id=RESOURCE_ID),
        IdentitySpec(CLIENT, OBJECT_ID, RESOURCE_ID),
    ],
)
def test_a_spec_reads_back_as_written(spec: IdentitySpec) -> None:
    assert IdentitySpec.parse("test", str(spec)) == spec


def test_errors_name_their_source() -> None:
    with pytest.raises(IdentitySpecError, match=r"^--identity: .*given twice"):
        parse_specs([("--identity", CLIENT), ("--identity", CLIENT.upper())])
