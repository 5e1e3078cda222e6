#!/bin/sh
# Packs the Linux test guest's initramfs: busybox-static with a link per applet, and our /init, as a
# gzip-compressed cpio archive in the kernel's newc format, with fixed times and owners (reproducible).
# With VMLINUZ and MODULES, the kernel modules named (by file name, without .ko, from the package VMLINUZ came
# from) go to /lib/modules in that order, listed in /lib/modules/order.
# usage: mkinitramfs.sh BUSYBOX INIT OUTPUT [VMLINUZ MODULES]
set -eu

busybox=$1 init=$2 output=$3 vmlinuz=${4:-} modules=${5:-}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cp "$init" "$root/init"
if [ -n "$modules" ]; then
    tree=$(dirname "$(readlink -f "$vmlinuz")")/../lib/modules
    mkdir -p "$root/lib/modules"
    for module in $modules; do
        name=$(basename "$module")
        found=$(find "$tree" -name "$name.ko" | grep "/$module.ko$" | head -n 1)
        [ -n "$found" ] || { echo "linux: no module $module.ko under $tree" >&2; exit 1; }
        cp "$found" "$root/lib/modules/$name.ko"
        echo "$name" >> "$root/lib/modules/order"
    done
fi
chmod 755 "$root/init" "$root/bin/busybox"
find "$root" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$output")"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n > "$output.tmp"
mv "$output.tmp" "$output"
echo "linux: $output: busybox $("$busybox" | head -n 1 | cut -d' ' -f2) with $("$busybox" --list | wc -l) applets and guests/linux/init ($(wc -c < "$output") bytes)" >&2
