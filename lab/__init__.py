"""Bring-up code for real infrastructure (etcd, FRR, Ceph, QEMU, OpenStack) used by lab tests and ``make lab``."""
