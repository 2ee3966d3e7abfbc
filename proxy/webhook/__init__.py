"""`imds-proxy webhook`: a mutating admission webhook that gives pods the proxy from labels.

A second front end of the pod mutation in `proxy.inject.additions` (the first is
`imds-proxy inject`): it reads what a pod asks for (the Workload ID labels and annotations,
a namespace opt-in, the pod-managed identity it used to have), decides, and answers the
AdmissionReview with the JSONPatch from the pod to its mutated form.

Modules: `review` (AdmissionReview in and out), `asks` (labels and annotations), `kube` (the
API reads), `podidentity` (aad-pod-identity carry-over), `mutate` (one review, start to
finish), `certs` (TLS files re-read when replaced), `metrics`, `server`, `settings`, `cli`.
"""
