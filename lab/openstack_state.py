"""Each lab cloud's state in the machine's MariaDB and RabbitMQ: its databases and vhost, their schemas
(loaded from templates), and the rows Nova's cell tools would write.

Why a module of its own: this is the part of a cloud that outlives its processes (``down`` must drop it,
a crashed run's leftovers are found by name), and the schema templates are built once per requirement set
and shared by every cloud. Database and vhost names carry the lab's random token: concurrent runs never
collide.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

from lab.openstack_cloud import CloudPorts, LabCloud
from lab.openstack_config import write_configs
from lab.openstack_host import (
    MYSQL,
    NEUTRON_VENV,
    RABBITMQCTL,
    REQUIREMENTS,
    VENV,
    LabError,
    requirements_key,
    run_checked,
)


def create_state_stores(cloud: LabCloud) -> None:
    """The cloud's (empty) databases and its RabbitMQ vhost, guest allowed everything in it."""
    sql = "".join(f"CREATE DATABASE `{db}` CHARACTER SET utf8;" for db in cloud.databases())
    run_checked([*MYSQL, "-e", sql], timeout=60, log=cloud.logs / "setup.log")
    run_checked([RABBITMQCTL, "add_vhost", cloud.vhost], timeout=60, log=cloud.logs / "setup.log")
    run_checked([RABBITMQCTL, "set_permissions", "-p", cloud.vhost, "guest", ".*", ".*", ".*"], timeout=60,
                log=cloud.logs / "setup.log")


def drop_state_stores(cloud: LabCloud) -> None:
    """Drop what :func:`create_state_stores` made; whatever is already gone is skipped."""
    sql = "".join(f"DROP DATABASE IF EXISTS `{db}`;" for db in cloud.databases())
    run_checked([*MYSQL, "-e", sql], timeout=60, check=False)
    run_checked([RABBITMQCTL, "delete_vhost", cloud.vhost], timeout=60, check=False)


# --- schema templates --------------------------------------------------------------------------------
#
# Running the services' own schema tools costs ~10 Python start-ups per cloud (nova-manage alone
# imports for several seconds on a loaded 2-core box). The schemas only depend on the installed
# versions, so they are built once per requirement set with the real tools, dumped, and loaded into
# every new cloud's databases; only the parts that name the cloud (Keystone bootstrap with its
# endpoints, Nova's cell mappings) are done per cloud.

TEMPLATE_DBS = ("keystone", "placement", "glance", "nova_api", "nova")


def template_dir(venv: Path) -> Path:
    return venv / "cnf-schema-templates"


def core_schema_steps(tmp: LabCloud) -> list[list[str]]:
    e = tmp.etc
    nconf = ["--config-file", str(e / "nova" / "nova.conf")]
    return [tmp._tool("keystone-manage", "--config-file", str(e / "keystone.conf"), "db_sync"),
            tmp._tool("placement-manage", "--config-file", str(e / "placement" / "placement.conf"), "db", "sync"),
            tmp._tool("glance-manage", "--config-file", str(e / "glance" / "glance-api.conf"), "db_sync"),
            tmp._tool("nova-manage", *nconf, "api_db", "sync"),
            tmp._tool("nova-manage", *nconf, "db", "sync", "--local_cell")]


def neutron_schema_steps(tmp: LabCloud) -> list[list[str]]:
    return [tmp._tool("neutron-db-manage", *tmp.neutron_conf_args(), "upgrade", "heads")]


def ensure_schema_templates(venv: Path, requirements: tuple[str, ...] = REQUIREMENTS,
                            dbs: tuple[str, ...] = TEMPLATE_DBS, steps: Any = core_schema_steps) -> Path:
    """Dumps of freshly synced schemas, keyed like the venv; built under the venv's lock."""
    out = template_dir(venv)
    stamp = out / "stamp"
    key = requirements_key(requirements)
    if stamp.exists() and stamp.read_text().strip() == key:
        return out
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text().strip() == key:
            return out
        shutil.rmtree(out, ignore_errors=True)
        work = out / "build"
        work.mkdir(parents=True)
        tmp = LabCloud(index=0, token=f"tpl{os.getpid()}", root=work, ports=CloudPorts(0, 0, 0, 0, 0), venv=VENV,
                       neutron_venv=NEUTRON_VENV if venv == NEUTRON_VENV else None)
        write_configs(tmp)
        names = {n: f"{tmp.db_prefix}_{n}" for n in dbs}
        run_checked([*MYSQL, "-e", "".join(f"CREATE DATABASE `{d}` CHARACTER SET utf8;" for d in names.values())])
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                for f in [pool.submit(run_checked, argv, log=tmp.logs / "setup.log") for argv in steps(tmp)]:
                    f.result()
            for name, db in names.items():
                dump = run_checked(["mysqldump", "-uroot", "-h127.0.0.1", "-P3306", "--skip-comments",
                                    "--single-transaction", db], timeout=120)
                (out / f"{name}.sql").write_text(dump.stdout)
        finally:
            run_checked([*MYSQL, "-e", "".join(f"DROP DATABASE IF EXISTS `{d}`;" for d in names.values())],
                        check=False)
        shutil.rmtree(work, ignore_errors=True)
        stamp.write_text(key + "\n")
    return out


def load_templates(cloud: LabCloud, templates: Path) -> None:
    """The template schemas into the cloud's databases, then its two Nova cell mappings."""
    loads = {"keystone": "keystone", "placement": "placement", "glance": "glance", "nova_api": "nova_api",
             "nova_cell0": "nova", "nova": "nova"}
    for db, tpl in loads.items():
        with (templates / f"{tpl}.sql").open() as f:
            proc = subprocess.run([*MYSQL, f"{cloud.db_prefix}_{db}"], stdin=f, capture_output=True, text=True,
                                  timeout=120)
        if proc.returncode != 0:
            raise LabError(f"loading schema {tpl} into {cloud.db_prefix}_{db}: {proc.stderr[-500:]}")
    if cloud.neutron_venv is not None:
        with (template_dir(cloud.neutron_venv) / "neutron.sql").open() as f:
            proc = subprocess.run([*MYSQL, f"{cloud.db_prefix}_neutron"], stdin=f, capture_output=True, text=True,
                                  timeout=120)
        if proc.returncode != 0:
            raise LabError(f"loading the neutron schema: {proc.stderr[-500:]}")
    # what `nova-manage cell_v2 map_cell0` and `create_cell --name cell1` would write
    cell0 = "00000000-0000-0000-0000-000000000000"
    sql = ("INSERT INTO cell_mappings (created_at, uuid, name, transport_url, database_connection, disabled) "
           f"VALUES (NOW(), '{cell0}', 'cell0', 'none:///', '{cloud.db_url('nova_cell0')}', 0), "
           f"(NOW(), '{uuid.uuid4()}', 'cell1', 'rabbit://guest:guest@127.0.0.1:5672/{cloud.vhost}', "
           f"'{cloud.db_url('nova')}', 0);")
    run_checked([*MYSQL, f"{cloud.db_prefix}_nova_api", "-e", sql], log=cloud.logs / "setup.log")


def map_compute_host(cloud: LabCloud) -> None:
    """What ``nova-manage cell_v2 discover_hosts`` writes for our one compute host (a host mapping to
    cell1, the compute node marked mapped), without a ~10 s nova-manage start-up."""
    db = cloud.db_prefix
    sql = (f"INSERT INTO `{db}_nova_api`.host_mappings (created_at, cell_id, host) "
           f"SELECT NOW(), id, '{cloud.compute_host}' FROM `{db}_nova_api`.cell_mappings WHERE name = 'cell1';"
           f"UPDATE `{db}_nova`.compute_nodes SET mapped = 1 WHERE host = '{cloud.compute_host}';")
    run_checked([*MYSQL, "-e", sql], log=cloud.logs / "setup.log")

