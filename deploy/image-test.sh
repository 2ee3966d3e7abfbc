#!/usr/bin/env bash
# End-to-end test of the two container images, run as a "pod" on a local Docker engine.
#
#   sudo bash deploy/image-test.sh        (or: make image-test)
#
# What it does, and why each step is there:
#   1. makes sure a Docker engine runs: installs Debian's docker.io if needed and, without
#      systemd, starts dockerd in the background (stopped again at exit);
#   2. builds a Debian bookworm base image with debootstrap (python3, python3-venv,
#      ca-certificates) and imports it, because no image registry may be reachable; the base
#      is cached and reused by later runs;
#   3. builds Dockerfile.proxy and Dockerfile.init on that base, giving the build the host's
#      pip settings and CA bundle as BuildKit secrets so pip reaches the same package index
#      as the host does, without either ending up in an image;
#   4. runs a pod the way the kubelet would: a container holding the network namespace, the
#      init container (NET_ADMIN), a local fake Entra ID, the proxy (read-only root, no
#      capabilities, uid 1501) and an app that calls the IMDS token endpoint exactly as a
#      managed-identity client does; the app must get 200 and an access_token;
#   5. prints both image sizes; everything it started is removed on exit, except the images.
#
# Environment knobs: KEEP_IMAGES=0 also removes the two built images (the base stays cached);
# REBUILD_BASE=1 rebuilds the base image.
# Build-only mode (the cluster tests, tests/cluster/images.py): IMAGE_TEST_BUILD_ONLY=1 with
# IMAGE_EXPORT_DIR=/path builds and checks the images as above, then `docker save`s the base,
# proxy and init images to /path/{base,proxy,init}.tar and stops there (no Docker pod run).
set -euo pipefail

cd "$(dirname "$0")/.."

BASE_IMAGE=imds-proxy-base:bookworm
PROXY_IMAGE=imds-proxy:image-test
INIT_IMAGE=imds-proxy-init:image-test
PROXY_PORT=8000
ISSUER_PORT=8443
RUN_ID="imds-image-test-$$"
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/imds-image-test.XXXXXX")

started_dockerd=""
secrets_dir=""

log() { printf '[image-test %4ss] %s\n' "$SECONDS" "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}

cleanup() {
    local status=$?
    set +e
    if [ "$status" -ne 0 ] && docker info >/dev/null 2>&1; then
        # Leave the evidence in the output before the containers go.
        for c in issuer proxy; do
            if docker container inspect "$RUN_ID-$c" >/dev/null 2>&1; then
                log "logs of $c:"
                docker logs --tail 40 "$RUN_ID-$c" 2>&1 | sed 's/^/    /'
            fi
        done
    fi
    if docker info >/dev/null 2>&1; then
        local ids
        ids=$(docker ps -aq --filter "label=imds-image-test=$RUN_ID")
        # shellcheck disable=SC2086 # one argument per id
        [ -z "$ids" ] || docker rm -f $ids >/dev/null
        docker volume rm "$RUN_ID-issuer" >/dev/null 2>&1
        docker network rm "$RUN_ID-net" >/dev/null 2>&1
        if [ "${KEEP_IMAGES:-1}" = 0 ]; then
            docker image rm "$PROXY_IMAGE" "$INIT_IMAGE" >/dev/null 2>&1
        fi
    fi
    [ -z "$secrets_dir" ] || rm -rf "$secrets_dir"
    if [ -n "$started_dockerd" ]; then
        log "stopping the dockerd this script started (pid $started_dockerd)"
        kill "$started_dockerd" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
    fi
    if [ "$status" -eq 0 ]; then
        rm -rf "$LOG_DIR"
        log "PASS (${SECONDS}s)"
    else
        log "build and daemon logs kept in $LOG_DIR"
    fi
    exit "$status"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail "run as root: it installs packages, runs dockerd and debootstrap"

apt_install() {
    log "apt-get install $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- 1. a Docker engine -------------------------------------------------------------------
ensure_docker() {
    if docker info >/dev/null 2>&1; then
        return
    fi
    command -v dockerd >/dev/null 2>&1 || apt_install docker.io
    if [ -d /run/systemd/system ]; then
        log "starting docker with systemd"
        systemctl start docker
    else
        # No init system to own it: run it in the background with its own log, and stop it
        # at exit. The defaults (overlay2, cgroupfs, iptables NAT) work in a VM-like sandbox.
        log "starting dockerd (log: $LOG_DIR/dockerd.log)"
        nohup dockerd >"$LOG_DIR/dockerd.log" 2>&1 &
        started_dockerd=$!
    fi
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && return
        if [ -n "$started_dockerd" ] && ! kill -0 "$started_dockerd" 2>/dev/null; then
            tail -n 20 "$LOG_DIR/dockerd.log" >&2
            fail "dockerd exited"
        fi
        sleep 1
    done
    fail "docker did not become ready within 60s"
}

# The Dockerfiles need BuildKit (build secrets). Clients from 23.0 on delegate it to the
# buildx plugin; older clients (Debian bookworm's docker.io 20.10) have it built in.
pick_builder() {
    if docker buildx version >/dev/null 2>&1; then
        BUILD=(docker buildx build --load)
        return
    fi
    local client version
    for client in $(type -ap docker) /usr/bin/docker; do
        [ -x "$client" ] || continue
        version=$("$client" version --format '{{.Client.Version}}' 2>/dev/null || true)
        if [ -n "$version" ] && [ "${version%%.*}" -lt 23 ]; then
            BUILD=(env DOCKER_BUILDKIT=1 "$client" build)
            return
        fi
    done
    fail "no docker client can use BuildKit: install the buildx plugin (docker-buildx)"
}

# --- 2. the base image ------------------------------------------------------------------
# The first Debian mirror the host's apt uses (deb822 or one-line format), so debootstrap
# fetches from where apt already can; empty lets debootstrap use its own default.
host_debian_mirror() {
    local files=(/etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list)
    local f
    for f in "${files[@]}"; do
        [ -f "$f" ] || continue
        awk '
            /^URIs:/ && $2 !~ /security/ { print $2; exit }
            /^deb[ \t]/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { if ($i !~ /security/) { print $i; exit } else break } }
        ' "$f"
    done | head -n 1
}

build_base() {
    if [ "${REBUILD_BASE:-0}" != 1 ] && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE is cached"
        return
    fi
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local rootfs mirror
    rootfs=$(mktemp -d "${TMPDIR:-/tmp}/imds-base-rootfs.XXXXXX")
    mirror=$(host_debian_mirror)
    log "debootstrap bookworm ${mirror:-(default mirror)} (log: $LOG_DIR/debootstrap.log)"
    if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" ${mirror:+"$mirror"} >"$LOG_DIR/debootstrap.log" 2>&1; then
        tail -n 20 "$LOG_DIR/debootstrap.log" >&2
        rm -rf "$rootfs"
        fail "debootstrap failed"
    fi
    # Slim it the way Debian's own container images are: no documentation, manual pages or
    # translations (but keep the copyright files), now and for packages installed later;
    # no package caches (apt-get update refills the lists when a build needs them).
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/01-container-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
        "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
    # An imported image has no config: give it the PATH and locale a Debian image has, so
    # `ENV PATH=/opt/venv/bin:$PATH` in the Dockerfiles extends the usual PATH.
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    log "imported $BASE_IMAGE"
}

# --- 3. the images ----------------------------------------------------------------------
# The host's pip settings that reach the network, as a pip.conf for the build: the index,
# extra indexes and trusted hosts (environment over files, as pip does). Local paths
# (file:// indexes, find-links directories, constraint files) mean nothing in a build.
write_pip_secrets() {
    secrets_dir=$(mktemp -d "${TMPDIR:-/tmp}/imds-build-secrets.XXXXXX")
    chmod 700 "$secrets_dir"
    local pip_list=""
    if python3 -m pip --version >/dev/null 2>&1; then
        pip_list=$(python3 -m pip config list 2>/dev/null || true)
    fi
    PIP_LIST="$pip_list" python3 - "$secrets_dir/pip.conf" <<'PY'
import os
import re
import sys

wanted = ("index-url", "extra-index-url", "trusted-host", "timeout", "retries")
values: dict[str, str] = {}
# `pip config list` prints files first and `:env:.` entries (PIP_* variables) after them.
for line in os.environ["PIP_LIST"].splitlines():
    m = re.fullmatch(r"([^.]*)\.([a-z-]+)='(.*)'", line.strip())
    if m and m.group(1) in ("global", "install", "download", "wheel", ":env:"):
        key = "timeout" if m.group(2) == "default-timeout" else m.group(2)
        if key in wanted:
            values[key] = m.group(3)
for key in ("index-url", "extra-index-url"):
    if key in values:
        urls = [u for u in values[key].split() if not u.startswith("file:")]
        if urls:
            values[key] = " ".join(urls)
        else:
            del values[key]
with open(sys.argv[1], "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
PY
    # The CA bundle pip trusts on the host (its cert setting, else the system bundle).
    local cert
    cert=$(sed -n "s/^\(global\|:env:\)\.cert='\(.*\)'$/\2/p" <<<"$pip_list" | tail -n 1)
    cert=${cert:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
    SECRET_ARGS=(--secret "id=pip_conf,src=$secrets_dir/pip.conf")
    if [ -s "$cert" ]; then
        cp "$cert" "$secrets_dir/ca.pem"
        SECRET_ARGS+=(--secret "id=ca_bundle,src=$secrets_dir/ca.pem")
    fi
    # Docker's predefined proxy build arguments, if the host uses a proxy (not kept in history).
    local var
    for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
        [ -z "${!var:-}" ] || SECRET_ARGS+=(--build-arg "$var")
    done
}

build_image() {
    local dockerfile=$1 tag=$2 logfile
    logfile="$LOG_DIR/build-$(basename "$dockerfile").log"
    log "building $tag from $dockerfile (log: $logfile)"
    if ! "${BUILD[@]}" --progress=plain -f "$dockerfile" -t "$tag" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${SECRET_ARGS[@]}" . >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2
        fail "building $dockerfile failed"
    fi
}

# Cheap checks of the image contract before running anything.
check_images() {
    local user entrypoint
    user=$(docker image inspect -f '{{.Config.User}}' "$PROXY_IMAGE")
    [ "$user" = "1501:1501" ] || fail "proxy image user is '$user', expected 1501:1501"
    entrypoint=$(docker image inspect -f '{{json .Config.Entrypoint}}' "$PROXY_IMAGE")
    [ "$entrypoint" = '["/proxy"]' ] || fail "proxy image entrypoint is $entrypoint"
    local image
    for image in "$PROXY_IMAGE" "$INIT_IMAGE"; do
        # FROM scratch: there is no shell to start, so this must fail.
        if docker run --rm --label "imds-image-test=$RUN_ID" --entrypoint /bin/sh "$image" \
            -c true >/dev/null 2>&1; then
            fail "$image starts /bin/sh"
        fi
        # No shell, installer or compiler anywhere, and every installed module imports
        # with the trimmed standard library (deploy/image/check_image.py).
        log "$image: checking from inside (deploy/image/check_image.py)"
        local status=0
        docker run --rm --label "imds-image-test=$RUN_ID" --read-only --cap-drop ALL \
            --user 1501:1501 --entrypoint python3 "$image" \
            -c "$(cat deploy/image/check_image.py)" 2>&1 | sed 's/^/    /' || status=$?
        [ "$status" = 0 ] || fail "$image: the check found what is listed above"
    done
    docker run --rm --label "imds-image-test=$RUN_ID" --read-only --cap-drop ALL \
        "$PROXY_IMAGE" --help >/dev/null || fail "/proxy --help failed in the proxy image"
    for backend in nft legacy; do
        docker run --rm --label "imds-image-test=$RUN_ID" --entrypoint "iptables-$backend" \
            "$INIT_IMAGE" --version >/dev/null \
            || fail "the init image lacks the iptables-$backend backend"
    done
    log "image contract checks passed"
}

# --- 4. the pod -------------------------------------------------------------------------
run_pod() {
    local label=(--label "imds-image-test=$RUN_ID")
    local pod="$RUN_ID-pod"

    # The pod's network namespace, held by a sleeping container as a pause container does.
    # An internal network: loopback and eth0 like a pod, but no way out, so a request that
    # escapes the redirect can never reach a real metadata service and pass by accident.
    docker network create --internal "${label[@]}" "$RUN_ID-net" >/dev/null
    docker run -d --name "$pod" "${label[@]}" --network "$RUN_ID-net" \
        "$BASE_IMAGE" sleep infinity >/dev/null
    # A node routes 169.254.169.254 (the init program checks for a route: connect() needs one
    # before the nat table is consulted). Here it goes into a veth pair whose other end leads
    # nowhere, so anything not redirected to the proxy is silently dropped. Set up from the
    # host, as a CNI plugin would. (veth, not dummy: it is what Docker itself needs, so the
    # kernel surely has it.)
    if ! command -v nsenter >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
        apt_install iproute2 util-linux
    fi
    local pid
    pid=$(docker inspect -f '{{.State.Pid}}' "$pod")
    nsenter -t "$pid" -n sh -c '
        ip link add imds0 type veth peer name imds0-void &&
        ip link set imds0-void up &&
        ip link set imds0 up &&
        ip route add 169.254.169.254/32 dev imds0' || fail "cannot route 169.254.169.254 in the pod"

    log "init container: imds-proxy-init with PROXY_PORT=$PROXY_PORT"
    if ! docker run --rm --name "$RUN_ID-init" "${label[@]}" --network "container:$pod" \
        --cap-add NET_ADMIN -e "PROXY_PORT=$PROXY_PORT" "$INIT_IMAGE" 2>&1 | sed 's/^/    /'; then
        fail "the init container failed"
    fi

    # The fake Entra ID on the pod's loopback; its workdir (CA bundle, service-account token)
    # is a volume the proxy mounts read-only, like the projected token volume.
    docker volume create "${label[@]}" "$RUN_ID-issuer" >/dev/null
    docker run --rm "${label[@]}" -v "$RUN_ID-issuer:/issuer" "$BASE_IMAGE" \
        chown 1501:1501 /issuer
    docker run -d --name "$RUN_ID-issuer" "${label[@]}" --network "container:$pod" \
        --user 1501:1501 --cap-drop ALL -v "$RUN_ID-issuer:/issuer" \
        --entrypoint python3 "$PROXY_IMAGE" \
        -m proxy.devissuer --host 127.0.0.1 --port "$ISSUER_PORT" --workdir /issuer >/dev/null
    local info=""
    for _ in $(seq 30); do
        info=$(docker logs "$RUN_ID-issuer" 2>/dev/null | grep -m 1 '^{' || true)
        [ -n "$info" ] && break
        docker container inspect -f '{{.State.Running}}' "$RUN_ID-issuer" | grep -q true \
            || fail "the fake Entra ID exited"
        sleep 1
    done
    [ -n "$info" ] || fail "the fake Entra ID printed no settings line within 30s"
    local env_args
    mapfile -t env_args < <(python3 -c '
import json, sys
info = json.loads(sys.argv[1])
for name, key in (("AZURE_AUTHORITY_HOST", "authority_host"), ("AZURE_TENANT_ID", "tenant_id"),
                  ("AZURE_CLIENT_ID", "client_id"), ("AZURE_FEDERATED_TOKEN_FILE", "token_file"),
                  ("REQUESTS_CA_BUNDLE", "ca_bundle")):
    print(f"--env={name}={info[key]}")
' "$info")
    log "fake Entra ID up: ${env_args[*]}"

    # The proxy exactly as the webhook injects it: read-only, no capabilities, uid 1501.
    docker run -d --name "$RUN_ID-proxy" "${label[@]}" --network "container:$pod" \
        --read-only --cap-drop ALL --security-opt no-new-privileges --user 1501:1501 \
        -v "$RUN_ID-issuer:/issuer:ro" "${env_args[@]}" \
        "$PROXY_IMAGE" "--proxy-port=$PROXY_PORT" --log-level=info >/dev/null
    # The webhook's postStart hook.
    docker exec "$RUN_ID-proxy" /proxy --probe "--proxy-port=$PROXY_PORT" \
        || fail "the postStart probe (/proxy --probe) failed"
    log "proxy ready (postStart probe passed)"

    # The app: an unchanged managed-identity client, not root and not uid 1501.
    log "app: GET http://169.254.169.254/metadata/identity/oauth2/token (Metadata: true)"
    docker run --rm --name "$RUN_ID-app" "${label[@]}" --network "container:$pod" \
        --user 1000:1000 "$BASE_IMAGE" python3 -c '
import json, sys, urllib.error, urllib.request
url = ("http://169.254.169.254/metadata/identity/oauth2/token"
       "?api-version=2018-02-01&resource=https://management.azure.com/")
req = urllib.request.Request(url, headers={"Metadata": "true"})
try:
    with urllib.request.urlopen(req, timeout=15) as resp:
        status, body = resp.status, resp.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError as e:  # refused, timed out: the redirect or the proxy is not there
    sys.exit(f"    no answer: {e}")
print(f"    status {status}")
try:
    doc = json.loads(body)
except ValueError:
    sys.exit(f"    not JSON: {body[:200]!r}")
# Everything but the token itself.
print("    " + json.dumps({k: v for k, v in doc.items() if k != "access_token"}))
if status != 200 or not doc.get("access_token"):
    sys.exit("    expected 200 with an access_token")
token = doc["access_token"]
print(f"    access_token: {len(token)} characters")
' || fail "the app did not get a token through the proxy"
}

# Uncompressed sizes, as `docker images` shows them; each image has a budget (issue 13).
PROXY_LIMIT_MB=80
INIT_LIMIT_MB=100
report_sizes() {
    local image size limit over=""
    for image in "$BASE_IMAGE" "$PROXY_IMAGE" "$INIT_IMAGE"; do
        size=$(docker image inspect -f '{{.Size}}' "$image")
        case $image in
            "$PROXY_IMAGE") limit=$PROXY_LIMIT_MB ;;
            "$INIT_IMAGE") limit=$INIT_LIMIT_MB ;;
            *) limit="" ;;
        esac
        log "$(awk -v i="$image" -v s="$size" -v l="$limit" 'BEGIN {
            printf "%-28s %6.1f MB", i, s / 1e6; if (l != "") printf " (limit %d MB)", l }')"
        if [ -n "$limit" ] && [ "$size" -gt $((limit * 1000000)) ]; then
            over="$over $image"
        fi
    done
    [ -z "$over" ] || fail "over the size limit:$over"
}

# --- build-only mode: the images as tarballs for another runtime (IMAGE_TEST_BUILD_ONLY) ---
export_images() {
    [ -n "${IMAGE_EXPORT_DIR:-}" ] || fail "IMAGE_TEST_BUILD_ONLY=1 needs IMAGE_EXPORT_DIR"
    mkdir -p "$IMAGE_EXPORT_DIR"
    local name image
    for name in base proxy init; do
        case $name in
            base) image=$BASE_IMAGE ;;
            proxy) image=$PROXY_IMAGE ;;
            init) image=$INIT_IMAGE ;;
        esac
        docker save -o "$IMAGE_EXPORT_DIR/$name.tar.part" "$image" || fail "docker save $image"
        mv "$IMAGE_EXPORT_DIR/$name.tar.part" "$IMAGE_EXPORT_DIR/$name.tar"
        docker image inspect -f '{{.Id}}' "$image" >"$IMAGE_EXPORT_DIR/$name.id"
        log "saved $image to $IMAGE_EXPORT_DIR/$name.tar"
    done
}

ensure_docker
pick_builder
build_base
write_pip_secrets
build_image Dockerfile.proxy "$PROXY_IMAGE"
build_image Dockerfile.init "$INIT_IMAGE"
report_sizes
check_images
if [ "${IMAGE_TEST_BUILD_ONLY:-0}" = 1 ]; then
    export_images
    exit 0
fi
run_pod
