"""Render the chart with real Helm, offline, and write the manifests it would apply.

No `helm` binary can be installed here, but PyPI `helm-sdkpy` embeds Helm v4 as a library, without a
`template` action. So this runs `helm install` against a minimal fake Kubernetes API (stdlib HTTP server:
discovery for the kinds the chart uses, empty lists, creates echoed back) and records every object Helm
creates. The output is what `helm template` would print, fed to a schema validator by deploy/validate.sh.

    python3.12 render_offline.py CHART OUT.yaml [--set-json '{"key": value}']   # (helm-sdkpy's python)
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

GROUPS = {  # group/version -> [(plural, kind, namespaced)]
    "v1": [
        ("configmaps", "ConfigMap", True),
        ("secrets", "Secret", True),
        ("services", "Service", True),
        ("namespaces", "Namespace", False),
        ("pods", "Pod", True),
        ("serviceaccounts", "ServiceAccount", True),
    ],
    "apps/v1": [("deployments", "Deployment", True), ("statefulsets", "StatefulSet", True)],
    "autoscaling/v2": [("horizontalpodautoscalers", "HorizontalPodAutoscaler", True)],
    "policy/v1": [("poddisruptionbudgets", "PodDisruptionBudget", True)],
    "monitoring.coreos.com/v1": [("servicemonitors", "ServiceMonitor", True)],
}
CREATED: list[dict[str, Any]] = []


def resource_list(group_version: str) -> dict[str, Any]:
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": p, "singularName": k.lower(), "namespaced": ns, "kind": k, "verbs": verbs}
            for p, k, ns in GROUPS[group_version]
        ],
    }


def group_list() -> dict[str, Any]:
    groups = [gv for gv in GROUPS if "/" in gv]
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [
            {
                "name": gv.split("/")[0],
                "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
            }
            for gv in groups
        ],
    }


class FakeApi(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/version":
            return self.reply(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"})
        if path == "/api":
            return self.reply(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            return self.reply(200, group_list())
        for gv in GROUPS:
            prefix = "/api/v1" if gv == "v1" else f"/apis/{gv}"
            if path == prefix:
                return self.reply(200, resource_list(gv))
            parts = path.removeprefix(prefix).strip("/").split("/")
            if path.startswith(prefix + "/") and parts[-1] in {p for p, _, _ in GROUPS[gv]}:
                kind = next(k for p, k, _ in GROUPS[gv] if p == parts[-1])
                return self.reply(200, {"kind": f"{kind}List", "apiVersion": gv, "metadata": {}, "items": []})
        return self.reply(
            404,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "reason": "NotFound",
                "code": 404,
                "message": "not found",
            },
        )

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        if "protobuf" in self.headers.get("content-type", ""):
            # Helm's release record (a Secret, sent by the typed client as protobuf): accepted, not recorded.
            meta = {"name": "release", "namespace": "default", "uid": "r", "resourceVersion": "1"}
            return self.reply(201, {"kind": "Secret", "apiVersion": "v1", "metadata": meta})
        body = json.loads(raw or b"{}")
        CREATED.append(body)
        meta = body.setdefault("metadata", {})
        meta.update({"uid": f"uid-{len(CREATED)}", "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"})
        self.reply(201, body)

    do_PUT = do_PATCH = do_POST


async def render(chart: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    from helm_sdkpy import Configuration, Install

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}],
        "users": [{"name": "fake", "user": {"token": "fake"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        json.dump(kubeconfig, file)
        file.flush()
        config = Configuration(namespace="default", kubeconfig=file.name)
        await Install(config).run("gw", chart, values=values, wait=False, timeout=60)
    server.shutdown()
    # Helm's own release records (Secrets of type helm.sh/release.v1) are not part of the chart.
    return [o for o in CREATED if o.get("type") != "helm.sh/release.v1"]


def main() -> int:
    chart, out = sys.argv[1], Path(sys.argv[2])
    values = json.loads(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[3] == "--set-json" else {}
    objects = asyncio.run(render(chart, values))
    out.write_text("".join("---\n" + json.dumps(o, indent=1) + "\n" for o in objects))
    print(f"{len(objects)} objects: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objects))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
