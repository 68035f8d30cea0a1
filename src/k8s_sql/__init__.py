"""k8s-sql: vanilla kubeadm Kubernetes backed by PostgreSQL through an etcd v3 API shim."""

__version__ = "0.1.0"
