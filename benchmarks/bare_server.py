"""The ceiling: an aiohttp server that does nothing but answer a constant body.

Same framework, same core and the same response size as the proxy's token answer. On
asyncio's own loop it is the ceiling the proxy is held to; `--uvloop` runs it on the loop
the proxy picks when uvloop is installed, to show how much of the proxy's lead that is.

    python -m benchmarks.bare_server --port P --body-size N
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aiohttp import web

from proxy.imds import TOKEN_PATH


def constant_body(size: int) -> bytes:
    """A JSON object of exactly `size` bytes, shaped like a token answer."""
    empty = b'{"access_token":""}'
    if size < len(empty):
        raise ValueError(f"body size must be at least {len(empty)} bytes")
    return empty[:-2] + b"x" * (size - len(empty)) + empty[-2:]


def create_app(body: bytes) -> web.Application:
    """One route, one handler, the body and headers built once."""
    headers = {"Content-Type": "application/json"}

    async def token(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    app.router.add_get(TOKEN_PATH, token)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-size", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="on uvloop, for comparison")
    args = parser.parse_args(argv)
    app = create_app(constant_body(args.body_size))
    loop = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None, loop=loop)


if __name__ == "__main__":
    main()
