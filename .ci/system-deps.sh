#!/usr/bin/env bash
# System packages that `make test` needs (`make demo` needs none of them):
#   xrootd    a real XRootD server for the root:// tests (and `mlaas4hep demo --remote`)
#   nginx     HTTP Range and multi-range reads for the http:// tests
#   chromium  the browser tests of the web page
#   wrk       the load generator of bench/serve.py (optional: no test needs it)
#   podman, runc, mmdebstrap   build and run the server's container image offline (tests/deploy)
# Missing ones are installed with apt-get, as root or through sudo that needs no password.
# Otherwise (no root, no apt-get) it says what to install, with Debian's and EL9's package
# names, and stops: it never prompts.
set -euo pipefail
missing=() # required programs that are missing
deb=()
rpm=()
optional=() # Debian packages of optional programs that are missing
has() { PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1; } # nginx is in /usr/sbin
need() { # PROGRAM "DEBIAN PACKAGES" "EL9 PACKAGES"
  if ! has "$1"; then
    missing+=("$1")
    read -ra d <<<"$2"
    read -ra r <<<"$3"
    deb+=("${d[@]}")
    rpm+=("${r[@]}")
  fi
}
need xrootd "xrootd-server xrootd-client" "xrootd-server xrootd-client"
need nginx "nginx-light" "nginx"
need chromium "chromium" "chromium"
need podman "podman" "podman"
need runc "runc" "runc"
need mmdebstrap "mmdebstrap" "mmdebstrap"
has wrk || optional+=(wrk)
[ ${#missing[@]} -eq 0 ] && [ ${#optional[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ]; then
  sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo="sudo -n"
else
  sudo="no"
fi
if [ "$sudo" = no ] || ! command -v apt-get >/dev/null 2>&1; then
  [ ${#missing[@]} -eq 0 ] && exit 0 # only optional ones are missing
  echo "make test needs system packages that are missing: ${missing[*]} ('make demo' does not)." >&2
  echo "Install them as root: apt-get install ${deb[*]} (Debian/Ubuntu), or dnf install epel-release && dnf install ${rpm[*]} (EL9)." >&2
  exit 1
fi
deb+=("${optional[@]}")
echo "installing the system packages that make test needs: ${deb[*]} (apt-get, about 30 s) ..."
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${deb[@]}" >/dev/null
