"""Kubernetes manifests for Triton repositories: validated against the pinned Kubernetes schemas
offline, shaped by what the repository holds; and the loopback scale simulation, bounded."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import as_full_tensorrt
from typer.testing import CliRunner

from resnest_deploy.cli.app import app
from resnest_deploy.errors import ArtifactError
from resnest_deploy.serving import kubernetes
from resnest_deploy.serving.repository import write_repository

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def python_repo(digits_onnx, tmp_path) -> Path:
    write_repository([digits_onnx], tmp_path / "repo", names=["digits"], python_backend=True)
    return tmp_path / "repo"


def full_tensorrt_stand_in(digits_onnx: Path, tmp_path: Path) -> Path:
    from resnest_deploy.engine import build_engine

    rtx = build_engine(digits_onnx, tmp_path / "rtx.plan", batch=(1, 4, 8)).path
    return as_full_tensorrt(rtx, tmp_path / "full.plan")


def test_a_python_backend_repository_gets_valid_manifests_that_serve_its_files(python_repo, tmp_path):
    docs = kubernetes.manifests(python_repo, name="digits", throughput=1200, p99_ms=50, max_replicas=8)
    checked = kubernetes.validate(docs)
    assert {c.split(":")[0] for c in checked} == set(docs)
    deployment = docs["deployment.yaml"]["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    assert container["image"] == kubernetes.SERVE_IMAGE and "command" not in container  # the image's serve
    assert container["args"][:3] == ["/models/digits/1/model.onnx", "--name", "digits"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["securityContext"]["runAsNonRoot"] is True
    assert deployment["automountServiceAccountToken"] is False  # no API token in a serving pod
    volumes = {v["name"]: v for v in deployment["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["readOnly"] is True
    assert volumes["shm"]["emptyDir"]["medium"] == "Memory"
    hpa = docs["hpa.yaml"]["spec"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == kubernetes.PENDING_METRIC
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "30"  # 0.5 * 1200/s * 0.05 s
    assert docs["pvc.yaml"]["spec"]["accessModes"] == ["ReadOnlyMany"]
    r = CliRunner().invoke(
        app, ["k8s", str(python_repo), "-o", str(tmp_path / "k8s"), "--throughput", "1200"]
    )
    assert r.exit_code == 0, r.output
    written = sorted(p.name for p in (tmp_path / "k8s").iterdir())
    assert written == sorted(docs) and "&id" not in (tmp_path / "k8s" / "deployment.yaml").read_text()
    for path in (tmp_path / "k8s").iterdir():
        doc = yaml.safe_load(path.read_text())
        kubernetes.validate({path.name: doc})  # what was written is what was validated


def test_engines_get_nvidias_image_a_gpu_and_kserve_when_asked(digits_onnx, tmp_path):
    plan = full_tensorrt_stand_in(digits_onnx, tmp_path)
    write_repository([plan], tmp_path / "trt")
    with pytest.raises(ArtifactError, match=r"pass image nvcr\.io/nvidia/tritonserver"):
        kubernetes.manifests(tmp_path / "trt", name="r50")
    image = "nvcr.io/nvidia/tritonserver:24.08-py3"
    docs = kubernetes.manifests(tmp_path / "trt", name="r50", image=image)
    kubernetes.validate(docs)
    (container,) = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["tritonserver"] and "--model-repository=/models" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert docs["hpa.yaml"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"  # no throughput measured
    served = kubernetes.manifests(tmp_path / "trt", name="r50", image=image, kserve=True)
    kubernetes.validate(served)
    triton = served["inferenceservice.yaml"]["spec"]["predictor"]["triton"]
    assert triton["storageUri"] == "pvc://r50-models/" and triton["image"] == image


@pytest.mark.parametrize(
    "image",
    [
        "registry.local:5000/mirror/tritonserver",  # a mirror, no tag: was dropped, runtimeVersion garbage
        "nvcr.io/nvidia/tritonserver@sha256:" + "ab" * 32,  # a digest: runtimeVersion was "ab...ab"
        "nvcr.io/nvidia/tritonserver:24.08-py3",
    ],
)
def test_kserve_keeps_the_image_it_is_given(digits_onnx, tmp_path, image):
    plan = full_tensorrt_stand_in(digits_onnx, tmp_path)
    write_repository([plan], tmp_path / "trt")
    served = kubernetes.manifests(tmp_path / "trt", name="r50", image=image, kserve=True)
    kubernetes.validate(served)
    triton = served["inferenceservice.yaml"]["spec"]["predictor"]["triton"]
    assert triton["image"] == image and "runtimeVersion" not in triton


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--name", "1digits", "not a DNS label"),  # a Service's name starts with a letter
        ("--name", "digits.v2", "not a DNS label"),
        ("--namespace", "Prod", "not a DNS label"),
        ("--image", "", "not an image reference"),
        ("--image", " ", "not an image reference"),
        ("--image", "resnest-deploy:serve\nx", "not an image reference"),
        ("--image", "Resnest:serve", "not an image reference"),
        ("--storage-class", " ", "not a StorageClass name"),
        ("--storage-class", "Fast SSD", "not a StorageClass name"),
        ("--throughput", "inf", "give a measured throughput"),
        ("--throughput", "nan", "--throughput"),
        ("--image", "reg/r@sha256:" + "ab" * 31 + "a", "not one a runtime verifies"),  # 63 hex
        ("--image", "reg/r@sha256:" + "AB" * 32, "not one a runtime verifies"),  # runtimes: lowercase
        ("--image", "reg/r@md5:" + "ab" * 16, "not one a runtime verifies"),
        ("--metrics-namespace", "Monitoring", "not a DNS label"),
    ],
)
def test_what_the_api_server_or_kubelet_would_refuse_is_refused_in_one_line(
    python_repo, tmp_path, option, value, says
):
    out = tmp_path / "k8s"
    r = CliRunner().invoke(app, ["k8s", str(python_repo), "-o", str(out), option, value])
    assert r.exit_code != 0 and says in " ".join(r.output.split()), r.output
    assert option in r.output  # the CLI names its option, the library its parameter
    assert "Traceback" not in r.output and not out.exists()


def test_a_write_that_fails_half_way_leaves_no_file(python_repo, tmp_path):
    """Files were written one by one: a failure on the fourth left three."""
    docs = kubernetes.manifests(python_repo, name="digits")
    docs["zz-broken.yaml"] = {"kind": "Broken", "value": object()}  # the last one cannot be YAML
    out = tmp_path / "k8s"
    with pytest.raises(ArtifactError, match="nothing was written"):
        kubernetes.write(docs, out)
    assert not out.exists() or list(out.iterdir()) == []


def test_the_output_says_the_serve_image_must_be_built_first(python_repo, tmp_path):
    r = CliRunner().invoke(app, ["k8s", str(python_repo), "-o", str(tmp_path / "k8s")])
    assert r.exit_code == 0 and kubernetes.SERVE_IMAGE_BUILD in " ".join(r.output.split()), r.output


def test_what_the_schemas_refuse_is_refused(python_repo):
    docs = kubernetes.manifests(python_repo, name="digits")
    docs["service.yaml"]["spec"]["ports"][0]["port"] = "eight thousand"
    with pytest.raises(ArtifactError, match=r"Service is not valid Kubernetes 1\.31\.0"):
        kubernetes.validate(docs)
    docs = kubernetes.manifests(python_repo, name="digits")
    docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(ArtifactError, match="Deployment is not valid"):
        kubernetes.validate(docs)
    for bad in ("Digits", "a_b", "x" * 64):
        with pytest.raises(ArtifactError, match=r"^name .* is not a DNS label"):
            kubernetes.manifests(python_repo, name=bad)
    with pytest.raises(ArtifactError, match=r"KServe's Triton runtime.* without python_backend"):
        kubernetes.manifests(python_repo, name="digits", kserve=True)


def test_the_hpa_target_follows_littles_law_with_headroom():
    assert kubernetes.hpa_target(1200, 50) == 30
    assert kubernetes.hpa_target(40, 100) == 2
    assert kubernetes.hpa_target(5, 100) == 1  # never zero
    with pytest.raises(ArtifactError, match=r"^throughput 0 / p99_ms 100"):
        kubernetes.hpa_target(0, 100)


@pytest.mark.skipif(not (shutil.which("haproxy") and shutil.which("wrk")), reason="needs haproxy and wrk")
def test_replicas_behind_a_load_balancer_spread_load_survive_a_kill_and_expose_pending_requests(tmp_path):
    """The benchmark's simulation, shortened: bounded in time, on 127.0.0.1 only."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "k8s_loopback.py"),
            "--seconds",
            "8",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "k8s_loopback.json").read_text())
    assert result["requests"] > 100
    assert result["errors"] <= result["connections"]  # only what was in flight on the killed replica
    assert all(v > 0 for v in result["served_before_kill"].values())  # both replicas served
    assert max(result["pending_under_load_max"].values()) > max(result["pending_idle"].values())
    assert all(
        100 < mib < 8192 for mib in result["rss_mib_under_load"].values()
    )  # measured, for --memory-mib


def test_an_output_folder_holding_one_of_the_files_is_refused_before_anything_is_written(
    python_repo, tmp_path
):
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "service.yaml").write_text("mine\n")
    r = CliRunner().invoke(app, ["k8s", str(python_repo), "-o", str(out)])
    assert r.exit_code == 1 and "service.yaml exists" in r.output
    assert sorted(p.name for p in out.iterdir()) == ["service.yaml"]
    assert (out / "service.yaml").read_text() == "mine\n"


def test_the_memory_request_grows_with_the_repository_from_a_measured_base(python_repo, tmp_path):
    """832 Mi was asked for a 0.8 MB and a 105 MB repository alike."""
    measured = json.loads((ROOT / "benchmarks" / "results" / "serve_memory.json").read_text())["fit"]
    assert measured["base_mib"] == kubernetes.SERVE_BASE_MIB
    assert measured["per_instance_mib"] == kubernetes.STUB_MIB
    assert measured["per_model_mib_per_file_mib"] == kubernetes.PER_FILE_MIB

    def repo_of(megabytes: float, instances: int = 1) -> list[kubernetes.RepoModel]:
        size = int(megabytes * 1e6)
        return [kubernetes.RepoModel("m", "python", False, 8, instances, tmp_path / "m.onnx", size)]

    small, large = kubernetes.memory_request_mib(repo_of(0.8)), kubernetes.memory_request_mib(repo_of(105))
    expected_gap = kubernetes.HEADROOM * kubernetes.PER_FILE_MIB * 104.2e6 / 2**20
    assert large - small >= expected_gap - 64 and large - small <= expected_gap + 64
    assert kubernetes.memory_request_mib(repo_of(105, instances=2)) > large
    docs = kubernetes.manifests(python_repo, name="digits")
    (container,) = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
    models = kubernetes.read_repository(python_repo)
    assert container["resources"]["requests"]["memory"] == f"{kubernetes.memory_request_mib(models)}Mi"


def test_a_ray_job_is_valid_against_kuberays_own_crd_and_refuses_what_it_does_not_define(
    python_repo, tmp_path
):
    """The RayJob of `k8s --ray-job`, against KubeRay v1.7.0's CRD schema (vendored), strict; its pod
    templates also as Kubernetes 1.31 Pods."""
    import copy

    from resnest_deploy.serving import rayjob

    job = rayjob.ray_job(
        str(python_repo),
        name="digits",
        namespace="ml",
        image="reg/resnest-ray@sha256:" + "a" * 64,
        images_claim="val",
        workers=3,
        worker_cpus=4,
        worker_gpus=1,
    )
    assert rayjob.validate(job) == "RayJob (KubeRay v1.7.0 CRD schema)"
    spec = job["spec"]
    assert spec["entrypoint"] == (
        "resnest-deploy eval --images /images /models/digits/1/model.onnx --ray auto --json"
    )
    cluster = spec["rayClusterSpec"]
    (workers,) = cluster["workerGroupSpecs"]
    assert workers["replicas"] == 3 and cluster["headGroupSpec"]["rayStartParams"] == {"num-cpus": "0"}
    for template in (cluster["headGroupSpec"]["template"], workers["template"]):
        assert template["spec"]["automountServiceAccountToken"] is False
        claims = {v["name"]: v.get("persistentVolumeClaim") for v in template["spec"]["volumes"]}
        assert claims["models"] == {"claimName": "digits-models", "readOnly": True}  # Triton's PVC
        assert claims["images"] == {"claimName": "val", "readOnly": True}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": template["spec"]}
        kubernetes.validate({"pod.yaml": pod})
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for path, value, why in (
        (("spec", "shutdownAfterJobFinish"), True, "Additional properties"),  # misspelt
        (("spec", "backoffLimit"), "none", "is not of type 'integer'"),
        (("spec", "rayClusterSpec", "headGroupSpec", "rayStartParams"), {"num-cpus": 0}, "is not of type"),
    ):
        bad = copy.deepcopy(job)
        parent = bad
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value
        with pytest.raises(ArtifactError, match=why):
            rayjob.validate(bad)
    r = CliRunner().invoke(
        app,
        [
            "k8s",
            str(python_repo),
            "-o",
            str(tmp_path / "rj"),
            "--ray-job",
            "--image",
            "reg/r:1",
            "--images-claim",
            "val",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "rj").iterdir()) == ["pvc.yaml", "rayjob.yaml"]
    written = yaml.safe_load((tmp_path / "rj" / "rayjob.yaml").read_text())
    assert (
        written["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"]
        == "reg/r:1"
    )
    rayjob.validate(written)  # what was written is what was validated
    r = CliRunner().invoke(app, ["k8s", str(python_repo), "-o", str(tmp_path / "x"), "--ray-job"])
    assert r.exit_code != 0 and "--ray-job needs --image and --images-claim" in r.output


def test_a_network_policy_admits_only_the_services_ports_and_metrics_from_one_namespace(
    python_repo, tmp_path
):
    docs = kubernetes.manifests(python_repo, name="digits", metrics_namespace="obs")
    kubernetes.validate(docs)  # the policy too, against the Kubernetes 1.31 schema, strictly
    policy = docs["networkpolicy.yaml"]["spec"]
    assert policy["podSelector"]["matchLabels"] == docs["deployment.yaml"]["spec"]["selector"]["matchLabels"]
    assert policy["policyTypes"] == ["Ingress"]
    admitted = {p["port"] for rule in policy["ingress"] for p in rule["ports"]}
    service = {p["port"] for p in docs["service.yaml"]["spec"]["ports"]}
    assert admitted == service == {kubernetes.HTTP, kubernetes.GRPC, kubernetes.METRICS}
    clients, metrics = policy["ingress"]
    assert "from" not in clients  # any client
    assert {p["port"] for p in clients["ports"]} == {kubernetes.HTTP, kubernetes.GRPC}
    assert [p["port"] for p in metrics["ports"]] == [kubernetes.METRICS]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}}}]
    assert kubernetes.manifests(python_repo, name="digits")["networkpolicy.yaml"]["spec"]["ingress"][1][
        "from"
    ][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    docs["networkpolicy.yaml"]["spec"]["ingress"][0]["port"] = 8000  # not a field of a rule
    with pytest.raises(ArtifactError, match="NetworkPolicy is not valid Kubernetes"):
        kubernetes.validate(docs)
    r = CliRunner().invoke(
        app, ["k8s", str(python_repo), "-o", str(tmp_path / "k"), "--kserve", "--metrics-namespace", "obs"]
    )
    assert r.exit_code != 0 and "--metrics-namespace" in r.output and not (tmp_path / "k").exists()


def test_an_image_pinned_by_digest_is_kept_as_given(python_repo, tmp_path):
    """A digest is the way to pin: the manifests run exactly those bytes."""
    image = "registry.local:5000/team/resnest-serve@sha256:" + "0123456789abcdef" * 4
    tagged = "registry.local:5000/team/resnest-serve:1.2@sha256:" + "0123456789abcdef" * 4
    for i, given in enumerate((image, tagged)):
        out = tmp_path / f"k8s{i}"
        r = CliRunner().invoke(app, ["k8s", str(python_repo), "-o", str(out), "--image", given])
        assert r.exit_code == 0, r.output
        written = yaml.safe_load((out / "deployment.yaml").read_text())
        assert written["spec"]["template"]["spec"]["containers"][0]["image"] == given
        assert kubernetes.SERVE_IMAGE_BUILD not in r.output  # a built and pushed image: no note


def test_the_startup_probe_follows_serves_measured_start_to_ready(python_repo, tmp_path):
    """Three times the start to ready measured (benchmarks/first_inference.py) or given, at least a
    minute; the image's HEALTHCHECK waits as long."""
    measured = json.loads((ROOT / "benchmarks" / "results" / "first_inference.json").read_text())
    cold = measured["serve"]["median"]["cold"]["start_to_ready_s"]
    assert round(cold, 1) == kubernetes.START_MEASURED_S

    def probe(**options) -> dict:
        docs = kubernetes.manifests(python_repo, name="digits", **options)
        (container,) = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"]
        return container["startupProbe"]

    default = probe()
    assert default["periodSeconds"] * default["failureThreshold"] >= 3 * cold
    slow = probe(start_seconds=100)
    assert slow["periodSeconds"] * slow["failureThreshold"] == 300
    assert probe(start_seconds=2)["failureThreshold"] * 5 == 60  # never under a minute
    dockerfile = (ROOT / "Dockerfile").read_text()
    start_period = int(dockerfile.split("--start-period=")[1].split("s", 1)[0])
    assert start_period >= 3 * cold
    for bad in ("nan", "0", "-5", "1e9"):
        r = CliRunner().invoke(
            app, ["k8s", str(python_repo), "-o", str(tmp_path / f"k{bad}"), "--start-seconds", bad]
        )
        assert r.exit_code != 0 and "start_to_ready_s" in r.output
        assert not (tmp_path / f"k{bad}").exists()
