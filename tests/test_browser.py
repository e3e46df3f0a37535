"""What a user sees, in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) with a fresh
profile, against a real `mlflow server` holding a smoke `main` job, and on the report it wrote. The MLflow UI
keeps its GenAI / Model training switch in the browser, so only a fresh profile shows what a new user gets.
Screenshots of each page go to the test's temp folder."""

import re
import shutil
from pathlib import Path

import mlflow
import pytest

from .conftest import cli, running_mlflow_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium: apt-get install chromium"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright: pip install -e '.[test]'")
# As root, in a container, on a closed network: no sandbox, no GPU, no background calls to Google's hosts.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
FLAGS += ["--disable-sync", "--no-first-run"]
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A smoke `main` job (an SGAN and its baseline, registered) logged through a real server, and its report."""
    folder = tmp_path_factory.mktemp("browser")
    with running_mlflow_server(folder) as uri:
        args = ["main", "--dataset", "digits", "--profile", "smoke", "--labels", "20", "--seeds", "0"]
        args += ["--methods", "sgan,cnn", "--register-model", "digits-best", "--out", str(folder / "report")]
        done = cli(*args, env={"MLFLOW_TRACKING_URI": uri}, cwd=folder)
        assert done.returncode == 0, done.stderr[-3000:]
        yield uri, done.stdout, folder


@pytest.fixture(scope="module")
def page(job):
    _, _, folder = job
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})  # a fresh profile
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        yield page
        browser.close()


def _shot(page, job, name: str) -> None:
    page.screenshot(path=str(job[2] / f"{name}.png"))


def test_the_printed_link_opens_the_experiments_training_runs(job, page):
    uri, stdout, _ = job
    (link,) = re.findall(rf"Browse the runs: ({re.escape(uri)}/#/experiments/\d+/runs)", stdout)
    page.goto(link)
    page.get_by_text("sweep-digits-smoke").first.wait_for()
    _shot(page, job, "runs")
    assert page.get_by_role("heading", name="Training runs").count() == 1
    assert page.get_by_text("3 matching runs").count() == 1  # the sweep and its two trials


def test_a_run_page_shows_its_datasets_description_images_confusion_matrix_and_models(job, page):
    uri, _, _ = job
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("digits-smoke").experiment_id], "tags.method = 'sgan'")[0]
    base = f"{uri}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    page.goto(base)
    page.get_by_text("Nothing was chosen by test accuracy").wait_for()
    _shot(page, job, "run")
    assert page.get_by_text("digits-train").count() >= 1  # its dataset inputs
    page.goto(f"{base}/artifacts/images")
    page.get_by_text("confusion_matrix.png").wait_for()
    _shot(page, job, "artifacts")
    steps = {int(s) for s in re.findall(r"generated_images\+step\+(\d+)\+", page.inner_text("body"))}
    assert steps == {1, 2}  # the image grid at every epoch

    (classifier,) = [
        o.model_id for o in run.outputs.model_outputs if client.get_logged_model(o.model_id).name == "classifier"
    ]
    page.goto(f"{uri}/#/experiments/{run.info.experiment_id}/models/{classifier}")
    page.get_by_text("The classifier (sgan stacked; mlm networks)").wait_for()
    page.get_by_text(re.compile(r"^digits-test \(#")).first.wait_for()  # its metrics, loaded after the page
    _shot(page, job, "model")
    text = page.inner_text("body")
    assert re.search(r"final_test_accuracy\s+digits-test \(#[0-9a-f]+\)", text)  # linked to what it measured on
    assert re.search(r"final_val_accuracy\s+digits-validation \(#[0-9a-f]+\)", text)


def test_the_registered_model_shows_its_alias(job, page):
    uri, _, _ = job
    page.goto(f"{uri}/#/models/digits-best")
    page.get_by_text("best-L20").wait_for()
    _shot(page, job, "registered")
    assert "chosen_by" in page.inner_text("body")


def test_the_html_report_renders_tables_and_images_with_no_raw_markdown(job, page):
    _, _, folder = job
    page.goto((folder / "report" / "report.html").as_uri())
    page.locator("h1").first.wait_for()
    _shot(page, job, "report")
    assert page.locator("table").count() >= 3
    images = page.locator("img")
    assert images.count() >= 3
    assert all(images.nth(i).evaluate("img => img.complete && img.naturalWidth > 0") for i in range(images.count()))
    text = page.inner_text("body")
    assert "|---" not in text and "**" not in text and "](" not in text and "`" not in text
