#!/bin/sh
# Wait until the control plane's API server is ready, before a worker joins it:
#   wait-control-plane.sh ADDRESS KEY KNOWN_HOSTS [USER [PORT [TRIES [INTERVAL]]]]
# Asks over SSH as USER (default vagrant), with kubectl and USER's ~/.kube/config (the
# control plane's provisioner writes it after `k8s-sql init`), for /readyz until it
# answers "ok": admin.conf alone exists before the API server is up, and libvirt starts
# the VMs in parallel. The host key scanned on first contact goes to KNOWN_HOSTS (a private
# playground network: trusted on first use). TRIES (180) times INTERVAL (10) seconds at most —
# a fresh control plane installs its packages and builds the shim image first, which took
# longer than 15 minutes on a slow host; exit 1 when it did not come up.
set -eu
[ $# -ge 3 ] || { echo "usage: wait-control-plane.sh ADDRESS KEY KNOWN_HOSTS [USER [PORT [TRIES [INTERVAL]]]]" >&2; exit 2; }
address=$1 key=$2 known_hosts=$3 user=${4:-vagrant} port=${5:-22} tries=${6:-180} interval=${7:-10}
i=0
while :; do
  if ssh-keyscan -T 5 -p "$port" "$address" >"$known_hosts.new" 2>/dev/null && [ -s "$known_hosts.new" ] &&
     ready=$(ssh -i "$key" -p "$port" -o UserKnownHostsFile="$known_hosts.new" -o BatchMode=yes \
               -o ConnectTimeout=10 "$user@$address" \
               'kubectl --kubeconfig "$HOME/.kube/config" get --raw /readyz --request-timeout=10s' 2>/dev/null) &&
     [ "$ready" = ok ]; then
    mv "$known_hosts.new" "$known_hosts"
    exit 0
  fi
  i=$((i + 1))
  if [ "$i" -ge "$tries" ]; then
    rm -f "$known_hosts.new"
    echo "the control plane $address did not become ready (/readyz) within $((tries * interval)) s" >&2
    exit 1
  fi
  sleep "$interval"
done
