#!/bin/sh
# Provisioner of the k8s-sql playground, run as root inside each VM by Vagrant:
#   provision.sh control-plane IP KUBERNETES_VERSION [WORKERS]
#   provision.sh worker IP KUBERNETES_VERSION CONTROL_PLANE_IP
# Installs k8s-sql from the synced checkout (/vagrant) into a venv, then runs
# `k8s-sql init` (control plane) or `k8s-sql join` (worker). Safe to run again
# (`vagrant provision`): both commands change only what differs.
set -eu
usage() {
  echo "usage: provision.sh control-plane IP VERSION [WORKERS] | worker IP VERSION CONTROL_PLANE_IP" >&2
  exit 2
}
[ $# -ge 3 ] || usage
role=$1 ip=$2 version=$3 cp_ip='' workers=0
case "$role" in
control-plane) workers=${4:-0}; case "$workers" in ''|*[!0-9]*) usage ;; esac ;;
worker) cp_ip=${4:-}; [ -n "$cp_ip" ] || usage ;;
*) usage ;;
esac
# a control plane with workers keeps kubeadm's NoSchedule taint and no bridge network of its own
single_node=true
[ "$role" = control-plane ] && [ "$workers" -eq 0 ] || single_node=false
export DEBIAN_FRONTEND=noninteractive
# unattended-upgrades holds the dpkg lock on a fresh VM's first boot: wait for it; and never
# stop at a conffile prompt (stdin is not a terminal here)
APT_OPTIONS="-o DPkg::Lock::Timeout=600 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold"
FLANNEL_VERSION=${FLANNEL_VERSION:-v0.26.7}
SHARED_KEY=/vagrant/vagrant/.playground/id_ed25519   # made on the host by the Vagrantfile's trigger
KEY=/root/.ssh/k8s-sql-playground-key
KNOWN_HOSTS=/root/.ssh/k8s-sql-playground-known_hosts

if ! command -v python3 >/dev/null || ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  # shellcheck disable=SC2086 # APT_OPTIONS is a list of words
  apt-get $APT_OPTIONS update -qq
  # shellcheck disable=SC2086
  apt-get $APT_OPTIONS install -y -qq python3-venv >/dev/null
fi
[ -x /opt/k8s-sql/bin/pip ] || python3 -m venv /opt/k8s-sql
/opt/k8s-sql/bin/pip install -q --upgrade /vagrant
ln -sf /opt/k8s-sql/bin/k8s-sql /usr/local/bin/k8s-sql

mkdir -p /etc/k8s-sql
cat >/etc/k8s-sql/cluster.yaml <<EOF
apiVersion: k8s-sql.io/v1alpha1
kind: Cluster
node:
  name: $(hostname -s)
  advertiseAddress: $ip
kubernetes:
  version: $version
  singleNode: $single_node
EOF

# every VM has the same NAT address on its first interface: the kubelet must use the
# private one (read by kubeadm's kubelet drop-in). The kubelet package ships this file as a
# conffile; k8s-sql's prereqs installs it with --force-confold, so this content is kept.
echo "KUBELET_EXTRA_ARGS=--node-ip=$ip" >/etc/default/kubelet

case "$role" in
control-plane)
  # the workers' key for `k8s-sql join --control-plane-host vagrant@$ip`
  install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.ssh
  touch /home/vagrant/.ssh/authorized_keys
  grep -qxF "$(cat "$SHARED_KEY.pub")" /home/vagrant/.ssh/authorized_keys ||
    cat "$SHARED_KEY.pub" >>/home/vagrant/.ssh/authorized_keys
  chown vagrant:vagrant /home/vagrant/.ssh/authorized_keys
  chmod 0600 /home/vagrant/.ssh/authorized_keys

  k8s-sql init --config /etc/k8s-sql/cluster.yaml

  # a pod network; flannel's default 10.244.0.0/16 is k8s-sql's default pod subnet
  export KUBECONFIG=/etc/kubernetes/admin.conf
  if ! kubectl get namespace kube-flannel >/dev/null 2>&1; then
    curl -fsSL --proto =https -o /tmp/kube-flannel.yml \
      "https://github.com/flannel-io/flannel/releases/download/$FLANNEL_VERSION/kube-flannel.yml"
    kubectl apply -f /tmp/kube-flannel.yml
    # use the private network, not the NAT interface every VM has
    kubectl -n kube-flannel patch daemonset kube-flannel-ds --type json -p \
      '[{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--iface-regex=^192\\.168\\.56\\."}]'
  fi
  install -d -m 0700 -o vagrant -g vagrant /home/vagrant/.kube
  install -m 0600 -o vagrant -g vagrant /etc/kubernetes/admin.conf /home/vagrant/.kube/config
  ;;
worker)
  install -d -m 0700 /root/.ssh
  install -m 0600 "$SHARED_KEY" "$KEY"
  # the control plane is up before the workers with VirtualBox; libvirt starts VMs in parallel:
  # wait for its API server (/readyz), not only for admin.conf
  sh /vagrant/vagrant/wait-control-plane.sh "$cp_ip" "$KEY" "$KNOWN_HOSTS"
  k8s-sql join --config /etc/k8s-sql/cluster.yaml --control-plane-host "vagrant@$cp_ip" \
    --ssh-key "$KEY" --ssh-known-hosts "$KNOWN_HOSTS"
  ;;
esac
