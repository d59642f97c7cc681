"""What a consumer (an agent on a control-plane instance) reports it has loaded, as a ConfigMap of
its own: ``<clusterpki>-consumer-<agent>``, one per agent, so agents never contend with each other
or with the operator for a write.

``data["loaded"]`` is JSON: ``{component: {secret component: revision}}``, e.g.
``{"kube-apiserver": {"ca": "3f2a...", "apiserver": "9bc1...", ...}}``. A revision is the
fingerprint of a Secret's data: the operator computes it from the same Secret, so "current" means
the component runs exactly what the Secret holds now.

``data["health"]`` is JSON ``{component: URL}``: where the other agents check this member's instance
before they restart theirs. ``data["restarts"]`` is JSON ``{component: {"state": "Waiting" | "Failed",
"message": ...}}`` for restarts that are not done: waiting for their turn, or failed (which stops the
roll of that component on every member).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from clusterpki.kube import secrets

LABEL_CONSUMER = f"{secrets.GROUP}/consumer"
AGENT = "clusterpki-agent"
LOADED, HEALTH, RESTARTS = "loaded", "health", "restarts"
WAITING, FAILED = "Waiting", "Failed"

Loaded = dict[str, dict[str, str]]  # component -> Secret component -> revision


def revision(data: Mapping[str, str]) -> str:
    """The fingerprint of a Secret's ``data`` (base64 values, as the API holds them)."""
    canonical = json.dumps(dict(sorted(data.items())), separators=(",", ":")).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def name(pki_name: str, agent: str) -> str:
    return f"{pki_name}-consumer-{agent}"


def path(namespace: str, config_map: str | None = None) -> str:
    """The API path of a namespace's ConfigMaps, or of one of them."""
    collection = f"/api/v1/namespaces/{namespace}/configmaps"
    return f"{collection}/{config_map}" if config_map else collection


def selector(pki_name: str) -> str:
    return f"{secrets.LABEL_PKI}={pki_name},{secrets.LABEL_MANAGED_BY}={AGENT}"


def config_map(pki_name: str, namespace: str, agent: str, loaded: Loaded, health: Mapping[str, str],
               restarts: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    labels = {secrets.LABEL_PKI: pki_name, LABEL_CONSUMER: agent, secrets.LABEL_MANAGED_BY: AGENT}
    data = {LOADED: loaded, HEALTH: health, RESTARTS: restarts}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name(pki_name, agent), "namespace": namespace, "labels": labels},
            "data": {key: json.dumps(value, sort_keys=True) for key, value in data.items()}}


def read(config_map: Mapping[str, Any]) -> tuple[str, Loaded]:
    """The agent's name and what it loaded; an unreadable report counts as nothing loaded."""
    loaded = _field(config_map, LOADED)
    return agent_of(config_map), {c: dict(r) for c, r in loaded.items() if isinstance(r, dict)}


def agent_of(config_map: Mapping[str, Any]) -> str:
    meta = config_map.get("metadata") or {}
    return (meta.get("labels") or {}).get(LABEL_CONSUMER) or meta.get("name", "?")


def health(config_map: Mapping[str, Any]) -> dict[str, str]:
    """Where each of the agent's components answers health checks."""
    return {c: url for c, url in _field(config_map, HEALTH).items() if isinstance(url, str)}


def restarts(config_map: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The agent's restarts that are not done, by component: ``{"state", "message"}``."""
    return {c: {"state": str(r.get("state")), "message": str(r.get("message", ""))}
            for c, r in _field(config_map, RESTARTS).items() if isinstance(r, dict)}


def _field(config_map: Mapping[str, Any], key: str) -> dict[str, Any]:
    """A JSON mapping of the report; an unreadable one counts as empty."""
    try:
        value = json.loads((config_map.get("data") or {}).get(key) or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def consumers(reports: list[Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per agent and component, ``{name, current, behind}``: whether it runs what the
    ClusterPKI's Secrets (``current``, by component) hold now, and if not, which of them it runs an
    older revision of."""
    entries = []
    for report in reports:
        agent, loaded = read(report)
        pending = restarts(report)
        for component in sorted(set(loaded) | set(pending)):  # a first restart that failed has loaded nothing
            revisions = loaded.get(component, {})
            behind = sorted(secret for secret, rev in revisions.items()
                            if secret in current and revision(current[secret].get("data") or {}) != rev)
            entry: dict[str, Any] = {"name": f"{agent}/{component}", "current": component in loaded and not behind}
            if behind:
                entry["behind"] = behind
            if component in pending:
                entry["restart"] = f"{pending[component]['state']}: {pending[component]['message']}"
            entries.append(entry)
    return sorted(entries, key=lambda e: e["name"])


def failed_restarts(entries: list[Mapping[str, Any]]) -> str:
    """Words for the consumers whose restart failed, e.g. ``cp-1/kube-apiserver (Failed: ...)``."""
    return "; ".join(f"{e['name']} ({e['restart']})" for e in entries
                     if str(e.get("restart", "")).startswith(FAILED))


def holding_up(entries: list[Mapping[str, Any]]) -> str:
    """Words for the consumers that are not current, e.g. ``cp-0/etcd (etcd-ca, etcd-server-cp-0)``."""
    return ", ".join(f"{e['name']} ({', '.join(e.get('behind', []))})" for e in entries if not e["current"])
