"""eval and predict on a real two-node Ray cluster on 127.0.0.1 (no mock of Ray): the same answers
as on this machine, image for image, also when a worker node is killed mid-job.

One cluster per module (a head without CPUs and two workers of one CPU each), torn down with its
processes stopped by their own ids, also when a test fails; every test bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import digit_folder

from resnest_deploy.data import digits
from resnest_deploy.errors import ArtifactError
from resnest_deploy.evaluate import evaluate
from resnest_deploy.executors import ClusterError, LocalExecutor
from resnest_deploy.executors import rows as rowfile
from resnest_deploy.executors.work import ArtifactRef
from resnest_deploy.predict import _job, image_list, predict_to_file

#: seconds any one test may take, cluster start included
LIMIT_S = 240


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail a test that runs past ``seconds`` instead of hanging CI."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _children(pids: set[int]) -> set[int]:
    """Processes whose parent is one of ``pids`` (Ray's workers under a raylet), from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid in pids:
                found.add(int(entry.name))
    return found


def _cluster_pids(cluster: object) -> set[int]:
    pids = set()
    for node in cluster.list_all_nodes():  # type: ignore[attr-defined]
        pids |= {p.pid for _, p in node.live_processes()}
    return pids | _children(pids)


def _kill(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _hosts_an_actor(node: object) -> bool:
    """Whether one of the node's Ray workers is a classifying actor (its process title says so)."""
    raylets = {p.pid for kind, p in node.live_processes() if kind == "raylet"}  # type: ignore[attr-defined]
    for pid in _children(raylets):
        with contextlib.suppress(OSError):
            if b"ClassifyActor" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
    return False


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    """A head (no CPUs: it only coordinates) and two worker nodes of one CPU, all on 127.0.0.1."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every node, driver and port on 127.0.0.1
    from ray.cluster_utils import Cluster

    with deadline(120):
        c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    pids: set[int] = set()
    try:
        with deadline(120):
            c.add_node(num_cpus=1)
            c.add_node(num_cpus=1)
            c.wait_for_nodes(timeout=60)
        yield c
    finally:
        import ray

        pids = _cluster_pids(c)
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
        _kill(pids | _children(pids))  # whatever outlived the shutdown, by its own id


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 899 bundled test digits as PNG files, one sub-folder per class."""
    _, labels = digits("test")
    return digit_folder(
        tmp_path_factory.mktemp("digits") / "val",
        per_class=int(max(labels.tolist().count(c) for c in range(10))),
    )


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resnest_deploy.cli", *args],
        capture_output=True,
        text=True,
        timeout=LIMIT_S,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_eval_on_ray_gives_the_local_answer_image_for_image(cluster, folder, digits_onnx):
    from resnest_deploy.executors.ray_cluster import RayExecutor

    with deadline(LIMIT_S):
        local, described = evaluate([digits_onnx], folder)
        lines: list[str] = []
        ex = RayExecutor(cluster.address, report=lines.append)  # type: ignore[attr-defined]
        try:
            remote, remote_described = evaluate([digits_onnx], folder, executor=ex)
            paths, _ = image_list([folder])
            items = [(i, str(p)) for i, p in enumerate(paths)]
            job = _job(str(digits_onnx), None, None, 5, None)  # default runner options
            here = LocalExecutor().classify(job, items).outcomes
            there = ex.classify(job, items).outcomes
        finally:
            ex.close()
    assert described["images"] == remote_described["images"] == 899
    assert [(r.top1, r.top5, r.images, r.backend) for r in remote] == [
        (r.top1, r.top5, r.images, r.backend) for r in local
    ]
    assert there == here  # same classes, same probabilities, same order, every image once
    assert lines and lines[-1].startswith("899/899 images")


def test_cli_on_ray_prints_one_json_document_and_writes_the_local_rows(
    cluster, folder, digits_onnx, tmp_path
):
    address = cluster.address  # type: ignore[attr-defined]
    results, described = evaluate([digits_onnx], folder)
    remote = _cli("eval", "--images", str(folder), str(digits_onnx), "--json", "--ray", address)
    assert remote.returncode == 0, remote.stderr[-2000:]
    # stdout is one JSON document (Ray's logs went elsewhere) and it is the local answer
    assert json.loads(remote.stdout) == {"images": described, "results": [r.as_dict() for r in results]}
    assert "899/899 images" in remote.stderr

    for suffix in (".parquet", ".jsonl"):
        here = predict_to_file([folder], tmp_path / f"here{suffix}", str(digits_onnx), topk=3)
        r = _cli(
            "predict",
            str(digits_onnx),
            str(folder),
            "-o",
            str(tmp_path / f"there{suffix}"),
            "--topk",
            "3",
            "--json",
            env={"RAY_ADDRESS": address},
        )  # RAY_ADDRESS alone sends it to the cluster, as Ray does
        assert r.returncode == 0, r.stderr[-2000:]
        assert json.loads(r.stdout)["rows"] == here.rows == 899
        assert (tmp_path / f"there{suffix}").is_dir()  # Ray's writers: a folder of part files
        there_rows = rowfile.read(tmp_path / f"there{suffix}")
        assert sorted(there_rows, key=lambda x: x["path"]) == sorted(
            rowfile.read(tmp_path / f"here{suffix}"), key=lambda x: x["path"]
        )
        assert set(there_rows[0]) == {"path", "classes", "labels", "probabilities"}
        assert len(there_rows[0]["classes"]) == 3


def test_a_node_checks_the_artifact_it_was_sent(tmp_path, digits_onnx):
    from resnest_deploy.executors.ray_node import node_copy

    ref = ArtifactRef.of(digits_onnx)
    blob = digits_onnx.read_bytes()
    copy = node_copy(blob, ref, tmp_path)
    assert copy.read_bytes() == blob
    copy.write_bytes(blob[:-1] + b"\0")  # a cached copy changed on the node: replaced, not trusted
    assert node_copy(blob, ref, tmp_path).read_bytes() == blob
    with pytest.raises(ArtifactError, match=r"^node \S+ received digits.onnx with sha256 .* refusing it"):
        node_copy(blob[:-1], ref, tmp_path)


def test_a_node_keeps_the_sidecar_the_driver_read_and_no_other(tmp_path, digits_plan):
    """An engine's loader reads its sidecar (input form, the TensorRT it was built with) next to
    the file: the node writes the driver's, checked, and never keeps one an earlier job left."""
    from resnest_deploy.artifacts import describe
    from resnest_deploy.executors.ray_node import Sidecar, node_copy

    ref = ArtifactRef.of(digits_plan)
    blob = digits_plan.read_bytes()
    sidecar = Sidecar.of(digits_plan)
    assert sidecar is not None and sidecar.blob == Path(f"{digits_plan}.json").read_bytes()
    copy = node_copy(blob, ref, tmp_path, sidecar=sidecar)
    assert Path(f"{copy}.json").read_bytes() == sidecar.blob
    assert describe(copy).meta == describe(digits_plan).meta  # the node reads what the driver read
    with pytest.raises(ArtifactError, match=r"^node \S+ received a sidecar of digits.plan that differs"):
        node_copy(blob, ref, tmp_path, sidecar=Sidecar(sidecar.blob + b" ", sidecar.sha256))
    node_copy(blob, ref, tmp_path)  # a job that sent none: the earlier job's sidecar is gone
    assert not Path(f"{copy}.json").exists()
    assert Sidecar.of(tmp_path / "nothing.plan") is None


def test_results_are_kept_once_per_image_and_a_missing_one_stops_the_job():
    from resnest_deploy.executors import exactly_once
    from resnest_deploy.executors.work import ImageOutcome

    items = [(0, "a.png"), (1, "b.png"), (2, "c.png")]
    got = [ImageOutcome(i, p, (i,), (str(i),), (1.0,)) for i, p in items]
    retried = [got[2], got[0], got[1], got[0]]  # a batch that ran twice, arriving out of order
    assert exactly_once(items, retried) == got
    with pytest.raises(ClusterError, match=r"^1 of 3 images came back without a result \(first: b.png\)"):
        exactly_once(items, [got[0], got[2], got[2]])  # as many arrivals as images, one image short


def test_without_a_cluster_one_line_names_the_fix(digits_onnx, folder):
    r = _cli("eval", "--images", str(folder), str(digits_onnx), "--ray", "127.0.0.1:1")
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.count("error:") == 1 and "cannot reach a Ray cluster at '127.0.0.1:1'" in r.stderr
    assert "(--ray HOST:6379, or RAY_ADDRESS)" in r.stderr  # the library names ray_address, the CLI its flag


def test_without_the_extra_the_error_names_it(digits_onnx, folder):
    """``ray`` made unimportable in a fresh process: --ray names the pip extra in one line."""
    code = (
        "import sys; sys.modules['ray'] = None; from resnest_deploy.cli.app import main; "
        f"sys.argv = ['resnest-deploy', 'eval', '--images', {str(folder)!r}, {str(digits_onnx)!r}, "
        "'--ray', 'auto']; main()"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0 and r.stderr.count("error:") == 1
    assert "pip install 'resnest-deploy[ray]'" in r.stderr


def test_the_int8_sensitivity_pass_on_ray_ranks_the_units_as_here(cluster, tmp_path):
    """Every unit's trial of the search's sensitivity pass as a Ray task: the same ranking and the
    same numbers as one after another here (the planted outlier unit first)."""
    import onnx

    from resnest_deploy.data import Transform, digits_batch
    from resnest_deploy.executors.ray_cluster import RayExecutor
    from resnest_deploy.models import get_spec
    from resnest_deploy.precision import calibration
    from resnest_deploy.precision.fixtures import outlier_digits, quantize_every_conv
    from resnest_deploy.precision.search import Metric, sensitivity
    from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

    transform = Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)
    src = outlier_digits(tmp_path / "outlier.onnx")
    plain = onnx.load(
        quantize_every_conv(src, tmp_path / "plain.onnx", "cpu", calibration.from_digits(transform)).path
    )
    images, labels = digits("test")
    x = digits_batch(images[:300], transform)
    with OnnxRuntimeRunner(src) as runner:
        reference = runner.infer_batched(x, 64)
    metric = Metric(x, labels[:300], reference, False, onnx.load(src))
    here = sensitivity(plain, metric)
    assert sensitivity(plain, metric, executor=LocalExecutor()) == here  # the trial as a plain function
    lines: list[str] = []
    with deadline(LIMIT_S):
        ex = RayExecutor(cluster.address, report=lines.append)  # type: ignore[attr-defined]
        try:
            there = sensitivity(plain, metric, executor=ex)
        finally:
            ex.close()
    assert there == here and here[1][0].unit == "stem"
    assert lines[-1].startswith(f"{len(here[1])}/{len(here[1])} trials")


def test_a_worker_node_killed_mid_job_costs_no_image_and_counts_none_twice(cluster, folder, digits_onnx):
    """SIGKILL of a worker node's raylet (and its workers) once the first results are in: the job
    ends with every image counted once and the local answer, or stops with one clear line."""
    import ray

    from resnest_deploy.executors.ray_cluster import RayExecutor

    paths, _ = image_list([folder])
    items = [(i, str(p)) for i, p in enumerate(paths)]
    job = _job(str(digits_onnx), None, None, 5, None)  # default runner options: the CPU
    here = LocalExecutor().classify(job, items).outcomes
    killed: dict[str, object] = {}

    def kill_a_busy_node() -> None:
        workers = [n for n in cluster.list_all_nodes() if not n.head]  # type: ignore[attr-defined]
        victim = next(n for n in workers if _hosts_an_actor(n))
        killed["at"] = done[0]
        cluster.remove_node(victim, allow_graceful=False)  # type: ignore[attr-defined]

    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if done[0] and "thread" not in killed:
            killed["thread"] = threading.Thread(target=kill_a_busy_node, daemon=True)
            killed["thread"].start()  # type: ignore[attr-defined]

    with deadline(LIMIT_S):
        ex = RayExecutor(cluster.address, stall_timeout_s=90)  # type: ignore[attr-defined]
        start = time.monotonic()
        try:
            there = ex.classify(job, items, advance).outcomes
            outcome = "finished"
        except ClusterError as e:  # the other allowed end: one clear line
            outcome = str(e)
        finally:
            ex.close()
            killed["thread"].join(30)  # type: ignore[attr-defined]
    assert "at" in killed and 0 < killed["at"] < len(items), killed  # the kill landed mid-job
    if outcome == "finished":
        assert there == here  # every image once, the same answers
    else:
        assert "\n" not in outcome and "run" in outcome, outcome
    assert not ray.is_initialized()
    print(f"after the kill: {outcome} in {time.monotonic() - start:.1f} s")


def test_quantize_searches_on_ray_to_the_local_result(cluster, tmp_path):
    """`quantize --max-drop --ray`: the per-unit trials of the search as Ray tasks on the two-node
    cluster, and the same search (ranking, steps, units and layers kept in FP32) as without Ray on
    the outlier model; `--ray` where no search runs is refused, RAY_ADDRESS there ignored."""
    from resnest_deploy.precision.fixtures import outlier_digits

    src = outlier_digits(tmp_path / "outlier.onnx")
    common = ["quantize", "--onnx", str(src), "-p", "int8", "--target", "cpu", "--max-drop", "0.3", "--json"]
    with deadline(2 * LIMIT_S):
        here = _cli(*common, "-o", str(tmp_path / "here.onnx"), env={"RAY_ADDRESS": ""})
        assert here.returncode == 0, here.stderr[-2000:]
        there = _cli(*common, "-o", str(tmp_path / "there.onnx"), "--ray", cluster.address)  # type: ignore[attr-defined]
        assert there.returncode == 0, there.stderr[-2000:]
    found_here = json.loads(here.stdout)["conversion"]["search"]
    found_there = json.loads(there.stdout)["conversion"]["search"]
    for found in (found_here, found_there):
        found.pop("latency", None)  # timed: differs run to run wherever the trials ran
    assert found_there == found_here and found_here["sensitivity"][0]["unit"] == "stem"
    assert found_here["kept_fp32"]  # the budget made the search keep something in FP32
    units = len(found_here["sensitivity"])
    assert (
        f"{units}/{units} trials" in there.stderr
        and f"{units} units in FP32, one trial each (ray)" in there.stderr
    )
    # one after another: no cluster progress line ("N/N trials"); the estimate line names trials too
    assert "sensitivity: stem in FP32" in here.stderr and f"/{units} trials" not in here.stderr

    refused = _cli("quantize", "--onnx", str(src), "-p", "int8", "--target", "cpu", "--ray", "127.0.0.1:1")
    assert refused.returncode != 0 and "add --max-drop" in refused.stderr and refused.stdout == ""
    assert not (tmp_path / "outlier.int8-cpu.onnx").exists()


def test_a_node_keeps_only_its_most_recently_used_artifacts(tmp_path, digits_onnx):
    """Node-local copies were never removed: every model a cluster evaluated stayed in /tmp."""
    from resnest_deploy.executors.ray_node import KEEP_RECENT_S, node_copy, prune

    cache = tmp_path / "cache"
    old = time.time() - 10 * KEEP_RECENT_S
    folders = []
    for i in range(6):  # six earlier artifacts, the first the most recently used
        folder = cache / f"{i:064x}"
        folder.mkdir(parents=True)
        (folder / "m.onnx").write_bytes(b"x" * 10)
        os.utime(folder, (old - i, old - i))
        folders.append(folder)
    (cache / "not-ours").mkdir()  # anything not named by a sha256 is left alone
    (cache / ("f" * 64)).symlink_to(tmp_path)  # and so is a link
    for recent in folders[4:]:  # used a moment ago by jobs beside this one: kept whatever their rank
        os.utime(recent, None)
    ref = ArtifactRef.of(digits_onnx)
    copy = node_copy(digits_onnx.read_bytes(), ref, cache, keep=2)
    assert copy.read_bytes() == digits_onnx.read_bytes()
    kept = sorted(p.name for p in cache.iterdir())
    assert kept == sorted([ref.sha256, folders[4].name, folders[5].name, "not-ours", "f" * 64])
    assert tmp_path.is_dir() and (cache / ("f" * 64)).is_symlink()  # the link and its target untouched
    os.utime(cache / ref.sha256, (old - 100, old - 100))  # long unused...
    node_copy(digits_onnx.read_bytes(), ref, cache, keep=1)  # ...then used again: the newest
    assert (cache / ref.sha256 / copy.name).is_file()
    assert prune(cache, keep=1) == []  # the others beyond one were used within KEEP_RECENT_S
    assert sorted(prune(cache, keep=1, recent_s=0)) == sorted(folders[4:])  # without that grace: gone
    assert sorted(p.name for p in cache.iterdir()) == sorted([ref.sha256, "not-ours", "f" * 64])


def test_pipeline_refuses_ray_where_no_search_runs(tmp_path):
    r = _cli(
        "pipeline", "--arch", "resnest14d_digits", "-p", "fp16", "-o", str(tmp_path / "m"), "--ray", "auto"
    )
    assert r.returncode != 0 and r.stderr.count("error:") == 1 and "--ray runs the INT8 search" in r.stderr
    assert not (tmp_path / "m").exists()  # refused before the export


@pytest.fixture(scope="module")
def digits_plan(digits_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real engine of the digits model, built by TensorRT-RTX ahead of time on this CPU (about a
    second), with the sidecar `build` writes: what a GPU worker group would be sent."""
    from resnest_deploy.engine import build_engine

    return build_engine(digits_onnx, tmp_path_factory.mktemp("plan") / "digits.plan", batch=(1, 8, 32)).path


def _node_touched_since(artifact: Path, start: float) -> bool:
    """Whether a node kept a copy of ``artifact`` (node_copy marks its folder used) since ``start``."""
    from resnest_deploy.executors.ray_node import NODE_CACHE

    folder = NODE_CACHE / ArtifactRef.of(artifact).sha256
    return folder.exists() and folder.stat().st_mtime >= start - 1


def test_an_engine_on_a_cluster_without_gpus_is_refused_before_any_work(cluster, folder, digits_plan):
    address = cluster.address  # type: ignore[attr-defined]
    start = time.time()
    r = _cli("eval", "--images", str(folder), str(digits_plan), "--ray", address)
    assert r.returncode != 0 and r.stdout == "" and r.stderr.count("error:") == 1, r.stderr[-2000:]
    line = next(x for x in r.stderr.splitlines() if x.startswith("error:"))
    assert "digits.plan is a TensorRT engine, which runs on a GPU, and the Ray cluster has none" in line
    assert "add a GPU worker group" in line and line.endswith("or run it without --ray")
    assert not _node_touched_since(digits_plan, start)  # refused on the driver: nothing was shipped
    r = _cli("eval", "--images", str(folder), str(digits_plan), "--provider", "openvino", "--ray", address)
    assert r.returncode != 0 and r.stderr.count("error:") == 1, r.stderr[-2000:]
    assert "--provider openvino runs .onnx files; an engine runs in TensorRT on its GPU" in r.stderr


def test_an_engine_runs_on_the_node_with_a_gpu_which_says_in_one_line_it_cannot_open_it(
    cluster, folder, digits_plan, tmp_path
):
    """A third node declares one GPU (Ray's resource; this machine has no GPU or driver): the
    engine's one actor goes there, checks and keeps the engine with its sidecar, and the tool's
    loader fails for real; the job stops with one line naming that node, nothing written."""
    from resnest_deploy.executors.ray_node import NODE_CACHE

    with deadline(LIMIT_S):
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)  # type: ignore[attr-defined]
        try:
            cluster.wait_for_nodes(timeout=60)  # type: ignore[attr-defined]
            address = cluster.address  # type: ignore[attr-defined]
            start = time.monotonic()
            r = _cli("eval", "--images", str(folder), str(digits_plan), "--ray", address)
            took = time.monotonic() - start
            out = tmp_path / "tags.parquet"
            w = _cli("predict", str(digits_plan), str(folder), "-o", str(out), "--ray", address)
        finally:
            cluster.remove_node(gpu_node)  # type: ignore[attr-defined]
    for run in (r, w):
        assert run.returncode != 0 and run.stdout == "", run.stderr[-2000:]
        assert run.stderr.count("error:") == 1, run.stderr[-2000:]
        line = next(x for x in run.stderr.splitlines() if x.startswith("error:"))
        node = f"Ray node 127.0.0.1 (node {gpu_node.node_id[:8]})"  # the one that declared the GPU
        assert f"{node} could not open the engine digits.plan" in line
        assert "no NVIDIA driver here" in line and line.endswith("or run it without --ray)"), line
        assert "run digits.onnx here" not in line  # the local advice is not the node's
        assert "images/s" not in run.stderr  # no image was classified anywhere
    sha = ArtifactRef.of(digits_plan).sha256
    copy = NODE_CACHE / sha / "digits.plan"  # the node checked and kept the engine and its sidecar
    assert copy.read_bytes() == digits_plan.read_bytes()
    assert (NODE_CACHE / sha / "digits.plan.json").read_bytes() == Path(f"{digits_plan}.json").read_bytes()
    assert not out.exists() and not list(tmp_path.glob(".tags.parquet.*"))
    print(f"engine job stopped in {took:.1f} s: {line}")
