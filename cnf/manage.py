"""``cnf-manage``: operator tasks outside the running agent (today: the federation PKI).

    cnf-manage ca init --dir /etc/cnf/tls [--days 3650] [--force]
    cnf-manage cert issue --cluster-id ID --dir /etc/cnf/tls [--days 365] [--dns NAME]... [--ip ADDR]...
                          [--out-dir DIR]
    cnf-manage cert show FILE

The CA key stays where ``ca init`` wrote it (mode 0600): issue certificates on that machine, copy
``ca.crt``, ``<id>.crt`` and ``<id>.key`` to the agent of cluster ``ID``. Agents reload rewritten
certificate files without a restart, so renewal is "issue again, copy over".
Exit codes: 0 ok, 2 bad input (the message names the option).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography import x509

from cnf.errors import CNFError, InvalidInput
from cnf.grpc.tls import cluster_id_of, init_ca, issue_cert


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cnf-manage", description="CNF operator tasks (federation PKI).")
    top = p.add_subparsers(dest="group", required=True)

    ca = top.add_parser("ca", help="federation certificate authority").add_subparsers(dest="action", required=True)
    ca_init = ca.add_parser("init", help="create ca.crt and ca.key in --dir")
    ca_init.add_argument("--dir", required=True, help="directory for ca.crt / ca.key")
    ca_init.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    ca_init.add_argument("--force", action="store_true", help="replace an existing CA (invalidates all certs)")

    cert = top.add_parser("cert", help="agent certificates").add_subparsers(dest="action", required=True)
    issue = cert.add_parser("issue", help="issue <cluster-id>.crt/.key signed by the CA in --dir")
    issue.add_argument("--cluster-id", required=True, help="the cluster this agent serves")
    issue.add_argument("--dir", required=True, help="directory holding the CA (ca init --dir)")
    issue.add_argument("--days", type=int, default=365, help="validity (default 365)")
    issue.add_argument("--dns", action="append", default=[], help="extra DNS SAN (repeatable)")
    issue.add_argument("--ip", action="append", default=[], help="extra IP SAN (repeatable)")
    issue.add_argument("--out-dir", help="write the files here (with a copy of ca.crt) instead of --dir")
    show = cert.add_parser("show", help="print the cluster id and validity of a certificate")
    show.add_argument("file")
    return p


def _show(path: str) -> str:
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read certificate {path}: {exc}", field="file") from None
    return (f"subject: {cert.subject.rfc4514_string()}\nissuer: {cert.issuer.rfc4514_string()}\n"
            f"cluster_id: {cluster_id_of(cert) or '-'}\nnot_before: {cert.not_valid_before_utc.isoformat()}\n"
            f"not_after: {cert.not_valid_after_utc.isoformat()}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.group == "ca" and args.action == "init":
            crt, key = init_ca(args.dir, days=args.days, force=args.force)
            print(f"CA certificate: {crt}\nCA key:         {key} (keep it private)")
        elif args.group == "cert" and args.action == "issue":
            files = issue_cert(args.dir, args.cluster_id, days=args.days, dns_names=args.dns,
                               ip_addresses=args.ip, out_dir=args.out_dir)
            print(f"certificate: {files.cert_file}\nkey:         {files.key_file}\nCA:          {files.ca_file}")
        elif args.group == "cert" and args.action == "show":
            print(_show(args.file))
    except InvalidInput as err:
        print(f"cnf-manage: error: --{err.field.replace('_', '-')}: {err.message}", file=sys.stderr)
        return 2
    except CNFError as err:
        print(f"cnf-manage: error: {err.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
