"""What IMDS callers depend on (../shared/IMDS-COMPAT.md), for assertions in several tests."""

from __future__ import annotations

TOKEN_FIELDS = (
    "access_token",
    "client_id",
    "expires_in",
    "expires_on",
    "ext_expires_in",
    "not_before",
    "resource",
    "token_type",
)
"""The success body's keys, in IMDS's order; every value is a string."""
