"""k8s-sql benchmarks: the shim against etcd 3.4 on one machine (see ``bench/run --help``)."""
