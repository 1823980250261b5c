#!/bin/bash
# AMI Bakery bake of role 'batch', unpacked and run by the bake user data as
# /var/lib/bakery/bake.sh: Chef runs the ami run list (nothing is started), then the first-boot
# mechanism + /firstboot.txt go in, this instance's Chef identity goes out, and the instance tags itself
# bakery:bootstrap=succeeded|failed. A converge that asks for a reboot (exit 35/37) reboots and
# continues through a one-shot systemd unit; success is tagged only after the last converge. No
# secrets here: the validator key comes from S3. The image keeps only a short root-only summary log.
set -Eeuo pipefail
umask 022
PROG=bakery-bake
LIB=${BAKERY_ROOT:-/}
LIB="${LIB%/}"'/usr/local/lib/bakery/bakery-lib.sh'
mkdir -p "${LIB%/*}"
cat >"$LIB" <<'BAKERY_FILE_END'
# shellcheck shell=bash
# AMI Bakery: role 'batch' settings + functions of the instance scripts. Test seams: BAKERY_ROOT
ROLE='batch'
CHEF_SERVER_URL='https://chef.example.com/organizations/acme'
CHEF_VALIDATOR='acme-validator'
CHEF_VALIDATOR_KEY_S3='s3://acme-bakery/chef/validator.pem'
CHEF_VERSION='18.8'
CHEF_INSTALLER_URL='https://chefdownload-commercial.chef.io/install.sh'
CHEF_DISTRIBUTION='chef'
CHEF_PREINSTALLED='no'
CHEF_LICENSE_S3=''
CHEF_LICENSE_SSM='/acme/chef/license-key'
AWS_CLI_INSTALLER_URL='https://awscli.amazonaws.com/awscli-exe-linux-{arch}.zip'
ALERT_TOPIC_ARN='arn:aws:sns:us-east-1:123456789012:bakery-alerts'
ALERT_REGION='us-east-1'
RECORDS_BUCKET='acme-bakery'
RECORDS_PREFIX='bakes/batch/'

PROG=${PROG:-bakery}
ROOT=${BAKERY_ROOT:-/}
ROOT=${ROOT%/}
IMDS=${BAKERY_IMDS_URL:-http://169.254.169.254}
IMDS=${IMDS%/}
if [ -n "${BAKERY_IMDS_URL:-}" ]; then
  export AWS_EC2_METADATA_SERVICE_ENDPOINT="${AWS_EC2_METADATA_SERVICE_ENDPOINT:-$IMDS}"
fi
PATH="$PATH:/usr/local/bin:/usr/local/sbin:/opt/$CHEF_DISTRIBUTION/bin:/snap/bin:/usr/local/aws-cli/v2/current/bin:/opt/aws/bin"
CHEF_BIN='chef-client'
export PATH CHEF_LICENSE=accept-no-persist
CHEF_LICENSE_KEY_VALUE=""
CHEF_DIR="$ROOT/etc/chef"
CLIENT_RB="$CHEF_DIR/client.rb"
CLIENT_PEM="$CHEF_DIR/client.pem"
VALIDATOR_PEM="$CHEF_DIR/validation.pem"
INSTANCE_ID=""
REGION=""
STEP="starting"
FAIL=""

finish() {
  exec >&- 2>&-
  [ -z "${TEE_PID:-}" ] || wait "$TEE_PID" 2>/dev/null || true
  exit "$1"
}
log() { printf '%s %s: %s\n' "$(date -u +%FT%TZ)" "$PROG" "$*"; }
step() {
  STEP=$*
  log "$STEP"
}
fail() {
  FAIL=$*
  log "FAILED: $FAIL"
  exit 1
}
retry() {
  local n=1
  until "$@"; do
    [ "$n" -ge 6 ] && return 1
    sleep $((n * 2))
    n=$((n + 1))
  done
}
awsc() {
  if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
    aws --endpoint-url "$AWS_ENDPOINT_URL" "$@"
  else
    aws "$@"
  fi
}

role_aws() {
  local err n=1 rc waited=0
  err=$(mktemp) || err=/dev/null
  while :; do
    rc=0
    awsc "$@" 2>"$err" || rc=$?
    if [ "$rc" -eq 0 ]; then
      [ "$err" = /dev/null ] || rm -f "$err"
      return 0
    fi
    if ! refused "$err" || [ "$n" -ge 6 ]; then
      break
    fi
    log "aws $1 $2 refused for the instance role ($(refusal "$err")): IAM may not have propagated its policy yet; try $((n + 1)) of 6 in $((n * 2)) s" >&2
    sleep $((n * 2))
    waited=$((waited + n * 2))
    n=$((n + 1))
  done
  if refused "$err"; then
    printf 'aws %s %s refused for the instance role %s times over %s s, so not for IAM propagation: its policy does not allow it (%s)\n' \
      "$1" "$2" "$n" "$waited" "$(grep -v '^[[:space:]]*$' "$err" | tail -n 1)" >&2
  else
    cat "$err" >&2
  fi
  [ "$err" = /dev/null ] || rm -f "$err"
  return "$rc"
}
refused() {
  grep -qE 'AccessDenied|UnauthorizedOperation|AuthorizationError|\(403\)|Forbidden|is not authorized' "$1"
}
refusal() {
  grep -oE 'AccessDeniedException|AccessDenied|UnauthorizedOperation|AuthorizationError|Forbidden' "$1" | head -n 1
}

imds_token() {
  curl -fsS --max-time 5 -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 21600' "$IMDS/latest/api/token"
}
imds() {
  curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $IMDS_TOKEN" "$IMDS/latest/$1"
}
read_metadata() {
  step "reading instance metadata from $IMDS"
  IMDS_TOKEN=$(retry imds_token) || fail "no IMDSv2 token from $IMDS"
  INSTANCE_ID=$(retry imds meta-data/instance-id) || fail "no instance id from $IMDS"
  REGION=$(retry imds meta-data/placement/region) || fail "no region from $IMDS"
  log "instance $INSTANCE_ID in $REGION"
}

ensure_aws_cli() {
  command -v aws >/dev/null 2>&1 && return 0
  [ -z "$ROOT" ] || { log "no aws on PATH, and $ROOT is not the running system: not installing it"; return 1; }
  step "installing the AWS CLI (the base image has none)"
  local rc=0
  if command -v apt-get >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive retry apt-get update -q || rc=$?
    [ "$rc" -ne 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends awscli || rc=$?
  elif command -v dnf >/dev/null 2>&1; then
    dnf install -y -q awscli || rc=$?
  elif command -v yum >/dev/null 2>&1; then
    yum install -y -q awscli || rc=$?
  elif command -v zypper >/dev/null 2>&1; then
    zypper --non-interactive install aws-cli || rc=$?
  fi
  hash -r
  command -v aws >/dev/null 2>&1 && { log "AWS CLI installed from the distribution's package"; return 0; }
  log "no AWS CLI package (exit $rc): trying AWS's installer"
  local url=${AWS_CLI_INSTALLER_URL//\{arch\}/$(uname -m)} dir
  command -v unzip >/dev/null 2>&1 || { log "cannot unpack $url: no unzip"; return 1; }
  dir=$(mktemp -d)
  if retry curl -fsSL --max-time 300 -o "$dir/awscliv2.zip" "$url" && unzip -q "$dir/awscliv2.zip" -d "$dir" &&
    "$dir/aws/install" --update >/dev/null; then
    rm -rf "$dir"
    hash -r
    command -v aws >/dev/null 2>&1 && { log "AWS CLI installed from $url"; return 0; }
  fi
  rm -rf "$dir"
  log "cannot install the AWS CLI from $url"
  return 1
}

clean() {
  local s
  s=$(printf '%s' "$*" | LC_ALL=C tr -c '[:print:]' ' ')
  s=${s//[\"\\]/\'}
  printf '%s' "${s:0:255}"
}
tag_self() {
  local extra=""
  [ -z "${3:-}" ] || extra=$(printf ',{"Key":"bakery:bootstrap-log","Value":"%s"}' "$(clean "$3")")
  local err
  err=$(mktemp) || err=/dev/null
  if retry awsc ec2 create-tags --region "$REGION" --resources "$INSTANCE_ID" --tags \
    "$(printf '[{"Key":"bakery:bootstrap","Value":"%s"},{"Key":"bakery:bootstrap-detail","Value":"%s"}%s]' \
      "$(clean "$1")" "$(clean "$2")" "$extra")" 2>"$err"; then
    [ "$err" = /dev/null ] || rm -f "$err"
    return 0
  fi
  # shellcheck disable=SC2034  # read by bake.sh's exit trap
  grep -qE 'AccessDenied|UnauthorizedOperation' "$err" && TAG_REFUSED=yes
  cat "$err" >&2
  [ "$err" = /dev/null ] || rm -f "$err"
  return 1
}

scrub() {
  sed -E -e '/-----BEGIN [A-Z0-9 ]*PRIVATE[ ]KEY/,/-----END [A-Z0-9 ]*PRIVATE[ ]KEY/d; /^\s*[A-Za-z0-9+\/=]{40,}\s*$/d' \
    -e 's/(AKIA|ASIA)[A-Z0-9]{16}/[removed]/g; s/((password|passwd|secret|token|license_id|license[_-]?key|api_key)"?\s*[:=]\s*)[^[:space:]&,]+/\1[removed]/Ig' |
    awk -v s="${CHEF_LICENSE_KEY_VALUE:-}" 's != "" { while ((i = index($0, s)) > 0) $0 = substr($0, 1, i - 1) "[removed]" substr($0, i + length(s)) } { print }'
}
put_record() {
  role_aws s3 cp --only-show-errors --region "$REGION" --sse AES256 --content-type "$3" "$1" "s3://$RECORDS_BUCKET/$2" >&2 &&
    printf 's3://%s/%s' "$RECORDS_BUCKET" "$2"
}
upload_log_tail() {
  local f
  f=$(mktemp) || return 0
  tail -n 60 "$1" 2>/dev/null | cut -c 1-500 | scrub >"$f" || true
  put_record "$f" "$RECORDS_PREFIX$2" text/plain || log "could not upload the tail of $1" >&2
  rm -f "$f"
}

alert() {
  local subject body
  subject="bakery: $WHAT of $ROLE failed on ${INSTANCE_ID:-unknown instance}"
  body=$(printf 'AMI Bakery: %s of role %s failed.\n\nInstance:  %s\nRegion:    %s\nExit code: %s\nReason:    %s\n%s\nLog:       %s\nLog tail:  %s\n\nLast log lines:\n%s\n' \
    "$WHAT" "$ROLE" "${INSTANCE_ID:-unknown}" "${REGION:-unknown}" "$1" "$FAIL" "${ALERT_NOTE:-}" "$LOG" \
    "${2:-not uploaded}" "$(tail -n 30 "$LOG" 2>/dev/null | scrub || true)")
  local err
  err=$(mktemp) || err=/dev/null
  local rc=0
  role_aws sns publish --region "$ALERT_REGION" --topic-arn "$ALERT_TOPIC_ARN" \
    --subject "${subject:0:100}" --message "$body" >/dev/null 2>"$err" || rc=$?
  cat "$err" 2>/dev/null || true
  if [ "$rc" -eq 0 ]; then
    log "alert published to $ALERT_TOPIC_ARN"
  elif grep -q 'refused for the instance role' "$err" 2>/dev/null; then
    log "could not publish the alert to $ALERT_TOPIC_ARN: the instance role may not sns:Publish to it (statement AlertOnFailure of the role's instance policy)"
  else
    log "could not publish the alert to $ALERT_TOPIC_ARN"
  fi
  [ "$err" = /dev/null ] || rm -f "$err"
}

rbq() {
  local s=${1//\\/\\\\}
  printf "'%s'" "${s//\'/\\\'}"
}

fetch_license_key() {
  [ "$CHEF_DISTRIBUTION" = chef ] || return 0
  [ -n "$CHEF_LICENSE_KEY_VALUE" ] && return 0
  if [ -n "$CHEF_LICENSE_S3" ]; then
    step "fetching the Chef license key $CHEF_LICENSE_S3"
    CHEF_LICENSE_KEY_VALUE=$(role_aws s3 cp --only-show-errors --region "$REGION" "$CHEF_LICENSE_S3" -) ||
      fail "cannot fetch the Chef license key $CHEF_LICENSE_S3 with the instance role"
  elif [ -n "$CHEF_LICENSE_SSM" ]; then
    step "fetching the Chef license key from SSM parameter $CHEF_LICENSE_SSM"
    CHEF_LICENSE_KEY_VALUE=$(role_aws ssm get-parameter --region "$REGION" --name "$CHEF_LICENSE_SSM" \
      --with-decryption --query Parameter.Value --output text) ||
      fail "cannot read the Chef license key from SSM parameter $CHEF_LICENSE_SSM with the instance role"
  fi
  CHEF_LICENSE_KEY_VALUE=$(printf '%s' "$CHEF_LICENSE_KEY_VALUE" | tr -d '[:space:]')
}

ensure_chef() {
  command -v "$CHEF_BIN" >/dev/null 2>&1 && return 0
  if [ "$CHEF_PREINSTALLED" = yes ]; then
    fail "chef.preinstalled is true but $CHEF_BIN is neither on PATH nor in /opt/$CHEF_DISTRIBUTION/bin of the base AMI"
  fi
  fetch_license_key
  step "installing $CHEF_DISTRIBUTION client $CHEF_VERSION from $CHEF_INSTALLER_URL"
  local installer
  installer=$(mktemp)
  local rc=0
  if [ -n "$CHEF_LICENSE_KEY_VALUE" ]; then
    printf 'url = "%s?license_id=%s"\n' "$CHEF_INSTALLER_URL" "$CHEF_LICENSE_KEY_VALUE" |
      retry curl -fsSL --max-time 300 -o "$installer" -K - || rc=$?
  else
    retry curl -fsSL --max-time 300 -o "$installer" "$CHEF_INSTALLER_URL" || rc=$?
  fi
  [ "$rc" -eq 0 ] || { rm -f "$installer"; fail "cannot download $CHEF_INSTALLER_URL"; }
  bash "$installer" -P "$CHEF_DISTRIBUTION" -v "$CHEF_VERSION" || rc=$?
  rm -f "$installer"  # nothing of the installer stays in /tmp (or the image)
  [ "$rc" -eq 0 ] || fail "the $CHEF_DISTRIBUTION installer exited $rc"
  hash -r
  command -v "$CHEF_BIN" >/dev/null 2>&1 || fail "$CHEF_BIN is not on PATH after installing"
}

chef_run() {
  if [ -n "$CHEF_LICENSE_KEY_VALUE" ]; then
    CHEF_LICENSE_KEY="$CHEF_LICENSE_KEY_VALUE" "$CHEF_BIN" "$@"
  else
    "$CHEF_BIN" "$@"
  fi
}

fetch_validator() {
  step "fetching the validator key $CHEF_VALIDATOR_KEY_S3"
  mkdir -p "$CHEF_DIR"
  (umask 077 && role_aws s3 cp --only-show-errors --region "$REGION" "$CHEF_VALIDATOR_KEY_S3" "$VALIDATOR_PEM") ||
    fail "cannot fetch the validator key $CHEF_VALIDATOR_KEY_S3 with the instance role"
  chmod 600 "$VALIDATOR_PEM"
}

write_client_rb() {
  mkdir -p "$CHEF_DIR"
  {
    printf 'chef_server_url %s\n' "$(rbq "$CHEF_SERVER_URL")"
    printf 'node_name %s\n' "$(rbq "$1")"
    printf 'validation_client_name %s\n' "$(rbq "$CHEF_VALIDATOR")"
    printf 'validation_key %s\n' "$(rbq "$VALIDATOR_PEM")"
    printf 'client_key %s\n' "$(rbq "$CLIENT_PEM")"
    printf 'log_location STDOUT\n'
  } >"$CLIENT_RB"
  log "wrote $CLIENT_RB for Chef node $1"
}
BAKERY_FILE_END
# shellcheck source=bakery-lib.sh
. "$LIB"
NODE_NAME='bake-batch-render'
BAKE_ID='render'
RUN_LIST='recipe[roles::batch_ami]'
IMAGE_INFO='{"bake_id":"render","bakery_version":"0.1.0","chef_node":"bake-batch-render","release":"unreleased","role":"batch"}'
LOG="$ROOT/var/log/bakery-bake.log"
RESUME_DIR="$ROOT/var/lib/bakery"
RESUME_SCRIPT="$RESUME_DIR/bake.sh"
RESUME_COUNT="$RESUME_DIR/bake-reboots"
RESUME_UNIT=bakery-bake-resume.service
MAX_REBOOTS=5
REBOOTING=no
POWER_OFF=no
REPORTED=no
mkdir -p "${LOG%/*}"
(umask 077 && touch "$LOG")
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

summarize_logs() {
  local summary="$LOG.summary"
  (umask 077 && printf 'AMI Bakery bake of role %s as Chef node %s: %s\nreboots during the converge: %s\nfinished %s\n' \
    "$ROLE" "$NODE_NAME" "$1" "$(cat "$RESUME_COUNT" 2>/dev/null || echo 0)" "$(date -u +%FT%TZ)" >"$summary")
  mv -f "$summary" "$LOG"
  if [ -f "$ROOT/var/log/cloud-init-output.log" ]; then
    : >"$ROOT/var/log/cloud-init-output.log"
  fi
  rm -rf "$ROOT/var/chef/backup" "$ROOT/var/cinc/backup" "$ROOT/var/chef/cache" "$ROOT/var/cinc/cache"
}

on_exit() {
  local rc=$?
  trap - EXIT
  rm -f "$VALIDATOR_PEM"
  if [ "$REPORTED" = yes ]; then
    finish 0  # tagged succeeded; what the shutdown did to the log afterwards changes nothing
  fi
  if [ "$REBOOTING" = yes ] && [ "$rc" -eq 0 ]; then
    finish 0  # the resumed run reports
  fi
  if [ "$rc" -eq 143 ] && resume_armed; then
    log "terminated by the shutdown during: $STEP; the bake continues after the reboot"
    finish 0
  fi
  if [ "$rc" -ne 0 ]; then
    [ -n "$FAIL" ] || FAIL="$STEP failed (exit $rc)"
    log "bake of $ROLE failed: $FAIL"
    local log_uri=""
    if [ -n "$INSTANCE_ID" ] && [ "$POWER_OFF" = no ]; then
      log_uri=$(upload_log_tail "$LOG" "$BAKE_ID/bootstrap-log.txt") || log_uri=""
    fi
    if [ -n "$INSTANCE_ID" ] && [ "$POWER_OFF" = no ] &&
      { [ "${TAG_REFUSED:-no}" = yes ] || ! tag_self failed "$FAIL" "$log_uri"; }; then
      log "could not tag $INSTANCE_ID bakery:bootstrap=failed: powering off so the bakery reports this now"
      POWER_OFF=yes
    fi
    summarize_logs "failed: $FAIL" || true
    disarm_resume
    rm -f "$RESUME_SCRIPT" "$RESUME_COUNT"
    if [ "$POWER_OFF" = yes ]; then
      poweroff || true
    fi
  fi
  finish "$rc"
}
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

live_systemd() {
  [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]
}

resume_armed() {
  [ -f "$ROOT/etc/systemd/system/$RESUME_UNIT" ] && [ -f "$RESUME_SCRIPT" ]
}

arm_resume() {
  [ -f "$RESUME_SCRIPT" ] || fail "$RESUME_SCRIPT is missing: the bake cannot continue after a reboot"
  live_systemd || [ -n "$ROOT" ] || return 0  # no systemd: a reboot request fails the bake (see below)
  mkdir -p "$ROOT/etc/systemd/system"
  cat >"$ROOT/etc/systemd/system/$RESUME_UNIT" <<'UNIT_END'
# AMI Bakery: continues a bake after a reboot requested by its converge; the bake removes this unit.
[Unit]
Description=AMI Bakery bake, continued after a reboot requested by chef-client
Wants=network-online.target
After=network-online.target cloud-init.service
ConditionPathExists=/var/lib/bakery/bake.sh

[Service]
Type=oneshot
ExecStart=/bin/bash /var/lib/bakery/bake.sh
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
UNIT_END
  if live_systemd; then
    systemctl daemon-reload
    systemctl enable "$RESUME_UNIT" 2>&1
  else
    mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
    ln -sfn "/etc/systemd/system/$RESUME_UNIT" "$ROOT/etc/systemd/system/multi-user.target.wants/$RESUME_UNIT"
  fi
}

disarm_resume() {
  rm -f "$ROOT/etc/systemd/system/multi-user.target.wants/$RESUME_UNIT" "$ROOT/etc/systemd/system/$RESUME_UNIT"
  if live_systemd; then
    systemctl daemon-reload || true
  fi
}

reboot_and_resume() {
  local count
  count=$(($(cat "$RESUME_COUNT" 2>/dev/null || echo 0) + 1))
  [ "$count" -le "$MAX_REBOOTS" ] ||
    fail "chef-client still asks for a reboot (exit $1) after $MAX_REBOOTS reboots; giving up"
  resume_armed || fail "chef-client asked for a reboot, but without systemd the bake cannot continue after it"
  step "chef-client exited $1 (reboot requested): rebooting to continue the converge (reboot $count of at most $MAX_REBOOTS)"
  REBOOTING=yes
  reboot || log "reboot: the shutdown is already under way"
  exit 0
}

os_field() { sed -n "s/^$1=//p" "$ROOT/etc/os-release" 2>/dev/null | tr -d '"' | head -n 1; }
inventory_json() {
  local manager=rpm rows
  if command -v dpkg-query >/dev/null 2>&1 && [ -f "$ROOT/var/lib/dpkg/status" ]; then
    manager=dpkg
    # shellcheck disable=SC2016
    rows=$(dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Status}\t${Package}\t${Version}\t${Architecture}\n' |
      sed -n 's/^[^\t]* installed\t//p') || return 1
  elif command -v rpm >/dev/null 2>&1; then
    rows=$(rpm --root "${ROOT:-/}" -qa --qf '%{NAME}\t%|EPOCH?{''%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\t%{ARCH}\n') || return 1
  else
    return 1
  fi
  printf '{"schema": 1, "platform": "linux", "manager": "%s", "role": "%s", "bake_id": "%s", "os": {"id": "%s", "version_id": "%s"}, "packages": [\n' \
    "$manager" "$ROLE" "$BAKE_ID" "$(clean "$(os_field ID)")" "$(clean "$(os_field VERSION_ID)")"
  printf '%s\n' "$rows" | LC_ALL=C sort -u | sed -E 's/["\\]//g; /^$/d; s/^([^\t]*)\t([^\t]*)\t?([^\t]*).*/{"name": "\1", "version": "\2", "arch": "\3"}/' |
    sed '$!s/$/,/'
  printf ']}\n'
}
report_inventory() {
  local doc uri
  doc=$(mktemp) || return 0
  if inventory_json >"$doc" && uri=$(put_record "$doc" "$RECORDS_PREFIX$BAKE_ID/inventory.json" application/json); then
    log "package inventory ($(grep -c '"name"' "$doc") packages) uploaded to $uri"
  else
    log "WARNING: no package inventory (dpkg or rpm) uploaded: the AMI gets no SBOM"
  fi
  rm -f "$doc"
}

put_file() {
  local dest="$ROOT$1"
  mkdir -p "${dest%/*}"
  cat >"$dest.bakery-new"
  chmod "$2" "$dest.bakery-new"
  mv -f "$dest.bakery-new" "$dest"
  log "installed $dest"
}

enable_firstboot() {
  if [ -z "$ROOT" ]; then
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl daemon-reload
      systemctl enable bakery-firstboot.service
    elif command -v chkconfig >/dev/null 2>&1; then
      chkconfig --add bakery-firstboot
      chkconfig bakery-firstboot on
    elif command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d bakery-firstboot defaults
    else
      fail "found neither systemctl, chkconfig nor update-rc.d to enable bakery-firstboot"
    fi
    return 0
  fi
  mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
  ln -sfn /etc/systemd/system/bakery-firstboot.service \
    "$ROOT/etc/systemd/system/multi-user.target.wants/bakery-firstboot.service"
  local rc_dir="$ROOT/etc/rc.d" level
  [ -d "$rc_dir" ] || rc_dir="$ROOT/etc"
  for level in 2 3 4 5; do
    mkdir -p "$rc_dir/rc$level.d"
    ln -sfn ../init.d/bakery-firstboot "$rc_dir/rc$level.d/S99bakery-firstboot"
  done
  log "enabled bakery-firstboot by links under $ROOT/etc"
}

if resume_armed; then
  mkdir -p "$RESUME_DIR"
  echo $(($(cat "$RESUME_COUNT" 2>/dev/null || echo 0) + 1)) >"$RESUME_COUNT"
  log "resumed after reboot $(cat "$RESUME_COUNT")"
fi
log "baking role $ROLE as Chef node $NODE_NAME"
read_metadata
if ! ensure_aws_cli; then
  FAIL="no AWS CLI on the base image and none could be installed (package or $AWS_CLI_INSTALLER_URL)"
  POWER_OFF=yes
  exit 1
fi
ensure_chef
fetch_license_key
fetch_validator
write_client_rb "$NODE_NAME"

step "running $CHEF_BIN with the ami run list $RUN_LIST"
arm_resume
rc=0
chef_run -c "$CLIENT_RB" -o "$RUN_LIST" || rc=$?
case "$rc" in
  0) disarm_resume ;;
  35 | 37) reboot_and_resume "$rc" ;;
  143) exit 143 ;; # chef-client ended by SIGTERM: the OS is going down (on_exit keeps the resume)
  *) fail "$CHEF_BIN exited $rc running the ami run list $RUN_LIST" ;;
esac

step "reporting the installed packages"
report_inventory

step "installing the first-boot mechanism"
put_file '/usr/local/sbin/bakery-firstboot' 755 <<'BAKERY_FILE_END'
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
BAKERY_FILE_END
put_file '/etc/init.d/bakery-firstboot' 755 <<'BAKERY_FILE_END'
#!/bin/bash
# chkconfig: 2345 99 01
# description: AMI Bakery first boot: Chef registration and run list while /firstboot.txt exists
### BEGIN INIT INFO
# Provides:          bakery-firstboot
# Required-Start:    $network $remote_fs $syslog $time
# Required-Stop:
# Should-Start:      cloud-init cloud-config
# Default-Start:     2 3 4 5
# Default-Stop:      0 1 6
# Short-Description: AMI Bakery first boot (role 'batch')
# Description:       Runs /usr/local/sbin/bakery-firstboot while /firstboot.txt exists.
### END INIT INFO
ROOT=${BAKERY_ROOT:-/}
ROOT=${ROOT%/}
EXEC="$ROOT/usr/local/sbin/bakery-firstboot"
SENTINEL="$ROOT/firstboot.txt"
LOCK="$ROOT/var/lock/bakery-firstboot.lock"
LOG="$ROOT/var/log/bakery-firstboot.log"

running() {
  if command -v flock >/dev/null 2>&1; then
    [ -e "$LOCK" ] && ! flock -n "$LOCK" true
  else
    kill -0 "$(cat "$LOCK.d/pid" 2>/dev/null)" 2>/dev/null
  fi
}

case "${1:-}" in
  start | restart | force-reload)
    if [ ! -e "$SENTINEL" ]; then
      echo "bakery-firstboot: first boot already done (no $SENTINEL)"
      exit 0
    fi
    echo "bakery-firstboot: starting (log: $LOG)"
    exec "$EXEC"
    ;;
  stop)
    # A run is one chef-client pass: nothing stays running to stop.
    exit 0
    ;;
  status)
    if running; then
      echo "bakery-firstboot: running (log: $LOG)"
    elif [ -e "$SENTINEL" ]; then
      echo "bakery-firstboot: pending or failed, $SENTINEL is present (log: $LOG)"
      exit 3
    else
      echo "bakery-firstboot: first boot done"
    fi
    ;;
  *)
    echo "Usage: $0 {start|stop|status|restart|force-reload}" >&2
    exit 2
    ;;
esac
BAKERY_FILE_END
put_file '/etc/systemd/system/bakery-firstboot.service' 644 <<'BAKERY_FILE_END'
# AMI Bakery first boot of role 'batch': Chef registration and run list while /firstboot.txt exists.
[Unit]
Description=AMI Bakery first boot (Chef registration and role run list)
Wants=network-online.target
After=network-online.target cloud-init.service
ConditionPathExists=/firstboot.txt

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/bakery-firstboot
RemainAfterExit=no
# The role's first-boot deadline (catalogue bootstrap_timeout, as on Windows): a hung Chef run ends
# (SIGTERM: the script alerts) rather than holding the boot.
TimeoutStartSec=2700s
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
BAKERY_FILE_END
enable_firstboot
mkdir -p "$ROOT/etc/bakery"
printf '%s\n' "$IMAGE_INFO" >"$ROOT/etc/bakery/image.json"
printf 'AMI Bakery: bakery-firstboot registers this instance with Chef while this file exists.\n' \
  >"$ROOT/firstboot.txt"
log "created $ROOT/firstboot.txt"

step "removing this instance's Chef identity from the image"
rm -f "$CLIENT_PEM" "$VALIDATOR_PEM" "$CLIENT_RB" "$CHEF_DIR/first-boot.json"

if [ -s "$ROOT/etc/machine-id" ]; then
  step "clearing the machine id: each instance gets its own at its first boot"
  if [ -d "$ROOT/run/systemd/system" ] || [ -d "$ROOT/lib/systemd/system" ] || [ -d "$ROOT/usr/lib/systemd/system" ]; then
    printf 'uninitialized\n' >"$ROOT/etc/machine-id"
  else
    rm -f "$ROOT/etc/machine-id"
  fi
  [ -L "$ROOT/var/lib/dbus/machine-id" ] || rm -f "$ROOT/var/lib/dbus/machine-id"
fi

step "reporting success"
log "bake of $ROLE succeeded: the bakery now stops and images $INSTANCE_ID"
summarize_logs succeeded
rm -f "$RESUME_SCRIPT" "$RESUME_COUNT"
trap '' TERM
tag_self succeeded "ami run list converged as $NODE_NAME; first boot installed" ||
  fail "could not tag $INSTANCE_ID bakery:bootstrap=succeeded"
REPORTED=yes
