"""logger=mlflow against a real MLflow tracking server, as a user runs it: `mlflow server` with a
SQLite store and proxied artifacts, the root scripts typed as commands (train.py alone, a sweep, a
resumed run, an Optuna study, eval.py on a checkpoint), and what the server then holds, read back
through MLflow's client. The runs table of the sweep's experiment is opened in headless Chromium.

The server and the runs are shared by the module's tests (module-scoped fixtures): each command is a
few batches of a narrow scratch_cnn. `pytest -s` prints what was read back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import REPO
from omegaconf import OmegaConf

pytest.importorskip("mlflow", reason="logger=mlflow needs the mlflow extra: pip install -e '.[mlflow]'")
from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = [pytest.mark.process, pytest.mark.tracker]

SERVER_START_TIMEOUT_S = 60
# tests/test_sweeps.py's TINY_JOB (a few batches on a narrow scratch_cnn), with the logger left to
# each command.
TINY = [
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "model.width=8",
    "measure_cpu_speed=false",
]
TWO_EPOCHS = ["trainer.max_epochs=2", *TINY]
# The run's files record_results uploads, and those it must not (without log_checkpoint=true).
REPORTS = {
    "confusion_matrix.png",
    "reliability_diagram.png",
    "curves.png",
    "model_card.yaml",
    "report.json",
    "metrics.json",
}
PER_EPOCH = ("val/top1", "val/loss", "train/loss")


# --- the server ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers_health(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_healthy(uri: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if answers_health(uri):
            return
        if server.poll() is not None:
            pytest.fail(f"mlflow server exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(
        f"mlflow server: no answer at {uri}/health in {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
    )


def stop(server: subprocess.Popen) -> None:
    """Terminate the server's process group (the CLI and the uvicorn worker it starts), then kill it."""
    for sig, grace_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def server_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow_server")


@contextmanager
def mlflow_serving(*arguments: str, cwd: Path) -> Iterator[str]:
    """`mlflow ARGUMENTS --port <free port>` (`server ...` or `ui ...`) run from `cwd` until the block
    ends, its output in cwd/mlflow.log; yields its URI once it answers."""
    port = free_port()
    # MLflow 3 otherwise starts a job runner and seven huey consumers beside the server: about 45 s
    # more of start-up on 2 cores, for GenAI jobs these tests do not run.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = cwd / "mlflow.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", *arguments, "--port", str(port)],
            cwd=cwd,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(uri, process, log)
        yield uri
    finally:
        stop(process)


@pytest.fixture(scope="module")
def server(server_folder) -> Iterator[str]:
    """`mlflow server` on a free port of 127.0.0.1: a SQLite store, proxied artifacts in a local
    folder, one worker. Yields its URI."""
    with mlflow_serving(
        *("server", "--host", "127.0.0.1", "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{server_folder / 'mlflow.db'}"),
        *("--artifacts-destination", str(server_folder / "artifacts")),
        cwd=server_folder,
    ) as uri:
        yield uri


@pytest.fixture(scope="module")
def client(server) -> MlflowClient:
    return MlflowClient(server)


# --- the commands, as typed -------------------------------------------------------------------------


def run_script(script: str, cwd: Path, *arguments: str, tracking_uri: str | None = None) -> str:
    """`python <script> ARGUMENTS` from `cwd`, $MLFLOW_TRACKING_URI set to `tracking_uri` (unset when
    None, whatever this shell has). Returns its output; fails the test when the command fails."""
    env = {key: value for key, value in os.environ.items() if key != "MLFLOW_TRACKING_URI"}
    if tracking_uri is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    cwd.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(REPO / script), *arguments],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"python {script} {' '.join(arguments)}:\n{output[-4000:]}"
    return output


def run_of(client: MlflowClient, run_dir: Path):
    """The one MLflow run whose run_dir tag is `run_dir`, in any experiment."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.run_dir = '{run_dir.resolve()}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs of {run_dir}"
    return runs[0]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def artifact_names(client: MlflowClient, run_id: str, folder: str | None = None) -> set[str]:
    return {Path(a.path).name for a in client.list_artifacts(run_id, folder)}


def print_summary(client: MlflowClient, title: str, run) -> None:
    """What the server holds of a run, for `pytest -s`."""
    run_id = run.info.run_id
    points = {key: len(client.get_metric_history(run_id, key)) for key in sorted(run.data.metrics)}
    print(f"\n[{title}] run '{run.info.run_name}' ({run_id}) in experiment {run.info.experiment_id}")
    print(f"  {len(run.data.params)} params, {len(points)} metrics (points): ", end="")
    print(", ".join(f"{key} ({count})" for key, count in points.items()))
    print(f"  artifacts: {sorted(artifact_names(client, run_id))}")


def git_head() -> str | None:
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        return None
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None


# --- one run ------------------------------------------------------------------------------------------

SINGLE_SETTINGS = ["optimizer.lr=0.003", "seed=7", "data.batch_size=32"]
# Its overrides as typed, sorted, the tracker's left out (as Hydra's job.override_dirname joins them).
SINGLE_NAME = (
    "data.batch_size=32,measure_cpu_speed=false,model.width=8,optimizer.lr=0.003,seed=7,"
    "trainer.limit_test_batches=1,trainer.limit_train_batches=2,trainer.limit_val_batches=1,trainer.max_epochs=2"
)


@pytest.fixture(scope="module")
def single_run(server, tmp_path_factory) -> Path:
    """`python train.py logger=mlflow logger.mlflow.tracking_uri=<server> ...`, 2 epochs: its run dir."""
    cwd = tmp_path_factory.mktemp("single")
    run_dir = cwd / "run"
    tracker = ["logger=mlflow", f"logger.mlflow.tracking_uri={server}"]
    run_script("train.py", cwd, *tracker, *SINGLE_SETTINGS, *TWO_EPOCHS, f"hydra.run.dir={run_dir}")
    return run_dir


def test_a_run_has_its_config_one_point_per_epoch_its_final_metrics_tags_and_reports(
    single_run, client, server_folder
):
    run = run_of(client, single_run)
    run_id = run.info.run_id
    print_summary(client, "train.py", run)
    assert json.loads((single_run / "tracking.json").read_text())["mlflow"]["run_id"] == run_id
    # Named by its overrides, less the tracker's settings (logger.mlflow.tracking_uri)
    assert run.info.run_name == SINGLE_NAME and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "train"

    params = run.data.params
    assert (params["optimizer.lr"], params["seed"], params["data.batch_size"]) == ("0.003", "7", "32")
    assert params["trainer.max_epochs"] == "2" and params["model.width"] == "8"

    for key in PER_EPOCH:
        steps = [step for step, _ in history(client, run_id, key)]
        assert len(steps) == 2 and steps[0] < steps[1], f"{key}: steps {steps}"
    metrics = json.loads((single_run / "metrics.json").read_text())
    ((_, final),) = history(client, run_id, "final/val/top1")
    assert final == pytest.approx(metrics["val/top1"])
    assert {f"final/{key}" for key in metrics} <= set(run.data.metrics)

    tags = run.data.tags
    assert tags["task"] == "train" and tags["run_dir"] == str(single_run.resolve())
    typed = OmegaConf.load(single_run / ".hydra" / "overrides.yaml")  # Hydra's record of the command
    assert tags["overrides"] == " ".join(typed) and "seed=7" in typed
    assert "sweep_dir" not in tags
    if (commit := git_head()) is not None:
        assert tags["mlflow.source.git.commit"] == commit

    names = artifact_names(client, run_id)
    assert names >= REPORTS and "checkpoints" not in names
    # proxied: the server wrote them into its --artifacts-destination
    assert [path for path in (server_folder / "artifacts").rglob("metrics.json") if run_id in path.parts]


# --- a sweep ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep(server, tmp_path_factory) -> Path:
    """`python train.py -m seed=1,2 logger=mlflow logger.mlflow.tracking_uri=<server> ...`: its folder."""
    cwd = tmp_path_factory.mktemp("sweep")
    run_script(
        "train.py",
        cwd,
        "-m",
        "seed=1,2",
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={server}",
        *TWO_EPOCHS,
    )
    (folder,) = (cwd / "outputs" / "multirun").glob("*/*")
    return folder


def sweep_experiment_name(folder: Path) -> str:
    """multirun/<date>/<time>, as trackers.sweep_name names a multirun."""
    return "/".join(folder.parts[-3:])


def runs_by_name(client: MlflowClient, experiment_name: str) -> dict[str, object]:
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no MLflow experiment '{experiment_name}'"
    return {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}


# The sweep's run names: each job's own overrides, those every job shares and the tracker's left out.
SWEEP_NAME = "seed={seed}"


def test_a_sweep_is_one_experiment_named_by_its_folder_with_a_run_per_job(sweep, client):
    name = sweep_experiment_name(sweep)
    runs = runs_by_name(client, name)
    print(f"\n[sweep] experiment '{name}': runs {sorted(runs)}")
    assert sorted(runs) == [SWEEP_NAME.format(seed=1), SWEEP_NAME.format(seed=2)]
    for job in (0, 1):
        run = runs[SWEEP_NAME.format(seed=job + 1)]
        print_summary(client, f"sweep job {job}", run)
        metrics = json.loads((sweep / str(job) / "metrics.json").read_text())
        assert run.data.metrics["final/val/top1"] == pytest.approx(metrics["val/top1"])
        assert run.data.params["seed"] == str(job + 1) and run.info.status == "FINISHED"
        tags = run.data.tags
        assert (tags["sweep_dir"], tags["job"]) == (str(sweep.resolve()), str(job))
        assert tags["run_dir"] == str((sweep / str(job)).resolve())


# --- eval.py on the trained checkpoint ----------------------------------------------------------------


def server_requests(server_folder: Path) -> list[str]:
    """The requests the server has logged (uvicorn's access log)."""
    return [
        line
        for line in (server_folder / "mlflow.log").read_text().splitlines()
        if '"GET ' in line or '"POST ' in line
    ]


@pytest.fixture(scope="module")
def evaluations(single_run, server, server_folder, tmp_path_factory) -> dict[str, object]:
    """eval.py on the single run's best checkpoint, first without $MLFLOW_TRACKING_URI, then with
    it set to the server: the output of the first, the requests the server saw during it, and the
    run folder of the second."""
    cwd = tmp_path_factory.mktemp("eval")
    checkpoint = single_run / "checkpoints" / "best.ckpt"
    before = len(server_requests(server_folder))
    unset = run_script(
        "eval.py", cwd, f"ckpt_path={checkpoint}", "measure_cpu_speed=false", f"hydra.run.dir={cwd / 'unset'}"
    )
    requests_while_unset = server_requests(server_folder)[before:]
    with_server = cwd / "with-server"
    run_script(
        "eval.py",
        cwd,
        f"ckpt_path={checkpoint}",
        "measure_cpu_speed=false",
        f"hydra.run.dir={with_server}",
        tracking_uri=server,
    )
    return {"unset_output": unset, "requests_while_unset": requests_while_unset, "run_dir": with_server}


def test_eval_adds_its_results_to_the_training_run_only_with_the_server_in_the_environment(
    single_run, evaluations, client
):
    run = run_of(client, single_run)
    run_id = run.info.run_id
    output = evaluations["unset_output"]
    assert f"trained in MLflow run {run_id} of {client.tracking_uri}: results not added there" in output
    assert evaluations["requests_while_unset"] == []  # not contacted at all

    print_summary(client, "after eval.py", run)
    metrics = json.loads((evaluations["run_dir"] / "metrics.json").read_text())
    for key, value in metrics.items():
        assert history(client, run_id, f"eval/{key}") == [(0, pytest.approx(value))]  # once: the second eval
    folder = f"eval/{evaluations['run_dir'].name}"
    eval_files = artifact_names(client, run_id, folder)
    print(f"  {folder}/: {sorted(eval_files)}")
    assert {"metrics.json", "report.json", "model_card.yaml", "confusion_matrix.png"} <= eval_files
    assert artifact_names(client, run_id, "eval") == {evaluations["run_dir"].name}
    assert run.info.status == "FINISHED"


# --- a resumed run ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed_run(server, tmp_path_factory) -> Path:
    """train.py for 1 epoch, then the same run dir for 2 (resume=auto continues from last.ckpt), the
    server named by $MLFLOW_TRACKING_URI, the best checkpoint uploaded too: the run dir."""
    cwd = tmp_path_factory.mktemp("resumed")
    run_dir = cwd / "run"
    common = ["logger=mlflow", "logger.mlflow.log_checkpoint=true", *TINY, f"hydra.run.dir={run_dir}"]
    run_script("train.py", cwd, *common, "trainer.max_epochs=1", tracking_uri=server)
    first = json.loads((run_dir / "tracking.json").read_text())["mlflow"]
    output = run_script("train.py", cwd, *common, "trainer.max_epochs=2", tracking_uri=server)
    assert f"MLflow: continuing run {first['run_id']} of {server}" in output
    return run_dir


def test_a_resumed_run_continues_its_mlflow_run(resumed_run, client):
    run = run_of(client, resumed_run)  # one run, not one per command
    print_summary(client, "resumed", run)
    assert run.data.tags["run_dir"] == str(resumed_run.resolve()) and run.info.status == "FINISHED"
    for key in PER_EPOCH:
        steps = [step for step, _ in history(client, run.info.run_id, key)]
        assert len(steps) == 2 and steps[0] < steps[1], f"{key}: steps {steps}"
    metrics = json.loads((resumed_run / "metrics.json").read_text())
    assert run.data.metrics["final/val/top1"] == pytest.approx(metrics["val/top1"])
    assert run.data.params["trainer.max_epochs"] == "1"  # MLflow keeps a parameter's first value
    assert artifact_names(client, run.info.run_id, "checkpoints") == {"best.ckpt"}  # log_checkpoint=true


# --- an Optuna study ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def optuna_sweep(server, tmp_path_factory) -> Path:
    """`python train.py -m hparams_search=optuna hydra.sweeper.n_trials=2 logger=mlflow ...`, the server
    named by $MLFLOW_TRACKING_URI: its folder."""
    cwd = tmp_path_factory.mktemp("optuna")
    arguments = [
        "-m",
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "logger=mlflow",
        "trainer.max_epochs=1",
    ]
    run_script("train.py", cwd, *arguments, *TINY, tracking_uri=server)
    (folder,) = (cwd / "outputs" / "multirun").glob("*/*")
    return folder


def test_an_optuna_study_is_one_experiment_with_a_run_per_trial(optuna_sweep, client):
    name = sweep_experiment_name(optuna_sweep)
    runs = runs_by_name(client, name)
    print(f"\n[optuna] experiment '{name}': runs {sorted(runs)}")
    assert len(runs) == 2
    for run in runs.values():
        job = run.data.tags["job"]
        metrics = json.loads((optuna_sweep / job / "metrics.json").read_text())
        assert run.data.metrics["final/val/top1"] == pytest.approx(metrics["val/top1"])
        drawn = OmegaConf.load(optuna_sweep / job / ".hydra" / "overrides.yaml")
        lr = next(item.split("=", 1)[1] for item in drawn if item.startswith("optimizer.lr="))
        assert run.data.params["optimizer.lr"] == lr and f"optimizer.lr={lr}" in run.info.run_name
        assert "model.width" not in run.info.run_name  # shared by every trial


# --- the local store, opened as docs/tracking.md says -------------------------------------------------


def test_a_run_without_a_tracking_uri_opens_in_mlflow_ui_as_the_docs_type_it(tmp_path):
    """`python train.py logger=mlflow` with no URI writes outputs/mlflow.db; then, from the same folder,
    `mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db` (on a free port rather than 5000)."""
    run_script("train.py", tmp_path, "logger=mlflow", *TWO_EPOCHS, "hydra.run.dir=outputs/run")
    run_dir = tmp_path / "outputs" / "run"
    assert (tmp_path / "outputs" / "mlflow.db").is_file() and (tmp_path / "outputs" / "mlartifacts").is_dir()
    with mlflow_serving("ui", "--backend-store-uri", "sqlite:///outputs/mlflow.db", cwd=tmp_path) as uri:
        client = MlflowClient(uri)
        run = run_of(client, run_dir)
        assert client.get_experiment(run.info.experiment_id).name == "train"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert run.data.metrics["final/val/top1"] == pytest.approx(metrics["val/top1"])
        assert artifact_names(client, run.info.run_id) >= REPORTS


# --- the MLflow UI in headless Chromium -----------------------------------------------------------------

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
# The columns the table shows beside the run names: what the UI's Columns menu picks, kept as a view
# the experiment shares (the page's "Share" link: an experiment tag the URL names).
SHARED_VIEW = {
    "selectedColumns": [
        "attributes.`Source`",
        "metrics.`final/val/top1`",
        "metrics.`val/top1`",
        "params.`seed`",
    ],
    "orderByKey": "metrics.`final/val/top1`",
    "orderByAsc": False,
}
SHARE_KEY = "final-top1"
WINDOW = (1600, 1000)


@pytest.fixture(scope="module")
def runs_page(sweep, client, server) -> str:
    """The address of the sweep's runs table with SHARED_VIEW's columns."""
    experiment = client.get_experiment_by_name(sweep_experiment_name(sweep))
    client.set_experiment_tag(
        experiment.experiment_id, f"mlflow.sharedViewState.{SHARE_KEY}", json.dumps(SHARED_VIEW)
    )
    return f"{server}/#/experiments/{experiment.experiment_id}/runs?viewStateShareKey={SHARE_KEY}"


def chromium(profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    """Headless Chromium with a fresh profile, nothing fetched but the page; virtual time lets the
    single-page app load its runs before the DOM or the screenshot is taken."""
    command = [
        CHROMIUM,
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
        *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--hide-scrollbars",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


# Elements HTML writes without an end tag.
VOID_ELEMENTS = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "track",
    "wbr",
}


class RunsTable(HTMLParser):
    """The cells of the runs table (ag-grid) by row and column, {row id: {column id: text}}, from the
    DOM Chromium dumps. A row is drawn in pieces (the pinned columns, the others) that share its row-id."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self._open: list[tuple[str | None, str | None]] = []  # (row id, column id) inside each open element

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        row, column = self._open[-1] if self._open else (None, None)
        if attributes.get("row-id"):
            row, column = attributes["row-id"], None
        elif (
            row
            and column is None
            and attributes.get("col-id")
            and "ag-cell" in (attributes.get("class") or "")
        ):
            column = attributes["col-id"]
            self.rows.setdefault(row, {})[column] = ""
        if tag not in VOID_ELEMENTS:
            self._open.append((row, column))

    def handle_endtag(self, tag: str) -> None:
        if tag not in VOID_ELEMENTS and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        row, column = self._open[-1] if self._open else (None, None)
        if row and column:
            self.rows[row][column] += data


@needs_chromium
def test_the_runs_table_shows_the_sweeps_runs_beside_their_final_top1(runs_page, sweep, client, tmp_path):
    page = chromium(tmp_path / "profile", "--dump-dom", runs_page)
    assert page.returncode == 0, page.stderr[-2000:]
    table = RunsTable()
    table.feed(page.stdout)
    runs = runs_by_name(client, sweep_experiment_name(sweep))
    print(f"\n[UI] {runs_page}: {len(table.rows)} rows")
    for row_id, cells in table.rows.items():
        print(
            f"  {row_id}: "
            + "; ".join(f"{key} = {text.strip()}" for key, text in cells.items() if text.strip())
        )
    assert set(table.rows) == {run.info.run_id for run in runs.values()}, f"rows drawn: {table.rows}"
    for name, run in runs.items():
        cells = table.rows[run.info.run_id]
        assert cells["attributes.`Run Name`"].strip().endswith(name)  # after the run's colour
        shown = float(cells["metrics.`final/val/top1`"])
        assert shown == pytest.approx(run.data.metrics["final/val/top1"], abs=1e-3)
        assert cells["params.`seed`"].strip() == run.data.params["seed"]


@needs_chromium
def test_a_screenshot_of_the_runs_table(runs_page, tmp_path):
    """A picture of the page, to look at: $UI_SCREENSHOT names a file to keep it in."""
    from PIL import Image

    picture = tmp_path / "runs.png"
    result = chromium(tmp_path / "profile", f"--screenshot={picture}", runs_page)
    assert result.returncode == 0 and picture.is_file(), result.stderr[-2000:]
    with Image.open(picture) as image:
        assert image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 100  # drawn, not a blank page
    if keep := os.environ.get("UI_SCREENSHOT"):
        shutil.copyfile(picture, keep)
        print(f"\n[UI] screenshot of {runs_page}: {keep}")
