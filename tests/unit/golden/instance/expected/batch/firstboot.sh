#!/bin/bash
# bakery-firstboot (AMI Bakery, role 'batch'): while /firstboot.txt exists, register this instance
# with Chef as ROLE-INSTANCE_ID and run the role's run list from S3; success removes the file,
# failure keeps it (the next boot retries) and sends one SNS alert. Log /var/log/bakery-firstboot.log.
# Boot test (the user data says "# bakery:boot-test"): the same path with the node name, run list and
# why-run mode the user data gives, then its health command; the result is tagged on the instance
# (bakery:boot-test=passed|failed) instead of alerting, and /firstboot.txt stays.
set -Eeuo pipefail
umask 022
PROG=bakery-firstboot
LIB=${BAKERY_ROOT:-/}
# shellcheck source=bakery-lib.sh
. "${LIB%/}/usr/local/lib/bakery/bakery-lib.sh"
RUNLIST_S3='s3://acme-bakery/runlists/batch.json'
RUNLIST_JSON="$CHEF_DIR/first-boot.json"
SENTINEL="$ROOT/firstboot.txt"
LOG="$ROOT/var/log/bakery-firstboot.log"
LOCK="$ROOT/var/lock/bakery-firstboot.lock"
WHAT="first boot"
ALERT_NOTE="$SENTINEL is kept: the next boot retries."

BOOT_TEST=no
REPORTED=no
BOOT_TEST_NODE=""
BOOT_TEST_WHY_RUN=yes
BOOT_TEST_RUN_LIST=""
BOOT_TEST_COMMAND=""
imds_user_data() {
  local code
  code=$(curl -sS --max-time 5 -o "$1" -w '%{http_code}' -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" \
    "$IMDS/latest/user-data") || return 1
  case "$code" in
    200 | 404) printf '%s' "$code" ;;
    *) return 1 ;;
  esac
}
boot_test_value() {
  sed -n "s/^# bakery:boot-test-$1=//p" "$2" | head -n 1
}
read_boot_test() {
  local ud code
  ud=$(mktemp)
  code=$(retry imds_user_data "$ud") || { rm -f "$ud"; fail "cannot read the user data from $IMDS"; }
  if [ "$code" != 200 ] || ! grep -qx '# bakery:boot-test' "$ud"; then
    rm -f "$ud"
    return 0
  fi
  BOOT_TEST=yes
  BOOT_TEST_NODE=$(boot_test_value node "$ud")
  BOOT_TEST_WHY_RUN=$(boot_test_value why-run "$ud")
  BOOT_TEST_RUN_LIST=$(boot_test_value run-list "$ud" | base64 -d) || BOOT_TEST_RUN_LIST=""
  BOOT_TEST_COMMAND=$(boot_test_value command "$ud" | base64 -d) || BOOT_TEST_COMMAND=""
  rm -f "$ud"
  case "$BOOT_TEST_NODE" in
    "" | *[!A-Za-z0-9_.:-]*) fail "boot test: the user data names no valid Chef node (bakery:boot-test-node)" ;;
  esac
  local health=none
  [ -z "$BOOT_TEST_COMMAND" ] || health=given
  log "boot test: Chef node $BOOT_TEST_NODE, why-run $BOOT_TEST_WHY_RUN, run list ${BOOT_TEST_RUN_LIST:-from S3}, health command $health"
}
tag_boot_test() {
  retry awsc ec2 create-tags --region "$REGION" --resources "$INSTANCE_ID" --tags \
    "$(printf '[{"Key":"bakery:boot-test","Value":"%s"},{"Key":"bakery:boot-test-detail","Value":"%s"}]' \
      "$(clean "$1")" "$(clean "$2")")"
}

if [ ! -e "$SENTINEL" ]; then
  log "no $SENTINEL: first boot is done, nothing to do"
  exit 0
fi
mkdir -p "${LOG%/*}" "${LOCK%/*}"
(umask 077 && touch "$LOG")
chmod 600 "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

LOCKDIR=""
if command -v flock >/dev/null 2>&1; then
  exec 9>>"$LOCK"
  if ! flock -n 9; then
    log "another bakery-firstboot run holds $LOCK; not starting a second one"
    exit 0
  fi
else
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
if [ ! -e "$SENTINEL" ]; then
  log "another run removed $SENTINEL: nothing to do"
  exit 0
fi

on_exit() {
  local rc=$?
  trap - EXIT
  rm -f "$VALIDATOR_PEM"
  if [ "$REPORTED" = yes ]; then
    rc=0  # the result is tagged; what the shutdown did to the log afterwards changes nothing
  fi
  if [ "$rc" -ne 0 ]; then
    [ -n "$FAIL" ] || FAIL="$STEP failed (exit $rc)"
    if [ "$BOOT_TEST" = yes ]; then
      tag_boot_test failed "$FAIL" || log "could not tag bakery:boot-test=failed on $INSTANCE_ID"
    else
      image_bake=$(sed -n 's/.*"bake_id": *"\([A-Za-z0-9_.-]*\)".*/\1/p' "$ROOT/etc/bakery/image.json" 2>/dev/null | head -n 1) || image_bake=""
      tail_uri=""
      [ -z "$INSTANCE_ID" ] ||
        tail_uri=$(upload_log_tail "$LOG" "${image_bake:-unknown-bake}/firstboot/$INSTANCE_ID.log") || tail_uri=""
      alert "$rc" "$tail_uri"
    fi
  fi
  if [ -n "$LOCKDIR" ]; then
    rm -rf "$LOCKDIR"
  fi
  finish "$rc"
}
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

log "first boot of role $ROLE"
read_metadata
read_boot_test
ensure_aws_cli || fail "no AWS CLI on this image and none could be installed"
NODE_NAME="$ROLE-$INSTANCE_ID"
CHEF_ARGS=()
CHEF_MODE=""
if [ "$BOOT_TEST" = yes ]; then
  WHAT="boot test"
  NODE_NAME=$BOOT_TEST_NODE
  [ "$BOOT_TEST_WHY_RUN" = no ] || CHEF_ARGS+=(--why-run)
  [ -z "$BOOT_TEST_RUN_LIST" ] || CHEF_ARGS+=(-o "$BOOT_TEST_RUN_LIST")
  CHEF_MODE=" ${CHEF_ARGS[*]+${CHEF_ARGS[*]}}"
  CHEF_MODE=${CHEF_MODE% }
fi
ensure_chef

step "fetching the run list $RUNLIST_S3"
mkdir -p "$CHEF_DIR"
rm -f "$RUNLIST_JSON"
errf=$(mktemp)
rc=0
role_aws s3 cp --only-show-errors --region "$REGION" "$RUNLIST_S3" "$RUNLIST_JSON" 2>"$errf" || rc=$?
err=$(cat "$errf")
rm -f "$errf"
[ -z "$err" ] || printf '%s\n' "$err" >&2
if [ "$rc" -ne 0 ]; then
  fail "the run list $RUNLIST_S3 is missing or unreadable (upload {\"run_list\": [...]} there): ${err##*$'\n'}"
fi
grep -q '"run_list"' "$RUNLIST_JSON" || fail "the run list $RUNLIST_S3 has no \"run_list\" key"

fetch_validator
write_client_rb "$NODE_NAME"
fetch_license_key
step "running $CHEF_BIN$CHEF_MODE as $NODE_NAME with the run list from $RUNLIST_S3"
rc=0
chef_run -c "$CLIENT_RB" -j "$RUNLIST_JSON" ${CHEF_ARGS[@]+"${CHEF_ARGS[@]}"} 9>&- || rc=$?
if [ "$rc" -ne 0 ]; then
  FAIL="$CHEF_BIN$CHEF_MODE exited $rc"
  fatal=$(grep -a 'FATAL: ' "$LOG" | tail -n 1 || true)
  [ -z "$fatal" ] || FAIL="$FAIL: ${fatal##*FATAL: }"
  log "FAILED: $FAIL"
  exit "$rc"
fi
if [ "$BOOT_TEST" = yes ]; then
  detail="$CHEF_BIN$CHEF_MODE succeeded as $NODE_NAME"
  if [ -n "$BOOT_TEST_COMMAND" ]; then
    step "boot test: running the health command"
    rc=0
    bash -c "$BOOT_TEST_COMMAND" 9>&- || rc=$?
    [ "$rc" -eq 0 ] || fail "the health command exited $rc ($detail)"
    detail="$detail; health command passed"
  fi
  trap '' TERM
  tag_boot_test passed "$detail" || fail "cannot tag bakery:boot-test=passed on $INSTANCE_ID"
  REPORTED=yes
  log "boot test of $NODE_NAME passed ($detail); $SENTINEL kept"
  exit 0
fi
rm -f "$SENTINEL"
log "first boot of $NODE_NAME succeeded; removed $SENTINEL"
