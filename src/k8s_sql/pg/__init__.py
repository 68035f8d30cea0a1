"""What k8s-sql knows about PostgreSQL, apart from any phase: finding the local cluster
(:mod:`.cluster`), the ``conf.d`` TLS snippet (:mod:`.conf`), the marked ``pg_hba.conf``
block (:mod:`.hba`), the shim's role and database (:mod:`.roles`) and the verify-full TLS
connection the shim makes (:mod:`.connect`)."""
