"""``openstack cnf …`` commands of API v1: one class per verb.

``COMMANDS`` is the ``openstack.cnf.v1`` entry-point group as declared in ``pyproject.toml``
(``"cnf cluster list" = "cnf.osc.v1.clusters:ListCluster"``); a unit test checks the two agree.
"""

COMMANDS: dict[str, str] = {
    "cnf_cluster_list": "cnf.osc.v1.clusters:ListCluster",
    "cnf_cluster_show": "cnf.osc.v1.clusters:ShowCluster",
    "cnf_cluster_metrics": "cnf.osc.v1.clusters:ShowClusterMetrics",
    "cnf_cluster_register": "cnf.osc.v1.clusters:RegisterCluster",
    "cnf_vm_list": "cnf.osc.v1.vms:ListVm",
    "cnf_vm_status": "cnf.osc.v1.vms:ShowVmStatus",
    "cnf_vm_migrate": "cnf.osc.v1.vms:MigrateVm",
    "cnf_vm_live-migrate": "cnf.osc.v1.vms:LiveMigrateVm",
    "cnf_migration_list": "cnf.osc.v1.migrations:ListMigration",
    "cnf_migration_show": "cnf.osc.v1.migrations:ShowMigration",
    "cnf_migration_abort": "cnf.osc.v1.migrations:AbortMigration",
    "cnf_master_show": "cnf.osc.v1.master:ShowMaster",
    "cnf_master_elect": "cnf.osc.v1.master:ElectMaster",
    "cnf_policy_list": "cnf.osc.v1.policies:ListPolicy",
    "cnf_policy_show": "cnf.osc.v1.policies:ShowPolicy",
    "cnf_policy_set": "cnf.osc.v1.policies:SetPolicy",
    "cnf_policy_delete": "cnf.osc.v1.policies:DeletePolicy",
    "cnf_policy_evaluate": "cnf.osc.v1.policies:EvaluatePolicy",
    "cnf_policy_approve": "cnf.osc.v1.policies:ApprovePolicy",
}
