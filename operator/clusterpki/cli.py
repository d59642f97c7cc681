"""The ``clusterpki`` command. Each subcommand imports only what it needs, so ``render`` and
``check-expiration --dir`` start fast and never load Kopf or the Kubernetes client."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from clusterpki import __version__
from clusterpki.errors import UsageError, UserError
from clusterpki.kube.parts import MAX_SHARDS

PROG = "clusterpki"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
USAGE, FAILED = 2, 1  # exit codes: arguments that do not go together (as argparse's own); anything else


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = _parser().parse_known_args(argv)
    if unknown:  # said with the command's own usage, not the top level's
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if getattr(args, "cluster", False):
            _use_credentials(args)
        return int(args.handler(args) or 0)
    except UsageError as exc:
        args.usage()
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return USAGE
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an API call that failed: its text is safe (see kube.api.ApiError)
        from clusterpki.kube.api import ApiError

        if not isinstance(exc, ApiError):
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return FAILED


def _use_credentials(args: argparse.Namespace) -> None:
    """``--kubeconfig`` and ``--context`` of a command that talks to a cluster."""
    from clusterpki.kube import api

    api.use(api.Source(args.kubeconfig, args.context))


def _render(args: argparse.Namespace) -> int:
    from clusterpki.kubeadm import render
    from clusterpki.pki import times

    pki_spec = render.load_spec_file(Path(args.file))
    if args.all_members and args.etcd_member:
        raise UsageError("--all-members renders every member; --etcd-member names one")
    if args.all_members:
        for outcome in render.render_members(pki_spec, Path(args.out), args.force, times.now()):
            _print_render(pki_spec.name, outcome, os.path.join(args.out, outcome.member))
        return 0
    outcome = render.render(pki_spec, Path(args.out), args.etcd_member, args.force, times.now())
    _print_render(pki_spec.name, outcome, args.out)
    return 0


def _print_render(name: str, outcome: Any, out: str) -> None:
    """What was done to each file, then one line: ``out`` as the user wrote it."""
    width = max(len(component) for component, _, _ in outcome.actions)
    for component, action, detail in outcome.actions:
        print(f"{component.ljust(width)}  {action}{f' ({detail})' if detail else ''}")
    count = len(outcome.written)
    print(f"Wrote {count} file{'' if count == 1 else 's'} of ClusterPKI {name!r} to {out} (etcd member "
          f"{outcome.member}).")


def _run(args: argparse.Namespace) -> int:
    from clusterpki import runtime

    return runtime.run(namespaces=[] if args.all_namespaces else args.namespace, standalone=args.standalone,
                       liveness=args.liveness, verbose=args.verbose, csr_policy=args.csr_policy,
                       metrics_port=args.metrics_port,
                       lease_namespace=(args.leader_election_namespace or _own_namespace()) if args.leader_elect else None,
                       shards=args.shards)


def _shards(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of parts from 1 to {MAX_SHARDS} (the Role "
                                         "names that many Leases)")
    return int(value)


def _own_namespace() -> str:
    """The pod's namespace in a cluster, else the manifests' ``clusterpki-system``."""
    try:
        return Path(SERVICE_ACCOUNT_NAMESPACE).read_text().strip()
    except OSError:
        return "clusterpki-system"


def _agent(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from clusterpki.agent import consumers, startup
    from clusterpki.agent.agent import Agent
    from clusterpki.kube.api import Api

    health_urls = dict(pair.partition("=")[::2] for pair in args.health)
    unknown = sorted((set(args.component) | set(health_urls)) - set(consumers.BY_COMPONENT))
    if unknown:
        raise UsageError(f"--component {', '.join(unknown)}: not one of {', '.join(consumers.BY_COMPONENT)}")
    restarter = _restarter(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="[%(asctime)s] %(name)s [%(levelname)-7s] %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    out = Path(args.dir)

    async def main() -> None:
        # SIGTERM (the kubelet stopping the pod) ends the agent cleanly: it gives its restart Lease back.
        task = asyncio.current_task()
        assert task is not None
        api = Api(_configuration(), reload=_configuration)
        try:
            start = await startup.check(api, args.namespace, args.name, args.member, health_urls, out, args.replace)
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            await Agent(api, args.namespace, args.name, out, args.member,
                        args.component or list(consumers.BY_COMPONENT), restarter, start, health_urls,
                        args.healthy_for, args.resync, args.restart_interval).run()
        finally:
            await api.close()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    return 0


def _node_agent(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import signal

    from clusterpki.agent import restarters
    from clusterpki.agent.node import NodeAgent, connect_with
    from clusterpki.kubeadm.kubelet import Files

    etc = Path(args.dir)
    kubeconfig = Path(args.kubeconfig) if args.kubeconfig else etc / "kubelet.conf"
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="[%(asctime)s] %(name)s [%(levelname)-7s] %(message)s")
    logging.getLogger("kubernetes").setLevel(logging.WARNING)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await NodeAgent(connect_with(kubeconfig, args.context), args.namespace, args.name, args.node,
                        Files(etc, Path(args.kubelet_dir)), restarters.Command(args.restart_command), args.health,
                        args.healthy_for, args.resync).run()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    return 0


def _restarter(args: argparse.Namespace) -> Any:
    from clusterpki.agent import restarters

    if args.restart == "command":
        if not args.restart_command:
            raise UsageError("--restart command needs --restart-command CMD")
        return restarters.Command(args.restart_command)
    if args.restart == "systemd":
        return restarters.Systemd(dict(pair.partition("=")[::2] for pair in args.systemd_unit))
    return restarters.StaticPods(Path(args.manifests or Path(args.dir) / "manifests"))


def _agent_manifests(args: argparse.Namespace) -> int:
    from clusterpki.kube import manifests
    from clusterpki.kubeadm import render
    from clusterpki.pki import documents

    pki_spec, in_file = render.load_spec_and_namespace(Path(args.file))
    namespace = args.namespace or in_file
    if namespace is None:
        raise UsageError(f"{args.file} names no namespace: give the ClusterPKI's namespace with -n")
    sys.stdout.write(documents.dump_all(manifests.manifests(pki_spec, namespace, args.image, args.dir,
                                                             args.node_agents)))
    return 0


def _renew(args: argparse.Namespace) -> int:
    from clusterpki.controller.requests import RENEW, renewal_targets
    from clusterpki.kube.api import ApiError
    from clusterpki.kube.resource import ClusterPKIClient
    from clusterpki.pki import times

    value = f"{','.join(args.component)}@{times.format_micro(times.now())}"

    async def request(api: Any) -> None:
        clusterpkis = ClusterPKIClient(api)
        found = await clusterpkis.get(args.namespace, args.name)
        if found is None:
            raise UserError(f"ClusterPKI {args.namespace}/{args.name} does not exist")
        leaves = _leaves(found)
        _, problem = renewal_targets(value, leaves)
        if problem is not None:
            raise UserError(f"--component {', '.join(args.component)}: {problem} (its leaves: {', '.join(leaves)})")
        await clusterpkis.annotate(args.namespace, args.name, {RENEW: value})

    try:
        _with_api(request)
    except ApiError as exc:
        raise UserError(f"cannot request the renewal of ClusterPKI {args.namespace}/{args.name}: {exc}") from None
    what = ", ".join(args.component) if args.component else "all leaves"
    print(f"Requested the renewal of {what} of ClusterPKI {args.namespace}/{args.name} ({RENEW}={value}).")
    return 0


def _leaves(body: dict[str, Any]) -> list[str]:
    """The leaves a ClusterPKI's spec plans (an invalid spec plans none: its condition says why)."""
    from clusterpki.pki import catalog, spec

    try:
        return [planned.component for planned in catalog.plan(spec.from_resource(body))]
    except spec.SpecError as exc:
        raise UserError(f"ClusterPKI {body['metadata']['namespace']}/{body['metadata']['name']} has an invalid "
                        f"spec: {exc}") from None


def _import(args: argparse.Namespace) -> int:
    from clusterpki.kube import takeover as store_takeover
    from clusterpki.kubeadm import takeover
    from clusterpki.pki import times

    plan = takeover.derive([Path(d) for d in args.dir], args.name, args.namespace, times.now(), args.service_cidr)
    stored, resource = _import_objects(plan, args.namespace, args.name)
    _print_import(plan, args, resource)

    async def write(api: Any) -> None:
        clients = store_takeover.ApiClients(api)
        await store_takeover.check(clients, args.namespace, args.name, [s["metadata"]["name"] for s in stored])
        if not args.dry_run:
            await store_takeover.create(clients, stored, resource)

    _with_api(write)
    what = f"{len(stored)} Secrets and ClusterPKI {args.namespace}/{args.name}"
    if args.dry_run:
        print(f"\nDry run: nothing was written. Without --dry-run, import creates {what}.")
        return 0
    issues = f"issues {', '.join(plan.left)} (missing or invalid), and " if plan.left else ""
    print(f"\nImported: created {what}. The operator {issues}renews the certificates when they fall due.")
    return 0


def _import_objects(plan: Any, namespace: str, name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The Secrets an import stores, and the ClusterPKI pinning each one's digest (the operator takes
    exactly those as its own)."""
    import json

    from clusterpki.controller.requests import IMPORTED
    from clusterpki.controller.wanted import of_pki
    from clusterpki.kube import secrets
    from clusterpki.pki import record

    wanted = of_pki(plan.pki)
    stored = [secrets.secret_object(namespace, name, c, wanted[c].kind, wanted[c].data, None, None, False)
              for c in plan.taken]
    pins = {c: record.data_digest(wanted[c].data) for c in plan.taken}
    metadata = {**plan.resource["metadata"], "annotations": {IMPORTED: json.dumps(pins, sort_keys=True)}}
    return stored, {**plan.resource, "metadata": metadata}


def _print_import(plan: Any, args: argparse.Namespace, resource: dict[str, Any]) -> None:
    from clusterpki.kube import secrets
    from clusterpki.pki import documents

    width = max(len(d.field) for d in plan.derived)
    shown = {d.field: d.value if d.value is not None else "(unset)" for d in plan.derived}
    value_width = max(len(v) for v in shown.values())
    print(f"Derived from {', '.join(args.dir)}:")
    for derived in plan.derived:
        print(f"  {derived.field.ljust(width)}  {shown[derived.field].ljust(value_width)}  {derived.source}")
    print("\nThe ClusterPKI:")
    print("\n".join(f"  {line}" for line in documents.dump(plan.resource).splitlines()))
    print(f"\nSecrets in namespace {args.namespace}:")
    listed = [*plan.taken, *plan.left]
    name_width = max(len(secrets.secret_name(args.name, c)) for c in listed)
    for component in listed:
        secret = secrets.secret_name(args.name, component).ljust(name_width)
        if component in plan.left:
            print(f"  {secret}  the operator issues it: {plan.left[component]}")
            continue
        pair = plan.pki.cas.get(component) or plan.pki.leaves.get(component)
        until = f", valid until {pair.cert.not_valid_after_utc:%Y-%m-%d %H:%M}Z" if pair else ""
        print(f"  {secret}  taken over from {plan.origin[component]}{until}")


def _configuration() -> Any:
    from clusterpki.kube.api import load_configuration

    return load_configuration()


def _check_expiration(args: argparse.Namespace) -> int:
    from clusterpki.kubeadm import expiration
    from clusterpki.pki import times

    if args.dir and args.name:
        raise UsageError("check-expiration takes --dir DIR, or -n NAMESPACE NAME, not both")
    if args.dir:
        rows = expiration.rows_from_dir(Path(args.dir))
    else:
        if not args.namespace or len(args.name) != 1:
            raise UsageError("check-expiration takes --dir DIR, or -n NAMESPACE NAME")
        rows = expiration.rows_from_certificates(_read_cluster_certificates(args.namespace, args.name[0]))
    now = times.now()
    text = expiration.format_json(rows, now) if args.output == "json" else expiration.format_table(rows, now)
    sys.stdout.write(text)
    return 0


def _with_api(call: Callable[[Any], Awaitable[Any]]) -> Any:
    """Run one call on the API with the current credentials, in an event loop of its own."""
    import asyncio

    from clusterpki.kube.api import Api

    async def main() -> Any:
        api = Api(_configuration())
        try:
            return await call(api)
        finally:
            await api.close()

    return asyncio.run(main())


def _read_cluster_certificates(namespace: str, name: str) -> dict[str, Any]:
    """The certificate of each component of a ClusterPKI, from its Secrets (``sa`` has none)."""
    from clusterpki.kube.api import ApiError
    from clusterpki.kube.secret_client import SecretClient
    from clusterpki.kube.secrets import is_rotation as secrets_of_rotation
    from clusterpki.kube.secrets import owned, read_pair
    from clusterpki.pki.catalog import SERVICE_ACCOUNT

    try:
        found, _ = owned(_with_api(lambda api: SecretClient(api).list(namespace, name)), name)
    except ApiError as exc:
        raise UserError(f"cannot read the Secrets of ClusterPKI {namespace}/{name}: {exc}") from None
    if not found:
        raise UserError(f"no Secrets of ClusterPKI {namespace}/{name} were found")
    certificates = {}
    for component, secret in found.items():
        if component == SERVICE_ACCOUNT or secrets_of_rotation(component):
            continue
        try:
            certificates[component] = read_pair(secret).cert
        except ValueError as exc:
            raise UserError(f"Secret {secret.name} cannot be read: {exc}") from None
    return certificates


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="A Kubernetes control-plane PKI, issued by an "
                                     "operator or rendered offline in kubeadm's layout.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the operator with the in-cluster config or KUBECONFIG")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch this namespace (repeatable) [all namespaces]")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces")
    run.add_argument("--standalone", action="store_true", help="do not coordinate with other replicas (peering)")
    run.add_argument("--liveness", metavar="URL", help="serve Kopf's health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run.add_argument("--csr-policy", metavar="NS/NAME",
                     help="the ClusterPKI whose spec.kubelet governs this cluster's kubelet CSRs [none: no CSR "
                          "is touched]")
    run.add_argument("--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on /metrics")
    run.add_argument("--leader-elect", action="store_true",
                     help="run only while holding the Lease 'clusterpki' (coordination.k8s.io/v1), or with --shards a "
                          "part's; for 2+ replicas")
    run.add_argument("--leader-election-namespace", metavar="NS",
                     help="the Lease's namespace [the pod's own, else clusterpki-system]")
    run.add_argument("--shards", type=_shards, default=1, metavar="N",
                     help=f"split the fleet by namespace into N parts (up to {MAX_SHARDS}), each led by the replica "
                          "holding the Lease 'clusterpki-shard-<i>-of-N'; needs --leader-elect, N replicas or more, "
                          "and the same N for every replica [1: one part, the Lease 'clusterpki']")
    run.add_argument("-v", "--verbose", action="store_true", help="log more")
    run.set_defaults(handler=_run)

    agent = commands.add_parser("agent", help="write a ClusterPKI's files for one control-plane instance, "
                                "restart what needs it, and report what runs")
    agent.add_argument("-n", "--namespace", required=True)
    agent.add_argument("name", metavar="NAME", help="the ClusterPKI")
    agent.add_argument("--dir", default="/etc/kubernetes", help="kubeadm's directory [/etc/kubernetes]")
    agent.add_argument("--member", required=True, help="this instance's etcd member (its server and peer pairs); "
                       "it reports as that member")
    agent.add_argument("--component", action="append", default=[],
                       help="a component running here (repeatable) [etcd, kube-apiserver, kube-controller-manager, "
                            "kube-scheduler]")
    agent.add_argument("--restart", choices=("static-pod", "systemd", "command"), default="static-pod",
                       help="how to restart a component [static-pod: annotate DIR/manifests/<component>.yaml]")
    agent.add_argument("--manifests", help="the static pod manifests [DIR/manifests]")
    agent.add_argument("--systemd-unit", action="append", default=[], metavar="COMPONENT=UNIT",
                       help="the systemd unit of a component [the component's name]")
    agent.add_argument("--restart-command", metavar="CMD",
                       help="with --restart command: run by sh -c, with CLUSTERPKI_COMPONENT set; exit 0 once healthy")
    agent.add_argument("--health", action="append", default=[], metavar="COMPONENT=URL",
                       help="where this member's component answers health checks (repeatable), e.g. "
                            "kube-apiserver=https://10.0.0.1:6443/readyz, etcd=https://10.0.0.1:2379/health; "
                            "other members check it before they restart theirs, and this agent after its restart")
    agent.add_argument("--healthy-for", type=float, default=10.0, metavar="SECONDS",
                       help="how long a restarted instance must stay healthy before the next member's turn: at "
                            "least the load balancer's health-check interval times its rise count [10]")
    agent.add_argument("--resync", type=float, default=30.0, metavar="SECONDS",
                       help="how often the files are checked again and the report renewed; a report not renewed "
                            "for three of these no longer counts [30]")
    agent.add_argument("--restart-interval", type=float, default=30.0, metavar="SECONDS",
                       help="the least time between two restarts of one component, however often its Secrets "
                            "change [30]")
    agent.add_argument("--replace", action="store_true",
                       help="overwrite a directory that holds a PKI the ClusterPKI never issued (a fresh node's); "
                            "to take over a running node's PKI, use clusterpki import instead")
    agent.add_argument("-v", "--verbose", action="store_true", help="log more")
    agent.set_defaults(handler=_agent)

    node = commands.add_parser("node-agent", help="keep a node's kubelet on a ClusterPKI's ca through rotations, "
                               "as the node itself (its kubelet.conf)")
    node.add_argument("-n", "--namespace", required=True)
    node.add_argument("name", metavar="NAME", help="the ClusterPKI")
    node.add_argument("--node", required=True, help="this node's name (its Node object)")
    node.add_argument("--dir", default="/etc/kubernetes", help="kubeadm's directory [/etc/kubernetes]")
    node.add_argument("--kubelet-dir", default="/var/lib/kubelet", help="the kubelet's root [/var/lib/kubelet]")
    node.add_argument("--kubeconfig", help="the node's credentials [DIR/kubelet.conf]")
    node.add_argument("--restart-command", required=True, metavar="CMD",
                      help="restarts the kubelet, e.g. 'systemctl restart kubelet'")
    node.add_argument("--health", metavar="URL", help="the kubelet's healthz, checked after a restart, e.g. "
                      "http://127.0.0.1:10248/healthz")
    node.add_argument("--healthy-for", type=float, default=10.0, metavar="SECONDS",
                      help="how long the restarted kubelet must stay healthy [10]")
    node.add_argument("--resync", type=float, default=60.0, metavar="SECONDS",
                      help="seconds between looks at the ClusterPKI (one GET of it) [60]")
    node.add_argument("-v", "--verbose", action="store_true", help="log more")
    node.set_defaults(handler=_node_agent)

    agent_manifests = commands.add_parser("agent-manifests", help="print the RBAC, report Leases and DaemonSets of "
                                          "a ClusterPKI's agents, one least-privileged ServiceAccount per member")
    agent_manifests.add_argument("-f", "--file", required=True, help="the ClusterPKI YAML, as for kubectl apply")
    agent_manifests.add_argument("-n", "--namespace", help="the ClusterPKI's namespace [the file's]")
    agent_manifests.add_argument("--image", default="ghcr.io/clusterpki/clusterpki:0.1.0", help="the agent's image")
    agent_manifests.add_argument("--dir", default="/etc/kubernetes", help="kubeadm's directory on the nodes")
    agent_manifests.add_argument("--node-agents", action=argparse.BooleanOptionalAction, default=True,
                                 help="include the node agents' DaemonSet (every node; it restarts the kubelet with "
                                      "systemctl) [yes]")
    agent_manifests.set_defaults(handler=_agent_manifests)

    render = commands.add_parser("render", help="render a ClusterPKI's whole PKI into kubeadm's layout")
    render.add_argument("-f", "--file", required=True, help="the ClusterPKI YAML, as for kubectl apply")
    render.add_argument("--out", required=True, help="the directory to write (like /etc/kubernetes)")
    render.add_argument("--etcd-member", help="whose etcd server and peer pair to write [the first member]")
    render.add_argument("--all-members", action="store_true",
                        help="write OUT/<member> for every etcd member, with the same CAs and service-account key")
    render.add_argument("--force", action="store_true",
                        help="re-issue every leaf even when valid (CAs and sa.key are always kept)")
    render.set_defaults(handler=_render)

    renew = commands.add_parser("renew", help="renew a ClusterPKI's leaves now, like cmctl renew")
    renew.add_argument("-n", "--namespace", required=True)
    renew.add_argument("name", metavar="NAME")
    renew.add_argument("--component", action="append", default=[],
                       help="renew only this component (repeatable) [all leaves]")
    renew.set_defaults(handler=_renew)

    imports = commands.add_parser("import", help="take over an existing kubeadm cluster's PKI (/etc/kubernetes)")
    imports.add_argument("-n", "--namespace", required=True)
    imports.add_argument("name", metavar="NAME", help="the ClusterPKI to create")
    imports.add_argument("--dir", action="append", required=True,
                         help="a control-plane node's kubeadm directory, e.g. /etc/kubernetes; repeat it for "
                              "each node, to take over each node's etcd member")
    imports.add_argument("--service-cidr", metavar="CIDR",
                         help="the cluster's service CIDR, when it is not kubeadm's default 10.96.0.0/12")
    imports.add_argument("--dry-run", action="store_true", help="print the ClusterPKI and what would be created; "
                         "write nothing")
    imports.set_defaults(handler=_import)

    check = commands.add_parser("check-expiration", help="print when each certificate expires")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--dir", help="a directory rendered in kubeadm's layout")
    source.add_argument("-n", "--namespace", help="the namespace of the ClusterPKI NAME, read from its Secrets")
    check.add_argument("name", nargs="*", metavar="NAME", help="the ClusterPKI, with -n")
    check.add_argument("-o", "--output", choices=("table", "json"), default="table")
    check.set_defaults(handler=_check_expiration)

    for name in ("run", "agent", "renew", "import", "check-expiration"):
        _cluster_flags(commands.choices[name])
    node.add_argument("--context", help="the kubeconfig's context [its current one]")
    for command in commands.choices.values():
        command.set_defaults(usage=lambda command=command: command.print_usage(sys.stderr), parser=command)
    return parser


def _cluster_flags(command: argparse.ArgumentParser) -> None:
    """The flags of a command that talks to a cluster, as kubectl's."""
    command.add_argument("--kubeconfig", metavar="FILE",
                         help="the credentials [KUBECONFIG, else the pod's service account, else ~/.kube/config]")
    command.add_argument("--context", help="the kubeconfig's context [its current one]")
    command.set_defaults(cluster=True)
