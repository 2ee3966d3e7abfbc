"""Real processes the tests and the benchmarks drive alike: the proxy, the fake Entra ID
(the dev issuer as its own process), a loopback stand-in for IMDS, and the shared install
for processes run as another uid. Not part of any image or wheel."""
