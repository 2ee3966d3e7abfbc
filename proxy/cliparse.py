"""The argument parser every `imds-proxy` command uses: a mistake is one line and exit 2.

argparse's default prints the whole usage before the error; in a container log or a CI job
the one line that says what was wrong is what gets read. `--help` still prints the usage.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
