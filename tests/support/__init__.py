"""What the test modules share: stand-ins (ARM, kube, IMDS callers), the SDK clients'
builds, network namespaces, the in-process server, and the fixtures that
`tests/conftest.py` registers (`pytest_plugins`). Test modules import from here, never
from each other."""
