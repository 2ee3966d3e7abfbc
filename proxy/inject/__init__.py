"""`imds-proxy inject`: add the proxy sidecar (and what the Workload ID webhook adds) to manifests.

For clusters without the webhook's proxy injection, for GitOps repositories that keep the
mutated form, and for endpoint mode, which needs no privileged init container. Every
addition is listed in one annotation on the pod (template), so a second run changes nothing
and `--uninject` removes exactly what was added.
"""
