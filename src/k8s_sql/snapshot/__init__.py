"""etcd-format snapshots: a bbolt file writer/reader (:mod:`.bbolt`) and etcd 3.4's backend
layout on top of it (:mod:`.etcdsnap`), for ``etcdctl snapshot save`` against the shim,
``migrate --from-snapshot`` and the way back to etcd."""
