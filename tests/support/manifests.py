"""Where the shipped example manifests are, and the Kubernetes schema they are checked
against."""

from __future__ import annotations

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"

# Native sidecars (init containers with restartPolicy: Always) are in the schema from 1.29
# and generally available from 1.33.
K8S_VERSION = "1.33.0"
