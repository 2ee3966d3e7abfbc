"""`imds-proxy doctor`: check a pod's Workload ID setup step by step and say how to fix it.

Runs in the proxy's container (`kubectl exec POD -c <proxy container> -- /proxy doctor`)
with the environment the webhook injected, so it sees exactly what the proxy sees.
"""

from proxy.doctor.cli import main

__all__ = ["main"]
