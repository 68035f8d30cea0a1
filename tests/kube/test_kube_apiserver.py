"""A real kube-apiserver v1.20.2 on the k8s-sql shim, checked the way a user checks a cluster:
with kubectl.

kube-apiserver runs with the flags kubeadm 1.20 writes (see kube.KubeApiserver for the few
that move to a scratch directory and loopback) on the shim as k8s-sql deploys it (mTLS to
the shim, the shim to PostgreSQL with verify-full and a client certificate). Every test also
runs against etcd 3.4 (the ``etcd`` parameter): each assertion is what etcd does too, not a
description of the shim.

Not here: a kubelet and a scheduler (no container runtime on the machine), so Pods stay
Pending with no node; the Deployment test asserts the objects the controllers write.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time

import pytest

# The time limit applies to each test's body only: the first test's setup may build the
# binaries (minutes; build-kubernetes.sh has its own limit) and start the cluster.
pytestmark = pytest.mark.timeout(300, func_only=True)

CONFIGMAP = """apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}
data: {{value: "{value}"}}
"""


def namespace(cluster, name: str) -> str:
    cluster.kubectl("create", "namespace", name)
    return name


def configmaps(cluster, ns: str, names, app: str = "test", value: str = "1") -> None:
    """Create ConfigMaps ``names`` in ``ns`` with one ``kubectl create`` (one POST each)."""
    docs = "---\n".join(CONFIGMAP.format(name=n, ns=ns, app=app, value=value) for n in names)
    cluster.kubectl("create", "-f", "-", input=docs)


def test_apiserver_is_ready_with_kubeadms_flags(cluster):
    # only the flags that must move to this machine differ from the manifest kubeadm wrote
    assert cluster.apiserver.changed == ["advertise-address", "bind-address", "etcd-cafile", "etcd-certfile",
                                         "etcd-keyfile", "etcd-servers", "secure-port"]
    assert cluster.apiserver.flags["etcd-servers"] == cluster.datastore.endpoint
    r = cluster.kubectl("get", "--raw", "/readyz?verbose")
    assert "[+]etcd ok" in r.stdout and "readyz check passed" in r.stdout
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.20.2"
    # kube-apiserver's bootstrap objects are in the datastore
    assert cluster.kubectl("get", "namespace", "kube-system", "-o", "name").stdout == "namespace/kube-system\n"
    keys = cluster.datastore.etcdctl("get", "--prefix", "--keys-only", "/registry/namespaces/").stdout.split()
    assert {"/registry/namespaces/default", "/registry/namespaces/kube-system"} <= set(keys)


def test_create_and_paginated_list(cluster):
    ns = namespace(cluster, "paging")
    names = [f"cm-{i:02d}" for i in range(23)]
    configmaps(cluster, ns, names, app="paging")

    # kubectl pages with limit/continue: 23 objects in chunks of 5 are 5 requests
    r = cluster.kubectl("get", "configmaps", "-n", ns, "-l", "app=paging", "--chunk-size=5", "-o", "name", "-v=6")
    assert r.stdout.split() == [f"configmap/{n}" for n in names]
    gets = re.findall(r"GET \S+/namespaces/paging/configmaps\?\S+ 200 OK", r.stderr)
    assert len(gets) == 5, r.stderr
    assert all("limit=5" in g for g in gets) and sum("continue=" in g for g in gets) == 4

    # the API's own pagination: remainingItemCount and continue tokens cover the list exactly once
    everything = cluster.kubectl.json("get", "configmaps", "-n", ns)["items"]
    seen, token, first = [], "", None
    while True:
        page = json.loads(cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/configmaps?limit=10"
                                          + (f"&continue={token}" if token else "")).stdout)
        first = first or page
        seen += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == [i["metadata"]["name"] for i in everything]
    assert len(first["items"]) == 10 and first["metadata"]["remainingItemCount"] == len(everything) - 10


def test_update_with_a_stale_resource_version_is_a_conflict(cluster):
    ns = namespace(cluster, "conflict")
    configmaps(cluster, ns, ["shared"], value="1")
    stale = cluster.kubectl.json("get", "configmap", "shared", "-n", ns)

    fresh = json.loads(json.dumps(stale))
    fresh["data"]["value"] = "2"
    cluster.kubectl("replace", "-f", "-", input=json.dumps(fresh))
    now = cluster.kubectl.json("get", "configmap", "shared", "-n", ns)
    assert now["data"]["value"] == "2"
    assert int(now["metadata"]["resourceVersion"]) > int(stale["metadata"]["resourceVersion"])

    stale["data"]["value"] = "3"
    r = cluster.kubectl("replace", "-f", "-", input=json.dumps(stale), check=False)
    assert r.returncode == 1
    assert ('Operation cannot be fulfilled on configmaps "shared": the object has been modified; '
            'please apply your changes to the latest version and try again') in r.stderr
    assert cluster.kubectl.json("get", "configmap", "shared", "-n", ns)["data"]["value"] == "2"

    r = cluster.kubectl("create", "configmap", "shared", "-n", ns, check=False)
    assert r.returncode == 1 and 'configmaps "shared" already exists' in r.stderr


class Lines:
    """The stdout lines of a running process, read by a thread."""

    def __init__(self, proc):
        self.proc, self.q = proc, queue.Queue()
        threading.Thread(target=lambda: [self.q.put(ln.rstrip("\n")) for ln in proc.stdout], daemon=True).start()

    def until(self, *wanted: str, timeout: float = 60.0) -> list[str]:
        """Lines read until one whose words are ``wanted`` (included); AssertionError after ``timeout`` s."""
        got, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=0.5)
            except queue.Empty:
                assert self.proc.poll() is None, f"watch ended: {got} {self.proc.stderr.read()}"
                continue
            got.append(line)
            if line.split() == list(wanted):
                return got
        raise AssertionError(f"no {wanted!r} within {timeout} s; got {got}")


def test_watch(cluster):
    ns = namespace(cluster, "watch")
    configmaps(cluster, ns, ["ping"])
    # the list's resourceVersion as the API gives it (kubectl get -o json wraps items in its own List)
    since = json.loads(cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/configmaps").stdout)
    since = since["metadata"]["resourceVersion"]

    # kubectl get -w: wait until the watch delivers (a label change on "ping"), then the events
    proc = cluster.kubectl.popen("get", "configmaps", "-n", ns, "--watch-only", "--output-watch-events",
                                 "-o", "custom-columns=EVENT:.type,NAME:.object.metadata.name,VALUE:.object.data.value",
                                 "--no-headers")
    try:
        lines = Lines(proc)
        deadline = time.monotonic() + 60
        for n in range(1000):
            cluster.kubectl("label", "configmap", "ping", "-n", ns, f"n={n}", "--overwrite")
            try:
                lines.until("MODIFIED", "ping", "1", timeout=2)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "kubectl get -w delivered nothing"
        configmaps(cluster, ns, ["w1"], value="a")
        cluster.kubectl("patch", "configmap", "w1", "-n", ns, "-p", '{"data":{"value":"b"}}')
        cluster.kubectl("delete", "configmap", "w1", "-n", ns)
        got = lines.until("DELETED", "w1", "b")
        assert [ln.split() for ln in got if "w1" in ln] == [["ADDED", "w1", "a"], ["MODIFIED", "w1", "b"],
                                                          ["DELETED", "w1", "b"]]
    finally:
        proc.kill()
        proc.wait()

    # a watch from a resourceVersion replays what happened after it, in order
    r = cluster.kubectl("get", "--raw", f"/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={since}"
                        "&timeoutSeconds=3")
    events = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    w1 = [(e["type"], e["object"]["data"]["value"]) for e in events if e["object"]["metadata"]["name"] == "w1"]
    assert w1 == [("ADDED", "a"), ("MODIFIED", "b"), ("DELETED", "b")]
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and rvs[0] > int(since)


CRD = """apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.tests.k8s-sql.io}
spec:
  group: tests.k8s-sql.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
              tags: {type: object, additionalProperties: {type: string}}
"""


def test_custom_resource(cluster):
    """A CRD and its objects. (With the vendored reflect2 v1.0.1 kube-apiserver built by Go >= 1.18
    dies at the first custom-resource create; the build uses v1.0.2.)"""
    cluster.kubectl("apply", "-f", "-", input=CRD)
    cluster.kubectl("wait", "--for", "condition=established", "crd/widgets.tests.k8s-sql.io", "--timeout=120s")
    ns = namespace(cluster, "widgets")
    docs = "---\n".join(f"apiVersion: tests.k8s-sql.io/v1\nkind: Widget\nmetadata: {{name: w{i}, namespace: {ns}}}\n"
                        f"spec: {{size: {i}, tags: {{colour: blue}}}}\n" for i in range(3))

    def apply() -> bool:  # kubectl may hold discovery from before the CRD; apply is idempotent: retry
        ok = cluster.kubectl("apply", "-f", "-", input=docs, check=False).returncode == 0
        assert cluster.apiserver.alive(), \
            f"kube-apiserver died at a custom-resource create:\n{cluster.apiserver.crash()}"
        return ok

    cluster.kubectl.wait_for(apply, "Widgets applied", timeout=60, interval=2)
    items = cluster.kubectl.json("get", "widgets", "-n", ns)["items"]
    assert [(w["metadata"]["name"], w["spec"]["size"], w["spec"]["tags"]) for w in items] == \
        [(f"w{i}", i, {"colour": "blue"}) for i in range(3)]
    assert cluster.apiserver.alive()

    bad = f"apiVersion: tests.k8s-sql.io/v1\nkind: Widget\nmetadata: {{name: bad, namespace: {ns}}}\nspec: {{size: big}}\n"
    r = cluster.kubectl("create", "-f", "-", input=bad, check=False)
    assert r.returncode == 1 and "spec.size" in r.stderr and "integer" in r.stderr

    cluster.kubectl("patch", "widget", "w1", "-n", ns, "--type=merge", "-p", '{"spec":{"size":10}}')
    assert cluster.kubectl.json("get", "widget", "w1", "-n", ns)["spec"]["size"] == 10
    keys = cluster.datastore.etcdctl("get", "--prefix", "--keys-only", f"/registry/tests.k8s-sql.io/widgets/{ns}/")
    assert keys.stdout.split() == [f"/registry/tests.k8s-sql.io/widgets/{ns}/w{i}" for i in range(3)]


def owned_by(obj: dict, kind: str, name: str) -> bool:
    return any(o["kind"] == kind and o["name"] == name and o.get("controller")
               for o in obj["metadata"].get("ownerReferences", []))


def test_controller_manager_reconciles_a_deployment(cluster):
    """kube-controller-manager (kubeadm's flags) turns a Deployment into a ReplicaSet and Pods,
    scales it, and its garbage collector removes them with the Deployment. No scheduler or
    kubelet runs here: the Pods stay Pending without a node."""
    ns = namespace(cluster, "deploy")
    kcm = cluster.controller_manager().start()
    try:
        cluster.kubectl("create", "deployment", "web", "-n", ns, "--image=registry.invalid/web:1", "--replicas=2")
        k = cluster.kubectl

        def replicasets():
            rs = [r for r in k.json("get", "replicasets", "-n", ns)["items"] if owned_by(r, "Deployment", "web")]
            return rs if len(rs) == 1 else None

        rs = k.wait_for(replicasets, "ReplicaSet owned by the Deployment", timeout=180)[0]
        rs_name = rs["metadata"]["name"]
        assert rs["spec"]["replicas"] == 2

        def pods(n):
            def check():
                ps = [p for p in k.json("get", "pods", "-n", ns)["items"] if owned_by(p, "ReplicaSet", rs_name)]
                return ps if len(ps) == n else None
            return check

        for p in k.wait_for(pods(2), "2 Pods owned by the ReplicaSet", timeout=120):
            assert p["status"]["phase"] == "Pending" and not p["spec"].get("nodeName")
            assert p["spec"]["containers"][0]["image"] == "registry.invalid/web:1"
        k.wait_for(lambda: k.json("get", "deployment", "web", "-n", ns).get("status", {}).get("replicas") == 2,
                   "Deployment status.replicas = 2")

        k("scale", "deployment", "web", "-n", ns, "--replicas=3")
        k.wait_for(pods(3), "3 Pods after scaling", timeout=120)

        k("delete", "deployment", "web", "-n", ns)
        k.wait_for(lambda: not k.json("get", "replicasets,pods", "-n", ns)["items"],
                   "ReplicaSet and Pods garbage-collected", timeout=120)
        assert kcm.alive(), kcm.log_tail()
    finally:
        kcm.stop()


def test_apiserver_restart_keeps_state(cluster):
    """kube-apiserver stopped and started again (on the shim, the shim too): the objects, their
    uid and resourceVersion are as before, and new writes continue the revision sequence."""
    ns = namespace(cluster, "restart")
    configmaps(cluster, ns, ["survivor"], value="before")
    before = cluster.kubectl.json("get", "configmap", "survivor", "-n", ns)

    cluster.apiserver.stop()
    if cluster.datastore.kind == "shim":
        cluster.datastore.restart()
    cluster.start_apiserver()

    after = cluster.kubectl.json("get", "configmap", "survivor", "-n", ns)
    assert after["metadata"] == before["metadata"] and after["data"] == {"value": "before"}
    cluster.kubectl("patch", "configmap", "survivor", "-n", ns, "-p", '{"data":{"value":"after"}}')
    patched = cluster.kubectl.json("get", "configmap", "survivor", "-n", ns)
    assert int(patched["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert cluster.kubectl("get", "namespace", ns, "-o", "name").stdout == f"namespace/{ns}\n"


#: kube-apiserver's compactor period for the compaction test (its default is 5m).
COMPACTION_INTERVAL = 10


def test_compaction_by_kube_apiserver(cluster):
    """kube-apiserver's own compactor (``--etcd-compaction-interval``) compacts the datastore
    periodically: the compact revision advances, old revisions answer 'compacted' to etcdctl,
    and a list at a compacted resourceVersion is 410 Expired for kubectl."""
    ns = namespace(cluster, "compaction")
    configmaps(cluster, ns, ["history"], value="old")
    old = cluster.kubectl.json("get", "configmap", "history", "-n", ns)
    old_rv = old["metadata"]["resourceVersion"]
    cluster.kubectl("patch", "configmap", "history", "-n", ns, "-p", '{"data":{"value":"new"}}')
    exact = f"/api/v1/namespaces/{ns}/configmaps?limit=100&resourceVersion={old_rv}&resourceVersionMatch=Exact"
    listed = json.loads(cluster.kubectl("get", "--raw", exact).stdout)
    assert [i["data"]["value"] for i in listed["items"] if i["metadata"]["name"] == "history"] == ["old"]
    key = f"/registry/configmaps/{ns}/history"
    at_old = json.loads(cluster.datastore.etcdctl("get", key, f"--rev={old_rv}", "-w", "json").stdout)
    assert [kv["mod_revision"] for kv in at_old["kvs"]] == [int(old_rv)]

    start = cluster.datastore.compact_revision()
    assert start is not None and start < int(old_rv)
    cluster.restart_apiserver({"etcd-compaction-interval": f"{COMPACTION_INTERVAL}s"})

    first = cluster.kubectl.wait_for(lambda: (cluster.datastore.compact_revision() or 0) > int(old_rv) and
                                     cluster.datastore.compact_revision(),
                                     "compaction past the old revision", timeout=12 * COMPACTION_INTERVAL)
    r = cluster.datastore.etcdctl("get", key, f"--rev={old_rv}", check=False)
    assert r.returncode != 0 and "required revision has been compacted" in r.stderr
    r = cluster.kubectl("get", "--raw", exact, check=False)
    assert r.returncode == 1 and "Expired" in r.stderr and "too old" in r.stderr, r.stderr
    assert cluster.kubectl.json("get", "configmap", "history", "-n", ns)["data"] == {"value": "new"}
    # kube-apiserver's compactor keeps its mark in the datastore (storage/etcd3/compact.go)
    mark = json.loads(cluster.datastore.etcdctl("get", "compact_rev_key", "-w", "json").stdout)
    assert mark["kvs"][0]["version"] >= 2

    # periodically: a later cycle compacts further (writes go on meanwhile)
    def later():
        cluster.kubectl("label", "configmap", "history", "-n", ns, f"tick={time.monotonic_ns()}", "--overwrite")
        return (cluster.datastore.compact_revision() or 0) > first

    cluster.kubectl.wait_for(later, "a second compaction", timeout=12 * COMPACTION_INTERVAL, interval=2)
    assert cluster.apiserver.alive()
