"""What a consumer (an agent on a control-plane instance) reports it has loaded, as a ConfigMap of
its own: ``<clusterpki>-consumer-<agent>``, one per agent, so agents never contend with each other
or with the operator for a write.

``data["loaded"]`` is JSON: ``{component: {secret component: revision}}``, e.g.
``{"kube-apiserver": {"ca": "3f2a...", "apiserver": "9bc1...", ...}}``. A revision is the
fingerprint of a Secret's data: the operator computes it from the same Secret, so "current" means
the component runs exactly what the Secret holds now.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from clusterpki.kube import secrets

LABEL_CONSUMER = f"{secrets.GROUP}/consumer"
AGENT = "clusterpki-agent"
LOADED = "loaded"

Loaded = dict[str, dict[str, str]]  # component -> Secret component -> revision


def revision(data: Mapping[str, str]) -> str:
    """The fingerprint of a Secret's ``data`` (base64 values, as the API holds them)."""
    canonical = json.dumps(dict(sorted(data.items())), separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def name(pki_name: str, agent: str) -> str:
    return f"{pki_name}-consumer-{agent}"


def selector(pki_name: str) -> str:
    return f"{secrets.LABEL_PKI}={pki_name},{secrets.LABEL_MANAGED_BY}={AGENT}"


def config_map(pki_name: str, namespace: str, agent: str, loaded: Loaded) -> dict[str, Any]:
    labels = {secrets.LABEL_PKI: pki_name, LABEL_CONSUMER: agent, secrets.LABEL_MANAGED_BY: AGENT}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name(pki_name, agent), "namespace": namespace, "labels": labels},
            "data": {LOADED: json.dumps(loaded, sort_keys=True)}}


def read(config_map: Mapping[str, Any]) -> tuple[str, Loaded]:
    """The agent's name and what it loaded; an unreadable report counts as nothing loaded."""
    meta = config_map.get("metadata") or {}
    agent = (meta.get("labels") or {}).get(LABEL_CONSUMER) or meta.get("name", "?")
    try:
        loaded = json.loads((config_map.get("data") or {}).get(LOADED) or "{}")
    except ValueError:
        return agent, {}
    if not isinstance(loaded, dict):
        return agent, {}
    return agent, {c: dict(r) for c, r in loaded.items() if isinstance(r, dict)}


def consumers(reports: list[Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per agent and component, ``{name, current, behind}``: whether it runs what the
    ClusterPKI's Secrets (``current``, by component) hold now, and if not, which of them it runs an
    older revision of."""
    entries = []
    for report in reports:
        agent, loaded = read(report)
        for component, revisions in sorted(loaded.items()):
            behind = sorted(secret for secret, rev in revisions.items()
                            if secret in current and revision(current[secret].get("data") or {}) != rev)
            entry: dict[str, Any] = {"name": f"{agent}/{component}", "current": not behind}
            if behind:
                entry["behind"] = behind
            entries.append(entry)
    return sorted(entries, key=lambda e: e["name"])


def holding_up(entries: list[Mapping[str, Any]]) -> str:
    """Words for the consumers that are not current, e.g. ``cp-0/etcd (etcd-ca, etcd-server-cp-0)``."""
    return ", ".join(f"{e['name']} ({', '.join(e.get('behind', []))})" for e in entries if not e["current"])
