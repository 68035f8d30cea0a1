"""Everything kubeadm sees of k8s-sql: its configuration file, the kube-apiserver patch
that adds the etcd shim sidecar, and the editing of an existing kube-apiserver manifest.

Modules: :mod:`.files` (certificate names), :mod:`.yamlio` (round-trip YAML),
:mod:`.node` (CRI socket and advertise address of the node), :mod:`.config`
(InitConfiguration + ClusterConfiguration), :mod:`.sidecar` (the one definition of the
shim container), :mod:`.manifest` (strategic merge, patch-manifest, schema validation).
"""
