"""Dockerfile.tools' builder is a copy of Dockerfile.proxy's: the two must not drift apart.

A Dockerfile cannot include another, so the tools image repeats the sidecar's builder steps
with its own image name. Here: every step up to the wheel of the image's own code is the same
(so the secrets handling stays one, and the layers up to the requirements are shared), and the
final stages agree on what makes them FROM scratch images without a shell.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions(dockerfile: str) -> list[str]:
    """The instructions, comments dropped and continued lines joined, spaces collapsed."""
    text = (ROOT / dockerfile).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [" ".join(line.split()) for line in joined.splitlines() if line.strip()]


def stages(dockerfile: str) -> tuple[list[str], list[str]]:
    steps = instructions(dockerfile)
    final = steps.index("FROM scratch")
    return steps[:final], steps[final:]


def test_the_tools_builder_is_the_proxy_builder_for_the_tools_image() -> None:
    proxy, _ = stages("Dockerfile.proxy")
    tools, _ = stages("Dockerfile.tools")
    as_tools = [step.replace("distribution.py proxy ", "distribution.py tools ") for step in proxy]
    shared = as_tools.index("COPY proxy/ proxy/") + 2  # and the image's own wheel
    assert tools[:shared] == as_tools[:shared]
    assert any("imds-oidc-proxy-tools" in step for step in tools[shared:])
    assert tools[-1] == "RUN python3 /src/rootfs.py --dest /rootfs --venv /opt/venv --strip-debug"


def test_the_tools_image_is_built_like_the_others() -> None:
    _, proxy = stages("Dockerfile.proxy")
    _, tools = stages("Dockerfile.tools")
    assert tools[:3] == proxy[:3]  # FROM scratch, the rootfs, the same environment
    assert "USER 65532:65532" in tools
    assert 'ENTRYPOINT ["imds-proxy"]' in tools
