"""``check-expiration``: one row per certificate, as a table like kubeadm's or as JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from cryptography import x509

from clusterpki.errors import UserError
from clusterpki.kubeadm.layout import read_cert
from clusterpki.pki import catalog, durations, kubeconfig, placement, times
from clusterpki.pki.placement import Placement, SecretKey

HEADERS = ("CERTIFICATE", "EXPIRES", "RESIDUAL TIME", "CERTIFICATE AUTHORITY")
SELF_SIGNED = "(self-signed)"


class Row(NamedTuple):
    name: str
    authority: str  # the issuing CA's name, or SELF_SIGNED for a root
    not_after: datetime | None  # None when the certificate is missing


def rows_from_dir(directory: Path) -> list[Row]:
    """Rows for kubeadm's layout in ``directory``: leaves and kubeconfigs first, then the CAs."""
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory")
    rows = [Row(p.kubeadm_name, catalog.issuer_of(p.row) or SELF_SIGNED, _not_after(directory, p))
            for p in placement.certificate_files("")
            if p.where is not catalog.Where.FIRST_MEMBER or (directory / p.path).exists()]  # super-admin.conf
    if all(row.not_after is None for row in rows):
        raise UserError(f"{directory} holds no certificates in kubeadm's layout (pki/ca.crt, admin.conf, ...)")
    return rows


def rows_from_certificates(stored: dict[str, x509.Certificate]) -> list[Row]:
    """Rows for a ClusterPKI's certificates (by component, as its Secrets hold them): leaves first,
    then the CAs."""
    leaves, cas = [], []
    for component, cert in sorted(stored.items()):
        if component in catalog.CA_BY_COMPONENT:
            cas.append(Row(component, SELF_SIGNED if cert.issuer == cert.subject else "(external)",
                           cert.not_valid_after_utc))
        else:
            leaves.append(Row(component, catalog.issuer_of(component) or "-", cert.not_valid_after_utc))
    return leaves + sorted(cas, key=lambda r: [c.component for c in catalog.CERTIFICATE_AUTHORITIES].index(r.name))


def format_table(rows: list[Row], now: datetime) -> str:
    cells = [HEADERS] + [(r.name, _expires(r), _residual(r, now), r.authority) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells) + "\n"


def format_json(rows: list[Row], now: datetime) -> str:
    items = [{
        "name": r.name,
        "certificateAuthority": r.authority,
        "missing": r.not_after is None,
        "expirationDate": times.format_time(r.not_after) if r.not_after else None,
        "residualSeconds": int((r.not_after - now).total_seconds()) if r.not_after else None,
        "residualTime": _residual(r, now),
    } for r in rows]
    return json.dumps({"certificates": items}, indent=2) + "\n"


def _not_after(directory: Path, found: Placement) -> datetime | None:
    path = directory / found.path
    if not path.exists():
        return None
    try:
        if found.key is SecretKey.KUBECONFIG:
            return kubeconfig.read(path.read_bytes())[1].cert.not_valid_after_utc
        cert: x509.Certificate = read_cert(path)
    except ValueError as exc:
        raise UserError(f"{path} cannot be read: {exc}") from None
    return cert.not_valid_after_utc


def _expires(row: Row) -> str:
    return row.not_after.strftime("%b %d, %Y %H:%M UTC") if row.not_after else "<missing>"


def _residual(row: Row, now: datetime) -> str:
    return durations.format_short(row.not_after - now) if row.not_after else "<missing>"
