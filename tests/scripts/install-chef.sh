#!/bin/bash
# Test double of the omnitruck install.sh, served to the scripts over HTTP on 127.0.0.1: with
# -v VERSION it "installs" the stub chef-client ($STUB_CHEF_SOURCE) into $STUB_INSTALL_DIR and
# records the version it was asked for.
set -euo pipefail
version=""
while getopts "v:P:" opt; do
  case $opt in
    v) version=$OPTARG ;;
    P) ;;
    *) exit 2 ;;
  esac
done
[ -n "$version" ] || { echo "install.sh: -v VERSION is required" >&2; exit 2; }
install -m 755 "${STUB_CHEF_SOURCE:?}" "${STUB_INSTALL_DIR:?}/chef-client"
echo "$version" >"$STUB_INSTALL_DIR/installed-version"
echo "install.sh: installed chef-client $version"
