"""requests without a character-set guesser: about 2.6 MiB less in every pod.

requests imports charset_normalizer (or chardet) at import time, only to guess the
encoding of a body that declares none. All the proxy reads through requests is Entra ID's
JSON, which requests decodes as UTF-8 without guessing, and requests supports running
with neither library installed. Marking both absent before requests is first imported
keeps them, and their compiled parts, out of memory.
"""

from __future__ import annotations

import sys
import warnings

GUESSERS = ("charset_normalizer", "chardet")
_MISSING_GUESSER = "Unable to find acceptable character detection dependency"


def without_charset_guessing() -> None:
    """Call before requests (or MSAL, which imports it) is imported; later it is a no-op."""
    if "requests" in sys.modules:
        return  # imported already: nothing to save, and not this module's to change
    for name in GUESSERS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # None: import fails
    warnings.filterwarnings("ignore", message=_MISSING_GUESSER)
