"""Federation PKI: what ``cnf-manage ca init`` / ``cert issue`` write, and what they refuse."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cnf.errors import InvalidInput
from cnf.grpc.tls import (
    PeerIdentityVerifier,
    TlsFiles,
    cluster_id_of,
    init_ca,
    issue_cert,
    tls_name_for,
    validate_cluster_id,
)
from cnf.manage import main

CID = "11111111-1111-4111-8111-111111111111"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_ca_init_writes_a_ca_and_a_private_key(tmp_path: Path) -> None:
    crt, key = init_ca(tmp_path, days=30)
    ca = _cert(crt)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days in (29, 30)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_ca_init_refuses_to_replace_a_ca(tmp_path: Path) -> None:
    init_ca(tmp_path)
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(InvalidInput) as exc:
        init_ca(tmp_path)
    assert exc.value.field == "dir"
    assert (tmp_path / "ca.crt").read_bytes() == before
    init_ca(tmp_path, force=True)
    assert (tmp_path / "ca.crt").read_bytes() != before


def test_issued_certificate_names_the_cluster(tmp_path: Path) -> None:
    init_ca(tmp_path)
    files = issue_cert(tmp_path, CID, days=10, dns_names=["os1-ctrl.example.com"], ip_addresses=["127.0.0.1"])
    assert files == TlsFiles.in_dir(tmp_path, CID)
    cert = _cert(files.cert_file)
    ca = _cert(files.ca_file)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == CID
    assert cluster_id_of(cert) == CID
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"cnf://cluster/{CID}" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert set(san.get_values_for_type(x509.DNSName)) == {tls_name_for(CID), "os1-ctrl.example.com"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days in (9, 10)
    assert stat.S_IMODE(files.key_file.stat().st_mode) == 0o600


def test_issue_into_another_dir_copies_the_ca(tmp_path: Path) -> None:
    init_ca(tmp_path / "ca")
    files = issue_cert(tmp_path / "ca", CID, out_dir=tmp_path / "agent")
    assert files.ca_file.read_bytes() == (tmp_path / "ca" / "ca.crt").read_bytes()
    assert not (tmp_path / "agent" / "ca.key").exists()  # the CA key never travels


@pytest.mark.parametrize("bad", ["", "has space", "under_score", "-leading", "x" * 64, "dot.ted"])
def test_cluster_id_must_be_a_dns_label(bad: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_cluster_id(bad)
    assert exc.value.field == "cluster_id"


def test_issue_without_ca_names_the_dir(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as exc:
        issue_cert(tmp_path, CID)
    assert exc.value.field == "dir"


def test_bad_ip_and_days_are_refused(tmp_path: Path) -> None:
    init_ca(tmp_path)
    with pytest.raises(InvalidInput) as exc:
        issue_cert(tmp_path, CID, ip_addresses=["300.1.1.1"])
    assert exc.value.field == "ip"
    with pytest.raises(InvalidInput) as exc:
        issue_cert(tmp_path, CID, days=0)
    assert exc.value.field == "days"


def test_cnf_manage_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = str(tmp_path / "pki")
    assert main(["ca", "init", "--dir", d]) == 0
    assert main(["cert", "issue", "--cluster-id", CID, "--dir", d, "--days", "5"]) == 0
    assert main(["cert", "show", f"{d}/{CID}.crt"]) == 0
    out = capsys.readouterr().out
    assert f"cluster_id: {CID}" in out
    assert main(["cert", "issue", "--cluster-id", "bad id", "--dir", d]) == 2
    assert "--cluster-id" in capsys.readouterr().err
    assert main(["ca", "init", "--dir", d]) == 2


def test_identity_verifier_decisions(tmp_path: Path) -> None:
    init_ca(tmp_path)
    pem = issue_cert(tmp_path, CID).cert_file.read_bytes()
    verifier = PeerIdentityVerifier({CID})
    assert verifier.verify({"x509_pem_cert": [pem]}, CID, operation="op") == CID
    from cnf.errors import Forbidden, Unauthorized

    with pytest.raises(Unauthorized):
        verifier.verify({}, CID, operation="op")
    with pytest.raises(Forbidden) as exc:
        verifier.verify({"x509_pem_cert": [pem]}, "someone-else", operation="op")
    assert exc.value.details["reason"] == "cluster_id_mismatch"
    with pytest.raises(Forbidden) as exc:
        PeerIdentityVerifier(lambda: {"other"}).verify({"x509_pem_cert": [pem]}, CID, operation="op")
    assert exc.value.details["reason"] == "unknown_cluster"


def test_identity_verifier_refuses_a_certificate_expired_since_the_handshake(tmp_path: Path) -> None:
    import datetime as dt

    from cnf.errors import Unauthorized

    init_ca(tmp_path)
    now = dt.datetime.now(dt.UTC)
    pem = issue_cert(tmp_path, CID, not_before=now - dt.timedelta(days=2),
                     not_after=now - dt.timedelta(seconds=1)).cert_file.read_bytes()
    with pytest.raises(Unauthorized) as exc:
        PeerIdentityVerifier({CID}).verify({"x509_pem_cert": [pem]}, CID, operation="op")
    assert exc.value.details["reason"] == "certificate_expired"
