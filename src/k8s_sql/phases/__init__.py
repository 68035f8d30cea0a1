"""The phases of ``k8s-sql init`` (one module each) and their runner."""
