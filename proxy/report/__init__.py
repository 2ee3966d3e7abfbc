"""`imds-proxy report`: which SDKs still call IMDS through this sidecar, and whether it can go."""

from proxy.report.cli import main

__all__ = ["main"]
