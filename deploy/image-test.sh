#!/usr/bin/env bash
# End-to-end test of the container images (sidecar, init and tools), for amd64 and arm64, the
# first two run as a "pod" on a local Docker engine.
#
#   sudo bash deploy/image-test.sh        (or: make image-test)
#
# What it does, and why each step is there:
#   1. makes sure a Docker engine runs: installs Debian's docker.io if needed and, without
#      systemd, starts dockerd in the background (stopped again at exit); for an architecture
#      other than the host's, installs qemu-user-static and registers its binfmt_misc handler
#      (unregistered again at exit if this script registered it);
#   2. builds a Debian bookworm base image per architecture with debootstrap (python3,
#      python3-venv, ca-certificates; for a foreign architecture `--foreign` and the second
#      stage under emulation) and loads it, because no image registry may be reachable; each
#      base is cached as an image and as an archive in $IMAGE_CACHE_DIR, reused by later runs;
#   3. builds Dockerfile.proxy, Dockerfile.init and Dockerfile.tools for each architecture on
#      its base
#      (`--platform`; RUN steps of a foreign one run under emulation), giving the build the
#      host's pip settings and CA bundle as BuildKit secrets so pip reaches the same package
#      index as the host does, without either ending up in an image;
#   4. checks each image: the contract (user, entrypoint, no shell, everything imports:
#      deploy/image/check_image.py, what the image must not carry), every ELF file of the
#      architecture with all it loads inside the image (deploy/image/elf_check.py), the size;
#      the tools image's `imds-proxy webhook --help` and `inject --help`, and its webhook
#      started as the Deployment starts it (uid 65532, read-only, no capabilities, a generated
#      certificate, an API server that is not there): /healthz over TLS, /metrics, SIGTERM;
#   5. assembles a multi-architecture image index per image (an OCI archive in
#      $IMAGE_CACHE_DIR/index/, deploy/image/oci_index.py): one reference for both, which
#      skopeo (installed if needed) must resolve to each architecture's image;
#   6. runs a pod per architecture the way the kubelet would: a container holding the network
#      namespace, the init container (NET_ADMIN), a local fake Entra ID, the proxy (read-only
#      root, no capabilities, uid 1501) and an app that calls the IMDS token endpoint exactly
#      as a managed-identity client does; the app must get 200 and an access_token from the
#      proxy of that architecture, whose machine is printed beside it;
#   7. prints all image sizes; everything it started is removed on exit, except the images.
#
# Environment knobs:
#   IMAGE_TEST_ARCHES="amd64 arm64"  the architectures to build and run (one alone: "arm64");
#   IMAGE_TEST_BUILD_ONLY=1          build the host architecture's proxy and init images only
#                                    (not tools), tagged imds-proxy:image-test and
#                                    imds-proxy-init:image-test, no pod; with
#                                    IMAGE_EXPORT_DIR=DIR, `docker save` them to DIR/proxy.tar
#                                    and DIR/init.tar (to load into a cluster);
#   IMAGE_CACHE_DIR                  the base archives and indexes (/var/cache/imds-oidc-proxy-images);
#   KEEP_IMAGES=0                    also remove the built images (the bases stay cached);
#   REBUILD_BASE=1                   rebuild the base images.
set -euo pipefail

cd "$(dirname "$0")/.."

PROXY_PORT=8000
ISSUER_PORT=8443
RUN_ID="imds-image-test-$$"
LOG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/imds-image-test.XXXXXX")
IMAGE_CACHE_DIR=${IMAGE_CACHE_DIR:-/var/cache/imds-oidc-proxy-images}

case "$(uname -m)" in
    x86_64) HOST_ARCH=amd64 ;;
    aarch64) HOST_ARCH=arm64 ;;
    *) HOST_ARCH=$(uname -m) ;;
esac
BUILD_ONLY=${IMAGE_TEST_BUILD_ONLY:-0}
if [ "$BUILD_ONLY" = 1 ]; then
    ARCHES=$HOST_ARCH
else
    ARCHES=${IMAGE_TEST_ARCHES:-amd64 arm64}
fi

# Image names: one tag per architecture; the host's images are also tagged without a suffix
# (what the build-only mode saves and the cluster tier loads).
base_image() { echo "imds-proxy-base:bookworm-$1"; }
proxy_image() { echo "imds-proxy:image-test-$1"; }
init_image() { echo "imds-proxy-init:image-test-$1"; }
tools_image() { echo "imds-proxy-tools:image-test-$1"; }
PROXY_IMAGE=imds-proxy:image-test
INIT_IMAGE=imds-proxy-init:image-test
TOOLS_IMAGE=imds-proxy-tools:image-test
DEV_IMAGE=imds-proxy-dev:image-test
APP_BASE_IMAGE=imds-proxy-base:bookworm

started_dockerd=""
secrets_dir=""

log() { printf '[image-test %4ss] %s\n' "$SECONDS" "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}

registered_binfmt=""
mounted_binfmt=""
base_rootfs=""

cleanup() {
    local status=$?
    set +e
    if [ "$status" -ne 0 ] && docker info >/dev/null 2>&1; then
        # Leave the evidence in the output before the containers go.
        local c
        for c in $(docker ps -aq --filter "label=imds-image-test=$RUN_ID"); do
            log "logs of $(docker inspect -f '{{.Name}}' "$c"):"
            docker logs --tail 40 "$c" 2>&1 | sed 's/^/    /'
        done
    fi
    if docker info >/dev/null 2>&1; then
        local ids
        ids=$(docker ps -aq --filter "label=imds-image-test=$RUN_ID")
        # shellcheck disable=SC2086 # one argument per id
        [ -z "$ids" ] || docker rm -f $ids >/dev/null
        ids=$(docker volume ls -q --filter "label=imds-image-test=$RUN_ID")
        # shellcheck disable=SC2086
        [ -z "$ids" ] || docker volume rm $ids >/dev/null
        ids=$(docker network ls -q --filter "label=imds-image-test=$RUN_ID")
        # shellcheck disable=SC2086
        [ -z "$ids" ] || docker network rm $ids >/dev/null
        if [ "${KEEP_IMAGES:-1}" = 0 ]; then
            local arch
            for arch in $ARCHES; do
                docker image rm "$(proxy_image "$arch")" "$(init_image "$arch")" \
                    "$(tools_image "$arch")" >/dev/null 2>&1
            done
            docker image rm "$PROXY_IMAGE" "$INIT_IMAGE" "$TOOLS_IMAGE" >/dev/null 2>&1
        fi
    fi
    [ -z "$secrets_dir" ] || rm -rf "$secrets_dir"
    if [ -n "$base_rootfs" ]; then
        umount -R "$base_rootfs/proc" "$base_rootfs/sys" 2>/dev/null
        rm -rf --one-file-system "$base_rootfs"
    fi
    if [ -n "$started_dockerd" ]; then
        log "stopping the dockerd this script started (pid $started_dockerd)"
        kill "$started_dockerd" 2>/dev/null
        for _ in $(seq 30); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 1; done
    fi
    if [ -n "$registered_binfmt" ]; then
        log "unregistering the binfmt_misc handler this script registered ($registered_binfmt)"
        echo -1 >"/proc/sys/fs/binfmt_misc/$registered_binfmt"
    fi
    [ -z "$mounted_binfmt" ] || umount /proc/sys/fs/binfmt_misc
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
for arch in $ARCHES; do
    case $arch in amd64 | arm64) ;; *) fail "unknown architecture '$arch' (amd64, arm64)" ;; esac
done

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


# Running another architecture's binaries: Debian's static qemu, registered with binfmt_misc
# with the F flag (the kernel opens the interpreter at registration, so it also works inside
# containers, whose file systems do not have it). Registered here only if it is not already,
# and then unregistered at exit.
ensure_emulation() {
    local arch=$1 qemu name conf
    [ "$arch" != "$HOST_ARCH" ] || return 0
    case $arch in
        arm64) qemu=aarch64 ;;
        amd64) qemu=x86_64 ;;
    esac
    name="qemu-$qemu"
    command -v "qemu-$qemu-static" >/dev/null 2>&1 || apt_install qemu-user-static
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || fail "cannot mount binfmt_misc"
        mounted_binfmt=yes
    fi
    if [ ! -e "/proc/sys/fs/binfmt_misc/$name" ]; then
        conf="/usr/lib/binfmt.d/$name.conf"
        [ -f "$conf" ] || fail "qemu-user-static has no $conf"
        # The handler line Debian ships; F (fix binary) is what containers need.
        grep -q ':[A-Z]*F[A-Z]*$' "$conf" || fail "$conf lacks the F flag"
        cat "$conf" >/proc/sys/fs/binfmt_misc/register || fail "cannot register $name"
        registered_binfmt=$name
        log "registered the binfmt_misc handler $name (removed again at exit)"
    fi
    grep -qx enabled "/proc/sys/fs/binfmt_misc/$name" || fail "binfmt_misc handler $name is disabled"
    grep -q '^flags: .*F' "/proc/sys/fs/binfmt_misc/$name" \
        || fail "binfmt_misc handler $name lacks the F flag: containers cannot use it"
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


# One base per architecture: debootstrap (for a foreign one, the first stage here and the
# second in the tree under emulation), slimmed, loaded as an image labelled with its
# architecture, and kept as an archive in $IMAGE_CACHE_DIR so a new Docker data root (or a
# removed image) does not mean debootstrap again.
build_base() {
    local arch=$1 image archive
    image=$(base_image "$arch")
    archive="$IMAGE_CACHE_DIR/base-bookworm-$arch.tar"
    if [ "${REBUILD_BASE:-0}" != 1 ]; then
        if docker image inspect "$image" >/dev/null 2>&1; then
            log "base image $image is cached"
            return
        fi
        if [ -s "$archive" ]; then
            docker load -i "$archive" >/dev/null || fail "docker load $archive failed"
            log "base image $image loaded from $archive"
            return
        fi
    fi
    command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap
    local mirror foreign=()
    base_rootfs=$(mktemp -d "${TMPDIR:-/tmp}/imds-base-rootfs.XXXXXX")
    mirror=$(host_debian_mirror)
    [ "$arch" = "$HOST_ARCH" ] || foreign=(--arch "$arch" --foreign)
    log "debootstrap ${foreign[*]} bookworm ${mirror:-(default mirror)} (log: $LOG_DIR/debootstrap-$arch.log)"
    if ! debootstrap "${foreign[@]}" --variant=minbase \
        --include=python3,python3-venv,ca-certificates \
        bookworm "$base_rootfs" ${mirror:+"$mirror"} >"$LOG_DIR/debootstrap-$arch.log" 2>&1; then
        tail -n 20 "$LOG_DIR/debootstrap-$arch.log" >&2
        fail "debootstrap failed"
    fi
    if [ ${#foreign[@]} -gt 0 ]; then
        log "debootstrap second stage for $arch under emulation"
        if ! chroot "$base_rootfs" /debootstrap/debootstrap --second-stage \
            >>"$LOG_DIR/debootstrap-$arch.log" 2>&1; then
            tail -n 20 "$LOG_DIR/debootstrap-$arch.log" >&2
            fail "debootstrap --second-stage failed"
        fi
        umount -R "$base_rootfs/proc" "$base_rootfs/sys" 2>/dev/null || true
    fi
    # Slim it the way Debian's own container images are: no documentation, manual pages or
    # translations (but keep the copyright files), now and for packages installed later;
    # no package caches (apt-get update refills the lists when a build needs them).
    cat >"$base_rootfs/etc/dpkg/dpkg.cfg.d/01-container-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
    find "$base_rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    rm -rf "$base_rootfs"/usr/share/man/* "$base_rootfs"/usr/share/info/* \
        "$base_rootfs"/usr/share/locale/* "$base_rootfs"/var/cache/apt/* \
        "$base_rootfs"/var/lib/apt/lists/* "$base_rootfs"/var/log/*.log
    mkdir -p "$IMAGE_CACHE_DIR"
    tar -C "$base_rootfs" --numeric-owner -cf "$LOG_DIR/base-layer.tar" .
    python3 deploy/image/base_image.py --layer "$LOG_DIR/base-layer.tar" --arch "$arch" \
        --tag "$image" --out "$archive.tmp"
    rm -f "$LOG_DIR/base-layer.tar"
    mv "$archive.tmp" "$archive"
    rm -rf --one-file-system "$base_rootfs"
    base_rootfs=""
    docker load -i "$archive" >/dev/null || fail "docker load $archive failed"
    log "built $image (kept in $archive)"
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
    local arch=$1 dockerfile=$2 tag=$3 logfile
    logfile="$LOG_DIR/build-$(basename "$dockerfile")-$arch.log"
    log "building $tag for linux/$arch from $dockerfile (log: $logfile)"
    if ! "${BUILD[@]}" --progress=plain --platform "linux/$arch" -f "$dockerfile" -t "$tag" \
        --build-arg "BASE_IMAGE=$(base_image "$arch")" "${SECRET_ARGS[@]}" . >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2
        fail "building $dockerfile for $arch failed"
    fi
    local built
    built=$(docker image inspect -f '{{.Architecture}}' "$tag")
    [ "$built" = "$arch" ] || fail "$tag is labelled $built, not $arch"
}

# --- 4. checks of each image ----------------------------------------------------------------
# Cheap checks of the image contract before running anything.
check_images() {
    local arch=$1 proxy init tools
    proxy=$(proxy_image "$arch")
    init=$(init_image "$arch")
    tools=$(tools_image "$arch")
    # The platform named on each run: the engine then neither warns (on stderr, which some
    # checks read) nor looks for another variant of the image.
    local label=(--label "imds-image-test=$RUN_ID" --platform "linux/$arch")
    local user entrypoint
    user=$(docker image inspect -f '{{.Config.User}}' "$proxy")
    [ "$user" = "1501:1501" ] || fail "proxy image user is '$user', expected 1501:1501"
    entrypoint=$(docker image inspect -f '{{json .Config.Entrypoint}}' "$proxy")
    [ "$entrypoint" = '["/proxy"]' ] || fail "proxy image entrypoint is $entrypoint"
    user=$(docker image inspect -f '{{.Config.User}}' "$tools")
    [ "$user" = "65532:65532" ] || fail "tools image user is '$user', expected 65532:65532"
    entrypoint=$(docker image inspect -f '{{json .Config.Entrypoint}}' "$tools")
    [ "$entrypoint" = '["imds-proxy"]' ] || fail "tools image entrypoint is $entrypoint"
    local image
    for image in "$proxy" "$init" "$tools"; do
        # FROM scratch: there is no shell to start, so this must fail.
        if docker run --rm "${label[@]}" --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then
            fail "$image starts /bin/sh"
        fi
        # No shell, installer or compiler anywhere, and every installed module imports
        # with the trimmed standard library (deploy/image/check_image.py).
        log "$image: checking from inside (deploy/image/check_image.py)"
        local status=0 uid=1501:1501
        [ "$image" != "$tools" ] || uid=65532:65532
        docker run --rm "${label[@]}" --read-only --cap-drop ALL \
            --user "$uid" --entrypoint python3 "$image" \
            -c "$(cat deploy/image/check_image.py)" 2>&1 | sed 's/^/    /' || status=$?
        [ "$status" = 0 ] || fail "$image: the check found what is listed above"
        # Every ELF file of this architecture, and everything it loads inside the image.
        log "$image: ELF architecture and libraries (deploy/image/elf_check.py)"
        local tree="$LOG_DIR/tree-$arch" cid
        rm -rf "$tree" && mkdir -p "$tree"
        cid=$(docker create "${label[@]}" "$image")
        docker export "$cid" | tar -C "$tree" -xf - || fail "cannot export $image"
        docker rm "$cid" >/dev/null
        status=0
        python3 deploy/image/elf_check.py "$tree" --arch "$arch" 2>&1 | sed 's/^/    /' || status=$?
        rm -rf "$tree"
        [ "$status" = 0 ] || fail "$image: the ELF check found what is listed above"
    done
    docker run --rm "${label[@]}" --read-only --cap-drop ALL "$proxy" --help >/dev/null \
        || fail "/proxy --help failed in the proxy image"
    # One installable per image: the sidecar image has neither the tools nor the dev issuer
    # (its CLI says so in one line, exit 2), the init image nothing of the sidecar.
    local out status=0
    out=$(docker run --rm "${label[@]}" --read-only --cap-drop ALL "$proxy" inject --help 2>&1) \
        || status=$?
    if [ "$status" != 2 ] || [ "$(wc -l <<<"$out")" != 1 ]; then
        fail "/proxy inject in the proxy image: exit $status, '$out' (expected exit 2, one line)"
    fi
    log "    /proxy inject: $out"
    docker run --rm "${label[@]}" --entrypoint python3 "$proxy" -c '
import importlib.util as u
present = [m for m in ("proxy.devissuer", "proxy.inject", "ruamel", "pyroute2", "init") if u.find_spec(m)]
assert not present, f"in the proxy image: {present}"
' || fail "the proxy image carries what it does not run"
    docker run --rm "${label[@]}" --entrypoint python3 "$init" -c '
import importlib.util as u
present = [m for m in ("proxy", "aiohttp", "msal", "cryptography", "ruamel") if u.find_spec(m)]
assert not present, f"in the init image: {present}"
' || fail "the init image carries what it does not run"
    # The tools image: both tools, nothing of the sidecar's server, the dev issuer or init.
    docker run --rm "${label[@]}" --entrypoint python3 "$tools" -c '
import importlib.util as u
present = [m for m in ("proxy.devissuer", "init", "pyroute2", "proxy.server", "proxy.tokens",
                       "proxy.doctor", "msal", "uvloop") if u.find_spec(m)]
assert not present, f"in the tools image: {present}"
' || fail "the tools image carries what it does not run"
    local tool
    for tool in webhook inject; do
        # As the Deployment names it: the console script found on PATH.
        out=$(docker run --rm "${label[@]}" --read-only --cap-drop ALL --entrypoint imds-proxy \
            "$tools" "$tool" --help 2>&1) || fail "imds-proxy $tool --help in the tools image: $out"
        [[ $out == *"imds-proxy $tool"* ]] || fail "imds-proxy $tool --help printed: $out"
    done
    status=0
    out=$(docker run --rm "${label[@]}" --read-only --cap-drop ALL "$tools" --proxy-port=8000 2>&1) \
        || status=$?
    if [ "$status" != 2 ] || [ "$(wc -l <<<"$out")" != 1 ]; then
        fail "the sidecar in the tools image: exit $status, '$out' (expected exit 2, one line)"
    fi
    log "    tools image: webhook and inject --help exit 0; the sidecar: $out"
    check_webhook "$arch"
    for backend in nft legacy; do
        status=0
        out=$(docker run --rm "${label[@]}" --entrypoint "iptables-$backend" "$init" --version 2>&1) \
            || status=$?
        if [ "$status" != 0 ] && [ "$arch" != "$HOST_ARCH" ] \
            && [[ $out == *"Failed to initialize nft: Protocol not supported"* ]]; then
            # It loaded and ran; qemu-user does not translate nf_tables' netlink.
            log "    iptables-$backend starts (no nf_tables under emulation: $out)"
        elif [ "$status" != 0 ]; then
            fail "the init image's iptables-$backend does not start: $out"
        fi
    done
    log "image contract checks passed for $arch"
}

# The tools image's webhook started the way deploy/webhook/deployment.yaml starts it, with a
# certificate made here and service-account files for an API server that is not there: it
# must serve /healthz over TLS with that certificate and /metrics, and stop on SIGTERM (0).
check_webhook() {
    local arch=$1 tools dir name
    tools=$(tools_image "$arch")
    dir="$LOG_DIR/webhook-$arch"
    name="$RUN_ID-webhook-$arch"
    mkdir -p "$dir/certs" "$dir/sa"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj /CN=imds-proxy-webhook -addext subjectAltName=IP:127.0.0.1 \
        -keyout "$dir/certs/tls.key" -out "$dir/certs/tls.crt" 2>/dev/null \
        || fail "openssl cannot make the webhook's test certificate"
    cp "$dir/certs/tls.crt" "$dir/sa/ca.crt"
    echo not-a-token >"$dir/sa/token"
    chmod 755 "$dir" "$dir/certs" "$dir/sa"
    chmod 644 "$dir"/certs/* "$dir"/sa/*
    docker run -d --name "$name" --label "imds-image-test=$RUN_ID" --platform "linux/$arch" \
        --read-only --cap-drop ALL --security-opt no-new-privileges --network none \
        -e KUBERNETES_SERVICE_HOST=127.0.0.1 -e KUBERNETES_SERVICE_PORT=1 \
        -v "$dir/certs:/etc/webhook/certs:ro" \
        -v "$dir/sa:/var/run/secrets/kubernetes.io/serviceaccount:ro" \
        --entrypoint imds-proxy "$tools" webhook --port=9443 --metrics-port=8095 \
        --tls-cert-file=/etc/webhook/certs/tls.crt --tls-key-file=/etc/webhook/certs/tls.key \
        --tenant-id=00000000-0000-0000-0000-0000000000aa >/dev/null
    local patience=30 answered=""
    [ "$arch" = "$HOST_ARCH" ] || patience=120
    for _ in $(seq "$patience"); do
        if answered=$(docker exec "$name" python3 -c '
import ssl, urllib.request
context = ssl.create_default_context(cafile="/etc/webhook/certs/tls.crt")
with urllib.request.urlopen("https://127.0.0.1:9443/healthz", context=context, timeout=5) as r:
    health = r.status
with urllib.request.urlopen("http://127.0.0.1:8095/metrics", timeout=5) as r:
    metrics = r.read().decode()
assert "imds_proxy_webhook_certificate_not_after_timestamp_seconds" in metrics
print(f"/healthz {health} over TLS, /metrics {len(metrics.splitlines())} lines")
' 2>/dev/null); then
            break
        fi
        answered=""
        docker container inspect -f '{{.State.Running}}' "$name" | grep -q true \
            || fail "the webhook in the tools image exited"
        sleep 1
    done
    [ -n "$answered" ] || fail "the webhook in the tools image did not answer within ${patience}s"
    docker stop -t 20 "$name" >/dev/null
    local code
    code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
    [ "$code" = 0 ] || fail "the webhook in the tools image stopped with $code on SIGTERM"
    docker rm "$name" >/dev/null
    log "    tools image, the webhook as deployed (uid 65532, read-only): $answered; SIGTERM: exit 0"
}

# --- 5. one index per image ---------------------------------------------------------------
# The per-architecture images of each, as one multi-architecture image index (OCI archive).
assemble_indexes() {
    local dir="$IMAGE_CACHE_DIR/index" name arch saved
    mkdir -p "$dir"
    command -v skopeo >/dev/null 2>&1 || apt_install skopeo
    for name in proxy init tools; do
        saved=()
        for arch in $ARCHES; do
            docker save -o "$LOG_DIR/$name-$arch.tar" "$("${name}_image" "$arch")"
            saved+=("$LOG_DIR/$name-$arch.tar")
        done
        python3 deploy/image/oci_index.py --out "$dir/imds-$name.oci.tar" --ref image-test \
            "${saved[@]}" | sed 's/^/    /' || fail "assembling the $name index failed"
        python3 deploy/image/oci_index.py --verify "$dir/imds-$name.oci.tar" \
            || fail "the $name index does not read back"
        # And as a registry client reads it: skopeo picks each platform's image from the index.
        for arch in $ARCHES; do
            local got
            got=$(skopeo inspect --override-os linux --override-arch "$arch" \
                "oci-archive:$dir/imds-$name.oci.tar:image-test" \
                | python3 -c 'import json, sys; print(json.load(sys.stdin)["Architecture"])') \
                || fail "skopeo cannot read the $name index"
            [ "$got" = "$arch" ] || fail "skopeo picked $got from the $name index for $arch"
        done
        rm -f "${saved[@]}"
    done
}

# --- 6. the pod -------------------------------------------------------------------------
run_pod() {
    local arch=$1
    local label=(--label "imds-image-test=$RUN_ID")
    local plat=(--platform "linux/$arch") host_plat=(--platform "linux/$HOST_ARCH")
    local pod="$RUN_ID-pod-$arch" proxy init host_base
    proxy=$(proxy_image "$arch")
    init=$(init_image "$arch")
    host_base=$(base_image "$HOST_ARCH")
    # Under emulation everything starts several times slower: wait longer.
    local patience=30
    [ "$arch" = "$HOST_ARCH" ] || patience=180
    log "pod for linux/$arch"

    # The pod's network namespace, held by a sleeping container as a pause container does.
    # An internal network: loopback and eth0 like a pod, but no way out, so a request that
    # escapes the redirect can never reach a real metadata service and pass by accident.
    docker network create --internal "${label[@]}" "$RUN_ID-net-$arch" >/dev/null
    docker run -d --name "$pod" "${label[@]}" --network "$RUN_ID-net-$arch" \
        "$host_base" sleep infinity >/dev/null
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

    if [ "$arch" != "$HOST_ARCH" ]; then
        # qemu-user translates neither nf_tables' netlink nor iptables' legacy socket options,
        # so an emulated iptables cannot reach the kernel's tables. The arm64 init container
        # runs as far as that: settings, capability, backend, preflight (its socket calls
        # emulated), then its first iptables-save, which must fail exactly so.
        log "init container ($init), emulated: runs up to its first iptables call"
        local out status=0
        out=$(docker run --rm --name "$RUN_ID-init-$arch" "${label[@]}" --network "container:$pod" \
            --cap-add NET_ADMIN -e "PROXY_PORT=$PROXY_PORT" -e IPTABLES_BACKEND=legacy \
            "${plat[@]}" "$init" 2>&1) || status=$?
        printf '    %s\n' "$out"
        if [ "$status" != 6 ] || [[ $out != *"iptables who?"* ]]; then
            fail "the emulated init container: exit $status (expected 6: no iptables under qemu-user)"
        fi
        log "    passed preflight and ran iptables-legacy-save for $arch; the redirect itself comes from the same program's $HOST_ARCH image"
        init=$(init_image "$HOST_ARCH")
    fi
    log "init container ($init): imds-proxy-init with PROXY_PORT=$PROXY_PORT"
    if ! docker run --rm --name "$RUN_ID-init-$arch-redirect" "${label[@]}" \
        --network "container:$pod" --cap-add NET_ADMIN -e "PROXY_PORT=$PROXY_PORT" \
        "${host_plat[@]}" "$init" 2>&1 | sed 's/^/    /'; then
        fail "the init container failed"
    fi

    # The fake Entra ID on the pod's loopback: the dev issuer, which no image carries, run
    # from this checkout on the host architecture's proxy image (its requirements are the
    # sidecar's). Its workdir (CA bundle, service-account token) is a volume the proxy
    # mounts read-only, like the projected token volume.
    local issuer_image=$proxy issuer_plat=("${plat[@]}") site
    if docker image inspect "$(proxy_image "$HOST_ARCH")" >/dev/null 2>&1; then
        issuer_image=$(proxy_image "$HOST_ARCH")
        issuer_plat=("${host_plat[@]}")
    fi
    site=$(docker run --rm "${label[@]}" "${issuer_plat[@]}" --entrypoint python3 "$issuer_image" \
        -c 'import os, proxy; print(os.path.dirname(proxy.__file__))')
    docker volume create "${label[@]}" "$RUN_ID-issuer-$arch" >/dev/null
    docker run --rm "${label[@]}" -v "$RUN_ID-issuer-$arch:/issuer" "$host_base" \
        chown 1501:1501 /issuer
    docker run -d --name "$RUN_ID-issuer-$arch" "${label[@]}" --network "container:$pod" \
        --user 1501:1501 --cap-drop ALL -v "$RUN_ID-issuer-$arch:/issuer" \
        -v "$PWD/proxy/devissuer:$site/devissuer:ro" "${issuer_plat[@]}" \
        --entrypoint python3 "$issuer_image" \
        -m proxy.devissuer --host 127.0.0.1 --port "$ISSUER_PORT" --workdir /issuer >/dev/null
    local info=""
    for _ in $(seq 30); do
        info=$(docker logs "$RUN_ID-issuer-$arch" 2>/dev/null | grep -m 1 '^{' || true)
        [ -n "$info" ] && break
        docker container inspect -f '{{.State.Running}}' "$RUN_ID-issuer-$arch" | grep -q true \
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
    docker run -d --name "$RUN_ID-proxy-$arch" "${label[@]}" --network "container:$pod" \
        --read-only --cap-drop ALL --security-opt no-new-privileges --user 1501:1501 \
        -v "$RUN_ID-issuer-$arch:/issuer:ro" "${env_args[@]}" "${plat[@]}" \
        "$proxy" "--proxy-port=$PROXY_PORT" --log-level=info >/dev/null
    # The webhook's postStart hook (tried again while an emulated start is still importing).
    local ready=""
    for _ in $(seq $((patience / 7 + 1))); do
        if docker exec "$RUN_ID-proxy-$arch" /proxy --probe "--proxy-port=$PROXY_PORT" 2>/dev/null; then
            ready=yes
            break
        fi
        docker container inspect -f '{{.State.Running}}' "$RUN_ID-proxy-$arch" | grep -q true \
            || fail "the proxy exited"
    done
    [ -n "$ready" ] || fail "the postStart probe (/proxy --probe) failed"
    local machine
    machine=$(docker exec "$RUN_ID-proxy-$arch" python3 -c 'import platform; print(platform.machine())')
    log "proxy ready (postStart probe passed): image $(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$proxy"), machine $machine"

    # The app: an unchanged managed-identity client, not root and not uid 1501.
    log "app: GET http://169.254.169.254/metadata/identity/oauth2/token (Metadata: true)"
    docker run --rm --name "$RUN_ID-app-$arch" "${label[@]}" --network "container:$pod" \
        --user 1000:1000 "$host_base" python3 -c '
import json, sys, urllib.error, urllib.request
url = ("http://169.254.169.254/metadata/identity/oauth2/token"
       "?api-version=2018-02-01&resource=https://management.azure.com/")
req = urllib.request.Request(url, headers={"Metadata": "true"})
try:
    with urllib.request.urlopen(req, timeout=int(sys.argv[1])) as resp:
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
' "$patience" || fail "the app did not get a token through the proxy"
    # Who answered: the proxy's own log line of that request (written once it has answered).
    local line=""
    for _ in $(seq 10); do
        line=$(docker logs "$RUN_ID-proxy-$arch" 2>&1 | grep '"path": "/metadata/identity/oauth2/token"' \
            | head -n 1 | cut -c1-150 || true)
        [ -z "$line" ] || break
        sleep 1
    done
    [ -n "$line" ] || fail "the $arch proxy logged no token request"
    log "    logged by the $arch proxy ($machine): $line"
    log "pod for linux/$arch passed: the $machine proxy served the token"
}

# Uncompressed sizes, as `docker images` shows them; each image has a budget (issues 13, 20),
# the same for every architecture.
PROXY_LIMIT_MB=80
INIT_LIMIT_MB=40
TOOLS_LIMIT_MB=75
report_sizes() {
    local image size limit over="" arch
    local images=()
    for arch in $ARCHES; do
        images+=("$(base_image "$arch")" "$(proxy_image "$arch")" "$(init_image "$arch")")
        [ "$BUILD_ONLY" = 1 ] || images+=("$(tools_image "$arch")")
    done
    for image in "${images[@]}"; do
        size=$(docker image inspect -f '{{.Size}}' "$image")
        case $image in
            imds-proxy:*) limit=$PROXY_LIMIT_MB ;;
            imds-proxy-init:*) limit=$INIT_LIMIT_MB ;;
            imds-proxy-tools:*) limit=$TOOLS_LIMIT_MB ;;
            *) limit="" ;;
        esac
        log "$(awk -v i="$image" -v s="$size" -v l="$limit" 'BEGIN {
            printf "%-36s %6.1f MB", i, s / 1e6; if (l != "") printf " (limit %d MB)", l }')"
        if [ -n "$limit" ] && [ "$size" -gt $((limit * 1000000)) ]; then
            over="$over $image"
        fi
    done
    [ -z "$over" ] || fail "over the size limit:$over"
}

# --- build-only mode: what the cluster tests load (IMAGE_TEST_BUILD_ONLY) -----------------
build_dev_image() {
    # The cluster tests' in-pod Entra ID stand-in: the host's sidecar image plus the dev
    # issuer, which no shipped image carries, beside the sidecar's own package. Tests only.
    local site
    site=$(docker run --rm --entrypoint python3 "$PROXY_IMAGE" \
        -c 'import os, proxy; print(os.path.dirname(proxy.__path__[0]))')
    printf 'FROM %s\nCOPY . %s/proxy/devissuer/\n' "$PROXY_IMAGE" "$site" |
        docker build -q -t "$DEV_IMAGE" -f - proxy/devissuer >/dev/null
}

# --- the run ------------------------------------------------------------------------------
ensure_docker
pick_builder
for arch in $ARCHES; do
    ensure_emulation "$arch"
    build_base "$arch"
done
write_pip_secrets
for arch in $ARCHES; do
    build_image "$arch" Dockerfile.proxy "$(proxy_image "$arch")"
    build_image "$arch" Dockerfile.init "$(init_image "$arch")"
    [ "$BUILD_ONLY" = 1 ] || build_image "$arch" Dockerfile.tools "$(tools_image "$arch")"
done
if [ "$BUILD_ONLY" != 1 ] && [[ " $ARCHES " != *" $HOST_ARCH "* ]]; then
    # The foreign pod's redirect is installed by the host's init image (see run_pod).
    build_base "$HOST_ARCH"
    build_image "$HOST_ARCH" Dockerfile.init "$(init_image "$HOST_ARCH")"
fi
if [[ " $ARCHES " == *" $HOST_ARCH "* ]]; then
    docker tag "$(proxy_image "$HOST_ARCH")" "$PROXY_IMAGE"
    docker tag "$(init_image "$HOST_ARCH")" "$INIT_IMAGE"
    [ "$BUILD_ONLY" = 1 ] || docker tag "$(tools_image "$HOST_ARCH")" "$TOOLS_IMAGE"
fi
report_sizes
if [ "$BUILD_ONLY" = 1 ]; then
    if [ -n "${IMAGE_EXPORT_DIR:-}" ]; then
        mkdir -p "$IMAGE_EXPORT_DIR"
        build_dev_image
        docker tag "$(base_image "$HOST_ARCH")" "$APP_BASE_IMAGE"
        docker save -o "$IMAGE_EXPORT_DIR/proxy.tar" "$PROXY_IMAGE"
        docker save -o "$IMAGE_EXPORT_DIR/init.tar" "$INIT_IMAGE"
        docker save -o "$IMAGE_EXPORT_DIR/dev.tar" "$DEV_IMAGE"
        docker save -o "$IMAGE_EXPORT_DIR/base.tar" "$APP_BASE_IMAGE"
        log "saved the proxy, init, dev and base images to $IMAGE_EXPORT_DIR/{proxy,init,dev,base}.tar"
    fi
    exit 0
fi
for arch in $ARCHES; do
    check_images "$arch"
done
assemble_indexes
for arch in $ARCHES; do
    run_pod "$arch"
done
report_sizes
