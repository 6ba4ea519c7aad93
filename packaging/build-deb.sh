#!/usr/bin/env bash
# Builds the Debian package with cargo-deb: target/debian/gatehouse_<version>-1_<arch>.deb
# (under $CARGO_TARGET_DIR when set).
#
#   packaging/build-deb.sh [extra cargo-deb arguments, e.g. --no-build --deb-version 0.1.0-2]
#
# The packaged systemd unit is conf/gatehouse.service as it is, with the binary's path
# /usr/local/bin/gatehouse (a manual install) changed to /usr/bin/gatehouse (the package's).
# The Debian changelog is generated from the version in Cargo.toml and the commit date.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || {
    echo "cargo-deb is not installed: cargo install cargo-deb --locked" >&2
    exit 1
}

gen=target/deb-gen
rm -rf "$gen"
mkdir -p "$gen"

sed 's#/usr/local/bin/gatehouse#/usr/bin/gatehouse#g' conf/gatehouse.service > "$gen/gatehouse.service"
if grep -n '/usr/local' "$gen/gatehouse.service" | grep -v '^[0-9]*:#'; then
    echo "conf/gatehouse.service still uses /usr/local outside comments" >&2
    exit 1
fi

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
export SOURCE_DATE_EPOCH=$epoch
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' Cargo.toml | head -1)
{
    echo "gatehouse (${version}-1) unstable; urgency=medium"
    echo
    echo "  * Release ${version}; see /usr/share/doc/gatehouse/changelog.gz for the changes."
    echo
    echo " -- ${maintainer}  $(date -u -R -d "@$epoch")"
} > "$gen/changelog"

exec cargo deb --locked --strip "$@"
