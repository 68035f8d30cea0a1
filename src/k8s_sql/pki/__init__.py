"""The datastore's certificates: one CA, PostgreSQL's and the shim's serving certificates,
and the client certificates of the shim (to PostgreSQL) and kube-apiserver (to the shim).

:mod:`k8s_sql.pki.files` names the files, :mod:`k8s_sql.pki.certs` makes and checks them;
the pki phase (:mod:`k8s_sql.phases.pki`) writes them.
"""
