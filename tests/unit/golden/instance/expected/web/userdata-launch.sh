#!/bin/bash
# AMI Bakery launch of role 'web' (no baked image): register with Chef as ROLE-INSTANCE_ID and
# run the launch run list; tags bakery:bootstrap, and sends one SNS alert on failure.
set -Eeuo pipefail
umask 022
PROG=bakery-launch
# shellcheck shell=bash
# AMI Bakery: role 'web' settings + functions of the instance scripts. Test seams: BAKERY_ROOT
ROLE='web'
CHEF_SERVER_URL='https://chef.example.com/organizations/acme'
CHEF_VALIDATOR='acme-validator'
CHEF_VALIDATOR_KEY_S3='s3://acme-bakery/chef/validator.pem'
CHEF_VERSION='18'
CHEF_INSTALLER_URL='https://omnitruck.cinc.sh/install.sh'
CHEF_DISTRIBUTION='cinc'
CHEF_PREINSTALLED='no'
CHEF_LICENSE_S3=''
CHEF_LICENSE_SSM=''
AWS_CLI_INSTALLER_URL='https://awscli.amazonaws.com/awscli-exe-linux-{arch}.zip'
ALERT_TOPIC_ARN='arn:aws:sns:us-east-1:123456789012:bakery-alerts'
ALERT_REGION='us-east-1'
RECORDS_BUCKET='acme-bakery'
RECORDS_PREFIX='bakes/web/'

PROG=${PROG:-bakery}
ROOT=${BAKERY_ROOT:-/}
ROOT=${ROOT%/}
IMDS=${BAKERY_IMDS_URL:-http://169.254.169.254}
IMDS=${IMDS%/}
if [ -n "${BAKERY_IMDS_URL:-}" ]; then
  export AWS_EC2_METADATA_SERVICE_ENDPOINT="${AWS_EC2_METADATA_SERVICE_ENDPOINT:-$IMDS}"
fi
PATH="$PATH:/usr/local/bin:/usr/local/sbin:/opt/$CHEF_DISTRIBUTION/bin:/snap/bin:/usr/local/aws-cli/v2/current/bin:/opt/aws/bin"
CHEF_BIN='cinc-client'
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
RUN_LIST_JSON='{"run_list":["recipe[roles::web_launch]"]}'
RUNLIST_JSON="$CHEF_DIR/first-boot.json"
LOG="$ROOT/var/log/bakery-launch.log"
WHAT="launch"
mkdir -p "${LOG%/*}"
(umask 077 && touch "$LOG")
chmod 600 "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!

on_exit() {
  local rc=$?
  trap - EXIT
  rm -f "$VALIDATOR_PEM"
  if [ "$rc" -ne 0 ]; then
    [ -n "$FAIL" ] || FAIL="$STEP failed (exit $rc)"
    log "launch of $ROLE failed: $FAIL"
    alert "$rc"
    if [ -n "$INSTANCE_ID" ]; then
      tag_self failed "$FAIL" || log "could not tag $INSTANCE_ID"
    fi
  fi
  finish "$rc"
}
trap on_exit EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

log "launching role $ROLE"
read_metadata
ensure_aws_cli || fail "no AWS CLI on the base image and none could be installed (package or $AWS_CLI_INSTALLER_URL)"
NODE_NAME="$ROLE-$INSTANCE_ID"
ensure_chef
fetch_validator
write_client_rb "$NODE_NAME"
printf '%s\n' "$RUN_LIST_JSON" >"$RUNLIST_JSON"

fetch_license_key
step "running $CHEF_BIN as $NODE_NAME with the launch run list"
rc=0
chef_run -c "$CLIENT_RB" -j "$RUNLIST_JSON" || rc=$?
if [ "$rc" -ne 0 ]; then
  FAIL="$CHEF_BIN exited $rc"
  log "FAILED: $FAIL"
  exit "$rc"
fi
# Tagging needs ec2:CreateTags on the instance role; the launch itself has succeeded either way.
tag_self succeeded "launch run list converged as $NODE_NAME" || log "could not tag $INSTANCE_ID (ec2:CreateTags)"
log "launch of $ROLE succeeded as Chef node $NODE_NAME"
