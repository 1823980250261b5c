#!/bin/bash
# Test double of the omnitruck install.sh (Cinc's or Chef's), served to the scripts over HTTP on
# 127.0.0.1: with -P PROJECT (cinc or chef) and -v VERSION it "installs" the stub client
# ($STUB_CHEF_SOURCE) into $STUB_INSTALL_DIR under the project's name (cinc-client or chef-client)
# and records the version and project it was asked for.
set -euo pipefail
version="" project=chef
while getopts "v:P:" opt; do
  case $opt in
    v) version=$OPTARG ;;
    P) project=$OPTARG ;;
    *) exit 2 ;;
  esac
done
[ -n "$version" ] || { echo "install.sh: -v VERSION is required" >&2; exit 2; }
case $project in
  cinc) name=cinc-client ;;
  chef) name=chef-client ;;
  *) echo "install.sh: unknown project $project" >&2; exit 2 ;;
esac
install -m 755 "${STUB_CHEF_SOURCE:?}" "${STUB_INSTALL_DIR:?}/$name"
echo "$version" >"$STUB_INSTALL_DIR/installed-version"
echo "$project" >"$STUB_INSTALL_DIR/installed-project"
echo "install.sh: installed $name $version"
