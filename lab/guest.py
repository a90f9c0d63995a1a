"""The tiny lab guest: a Debian cloud kernel plus a busybox initramfs whose init prints a heartbeat.

Why: live-migration tests need a real guest whose liveness is visible from outside. The guest prints
``HB <n>`` on its serial console every ``hb_ms`` milliseconds (kernel argument, default 100), so a test can prove
that the same guest process keeps counting on the destination after a migration (the counter continues from
where the source stopped). With ``dirty_mb=<N>`` on the kernel command line it also rewrites N MiB of random
data in a loop, which is how tests and benchmarks make a guest that out-dirties a bandwidth-limited link. With
``fill_mb=<N>`` it writes N MiB of random data into a tmpfs once at boot (before the first heartbeat) and then
stays idle: a guest whose RAM is really used, so a migration copies N MiB of non-zero pages.
With ``disk_ms=<N>`` it writes a numbered record to one sector of its disk every N ms and reads back the previous
one first (``GuestImage.append``), printing ``DISK <n> ok`` or ``DISK <n> BAD ...``.
With ``vm_ip=<a.b.c.d> gw=<e.f.g.h>`` it configures its virtio-net NIC (``virtio_net`` and its ``failover``
dependencies are modules of the Debian cloud kernel, copied into the initramfs and loaded by init) with the
VM's /32 and a default route via the on-link gateway, so the kernel answers pings (``lab.e2e_net``).

Nothing is installed on the host: the kernel ``.deb`` is fetched with ``apt-get download`` and unpacked, the
initramfs is written by this module (cpio ``newc`` + gzip, no ``cpio`` tool needed). The output is cached under
``CACHE_ROOT/<key>/`` where the key hashes every input (kernel package + version, the busybox binary, the init
script, this builder's version); a missing or partial entry is rebuilt. Debian packages needed:
``scripts/deps/apt-qemu.txt`` (``ensure_packages`` installs them when missing).

CLI: ``python -m lab.guest [--refresh]`` builds (or finds) the guest and prints the kernel and initrd paths as JSON
(``--refresh`` asks apt for the current kernel package instead of reusing a cached build).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("CNF_LAB_GUEST_CACHE", "/var/cache/cnf-lab/guest"))
BUILDER_VERSION = "5"
KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
APT_PACKAGES = ("qemu-system-x86", "qemu-utils", "qemu-block-extra", "busybox-static")
CMD_TIMEOUT = 600.0
VIRTIO_MODULES = (  # load order matters (lab/qemu REPORT pitfall 11)
    "drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko", "drivers/virtio/virtio_pci.ko", "drivers/block/virtio_blk.ko",
    "net/core/failover.ko", "drivers/net/net_failover.ko", "drivers/net/virtio_net.ko",
)
#: the 512-byte sector of /dev/vda the guest's disk writer (``disk_ms=``) rewrites: 48 MiB into the disk, clear of
#: anything else the labs write (the e2e lab's images are 64 MiB)
DISK_RECORD_SECTOR = 98304
DISK_RECORD_OFFSET = DISK_RECORD_SECTOR * 512

INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk \
         failover net_failover virtio_net; do
  [ -f /mod/$m.ko ] && insmod /mod/$m.ko 2>/dev/null
done
HB_MS=100; DIRTY_MB=0; FILL_MB=0; DISK_MS=0; VM_IP=""; GW=""
for a in $(cat /proc/cmdline); do
  case $a in
    hb_ms=*) HB_MS=${a#hb_ms=};; dirty_mb=*) DIRTY_MB=${a#dirty_mb=};; fill_mb=*) FILL_MB=${a#fill_mb=};;
    vm_ip=*) VM_IP=${a#vm_ip=};; gw=*) GW=${a#gw=};; disk_ms=*) DISK_MS=${a#disk_ms=};;
  esac
done
echo "CNFGUEST booted uptime=$(cut -d' ' -f1 /proc/uptime) hb_ms=$HB_MS dirty_mb=$DIRTY_MB"
if [ "$FILL_MB" -gt 0 ]; then
  # once, before the heartbeat: RAM really in use (random, so no zero pages) that then stays untouched
  mkdir -p /fill && mount -t tmpfs -o size=${FILL_MB}m fill /fill \
    && dd if=/dev/urandom of=/fill/data bs=1M count=$FILL_MB 2>/dev/null \
    && echo "CNFGUEST filled ${FILL_MB}MiB uptime=$(cut -d' ' -f1 /proc/uptime)" \
    || echo "CNFGUEST fill FAILED"
  grep -E '^(MemTotal|MemFree|MemAvailable|Shmem):' /proc/meminfo | tr -s ' ' | tr '\n' ' '; echo
fi
ip link set lo up
if [ -n "$VM_IP" ] && [ -n "$GW" ]; then
  # the VM's /32 and an on-link gateway: the host side of the tap answers as $GW with the same MAC on every
  # host, so this ARP entry stays right after a live migration
  if ip link set eth0 up && ip addr add "$VM_IP/32" dev eth0 && ip route add "$GW" dev eth0 \
      && ip route add default via "$GW" dev eth0; then
    echo "CNFGUEST net $VM_IP via $GW"
  else
    echo "CNFGUEST net FAILED (no eth0? $(ls /sys/class/net))"
  fi
fi
if [ "$DIRTY_MB" -gt 0 ]; then
  dd if=/dev/urandom of=/tmp/seed bs=1M count=$DIRTY_MB 2>/dev/null
  ( while :; do dd if=/tmp/seed of=/tmp/dirt bs=1M conv=notrunc 2>/dev/null; done ) &
  echo "CNFGUEST dirtying ${DIRTY_MB}MiB"
fi
if [ "$DISK_MS" -gt 0 ]; then
  # the guest's own data-integrity check: every DISK_MS ms read back (O_DIRECT: from the disk, not the page
  # cache) the record written last and compare all 512 bytes, then write and fsync record n, then say so
  ( n=0; s=@DISK_RECORD_SECTOR@
    while :; do
      v=ok
      if [ $n -gt 0 ]; then
        if ! dd if=/dev/vda of=/tmp/disk.got bs=512 skip=$s count=1 iflag=direct 2>/dev/null; then
          v="BAD read-error"
        elif ! cmp -s /tmp/disk.got /tmp/disk.rec; then
          v="BAD read $(head -c 40 /tmp/disk.got | tr -c 'A-Za-z0-9 ' '.')"
        fi
      fi
      printf '%-511s\\n' "CNFDISK $n $(printf 'cnf-disk %d' $n | md5sum | cut -c1-8)" > /tmp/disk.rec
      dd if=/tmp/disk.rec of=/dev/vda bs=512 seek=$s count=1 oflag=direct conv=fsync,notrunc 2>/dev/null \\
        || v="$v BAD write-error"
      echo "DISK $n $v"
      n=$((n+1))
      usleep $((DISK_MS*1000))
    done ) &
  echo "CNFGUEST disk record every ${DISK_MS}ms at sector @DISK_RECORD_SECTOR@"
fi
i=0
while :; do
  echo "HB $i"
  i=$((i+1))
  usleep $((HB_MS*1000))
done
""".replace("@DISK_RECORD_SECTOR@", str(DISK_RECORD_SECTOR))


class GuestBuildError(RuntimeError):
    """The guest could not be built (package missing, download failed); the message says which step."""


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: pass ``kernel``/``initrd`` to QEMU's ``-kernel``/``-initrd``."""

    kernel: Path
    initrd: Path
    kernel_package: str

    def append(self, *, hb_ms: int = 100, dirty_mb: int = 0, vm_ip: str = "", gateway: str = "",
               fill_mb: int = 0, disk_ms: int = 0) -> str:
        """The kernel command line: serial console, quiet boot, heartbeat period and dirtier size.

        ``fill_mb`` (> 0): before its first heartbeat the guest writes that many MiB of ``/dev/urandom`` into a
        tmpfs file and leaves them untouched (``CNFGUEST filled <N>MiB``): RAM that is really in use, for
        migration benchmarks, without the dirtying that QEMU 7.2 TCG migrations corrupt. Omitted when 0, so the
        default command line is unchanged.

        ``vm_ip`` and ``gateway`` (both or neither): the guest puts ``vm_ip/32`` on its virtio NIC ``eth0`` with a
        default route via the on-link ``gateway`` and prints ``CNFGUEST net <ip> via <gw>`` (or ``... FAILED``).

        ``disk_ms`` (> 0): every that many ms a background loop of the guest reads back the record it wrote last to
        sector ``DISK_RECORD_SECTOR`` of ``/dev/vda`` (O_DIRECT, all 512 bytes compared with its copy in RAM),
        writes the next record ``CNFDISK <n> <md5("cnf-disk <n>")[:8]>`` (space-padded to 511 bytes + newline,
        O_DIRECT + fsync) and prints ``DISK <n> ok`` (record n-1 read back intact, record n written), or
        ``DISK <n> BAD <what>``. Why: a live migration must hand the disk over with every write the guest made at
        the source, and the guest must go on writing at the destination; the guest itself is the honest judge
        (``lab.e2e_probe.disk_records``). Omitted when 0: the default guest does not touch its disk.
        """
        net = f" vm_ip={vm_ip} gw={gateway}" if vm_ip and gateway else ""
        fill = f" fill_mb={fill_mb}" if fill_mb > 0 else ""
        disk = f" disk_ms={disk_ms}" if disk_ms > 0 else ""
        return f"console=ttyS0 quiet panic=-1 hb_ms={hb_ms} dirty_mb={dirty_mb}{net}{fill}{disk}"


def disk_record(n: int) -> bytes:
    """The 512 bytes the guest's disk writer puts on its record sector for record ``n`` (what ``disk_ms`` does)."""
    line = f"CNFDISK {n} {hashlib.md5(f'cnf-disk {n}'.encode()).hexdigest()[:8]}"
    return line.ljust(511).encode() + b"\n"


def parse_disk_record(block: bytes) -> int | None:
    """The record number in a 512-byte block the guest wrote, None unless the block is exactly such a record."""
    words = block.split()
    if len(block) != 512 or len(words) != 3 or words[0] != b"CNFDISK" or not words[1].isdigit():
        return None
    n = int(words[1])
    return n if block == disk_record(n) else None


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = CMD_TIMEOUT) -> str:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GuestBuildError(f"{argv[0]} failed: {exc}") from exc
    if proc.returncode != 0:
        raise GuestBuildError(f"{' '.join(argv)} rc={proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def missing_packages(packages: tuple[str, ...] = APT_PACKAGES) -> list[str]:
    """Debian packages from ``packages`` that are not installed (``dpkg-query``)."""
    missing = []
    for pkg in packages:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True,
                              timeout=30, check=False)
        if "install ok installed" not in proc.stdout:
            missing.append(pkg)
    return missing


def ensure_packages(packages: tuple[str, ...] = APT_PACKAGES) -> None:
    """Install the lab's Debian packages when missing (root; waits for a dpkg lock held by others)."""
    missing = missing_packages(packages)
    if not missing:
        return
    install = ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=300", "--no-install-recommends", *missing]
    try:
        _run(install)
    except GuestBuildError:
        _run(["apt-get", "update"])
        _run(install)


def kernel_package() -> tuple[str, str]:
    """The concrete kernel package behind ``linux-image-cloud-amd64`` and its candidate version."""
    out = _run(["apt-cache", "depends", KERNEL_META_PACKAGE], timeout=60)
    names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.strip().startswith("Depends:")]
    names = [n for n in names if n.startswith("linux-image-")]
    if not names:
        raise GuestBuildError(f"apt-cache depends {KERNEL_META_PACKAGE} names no kernel package: {out!r}")
    pkg = names[0]
    policy = _run(["apt-cache", "policy", pkg], timeout=60)
    version = next((ln.split(":", 1)[1].strip() for ln in policy.splitlines() if "Candidate:" in ln), "")
    return pkg, version


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def local_key() -> str:
    """Hash of the inputs on this machine (builder version, busybox binary, init script)."""
    h = hashlib.sha256()
    for part in (BUILDER_VERSION, _sha256_file(BUSYBOX), INIT_SCRIPT):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def cache_key(pkg: str, version: str) -> str:
    """Every input of the build: the local ones plus the kernel package and version."""
    return f"{local_key()}-{hashlib.sha256(f'{pkg}={version}'.encode()).hexdigest()[:8]}"


def _cached(entry: Path) -> GuestImage | None:
    kernel, initrd, done = entry / "vmlinuz", entry / "initrd.gz", entry / "complete"
    if not (done.exists() and kernel.exists() and initrd.exists()):
        return None
    try:
        meta = json.loads(done.read_text())
    except ValueError:
        return None
    package = f"{meta.get('kernel_package')}={meta.get('version')}"
    return GuestImage(kernel=kernel, initrd=initrd, kernel_package=package)


class _NewcArchive:
    """A minimal cpio ``newc`` writer (the format the kernel unpacks as initramfs)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        namez = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0]
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self._parts.append(header + namez + b"\0" * ((4 - (len(header) + len(namez)) % 4) % 4))
        self._parts.append(data + b"\0" * ((4 - len(data) % 4) % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o755) -> None:
        self._entry(name, 0o100000 | mode, data)

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._parts)


def build_initrd(modules_dir: Path | None, out: Path) -> None:
    """Write the gzip'd initramfs: busybox, our init, /dev/console, and the virtio modules if available."""
    arc = _NewcArchive()
    for d in ("bin", "dev", "proc", "sys", "tmp", "mod"):
        arc.directory(d)
    arc.char_device("dev/console", 5, 1)
    arc.file("bin/busybox", BUSYBOX.read_bytes())
    arc.file("init", INIT_SCRIPT.encode())
    if modules_dir is not None:
        for rel in VIRTIO_MODULES:
            ko = modules_dir / "kernel" / rel
            if ko.exists():
                arc.file(f"mod/{ko.name}", ko.read_bytes(), mode=0o644)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(arc.finish(), compresslevel=6))
    tmp.replace(out)


def build_guest(cache_root: Path = CACHE_ROOT, *, install: bool = True, refresh: bool = False) -> GuestImage:
    """Return the cached guest, building it first when the cache entry is missing or incomplete."""
    if install:
        ensure_packages()
    if not BUSYBOX.exists():
        raise GuestBuildError(f"{BUSYBOX} missing: install busybox-static")
    # Asking apt for the current kernel costs 1-15 s (it rebuilds its cache after other installs): a complete
    # entry built from the same local inputs is reused; ``refresh`` re-resolves the kernel package.
    if not refresh:
        for entry in sorted(cache_root.glob(f"{local_key()}-*"), key=lambda p: p.stat().st_mtime, reverse=True):
            found = _cached(entry)
            if found is not None:
                return found
    pkg, version = kernel_package()
    entry = cache_root / cache_key(pkg, version)
    kernel, initrd, done = entry / "vmlinuz", entry / "initrd.gz", entry / "complete"
    found = _cached(entry)
    if found is not None:
        return found
    entry.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cnf-guest-") as tmpd:
        work = Path(tmpd)
        os.chmod(work, 0o755)  # apt's _apt sandbox user must be able to write the download here
        _run(["apt-get", "download", f"{pkg}={version}" if version else pkg], cwd=work)
        debs = sorted(work.glob("linux-image-*.deb"))
        if not debs:
            raise GuestBuildError(f"apt-get download {pkg} produced no .deb")
        unpacked = work / "x"
        _run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)])
        vmlinuz = sorted((unpacked / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise GuestBuildError(f"{debs[0].name} holds no /boot/vmlinuz-*")
        mods = sorted((unpacked / "lib" / "modules").glob("*"))
        shutil.copyfile(vmlinuz[0], kernel)
        build_initrd(mods[0] if mods else None, initrd)
    done.write_text(json.dumps({"kernel_package": pkg, "version": version}))
    return GuestImage(kernel=kernel, initrd=initrd, kernel_package=f"{pkg}={version}")


def main(argv: list[str] | None = None) -> int:
    guest = build_guest(refresh="--refresh" in (argv if argv is not None else sys.argv[1:]))
    print(json.dumps({"kernel": str(guest.kernel), "initrd": str(guest.initrd), "package": guest.kernel_package}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
