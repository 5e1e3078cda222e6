#!/bin/sh
# Fetches one Debian package into webhyve's download cache, once: apt-get download, then dpkg-deb -x.
# usage: fetch.sh CACHE PACKAGE LINK PATH
#   PACKAGE is a package or a metapackage (linux-image-amd64: its linux-image-* dependency is fetched);
#   LINK (in CACHE) is made a symbolic link to PATH inside the unpacked package, e.g. boot/vmlinuz-*.
# Debian keeps only the current build of a kernel ABI in its archive, so this takes apt's current
# candidate and records what it took in CACHE/VERSIONS; a cached package is never fetched again.
set -eu

cache=$1 package=$2 link=$3 path=$4
mkdir -p "$cache"
[ -e "$cache/$link" ] && exit 0

if ! apt-cache show "$package" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        echo "linux: apt does not know $package yet: apt-get update" >&2
        apt-get update -qq
    else
        echo "linux: apt does not know $package: run 'apt-get update' as root, then make linux again" >&2
        exit 1
    fi
fi
name=$package
case "$package" in
    linux-image-amd64)
        name=$(apt-cache depends "$package" | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
        [ -n "$name" ] || { echo "linux: $package names no linux-image-*-amd64 dependency" >&2; exit 1; }
        ;;
esac
version=$(apt-cache policy "$name" | sed -n 's/^ *Candidate: //p')
[ -n "$version" ] && [ "$version" != "(none)" ] || { echo "linux: no candidate version of $name" >&2; exit 1; }

echo "linux: fetching $name $version (Debian's $package) into $cache" >&2
sandbox=""
[ "$(id -u)" = 0 ] && sandbox="-o APT::Sandbox::User=root"     # _apt cannot write into a work tree
# shellcheck disable=SC2086
(cd "$cache" && apt-get download -q $sandbox "$name=$version")
deb=$(ls "$cache/${name}_"*.deb | head -n 1)
rm -rf "$cache/$name"
dpkg-deb -x "$deb" "$cache/$name"
target=$(cd "$cache/$name" && ls -d $path | head -n 1)
[ -e "$cache/$name/$target" ] || { echo "linux: $deb has no $path" >&2; exit 1; }
sed -i "/^$name /d" "$cache/VERSIONS" 2>/dev/null || true
echo "$name $version" >> "$cache/VERSIONS"
ln -sfn "$name/$target" "$cache/$link"
