"""CNF (Cluster Nova Federation): move VMs between independent OpenStack clouds, cold or live."""

__version__ = "0.1.0"
