"""Federation PKI and mTLS for the agent-to-agent gRPC link.

Identity: every agent holds a certificate issued by the federation CA whose subject CN is its
cluster id and whose SAN carries the URI ``cnf://cluster/<id>`` (the authoritative identity) and the
DNS name ``<id>.cluster.cnf`` (what the *client* verifies: it dials with
``grpc.ssl_target_name_override`` set to that name, so "the server is the cluster I meant" is the TLS
hostname check itself). Keys are EC P-256 (cheap handshakes).

Who checks what (see docs/peer-protocol.md for the full table):
- TLS handshake, both directions (gRPC core/BoringSSL): chain to the federation CA, validity dates,
  and on the client the server's cluster-id DNS name. Plaintext never completes a handshake.
- Per call, on the server (``PeerIdentityVerifier``): the caller's cluster id (from its certificate)
  is a known peer, equals the ``cnf-cluster-id`` it claims in metadata, and its certificate has not
  expired since the connection was made.
- When a call fails before reaching the peer, the client runs ``diagnose_handshake`` (Python ``ssl``,
  same files) to log *which* rejection happened (unknown CA, expired, wrong cluster, plaintext,
  our certificate refused by the peer), because gRPC core only reports "handshake failed".

Reload: ``ServerTlsSource``/``ClientTlsSource`` watch the three files (mtime, size, inode); new
connections use new files without a restart (server: gRPC's per-handshake certificate fetcher; client:
the peer client rebuilds its channel).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cnf.errors import ConfigError, Forbidden, InvalidInput, Unauthorized

log = structlog.get_logger(__name__)

URI_PREFIX = "cnf://cluster/"
DNS_SUFFIX = ".cluster.cnf"
CLAIM_METADATA_KEY = "cnf-cluster-id"
_CLUSTER_ID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def validate_cluster_id(cluster_id: str) -> str:
    """Cluster ids become a DNS label in the certificate: letters, digits, '-', at most 63 characters."""
    if not isinstance(cluster_id, str) or not _CLUSTER_ID_RE.match(cluster_id):
        raise InvalidInput(f"cluster id {cluster_id!r} must be 1-63 letters, digits or '-' (a DNS label)",
                           field="cluster_id")
    return cluster_id


def tls_name_for(cluster_id: str) -> str:
    """The DNS SAN naming ``cluster_id``; the client verifies the server against it."""
    return validate_cluster_id(cluster_id).lower() + DNS_SUFFIX


# --- issuing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """The three PEM files an agent needs: federation CA, its own certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    @classmethod
    def in_dir(cls, directory: str | Path, cluster_id: str) -> TlsFiles:
        d = Path(directory)
        return cls(ca_file=d / "ca.crt", cert_file=d / f"{cluster_id}.crt", key_file=d / f"{cluster_id}.key")

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) bytes; a missing or unreadable file is a ``ConfigError`` naming it."""
        out = []
        for key, path in (("tls.ca_file", self.ca_file), ("tls.cert_file", self.cert_file),
                          ("tls.key_file", self.key_file)):
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", key=key) from None
        return out[0], out[1], out[2]

    def fingerprint(self) -> tuple[tuple[int, int, int], ...]:
        """Changes whenever any file is rewritten or replaced (mtime, size, inode)."""
        out = []
        for path in (self.ca_file, self.cert_file, self.key_file):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write atomically (temp + rename) so a watcher never reads half a PEM file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def init_ca(directory: str | Path, *, days: int = 3650, name: str = "CNF federation CA",
            force: bool = False) -> tuple[Path, Path]:
    """Create the federation CA (``ca.crt``, ``ca.key`` mode 0600) in ``directory``.

    Refuses to overwrite an existing CA unless ``force``: replacing it silently would invalidate every
    agent certificate of the federation.
    """
    if days < 1:
        raise InvalidInput("days must be at least 1", field="days")
    d = Path(directory)
    crt, key_path = d / "ca.crt", d / "ca.key"
    if (crt.exists() or key_path.exists()) and not force:
        raise InvalidInput(f"a CA already exists in {d} (use --force to replace it)", field="dir")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CNF federation"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), 0o600)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("ca_created", dir=str(d), not_after=cert.not_valid_after_utc.isoformat())
    return crt, key_path


def load_ca(directory: str | Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    d = Path(directory)
    try:
        cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    except FileNotFoundError:
        raise InvalidInput(f"no CA in {d} (run: cnf-manage ca init --dir {d})", field="dir") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidInput(f"{d / 'ca.key'} is not an EC key", field="dir")
    return cert, key


def issue_cert(directory: str | Path, cluster_id: str, *, days: int = 365, dns_names: Iterable[str] = (),
               ip_addresses: Iterable[str] = (), not_before: dt.datetime | None = None,
               not_after: dt.datetime | None = None, out_dir: str | Path | None = None) -> TlsFiles:
    """Issue ``<cluster_id>.crt``/``.key`` signed by the CA in ``directory``.

    ``dns_names``/``ip_addresses`` add the controller's real names (for tools such as grpcurl); CNF
    itself verifies the cluster-id names. ``not_before``/``not_after`` override ``days`` (tests use
    them to make expired certificates). Files go to ``out_dir`` (default: ``directory``).
    """
    validate_cluster_id(cluster_id)
    if days < 1:
        raise InvalidInput("days must be at least 1", field="days")
    ips = []
    for raw in ip_addresses:
        try:
            ips.append(ipaddress.ip_address(raw))
        except ValueError:
            raise InvalidInput(f"not an IP address: {raw!r}", field="ip") from None
    ca_cert, ca_key = load_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    start = not_before or now - dt.timedelta(minutes=5)
    end = not_after or now + dt.timedelta(days=days)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(URI_PREFIX + cluster_id),
                                    x509.DNSName(tls_name_for(cluster_id))]
    sans += [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ip) for ip in ips]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CNF federation"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, cluster_id)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    target = Path(out_dir) if out_dir is not None else Path(directory)
    files = TlsFiles(ca_file=target / "ca.crt", cert_file=target / f"{cluster_id}.crt",
                     key_file=target / f"{cluster_id}.key")
    _write(files.key_file, _key_pem(key), 0o600)
    _write(files.cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    if target != Path(directory):
        _write(files.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("cert_issued", cluster_id=cluster_id, cert=str(files.cert_file), not_after=end.isoformat())
    return files


def cluster_id_of(cert: x509.Certificate) -> str | None:
    """The cluster id a certificate names (its ``cnf://cluster/<id>`` URI SAN), or None."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(URI_PREFIX):
            return uri[len(URI_PREFIX):]
    return None


# --- credentials with reload -------------------------------------------------------------------


def _check_pair(cert_pem: bytes, key_pem: bytes) -> None:
    """Refuse a certificate whose key is not the one beside it (files replaced one at a time)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (cert.public_key().public_bytes(serialization.Encoding.DER, spki)
            != key.public_key().public_bytes(serialization.Encoding.DER, spki)):
        raise ValueError("certificate and key do not match")


class ServerTlsSource:
    """gRPC server credentials that pick up rewritten files on the next handshake (no restart).

    gRPC calls the fetcher before each new TLS handshake; it costs three ``stat`` calls when nothing
    changed. A file that is unreadable or half-replaced keeps the previous, working material and logs.
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()
        self._fingerprint = files.fingerprint()
        ca, cert, key = files.read()
        self.reloads = 0
        self._initial = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._initial, self._fetch, require_client_authentication=True)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            fp = self.files.fingerprint()
            if fp == self._fingerprint:
                return None
            try:
                ca, cert, key = self.files.read()
                _check_pair(cert, key)
                config = grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)
            except (ConfigError, ValueError) as exc:
                log.error("tls_reload_failed", side="server", error=str(exc), cert=str(self.files.cert_file))
                return None
            self._fingerprint = fp
            self.reloads += 1
            log.info("tls_reloaded", side="server", cert=str(self.files.cert_file), reloads=self.reloads)
            return config


class ClientTlsSource:
    """Client credentials plus a cheap ``changed()`` the peer client polls to rebuild its channel."""

    def __init__(self, files: TlsFiles, *, check_interval_s: float = 1.0) -> None:
        self.files = files
        self.check_interval_s = check_interval_s
        self._fingerprint = files.fingerprint()
        self._checked = time.monotonic()
        self._creds = self._build()
        self.generation = 0

    def _build(self) -> grpc.ChannelCredentials:
        ca, cert, key = self.files.read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def credentials(self) -> grpc.ChannelCredentials:
        return self._creds

    def own_cert(self) -> x509.Certificate | None:
        try:
            return x509.load_pem_x509_certificate(Path(self.files.cert_file).read_bytes())
        except (OSError, ValueError):
            return None

    def changed(self) -> bool:
        """True (once) when the files changed since the credentials were built; reloads them."""
        now = time.monotonic()
        if now - self._checked < self.check_interval_s:
            return False
        self._checked = now
        fp = self.files.fingerprint()
        if fp == self._fingerprint:
            return False
        try:
            creds = self._build()
        except ConfigError as exc:
            log.error("tls_reload_failed", side="client", error=str(exc), cert=str(self.files.cert_file))
            return False
        self._fingerprint, self._creds = fp, creds
        self.generation += 1
        log.info("tls_reloaded", side="client", cert=str(self.files.cert_file), generation=self.generation)
        return True


# --- per-call identity check (server side) -----------------------------------------------------


class PeerIdentityVerifier:
    """Decides whether the TLS peer of one call may act as the cluster it claims.

    ``known_peers`` is a collection or a callable returning one (the agent's registered clusters,
    re-read on each call so a newly registered cluster is admitted without restart).
    """

    def __init__(self, known_peers: Collection[str] | Callable[[], Collection[str]]) -> None:
        self._known = known_peers
        self._cache: dict[bytes, tuple[str | None, dt.datetime]] = {}

    def known(self) -> Collection[str]:
        return self._known() if callable(self._known) else self._known

    def _parse(self, pem: bytes) -> tuple[str | None, dt.datetime]:
        hit = self._cache.get(pem)
        if hit is None:
            cert = x509.load_pem_x509_certificate(pem)
            hit = (cluster_id_of(cert), cert.not_valid_after_utc)
            if len(self._cache) > 256:
                self._cache.clear()
            self._cache[pem] = hit
        return hit

    def verify(self, auth_context: dict[str, list[bytes]], claimed: str | None, *, operation: str) -> str:
        """The caller's cluster id, or raise ``Unauthorized``/``Forbidden`` after logging the reason."""
        pems = auth_context.get("x509_pem_cert") or []
        if not pems:
            log.warning("peer_rejected", reason="no_client_certificate", operation=operation, claimed=claimed)
            raise Unauthorized("no client certificate on this connection", reason="no_client_certificate")
        cert_id, not_after = self._parse(pems[0])
        if cert_id is None:
            log.warning("peer_rejected", reason="certificate_names_no_cluster", operation=operation, claimed=claimed)
            raise Forbidden("client certificate names no cluster id", reason="certificate_names_no_cluster")
        if not_after <= _now():
            log.warning("peer_rejected", reason="certificate_expired", cluster_id=cert_id, operation=operation,
                        not_after=not_after.isoformat())
            raise Unauthorized(f"certificate of {cert_id} expired at {not_after.isoformat()}",
                               reason="certificate_expired", cluster_id=cert_id)
        if cert_id not in self.known():
            log.warning("peer_rejected", reason="unknown_cluster", cluster_id=cert_id, operation=operation)
            raise Forbidden(f"cluster {cert_id} is not a known peer", reason="unknown_cluster", cluster_id=cert_id)
        if claimed != cert_id:
            log.warning("peer_rejected", reason="cluster_id_mismatch", cluster_id=cert_id, claimed=claimed,
                        operation=operation)
            raise Forbidden(f"caller claims cluster {claimed!r} but its certificate names {cert_id}",
                            reason="cluster_id_mismatch", cluster_id=cert_id, claimed=claimed)
        return cert_id


# --- diagnosis of a failed connection (client side) --------------------------------------------

_VERIFY_REASONS = {
    10: "peer_certificate_expired",  # X509_V_ERR_CERT_HAS_EXPIRED
    9: "peer_certificate_not_yet_valid",
    18: "peer_certificate_unknown_ca",  # self-signed leaf
    19: "peer_certificate_unknown_ca",  # self-signed in chain
    20: "peer_certificate_unknown_ca",  # unable to get local issuer
    21: "peer_certificate_unknown_ca",
}
_ALERT_REASONS = (
    ("UNKNOWN_CA", "our_certificate_rejected_unknown_ca"),
    ("CERTIFICATE_EXPIRED", "our_certificate_rejected_expired"),
    ("CERTIFICATE_REQUIRED", "our_certificate_rejected_missing"),
    ("BAD_CERTIFICATE", "our_certificate_rejected"),
    ("HANDSHAKE_FAILURE", "our_certificate_rejected"),
    ("WRONG_VERSION_NUMBER", "peer_speaks_plaintext"),
    ("PACKET_LENGTH_TOO_LONG", "peer_speaks_plaintext"),
    ("RECORD_LAYER_FAILURE", "peer_speaks_plaintext"),
)


def split_target(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def diagnose_handshake(target: str, files: TlsFiles | None, expected_cluster_id: str, *,
                       timeout_s: float = 2.0) -> str:
    """Reproduce a connection to ``target`` with Python's ``ssl`` and name why mTLS fails.

    Returns one reason code: ``peer_down``, ``peer_certificate_unknown_ca``, ``peer_certificate_expired``,
    ``peer_cluster_mismatch:<id>``, ``peer_speaks_plaintext``, ``our_certificate_rejected_*``,
    ``peer_requires_tls`` (we are plaintext), ``own_certificate_expired``, ``own_certificate_unknown_ca``
    (ours is not from the CA we trust), ``our_certificate_rejected`` (the peer closed after judging
    it: another CA, or we are not a peer it knows at TLS level), ``handshake_ok`` or
    ``unknown:<text>``. Blocking; call it in a thread and only on the failure path.
    """
    host, port = split_target(target)
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return "peer_down"
    with raw:
        if files is None:
            return _probe_plain_client(raw, timeout_s)
        own_problem = _own_certificate_problem(files)
        if own_problem:
            return own_problem
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(files.ca_file))
        ctx.load_cert_chain(str(files.cert_file), str(files.key_file))
        ctx.set_alpn_protocols(["h2"])
        try:
            tls = ctx.wrap_socket(raw, server_hostname=tls_name_for(expected_cluster_id))
        except ssl.SSLCertVerificationError as exc:
            return _VERIFY_REASONS.get(exc.verify_code, f"unknown:{exc.verify_message}")
        except ssl.SSLError as exc:
            return _reason_from_ssl_error(exc)
        except OSError as exc:
            return f"unknown:{exc}"
        with tls:
            der = tls.getpeercert(binary_form=True)
            peer_id = cluster_id_of(x509.load_der_x509_certificate(der)) if der else None
            if peer_id != expected_cluster_id:
                return f"peer_cluster_mismatch:{peer_id}"
            try:  # TLS 1.3: the server judges our certificate after the handshake, then closes or alerts
                tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                data = tls.recv(1)
            except ssl.SSLError as exc:
                return _reason_from_ssl_error(exc)
            except OSError as exc:
                return f"unknown:{exc}"
            return "handshake_ok" if data else "our_certificate_rejected"


def _own_certificate_problem(files: TlsFiles) -> str:
    """Our own certificate, checked locally first: expired, or not issued by the CA we trust."""
    try:
        own = x509.load_pem_x509_certificate(Path(files.cert_file).read_bytes())
        cas = x509.load_pem_x509_certificates(Path(files.ca_file).read_bytes())
    except (OSError, ValueError):
        return "own_certificate_unreadable"
    now = _now()
    if own.not_valid_after_utc <= now:
        return "own_certificate_expired"
    if own.not_valid_before_utc > now:
        return "own_certificate_not_yet_valid"
    for ca in cas:
        try:
            own.verify_directly_issued_by(ca)
            return ""
        except (ValueError, TypeError, InvalidSignature):
            continue
    return "own_certificate_unknown_ca"


def _reason_from_ssl_error(exc: ssl.SSLError) -> str:
    text = f"{exc.reason or ''} {exc}".upper()
    for needle, reason in _ALERT_REASONS:
        if needle in text:
            return reason
    return f"unknown:{exc.reason or exc}"


def _probe_plain_client(raw: socket.socket, timeout_s: float) -> str:
    """We dial plaintext: does the peer want TLS? (a gRPC TLS server closes on an HTTP/2 preface)."""
    try:
        raw.settimeout(timeout_s)
        raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        data = raw.recv(9)
    except OSError:
        return "peer_requires_tls"
    return "handshake_ok" if data else "peer_requires_tls"
