#!/usr/bin/env bash
# Install everything the tests need (system packages, kubectl, Python packages), then run
# lint, type checks, import contracts and the whole test suite on the compiled build,
# then again as pure Python (HERDGATE_PURE=1: what `pip install .` gives without a
# compiler) every test that is not an integration test plus the integration tests of the
# request path itself (marker request_path: kubectl through the gateway, HTTP/1.1, HTTP/2,
# hostile requests). The other integration tests (controllers, management API, ACE, HA,
# the image) run the same sources either way, and a whole second pass would take CI past
# its 15 minutes (docs/design.md, "Tests"). Safe to re-run; CI runs exactly this.
# Arguments go to both pytest runs.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Real services the integration tests start on loopback, and load tools for bench/.
missing=()
[ -x /usr/sbin/slapd ] || missing+=(slapd ldap-utils)
command -v etcd >/dev/null || missing+=(etcd-server etcd-client)
# haproxy (TCP mode) in front of three replicas: tests/integration/test_ha_tunnels.py.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v curl >/dev/null || missing+=(curl)
# systemd-analyze: verify and security checks of the units in systemd/.
command -v systemd-analyze >/dev/null || missing+=(systemd)
# A C compiler and Python's headers: the request path is compiled with mypyc (config/native.py).
command -v gcc >/dev/null || missing+=(gcc)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
  || missing+=(python3-dev)
# The agent's container image (tests/integration/test_agent_image.py): debootstrap builds
# it offline, rootful podman runs it with runc (crun refuses hybrid cgroup hosts).
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing+=(runc)
# The web page's end-to-end tests (tests/integration/test_ui_browser.py): headless Chromium
# and its WebDriver, driven by Selenium (the [test] extra).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# kubectl: the machine's own (with its kubectl.1.27 ... siblings), else Debian's client.
command -v kubectl >/dev/null || missing+=(kubernetes-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
# The compiled request path (.native/, used while it matches the sources); the tests run it.
.venv/bin/python -m config.native build >/dev/null
# The agent's image, built while lint and the first tests run (a cold build downloads
# Debian's packages; docs/design.md section 10). tests/integration/test_agent_image.py
# runs the same command, which waits for this one and then finds the image up to date.
mkdir -p build
scripts/build-agent-image >build/agent-image.log 2>&1 &
image_build=$!
wait $image_build; echo setup-done
