#!/bin/bash
# AMI Bakery launch of role 'batch' (no baked image): register with Chef as ROLE-INSTANCE_ID and
# run the launch run list; tags bakery:bootstrap, and sends one SNS alert on failure.
set -Eeuo pipefail
umask 022
PROG=bakery-launch
# shellcheck shell=bash
# AMI Bakery: role 'batch' settings + functions of the instance scripts. Test seams: BAKERY_ROOT
# (prefix of every path written), BAKERY_IMDS_URL, AWS_ENDPOINT_URL; tools from PATH.
ROLE='batch'
CHEF_SERVER_URL='https://chef.example.com/organizations/acme'
CHEF_VALIDATOR='acme-validator'
CHEF_VALIDATOR_KEY_S3='s3://acme-bakery/chef/validator.pem'
CHEF_VERSION='18.8'
CHEF_INSTALLER_URL='https://chefdownload-commercial.chef.io/install.sh'
# cinc (community build: cinc-client in /opt/cinc) or chef (licensed: chef-client in /opt/chef).
CHEF_DISTRIBUTION='chef'
CHEF_PREINSTALLED='no'
CHEF_LICENSE_S3=''
CHEF_LICENSE_SSM='/acme/chef/license-key'
AWS_CLI_INSTALLER_URL='https://awscli.amazonaws.com/awscli-exe-linux-{arch}.zip'
ALERT_TOPIC_ARN='arn:aws:sns:us-east-1:123456789012:bakery-alerts'
ALERT_REGION='us-east-1'

PROG=${PROG:-bakery}
ROOT=${BAKERY_ROOT:-/}
ROOT=${ROOT%/}
IMDS=${BAKERY_IMDS_URL:-http://169.254.169.254}
IMDS=${IMDS%/}
if [ -n "${BAKERY_IMDS_URL:-}" ]; then
  # The CLI's instance-role credentials must come from the same metadata service.
  export AWS_EC2_METADATA_SERVICE_ENDPOINT="${AWS_EC2_METADATA_SERVICE_ENDPOINT:-$IMDS}"
fi
# Appended, so tools earlier on PATH win: the omnibus client, and the AWS CLI where bases put it (AWS's
# installer links /usr/local/bin/aws, the snap /snap/bin/aws, Amazon Linux 1 /opt/aws/bin).
PATH="$PATH:/usr/local/bin:/usr/local/sbin:/opt/$CHEF_DISTRIBUTION/bin:/snap/bin:/usr/local/aws-cli/v2/current/bin:/opt/aws/bin"
CHEF_BIN='chef-client'
# Chef 18+ asks to accept its license; Cinc ignores this.
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

# Ends the script (from its EXIT trap) once the log's tee has written everything: when a service's main
# process exits, systemd kills what is left in its control group -- a tee still holding the last lines
# included. TEE_PID is $! right after `exec > >(tee ...)`; bash before 4.4 cannot wait for it.
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
# Give up with a reason; the caller's EXIT trap reports it.
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
# awscli v1 before 1.29 ignores AWS_ENDPOINT_URL: pass it on explicitly.
awsc() {
  if [ -n "${AWS_ENDPOINT_URL:-}" ]; then
    aws --endpoint-url "$AWS_ENDPOINT_URL" "$@"
  else
    aws "$@"
  fi
}

# IMDSv2: a session token first, then every read carries it.
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

# The instance scripts talk to AWS through the CLI; many bases (Debian's cloud images, RHEL, SUSE) have
# none. The distribution's package first (Debian/Ubuntu awscli, Amazon Linux/Fedora awscli), else AWS's
# documented bundled installer (a zip with aws/install) from AWS_CLI_INSTALLER_URL ({arch}: uname -m).
# Returns non-zero (the caller decides) when neither gives a working `aws`.
ensure_aws_cli() {
  command -v aws >/dev/null 2>&1 && return 0
  # Packages install into the running system only, never a mounted image or sandbox (BAKERY_ROOT).
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

# A tag value, safe in a JSON string too: printable ASCII without " or \, at most 255 characters.
clean() {
  local s
  s=$(printf '%s' "$*" | LC_ALL=C tr -c '[:print:]' ' ')
  s=${s//[\"\\]/\'}
  printf '%s' "${s:0:255}"
}
tag_self() {
  retry awsc ec2 create-tags --region "$REGION" --resources "$INSTANCE_ID" --tags \
    "$(printf '[{"Key":"bakery:bootstrap","Value":"%s"},{"Key":"bakery:bootstrap-detail","Value":"%s"}]' \
      "$(clean "$1")" "$(clean "$2")")"
}

# One SNS alert: role, instance, region, exit code, reason, last log lines. A single attempt (the CLI
# retries throttling): a blind retry could alert twice.
alert() {
  local subject body
  subject="bakery: $WHAT of $ROLE failed on ${INSTANCE_ID:-unknown instance}"
  body=$(printf 'AMI Bakery: %s of role %s failed.\n\nInstance:  %s\nRegion:    %s\nExit code: %s\nReason:    %s\n%s\nLog:       %s\n\nLast log lines:\n%s\n' \
    "$WHAT" "$ROLE" "${INSTANCE_ID:-unknown}" "${REGION:-unknown}" "$1" "$FAIL" "${ALERT_NOTE:-}" "$LOG" \
    "$(tail -n 30 "$LOG" 2>/dev/null || true)")
  if awsc sns publish --region "$ALERT_REGION" --topic-arn "$ALERT_TOPIC_ARN" \
    --subject "${subject:0:100}" --message "$body" >/dev/null; then
    log "alert published to $ALERT_TOPIC_ARN"
  else
    log "could not publish the alert to $ALERT_TOPIC_ARN"
  fi
}

# A Ruby single-quoted string: only \ and ' are special there.
rbq() {
  local s=${1//\\/\\\\}
  printf "'%s'" "${s//\'/\\\'}"
}

# The licensed Chef's key, from S3 or SSM with the instance role: kept in memory, never on disk.
fetch_license_key() {
  [ "$CHEF_DISTRIBUTION" = chef ] || return 0
  [ -n "$CHEF_LICENSE_KEY_VALUE" ] && return 0
  if [ -n "$CHEF_LICENSE_S3" ]; then
    step "fetching the Chef license key $CHEF_LICENSE_S3"
    CHEF_LICENSE_KEY_VALUE=$(awsc s3 cp --only-show-errors --region "$REGION" "$CHEF_LICENSE_S3" -) ||
      fail "cannot fetch the Chef license key $CHEF_LICENSE_S3 with the instance role"
  elif [ -n "$CHEF_LICENSE_SSM" ]; then
    step "fetching the Chef license key from SSM parameter $CHEF_LICENSE_SSM"
    CHEF_LICENSE_KEY_VALUE=$(awsc ssm get-parameter --region "$REGION" --name "$CHEF_LICENSE_SSM" \
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
  # Downloaded whole before it runs: a cut-off pipe into bash would run half a script. A license
  # key goes in curl's config on stdin, not on its command line (ps would show it).
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

# Runs the distribution's client; licensed Chef gets its key in the environment only.
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
  (umask 077 && awsc s3 cp --only-show-errors --region "$REGION" "$CHEF_VALIDATOR_KEY_S3" "$VALIDATOR_PEM") ||
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
RUN_LIST_JSON='{"run_list":["recipe[roles::batch_launch]"]}'
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
