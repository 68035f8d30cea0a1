"""Moving a cluster's state from etcd into the shim's PostgreSQL schema (``k8s-sql migrate``).

:mod:`.source` reads etcd's state at one revision R through etcd API v3 (or, through
:mod:`.snapshot`, an etcd snapshot file); :mod:`.importer` writes it into an empty datastore
in one transaction and verifies it (key count and HashKV at R) before committing.
"""
