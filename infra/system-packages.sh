#!/bin/sh
# Installs the Debian packages listed in infra/system-packages.txt that are not installed yet
# (`make test` runs this first). As root it runs apt-get; otherwise it prints the command to run
# and fails. Services the packages bring (prometheus) are not started: the tests start their own.
set -eu
list="$(dirname "$0")/system-packages.txt"
missing=""
for package in $(sed -e 's/#.*//' "$list"); do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $package"
  fi
done
[ -z "$missing" ] && exit 0
command="apt-get install -y --no-install-recommends$missing"
if [ "$(id -u)" -ne 0 ]; then
  echo "system packages missing:$missing; run as root: apt-get update && $command" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# no service starts while installing (policy-rc.d 101), unless the machine already has a policy
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && made_policy=1
fi
status=0
wait_lock="-o DPkg::Lock::Timeout=600"  # another apt run on the machine: wait for it, do not fail
{ apt-get $wait_lock update -q && apt-get $wait_lock install -y --no-install-recommends $missing; } || status=$?
[ -n "$made_policy" ] && rm -f "$policy"
exit "$status"
