"""librbd worker process for ``CephRbdMirror`` (runs under Debian's ``/usr/bin/python3`` with python3-rbd).

Why a separate process: the handover (demote -> promote) sits inside the guest's pause, and librbd with
long-lived cluster connections and image handles does it in ~100 ms where the ``rbd`` CLI needs ~175-200 ms
(a process + connect + open per try; ``lab/ceph-handover``). Debian's bindings are built for Debian's CPython;
running them in their own interpreter keeps the CNF venv free of that ABI coupling. And a librados call on a
crashed OSD can block forever inside C code: the parent's timeout kills this process, which a thread could
never do.

Protocol (stdin/stdout, one JSON object per line): request ``{"id", "op", "args"}``; reply ``{"id", "ok": true,
"result"}`` or ``{"id", "ok": false, "errno", "error", "message"}``. Requests run concurrently in a small thread
pool (librados/librbd are thread-safe). Stdlib + rados/rbd only: this file must not import ``cnf``.

Safety: non-primary images are only ever opened read-only, except by ``promote`` (a write-open of a non-primary
image that does I/O stalls its replication ~30 s, lab/ceph P3; promote does no I/O). Never ``force``.
"""

import calendar
import hashlib
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import rados  # type: ignore[import-not-found]
import rbd  # type: ignore[import-not-found]

MIRROR_STATES = {0: "primary", 1: "primary-demoted", 2: "non-primary", 3: "non-primary-demoted"}
HANDLE_IDLE_S = 30.0  # a cached read-write handle is closed after this idle time (it pins a watch on the image)


class Worker:
    def __init__(self, cfg):
        self.cfg = cfg
        self.local = self._connect(cfg["cluster_name"], cfg.get("client_name", "client.admin"),
                                   conffile=cfg["conf_path"], extra={"keyring": cfg["keyring"]}
                                   if cfg.get("keyring") else {})
        self.ioctx = self.local.open_ioctx(cfg["pool"])
        self.peer_cluster = None
        self.peer_ioctx = None
        self.lock = threading.Lock()
        self.handles = {}  # image -> [rbd.Image (read-write), last_used]
        self.out_lock = threading.Lock()

    def _connect(self, cluster, name, conffile=None, extra=None):
        t = str(max(1, round(float(self.cfg.get("op_timeout_s", 10)))))
        conf = {"admin_socket": "", "rados_osd_op_timeout": t, "rados_mon_op_timeout": t,
                "client_mount_timeout": t, "log_to_stderr": "false", "err_to_stderr": "false"}
        conf.update(extra or {})
        if conffile is None:
            conf.setdefault("log_file", "")
        c = rados.Rados(conffile=conffile or None, clustername=cluster, name=name, conf=conf)
        c.connect(timeout=int(t))
        return c

    # --- handles ---------------------------------------------------------------------------------------------

    def _rw(self, image):
        """Cached read-write handle (open ~5-10 ms saved on the handover path)."""
        with self.lock:
            h = self.handles.get(image)
            if h is None:
                h = [rbd.Image(self.ioctx, image), time.monotonic()]
                self.handles[image] = h
            h[1] = time.monotonic()
            return h[0]

    def _drop(self, image):
        with self.lock:
            h = self.handles.pop(image, None)
        if h is not None:
            try:
                h[0].close()
            except Exception:
                pass

    def reap(self):
        while True:
            time.sleep(5)
            with self.lock:
                stale = [k for k, h in self.handles.items() if time.monotonic() - h[1] > HANDLE_IDLE_S]
            for k in stale:
                self._drop(k)

    # --- views -----------------------------------------------------------------------------------------------

    @staticmethod
    def _view(im, with_status=False):
        info = im.mirror_image_get_info()
        mode = None
        if info["state"] == rbd.RBD_MIRROR_IMAGE_ENABLED:
            mode = "snapshot" if im.mirror_image_get_mode() == rbd.RBD_MIRROR_IMAGE_MODE_SNAPSHOT else "journal"
        snaps = []
        for s in im.list_snaps():
            if s.get("namespace") != rbd.RBD_SNAP_NAMESPACE_TYPE_MIRROR:
                continue
            m = s["mirror"]
            own = m["state"] in (0, 1)
            try:
                ts = float(calendar.timegm(im.get_snap_timestamp(s["id"]).timetuple()))
            except Exception:
                ts = 0.0
            snaps.append({"id": s["id"], "state": MIRROR_STATES.get(m["state"], str(m["state"])),
                          "complete": bool(m["complete"]), "primary_snap_id": None if own else m["primary_snap_id"],
                          "primary_mirror_uuid": m.get("primary_mirror_uuid") or "", "timestamp": ts})
        view = {"exists": True, "mirroring": info["state"] == rbd.RBD_MIRROR_IMAGE_ENABLED, "mode": mode,
                "state": info["state"],
                # an image without mirroring is writable: it is its own primary
                "primary": bool(info["primary"]) or info["state"] == rbd.RBD_MIRROR_IMAGE_DISABLED,
                "global_id": info["global_id"],
                "size": im.size(), "snaps": snaps}
        if with_status and view["mirroring"]:
            try:
                st = im.mirror_image_get_status()
                view["description"] = st.get("description", "")
                view["status_state"] = st.get("state")
            except rbd.Error:
                view["description"] = ""
        return view

    def _view_of(self, ioctx, image, with_status=False):
        try:
            with rbd.Image(ioctx, image, read_only=True) as im:
                return self._view(im, with_status)
        except rbd.ImageNotFound:
            return {"exists": False}

    # --- peer ------------------------------------------------------------------------------------------------

    def _peer(self):
        if self.peer_ioctx is not None:
            return self.peer_ioctx
        p = self.cfg.get("peer")
        if p:  # explicit peer config (tests, or a site that cannot read the mirror peer secret)
            c = self._connect(p["cluster_name"], p.get("client_name", "client.admin"), conffile=p["conf_path"],
                              extra={"keyring": p["keyring"]} if p.get("keyring") else {})
            pool = p.get("pool", self.cfg["pool"])
        else:  # the pool's mirror peer, with the credentials rbd-mirror itself uses
            r = rbd.RBD()
            peers = list(r.mirror_peer_list(self.ioctx))
            if not peers:
                raise rbd.ImageNotFound("no mirror peer configured for this pool", errno=2)
            peer = peers[0]
            attrs = r.mirror_peer_get_attributes(self.ioctx, peer["uuid"])
            c = self._connect(peer.get("cluster_name") or peer["site_name"], peer["client_name"],
                              extra={"mon_host": attrs["mon_host"], "key": attrs["key"], "keyring": ""})
            pool = self.cfg["pool"]
        self.peer_cluster = c
        self.peer_ioctx = c.open_ioctx(pool)
        return self.peer_ioctx

    def _reset_peer(self):
        c, self.peer_cluster, self.peer_ioctx = self.peer_cluster, None, None
        if c is not None:
            try:
                c.shutdown()
            except Exception:
                pass

    # --- ops -------------------------------------------------------------------------------------------------

    def op_view(self, image, with_status=False):
        with self.lock:
            h = self.handles.get(image)
        if h is not None:  # already open for the handover: no open round trips (librbd refreshes it on notify)
            try:
                return self._view(h[0], with_status)
            except rbd.Error:
                self._drop(image)
        return self._view_of(self.ioctx, image, with_status)

    def op_peer_view(self, image):
        # always a fresh read-only open: a cached handle can lag behind the peer's demote (measured), and this
        # view decides whether promoting is safe
        try:
            return self._view_of(self._peer(), image)
        except (rados.Error, rbd.ConnectionShutdown):
            self._reset_peer()
            raise

    def op_prepare(self, image, prune=False):
        """Open what the handover uses (local read-write handle, peer connection) before the guest is paused.

        ``prune`` (primary side only): remove our own mirror snapshots that no peer is linked to any more, except
        the newest mirror snapshot. librbd's next primary-snapshot create removes exactly these (rbd-mirror
        unlinks itself from the source snapshot it has synced past but cannot remove it), so without this the
        demote does it inside the guest's pause: one more monitor commit there. Returns the removed ids.
        """
        im = self._rw(image)
        self._peer()
        pruned = []
        if prune and im.mirror_image_get_info()["primary"]:
            mirror = [s for s in im.list_snaps() if s.get("namespace") == rbd.RBD_SNAP_NAMESPACE_TYPE_MIRROR]
            for s in mirror[:-1]:  # never the newest: it is what the peer syncs (or will sync) from
                m = s["mirror"]
                if m["state"] in (0, 1) and not m.get("mirror_peer_uuids"):  # own (primary/demoted), peer-less
                    try:
                        im.remove_snap_by_id(s["id"])
                        pruned.append(int(s["id"]))
                    except rbd.ImageNotFound:  # removed concurrently (rbd-mirror, another create): fine
                        pass
        return {"pruned": pruned}

    def op_peer_ping(self):
        try:
            self._peer()
            cluster = self.peer_cluster
            return bool(cluster is not None and cluster.get_fsid())
        except (rados.Error, rbd.ConnectionShutdown):
            self._reset_peer()
            raise

    def op_enable(self, image):
        with rbd.Image(self.ioctx, image) as im:
            info = im.mirror_image_get_info()
            if info["state"] == rbd.RBD_MIRROR_IMAGE_ENABLED:
                return False
            im.mirror_image_enable(rbd.RBD_MIRROR_IMAGE_MODE_SNAPSHOT)
            return True

    def op_disable(self, image):
        self._drop(image)
        with rbd.Image(self.ioctx, image) as im:
            if im.mirror_image_get_info()["state"] == rbd.RBD_MIRROR_IMAGE_DISABLED:
                return False
            im.mirror_image_disable(False)
            return True

    def op_snapshot(self, image):
        return int(self._rw(image).mirror_image_create_snapshot())

    def op_demote(self, image):
        self._rw(image).mirror_image_demote()
        return True

    def op_promote(self, image, wait_s=0.0, retry_s=0.02):
        """librbd promote (never forced). ``wait_s`` > 0: retried every ``retry_s`` on EROFS/EBUSY until ``wait_s``.

        Only for callers that have established that librbd's own refusal is the right guard (the peer demoted and
        our newest snapshot is its copy, or a rollback): librbd refuses while the demotion snapshot is incomplete
        (EBUSY) and while the destination rbd-mirror still holds the image lock (EROFS). Retrying here instead
        of in the parent saves a pipe round trip per attempt. (Waking the loop on the header's notifications
        instead of the timer was measured too: no gain, because an attempt that starts while rbd-mirror is
        shutting its replayer down waits inside librbd for the lock anyway; docs/storage.md.)
        Returns ``{"tries", "ms"}``; raises librbd's last refusal at the end.
        """
        t0 = time.monotonic()
        im = self._rw(image)
        deadline = t0 + max(0.0, wait_s)
        tries = 0
        while True:
            tries += 1
            try:
                im.mirror_image_promote(False)  # never force on this path
                return {"tries": tries, "ms": round((time.monotonic() - t0) * 1000, 1)}
            except (rbd.ReadOnlyImage, rbd.ImageBusy):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                time.sleep(min(retry_s, left))

    def op_release(self, image=None):
        for k in [image] if image else list(self.handles):
            self._drop(k)
        return True

    def op_resync(self, image):
        self._drop(image)
        with rbd.Image(self.ioctx, image) as im:
            im.mirror_image_resync()
        return True

    def op_checksum(self, image, chunk=4 << 20):
        h = hashlib.sha256()
        with rbd.Image(self.ioctx, image, read_only=True) as im:
            size = im.size()
            for off in range(0, size, chunk):
                h.update(im.read(off, min(chunk, size - off)))
        return h.hexdigest()

    def op_mon_config(self, key):
        """Running value of ``key`` on every monitor (``config show`` via the mgr reads what the daemon runs;
        ``config get`` only reads the config DB, which a ceph.conf entry outranks). Returns the largest."""
        ret, out, err = self.local.mon_command(json.dumps({"prefix": "mon dump", "format": "json"}), b"",
                                               timeout=5)
        names = [m["name"] for m in json.loads(out).get("mons", [])] if ret == 0 else []
        values = []
        for name in names:
            ret, out, err = self.local.mgr_command(json.dumps({"prefix": "config show", "who": f"mon.{name}",
                                                               "key": key, "format": "json"}), b"", timeout=5)
            if ret == 0:
                values.append(float(out.decode().strip().strip('"')))
        if not values:
            ret, out, err = self.local.mon_command(json.dumps({"prefix": "config get", "who": "mon", "key": key,
                                                               "format": "json"}), b"", timeout=5)
            if ret != 0:
                raise rados.Error(err or "config lookup failed", errno=-ret)
            values.append(float(out.decode().strip().strip('"')))
        return max(values)

    def op_mirror_daemons(self):
        ret, out, err = self.local.mgr_command(json.dumps({"prefix": "service dump", "format": "json"}), b"",
                                               timeout=5)
        if ret != 0:
            raise rados.Error(err or "service dump failed", errno=-ret)
        daemons = json.loads(out).get("services", {}).get("rbd-mirror", {}).get("daemons", {})
        return [k for k in daemons if k != "summary"]

    def op_ping(self):
        return {"pid": __import__("os").getpid(), "fsid": self.local.get_fsid()}

    # --- loop ------------------------------------------------------------------------------------------------

    def handle(self, req):
        rid = req.get("id")
        try:
            fn = getattr(self, "op_" + req["op"])
            reply = {"id": rid, "ok": True, "result": fn(**req.get("args", {}))}
        except Exception as e:  # every failure goes back to the parent, which maps it to cnf.errors
            errno = getattr(e, "errno", None)
            if isinstance(errno, int) and errno < 0:
                errno = -errno
            if isinstance(e, (rbd.ImageNotFound, rbd.ConnectionShutdown)) and req.get("args", {}).get("image"):
                self._drop(req["args"]["image"])
            reply = {"id": rid, "ok": False, "errno": errno if isinstance(errno, int) else None,
                     "error": type(e).__name__, "message": str(e)}
        line = json.dumps(reply) + "\n"
        with self.out_lock:
            sys.stdout.write(line)
            sys.stdout.flush()


def main():
    cfg = json.loads(sys.argv[1])
    try:
        w = Worker(cfg)
    except Exception as e:
        errno = getattr(e, "errno", None)
        sys.stdout.write(json.dumps({"id": 0, "ok": False, "errno": abs(errno) if isinstance(errno, int) else None,
                                     "error": type(e).__name__, "message": str(e)}) + "\n")
        sys.stdout.flush()
        return 1
    sys.stdout.write(json.dumps({"id": 0, "ok": True, "result": "ready"}) + "\n")
    sys.stdout.flush()
    threading.Thread(target=w.reap, daemon=True).start()
    pool = ThreadPoolExecutor(max_workers=4)
    for line in sys.stdin:
        line = line.strip()
        if line:
            pool.submit(w.handle, json.loads(line))
    pool.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
