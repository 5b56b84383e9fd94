#!/usr/bin/env bash
# Debian's chromium and chromium-driver for tests/test_browser.py (no browser downloads).
# Idempotent and quiet: does nothing when both are there; `apt-get update` only when the
# install fails without it. Needs root (or password-less sudo); otherwise it says so and
# leaves the browser test to fail with its own message.
set -uo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "browser-deps: not root: install chromium and chromium-driver (apt) for the browser test" >&2
    exit 0
fi
install() {
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1
}
echo "browser-deps: installing chromium and chromium-driver (apt)"
if ! install; then
    "${as_root[@]}" apt-get update -qq >/dev/null 2>&1
    install || echo "browser-deps: apt-get install chromium chromium-driver failed" >&2
fi
exit 0
