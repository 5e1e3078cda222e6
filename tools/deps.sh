#!/bin/sh
# Installs the Debian/Ubuntu packages webhyve needs, only those missing: `make deps` runs it.
# Each line of PACKAGES is "package|file or command that shows it is there|why webhyve needs it".
set -eu

PACKAGES='
chromium|chromium|the browser tests drive headless Chromium with Playwright
fonts-dejavu-core|/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf|screenshots render the consoles in DejaVu Sans Mono
cpio|cpio|make linux packs the initramfs of the Linux guest (cpio -H newc)
qemu-system-x86|qemu-system-x86_64|the reference for guest behaviour and speed
acpica-tools|iasl|the ACPI table tests decompile the tables webhyve gives guests with the real iasl -d
redis-server|/usr/bin/redis-server|the cluster tests run a real Redis that the nodes register in and forward through (docs/cluster.md)
e2fsprogs|/sbin/debugfs|the Linux test builds an ext4 disk image (mke2fs -d) and checks it after the guest wrote it (e2fsck -n, debugfs)
'

present() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 ;;
    esac
}

missing=""
echo "$PACKAGES" | {
    while IFS='|' read -r pkg check why; do
        [ -n "$pkg" ] || continue
        if ! present "$check"; then
            echo "deps: $pkg is missing: $why" >&2
            echo "$pkg"
        fi
    done
} > .deps-missing
missing=$(tr '\n' ' ' < .deps-missing)
rm -f .deps-missing
[ -n "${missing% }" ] || exit 0

if [ "$(id -u)" = 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo"
else
    echo "deps: cannot install $missing: run 'make deps' as root, or give this user sudo," >&2
    echo "deps: or install them yourself: apt-get install $missing" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "deps: apt-get not found: webhyve's set-up needs Debian or Ubuntu; install $missing by hand" >&2
    exit 1
fi
echo "deps: installing $missing" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
