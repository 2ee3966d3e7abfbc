"""imds-proxy-init: redirects the pod's IMDS traffic to the proxy with iptables."""
