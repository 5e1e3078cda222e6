#!/bin/sh
# Packs the Linux test guest's initramfs: busybox-static with a link per applet, and our /init, as a
# gzip-compressed cpio archive in the kernel's newc format, with fixed times and owners (reproducible).
# usage: mkinitramfs.sh BUSYBOX INIT OUTPUT
set -eu

busybox=$1 init=$2 output=$3
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/dev" "$root/proc" "$root/sys" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
cp "$init" "$root/init"
chmod 755 "$root/init" "$root/bin/busybox"
find "$root" -exec touch -h -d @0 {} +
mkdir -p "$(dirname "$output")"
(cd "$root" && find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n > "$output.tmp"
mv "$output.tmp" "$output"
echo "linux: $output: busybox $("$busybox" | head -n 1 | cut -d' ' -f2) with $("$busybox" --list | wc -l) applets and guests/linux/init ($(wc -c < "$output") bytes)" >&2
