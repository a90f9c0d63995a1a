"""The CNF receiver: a thin Nova compute-driver subclass that lets Nova own a VM that arrived by migration.

Why (DESIGN.md §4, docs/openstack.md): Nova has no API to adopt a running domain. Instead of
writing records behind Nova's back, CNF asks Nova to create the destination server through its
normal API (so Nova, Neutron, Placement and Cinder make the port, the allocation, the volume
attachment and the server record themselves) and marks it as the *receiver* of a migration with
server metadata. This driver, installed on every compute host of a CNF cloud, reads that marker:

==========================  ===============================================================
Nova call on the instance   what the receiver does when the marker says so
==========================  ===============================================================
``spawn``                   ``cnf_receiver=incoming``: prepare an incoming domain and do NOT
                            boot a guest; the instance reports power state PAUSED.
``pause``                   incoming receiver: nothing to do (already waiting).
``unpause``                 ``cnf_receiver=activate`` (live): adopt the domain that the memory
                            migration landed in, ack ``cnf_receiver=active``.
                            ``cnf_receiver=boot`` (cold): boot the guest (production: from the
                            promoted, Cinder-managed volume), ack ``cnf_receiver=booted``.
``destroy``                 ``cnf_state=departed`` (source record being retired): the VM now
                            runs elsewhere; keep the disk (``destroy_disks=False``).
==========================  ===============================================================

Everything else is the deployment's driver unchanged. The ack written back into the metadata is
how ``OpenStackCloud`` knows the receiver driver (not a plain driver) handled the signal.

This module is loaded *inside nova-compute*: it imports only the standard library at module level
and Nova lazily, never the rest of CNF. Nova prefixes ``compute_driver`` with ``nova.virt.``, so the
launcher ``python -m cnf.openstack.receiver --config-file nova.conf`` registers the classes as
module ``nova.virt.cnf_receiver`` and then runs nova-compute; set
``compute_driver = cnf_receiver.FakeReceiverDriver`` (lab) in nova.conf.

Each decision is appended to ``$state_path/cnf-receiver.jsonl`` (one JSON object per line) so an
operator — and the lab tests — can see what the receiver did to which instance.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import types
from typing import Any

RECEIVER = "cnf_receiver"
STATE = "cnf_state"
MIGRATION = "cnf_migration"
JOURNAL_NAME = "cnf-receiver.jsonl"
MODULE_NAME = "nova.virt.cnf_receiver"

_journal_lock = threading.Lock()


def journal_path(state_path: str) -> str:
    return os.path.join(state_path, JOURNAL_NAME)


def read_journal(state_path: str) -> list[dict[str, Any]]:
    """Entries written by the receiver in that nova-compute's ``state_path`` (used by tests and operators)."""
    try:
        with open(journal_path(state_path), encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class ReceiverMixin:
    """The receiver behaviour, independent of the hypervisor.

    A concrete receiver is ``class X(ReceiverMixin, <deployment driver>)`` and implements the three
    hypervisor hooks ``_cnf_prepare_incoming``, ``_cnf_adopt`` and ``_cnf_boot``.
    """

    # --- hooks (per hypervisor) ----------------------------------------------------------------

    def _cnf_prepare_incoming(self, context: Any, instance: Any, image_meta: Any, injected_files: Any,
                              admin_password: Any, allocations: Any, network_info: Any,
                              block_device_info: Any) -> None:
        raise NotImplementedError

    def _cnf_adopt(self, instance: Any) -> None:
        raise NotImplementedError

    def _cnf_boot(self, instance: Any) -> None:
        raise NotImplementedError

    # --- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _cnf_meta(instance: Any) -> dict[str, str]:
        try:
            return dict(instance.metadata or {})
        except Exception:
            return {}

    @staticmethod
    def _cnf_journal(event: str, instance: Any, **extra: Any) -> None:
        import nova.conf

        entry = {"ts": time.time(), "event": event, "instance": str(instance.uuid), **extra}
        path = journal_path(nova.conf.CONF.state_path)
        with _journal_lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    @staticmethod
    def _cnf_ack(instance: Any, value: str) -> None:
        """Write the ack into the instance metadata; the compute manager's following
        ``instance.save()`` persists it together with the new power/vm state."""
        meta = dict(instance.metadata or {})
        meta[RECEIVER] = value
        instance.metadata = meta

    # --- Nova driver API overrides ---------------------------------------------------------------

    def spawn(self, context: Any, instance: Any, image_meta: Any, injected_files: Any, admin_password: Any,
              allocations: Any, network_info: Any = None, block_device_info: Any = None, power_on: bool = True,
              accel_info: Any = None) -> None:
        meta = self._cnf_meta(instance)
        if meta.get(RECEIVER) == "incoming":
            self._cnf_prepare_incoming(context, instance, image_meta, injected_files, admin_password,
                                       allocations, network_info, block_device_info)
            self._cnf_journal("prepare_incoming", instance, migration=meta.get(MIGRATION, ""))
            return
        super().spawn(context, instance, image_meta, injected_files, admin_password,  # type: ignore[misc]
                      allocations, network_info=network_info, block_device_info=block_device_info,
                      power_on=power_on, accel_info=accel_info)

    def pause(self, instance: Any) -> None:
        if self._cnf_meta(instance).get(RECEIVER) == "incoming":
            self._cnf_journal("pause_incoming_noop", instance)
            return
        super().pause(instance)  # type: ignore[misc]

    def unpause(self, instance: Any) -> None:
        signal = self._cnf_meta(instance).get(RECEIVER)
        if signal == "activate":
            self._cnf_adopt(instance)
            self._cnf_ack(instance, "active")
            self._cnf_journal("adopt", instance)
            return
        if signal == "boot":
            self._cnf_boot(instance)
            self._cnf_ack(instance, "booted")
            self._cnf_journal("boot", instance)
            return
        super().unpause(instance)  # type: ignore[misc]

    def destroy(self, context: Any, instance: Any, network_info: Any, block_device_info: Any = None,
                destroy_disks: bool = True, destroy_secrets: bool = True) -> None:
        if self._cnf_meta(instance).get(STATE) == "departed":
            self._cnf_journal("retire_keep_disk", instance, requested_destroy_disks=destroy_disks)
            destroy_disks = False
        super().destroy(context, instance, network_info, block_device_info=block_device_info,  # type: ignore[misc]
                        destroy_disks=destroy_disks, destroy_secrets=destroy_secrets)


def _fake_receiver_class() -> type:
    """The receiver over Nova's ``FakeDriverWithoutFakeNodes`` (the lab's hypervisor)."""
    from nova.compute import power_state
    from nova.virt import fake

    class FakeReceiverDriver(ReceiverMixin, fake.FakeDriverWithoutFakeNodes):  # type: ignore[misc,name-defined]
        """Incoming = the fake instance exists in state PAUSED; adopt/boot = it becomes RUNNING."""

        def _cnf_prepare_incoming(self, context: Any, instance: Any, image_meta: Any, injected_files: Any,
                                  admin_password: Any, allocations: Any, network_info: Any,
                                  block_device_info: Any) -> None:
            fake.FakeDriverWithoutFakeNodes.spawn(self, context, instance, image_meta, injected_files,
                                                  admin_password, allocations, network_info=network_info,
                                                  block_device_info=block_device_info)
            self.instances[instance.uuid].state = power_state.PAUSED

        def _running(self, instance: Any) -> None:
            from nova import exception

            if instance.uuid not in self.instances:
                raise exception.InstanceNotFound(instance_id=instance.uuid)
            self.instances[instance.uuid].state = power_state.RUNNING

        def _cnf_adopt(self, instance: Any) -> None:
            self._running(instance)

        def _cnf_boot(self, instance: Any) -> None:
            self._running(instance)

    return FakeReceiverDriver


def register() -> types.ModuleType:
    """Make the receiver classes importable as ``nova.virt.cnf_receiver`` (Nova's driver namespace)."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    mod = types.ModuleType(MODULE_NAME, "CNF receiver compute drivers (registered by cnf.openstack.receiver)")
    mod.FakeReceiverDriver = _fake_receiver_class()  # type: ignore[attr-defined]
    sys.modules[MODULE_NAME] = mod
    import nova.virt

    nova.virt.cnf_receiver = mod  # type: ignore[attr-defined]
    return mod


def main() -> None:
    """Run nova-compute with the receiver drivers registered (argv is nova-compute's)."""
    import nova.cmd.compute as compute_cmd  # first: Nova's own monkey patching happens on this import

    register()
    compute_cmd.main()


if __name__ == "__main__":
    main()
