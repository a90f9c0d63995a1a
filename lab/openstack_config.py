"""Each lab cloud's configuration: the Keystone, Placement, Glance, Nova and Neutron config files and
Keystone's key repositories, written before any of its processes starts.

Why a module of its own: the files are the one place that ties a cloud's services to its ports, databases,
RabbitMQ vhost and data directory (all named by :class:`~lab.openstack_cloud.LabCloud`); reading them here
answers "how is this cloud configured" without the process or bring-up code around them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from lab.openstack_cloud import PASSWORD, LabCloud


def _auth_block(cloud: LabCloud, username: str) -> str:
    return (f"auth_url = {cloud.auth_url}\nauth_type = password\nproject_domain_name = Default\n"
            f"user_domain_name = Default\nproject_name = service\nusername = {username}\npassword = {PASSWORD}\n")


DB_POOL = "max_pool_size = 3\nmax_overflow = 5\n"


def write_configs(cloud: LabCloud) -> None:
    """Every config file and data directory of ``cloud``, its nova-compute identity and the image file
    the bring-up uploads to Glance."""
    r, e, lg = cloud.root, cloud.etc, cloud.logs
    for d in (e / "nova", e / "glance", e / "placement", lg, r / "keystone" / "fernet", r / "keystone" / "cred",
              r / "nova" / "instances", r / "nova" / "lock", r / "glance" / "images", r / "glance" / "staging",
              r / "glance" / "tasks", r / "glance" / "lock"):
        d.mkdir(parents=True, exist_ok=True)
    (e / "keystone.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
[database]
connection = {cloud.db_url('keystone')}
{DB_POOL}[token]
provider = fernet
[fernet_tokens]
key_repository = {r}/keystone/fernet
[fernet_receipts]
key_repository = {r}/keystone/fernet
[credential]
key_repository = {r}/keystone/cred
""")
    (e / "placement" / "placement.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
[placement_database]
connection = {cloud.db_url('placement')}
{DB_POOL}[api]
auth_strategy = keystone
[keystone_authtoken]
www_authenticate_uri = {cloud.auth_url}
{_auth_block(cloud, 'placement')}""")
    shutil.copy(cloud.venv / "etc" / "glance" / "glance-api-paste.ini", e / "glance" / "glance-api-paste.ini")
    (e / "glance" / "glance-api.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
enabled_backends = fs:file
workers = 1
[database]
connection = {cloud.db_url('glance')}
{DB_POOL}[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {r}/glance/images/
[os_glance_staging_store]
filesystem_store_datadir = {r}/glance/staging/
[os_glance_tasks_store]
filesystem_store_datadir = {r}/glance/tasks/
[paste_deploy]
flavor = keystone
config_file = {e}/glance/glance-api-paste.ini
[keystone_authtoken]
www_authenticate_uri = {cloud.auth_url}
{_auth_block(cloud, 'glance')}[oslo_concurrency]
lock_path = {r}/glance/lock
""")
    shutil.copy(cloud.venv / "etc" / "nova" / "api-paste.ini", e / "nova" / "api-paste.ini")
    (e / "nova" / "nova.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
state_path = {r}/nova
instances_path = {r}/nova/instances
transport_url = rabbit://guest:guest@127.0.0.1:5672/{cloud.vhost}
compute_driver = cnf_receiver.FakeReceiverDriver
host = {cloud.compute_host}
my_ip = 127.0.0.1
heal_instance_info_cache_interval = -1
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = {e}/nova/api-paste.ini
[api_database]
connection = {cloud.db_url('nova_api')}
{DB_POOL}[database]
connection = {cloud.db_url('nova')}
{DB_POOL}[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = -1
[keystone_authtoken]
www_authenticate_uri = {cloud.auth_url}
{_auth_block(cloud, 'nova')}[service_user]
send_service_user_token = true
{_auth_block(cloud, 'nova')}[placement]
region_name = RegionOne
{_auth_block(cloud, 'placement')}[neutron]
region_name = RegionOne
{_auth_block(cloud, 'neutron')}[glance]
region_name = RegionOne
[oslo_concurrency]
lock_path = {r}/nova/lock
[oslo_messaging_notifications]
driver = noop
[vnc]
enabled = false
""")
    if cloud.neutron_venv is not None:
        n = e / "neutron"
        (n / "plugins" / "ml2").mkdir(parents=True, exist_ok=True)
        (r / "neutron" / "lock").mkdir(parents=True, exist_ok=True)
        shutil.copy(cloud.neutron_venv / "etc" / "neutron" / "api-paste.ini", n / "api-paste.ini")
        (n / "neutron.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
core_plugin = ml2
service_plugins =
auth_strategy = keystone
transport_url = rabbit://guest:guest@127.0.0.1:5672/{cloud.vhost}
api_paste_config = {n}/api-paste.ini
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
[database]
connection = {cloud.db_url('neutron')}
{DB_POOL}[keystone_authtoken]
www_authenticate_uri = {cloud.auth_url}
{_auth_block(cloud, 'neutron')}[oslo_concurrency]
lock_path = {r}/neutron/lock
""")
        (n / "plugins" / "ml2" / "ml2_conf.ini").write_text("""[ml2]
type_drivers = flat,local
tenant_network_types = local
mechanism_drivers =
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
""")
    # a stable node identity lets nova-compute (FakeDriverWithoutFakeNodes) be restarted
    (r / "nova" / "compute_id").write_text(str(uuid.uuid4()))
    (r / "tiny.img").write_bytes(os.urandom(1 << 20))


def fernet_key_repository(path: Path) -> None:
    """What ``keystone-manage fernet_setup``/``credential_setup`` create: key 0 (staged), 1 (primary)."""
    from cryptography.fernet import Fernet

    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for name in ("0", "1"):
        (path / name).write_bytes(Fernet.generate_key())
        os.chmod(path / name, 0o600)
