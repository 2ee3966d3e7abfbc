"""A local stand-in for Microsoft Entra ID, reached over real TLS through MSAL.

Used by ``imds-proxy dev`` (in-process, :class:`proxy.devissuer.server.LocalIssuer`) and by
the test suite (``python -m proxy.devissuer`` as a separate process).
"""
