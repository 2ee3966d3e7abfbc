"""imds-oidc-proxy: answers IMDS token requests with Entra Workload ID tokens."""

__version__ = "0.1.0"
