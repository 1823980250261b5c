#!/bin/bash
# bakery-firstboot (AMI Bakery, role 'web'): while /firstboot.txt exists, register this instance
# with Chef as ROLE-INSTANCE_ID and run the role's run list from S3; success removes the file,
# failure keeps it (the next boot retries) and sends one SNS alert. Log /var/log/bakery-firstboot.log.
set -Eeuo pipefail
umask 022
PROG=bakery-firstboot
LIB=${BAKERY_ROOT:-/}
# shellcheck source=bakery-lib.sh
. "${LIB%/}/usr/local/lib/bakery/bakery-lib.sh"
RUNLIST_S3='s3://acme-bakery/runlists/web.json'
RUNLIST_JSON="$CHEF_DIR/first-boot.json"
SENTINEL="$ROOT/firstboot.txt"
LOG="$ROOT/var/log/bakery-firstboot.log"
LOCK="$ROOT/var/lock/bakery-firstboot.lock"
WHAT="first boot"
ALERT_NOTE="$SENTINEL is kept: the next boot retries."

if [ ! -e "$SENTINEL" ]; then
  log "no $SENTINEL: first boot is done, nothing to do"
  exit 0
fi
mkdir -p "${LOG%/*}" "${LOCK%/*}"
exec > >(tee -a "$LOG") 2>&1

# One run at a time: a second start steps aside (exit 0).
LOCKDIR=""
if command -v flock >/dev/null 2>&1; then
  exec 9>>"$LOCK"
  if ! flock -n 9; then
    log "another bakery-firstboot run holds $LOCK; not starting a second one"
    exit 0
  fi
else
  # No flock: mkdir is atomic; a lock of a dead process is stale.
  if ! mkdir "$LOCK.d" 2>/dev/null; then
    holder=$(cat "$LOCK.d/pid" 2>/dev/null || true)
    if [ -n "$holder" ] && kill -0 "$holder" 2>/dev/null; then
      log "another bakery-firstboot run (pid $holder) holds $LOCK.d; not starting a second one"
      exit 0
    fi
    log "removing the stale lock $LOCK.d (pid ${holder:-unknown} is gone)"
    rm -rf "$LOCK.d"
    mkdir "$LOCK.d" 2>/dev/null || { log "another bakery-firstboot run took $LOCK.d"; exit 0; }
  fi
  LOCKDIR="$LOCK.d"
  echo "$$" >"$LOCKDIR/pid"
fi
# A run that held the lock until a moment ago may have done the job.
if [ ! -e "$SENTINEL" ]; then
  log "another run removed $SENTINEL: nothing to do"
  exit 0
fi

on_exit() {
  local rc=$?
  trap - EXIT
  # The validator key is only needed to register: never leave it on disk.
  rm -f "$VALIDATOR_PEM"
  if [ "$rc" -ne 0 ]; then
    [ -n "$FAIL" ] || FAIL="$STEP failed (exit $rc)"
    alert "$rc"
  fi
  if [ -n "$LOCKDIR" ]; then
    rm -rf "$LOCKDIR"
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

log "first boot of role $ROLE"
read_metadata
NODE_NAME="$ROLE-$INSTANCE_ID"
ensure_chef

step "fetching the run list $RUNLIST_S3"
mkdir -p "$CHEF_DIR"
rm -f "$RUNLIST_JSON"
if ! err=$(awsc s3 cp --only-show-errors --region "$REGION" "$RUNLIST_S3" "$RUNLIST_JSON" 2>&1); then
  fail "the run list $RUNLIST_S3 is missing or unreadable (upload {\"run_list\": [...]} there): ${err##*$'\n'}"
fi
grep -q '"run_list"' "$RUNLIST_JSON" || fail "the run list $RUNLIST_S3 has no \"run_list\" key"

fetch_validator
write_client_rb "$NODE_NAME"
fetch_license_key
step "running $CHEF_BIN as $NODE_NAME with the run list from $RUNLIST_S3"
rc=0
# 9>&-: a service Chef starts must not inherit (and so hold) the lock.
chef_run -c "$CLIENT_RB" -j "$RUNLIST_JSON" 9>&- || rc=$?
if [ "$rc" -ne 0 ]; then
  FAIL="$CHEF_BIN exited $rc"
  log "FAILED: $FAIL"
  exit "$rc"
fi
rm -f "$SENTINEL"
log "first boot of $NODE_NAME succeeded; removed $SENTINEL"
