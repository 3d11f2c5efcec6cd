"""The web console in a real headless browser (Debian's chromium driven by Playwright) against
the real service: every page loads with no console error and no failed request, a held-out
digit uploaded on Try it shows its label, an item labelled in Review is labelled through the
API, promote and rollback are driven by clicks, an action without the credential is refused,
and every console answer carries the security headers; shifted digits make the service's own
drift check say drifted, which the Monitoring page shows, and a retrain started on the Retrain
page from an uploaded zip is watched to its gate's verdict and its canary promoted by a click.

Screenshots of each page go to $CONSOLE_SCREENSHOTS (docs/console/ holds the committed ones),
else to the test's temporary folder.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    FilePayload,
    Page,
    Request,
    expect,
    sync_playwright,
)

from bench.shifts import inverted
from lifecycle.registry import CHAMPION, Registry
from offline.data import load_heldout
from offline.digits import encode_png
from tests.integration.conftest import REPO_ROOT, Server, bentoml_env, start_server, stop_server
from tests.integration.squares import canvas, write_squares
from tests.integration.test_registry import FAMILY
from tests.integration.test_retrain import inverted_training_digits, zipped
from tests.integration.test_review import blends
from tests.integration.test_rollout import status, three_versions, wait_for

TOKEN = "console-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
PNG = {"Content-Type": "image/png"}
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PAGES = ("", "/try", "/models", "/monitoring", "/review", "/retrain", "/rollout")
DRIFT_MIN_ROWS = 200
DRIFT_SENT = 208  # 13 batch requests of 16 shifted digits: a window the check judges
DRIFT_CHECK_BOUND_S = 240.0  # a check is a subprocess that imports Evidently: slow when loaded
RETRAIN_EPOCHS = 2
RETRAIN_UPLOADED = 120
RETRAIN_BOUND_S = 600.0  # training, building and gating on two shared cores
# Generous: a CI machine's two cores run the server, its workers and the browser at once.
expect.set_options(timeout=20_000)


@dataclass
class Watched:
    """A page whose console errors, uncaught exceptions and failed requests are kept."""

    page: Page
    problems: list[str] = field(default_factory=list)

    def clear(self) -> list[str]:
        found, self.problems = self.problems, []
        return found


def watch(context: BrowserContext) -> Watched:
    watched = Watched(context.new_page())

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            url = message.location.get("url", "")
            watched.problems.append(f"console: {message.text} ({url})")

    watched.page.on("console", console)
    watched.page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))

    def failed(request: Request) -> None:
        # A page's polling request still in flight when the test moves on is cancelled by the
        # navigation (net::ERR_ABORTED): the browser's doing, not the service's.
        if request.failure != "net::ERR_ABORTED":
            watched.problems.append(f"failed: {request.url} {request.failure}")

    watched.page.on("requestfailed", failed)
    return watched


@dataclass
class Console:
    server: Server
    browser: Browser
    shots: Path
    registry: Registry

    def context(self, width: int = 1280, height: int = 900) -> BrowserContext:
        return self.browser.new_context(viewport={"width": width, "height": height})

    def login(self, context: BrowserContext, then: str = "/console/review") -> Watched:
        """Log in through the console's login form, which then opens `then`."""
        watched = watch(context)
        watched.page.goto(f"{self.server.url}/console/login?next={then}")
        watched.page.fill("#credential", TOKEN)
        watched.page.click("#login button[type=submit]")
        watched.page.wait_for_url(f"**{then}")
        watched.page.wait_for_load_state("networkidle")
        return watched

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def screenshots(root: Path) -> Path:
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One headless chromium for the module: Playwright's sync API runs one at a time."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory, browser: Browser) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    registry, repository, data = three_versions(root)
    home, env = bentoml_env(
        root,
        {
            "IMGSERVE_REPOSITORY": str(repository),
            "IMGSERVE_DATA_DIR": str(data),
            "IMGSERVE_ADMIN_TOKEN": TOKEN,
            "IMGSERVE_REVIEW_BAND": "[0.0, 0.9]",
            "IMGSERVE_IMAGE_SAMPLE_SHARE": "0",
            "IMGSERVE_PREDICTION_LOG_FLUSH_S": "0.1",
            # The service's own drift check, often enough for a test to see one.
            "IMGSERVE_DRIFT_INTERVAL_S": "10",
            "IMGSERVE_DRIFT_WINDOW_S": "3600",
            "IMGSERVE_DRIFT_MIN_ROWS": str(DRIFT_MIN_ROWS),
            # A registered retrain goes out as a canary the controller decides; with no
            # traffic it waits, for the person on the page.
            "IMGSERVE_RETRAIN_ROLLOUT": "0.1",
            "IMGSERVE_RETRAIN_MEASURE_DURATION_S": "0.2",
        },
    )
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        yield Console(server, browser, screenshots(root), registry)
    finally:
        stop_server(server)


@dataclass
class DetectorConsole:
    server: Server
    browser: Browser
    shots: Path

    def shot(self, page: Page, name: str) -> None:
        page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


SQUARES_MAP50 = 0.975  # the card's figure, which the Models page must show as it stands


@pytest.fixture(scope="module")
def detector_console(
    tmp_path_factory: pytest.TempPathFactory, browser: Browser
) -> Iterator[DetectorConsole]:
    """A service serving the hand-built square detector (tests.integration.squares, with a
    card) beside the committed digit classifier."""
    root = tmp_path_factory.mktemp("detector-console")
    repository = root / "repo"
    card = {
        "family": "squares",
        "kind": "detector",
        "summary": "Bright squares on 8-pixel cells, built by hand.",
        "evaluation": {
            "data": "generated canvases", "samples": 4, "objects": 9, "fp32_map50": SQUARES_MAP50,
        },
    }  # fmt: skip
    write_squares(repository, root, card)
    shutil.copytree(REPO_ROOT / "model_repository" / "digits_fp32", repository / "digits_fp32")
    home, env = bentoml_env(
        root,
        {
            "IMGSERVE_REPOSITORY": str(repository),
            "IMGSERVE_MODELS": "squares,digits",
            "IMGSERVE_DATA_DIR": str(root / "data"),
            "IMGSERVE_ADMIN_TOKEN": TOKEN,
        },
    )
    server = start_server("service:ImageClassifier", REPO_ROOT, home / "server.log", env)
    try:
        yield DetectorConsole(server, browser, screenshots(root))
    finally:
        stop_server(server)


def upload(name: str, content: bytes, media_type: str = "image/png") -> FilePayload:
    return {"name": name, "mimeType": media_type, "buffer": content}


def digit(index: int) -> tuple[bytes, str]:
    images, labels = load_heldout()
    return encode_png(images[index]), str(labels[index])


def test_root_redirects_and_console_answers_carry_the_security_headers(console: Console) -> None:
    with httpx.Client(base_url=console.server.url, timeout=10) as client:
        root = client.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/console"
        for path in [
            *(f"/console{p}" for p in PAGES),
            "/console/login",
            "/console/static/console.js",
        ]:
            answer = client.get(path)
            assert answer.status_code == 200, (path, answer.text)
            headers = answer.headers
            csp = headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
            assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
            assert headers["x-content-type-options"] == "nosniff", path
            assert headers["referrer-policy"] == "same-origin", path
        page = client.get("/console").text
        assert "<script>" not in page and " style=" not in page and " on" + "click=" not in page
        assert client.get("/console/static/nope.js").status_code == 404


def test_every_page_loads_without_errors_at_desktop_and_phone_width(console: Console) -> None:
    drift = httpx.get(f"{console.server.url}/v1/drift", params={"model": FAMILY}).status_code
    for width, height, suffix in ((1280, 900, ""), (375, 812, "-phone")):
        context = console.context(width, height)
        try:
            watched = console.login(context)
            for path in PAGES:
                watched.page.goto(f"{console.server.url}/console{path}")
                watched.page.wait_for_load_state("networkidle")
                assert watched.clear() == [], path
                overflow = watched.page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert overflow <= 0, f"{path} scrolls sideways at {width} px"
                if path == "/monitoring" and drift == 409:  # before the service's first check
                    assert watched.page.is_visible("#drift-pending")
                if path == "/models":  # the registry's versions, the champion named
                    row = watched.page.locator("table.versions tr[data-version='1']")
                    row.wait_for()
                    assert "champion" in row.inner_text()
                console.shot(watched.page, f"{path.strip('/') or 'overview'}{suffix}")
        finally:
            context.close()


def test_overview_updates_live_from_metrics_without_moving_the_layout(console: Console) -> None:
    context = console.context()
    try:
        watched = watch(context)
        page = watched.page
        page.goto(f"{console.server.url}/console")
        # Playwright's wait_for_function evaluates a string: the console's CSP forbids that.
        expect(page.locator("#variants tbody tr")).to_have_count(2)
        expect(page.locator("#rps")).not_to_have_text("–")
        boxes = "[...document.querySelectorAll('.tile, .chart, #variants')].map(e => " \
                "JSON.stringify(e.getBoundingClientRect()))"  # fmt: skip
        before = page.evaluate(boxes)
        png, _ = digit(0)
        with httpx.Client(base_url=console.server.url, timeout=10) as client:
            for _ in range(40):  # over a few of the page's reads: lines, not a point, to see
                sent = client.post(
                    "/v1/classify", content=png, headers={"Content-Type": "image/png"}
                )
                assert sent.status_code == 200
                time.sleep(0.15)
        expect(page.locator("#latency")).not_to_have_text(re.compile("^–"), timeout=15000)
        assert page.evaluate(boxes) == before
        assert page.text_content("#ready") == "ready"
        assert page.text_content("#up-since") != "–"
        assert watched.clear() == []
        console.shot(page, "overview")
    finally:
        context.close()


def test_a_digit_uploaded_on_try_it_shows_its_label_from_both_variants(console: Console) -> None:
    png, label = digit(3)
    context = console.context()
    try:
        watched = watch(context)
        page = watched.page
        page.goto(f"{console.server.url}/console/try")
        expect(page.locator("#variant option")).to_have_count(3)
        page.set_input_files("#files", files=[upload("digit.png", png)])
        for variant in ("fp32", "int8"):
            top1 = page.locator(f".answer-slot[data-variant={variant}] .top1")
            top1.wait_for()
            assert top1.text_content() == label, variant
        answered = page.text_content(".answer-slot[data-variant=int8] h3") or ""
        assert answered.startswith("INT8 · ")
        # Not an image: the API's own 4xx message is shown.
        page.set_input_files("#files", files=[upload("notes.png", b"text")])
        page.locator("[data-file='notes.png'] .error").first.wait_for()
        assert "422" in (page.text_content("[data-file='notes.png'] .error") or "")
        # Several images dropped at once (a DataTransfer, as a file manager's drag gives).
        dropped = {f"drop{i}.png": digit(i) for i in (5, 6)}
        transfer = page.evaluate_handle(
            """(files) => {
                const transfer = new DataTransfer();
                for (const [name, b64] of files) {
                    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                    transfer.items.add(new File([bytes], name, { type: "image/png" }));
                }
                return transfer;
            }""",
            [[name, base64.b64encode(png).decode()] for name, (png, _) in dropped.items()],
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
        for name, (_, truth) in dropped.items():
            for variant in ("fp32", "int8"):
                top1 = page.locator(f"[data-file='{name}'] [data-variant={variant}] .top1")
                expect(top1).to_have_text(truth)
        problems = [p for p in watched.clear() if "422" not in p]
        assert problems == []
        console.shot(page, "try")
    finally:
        context.close()


def test_an_item_labelled_in_review_is_labelled_through_the_api(console: Console) -> None:
    pngs, truths = blends(40)
    with httpx.Client(base_url=console.server.url, timeout=10) as client:
        for png in pngs:
            client.post("/v1/classify", content=png, headers={"Content-Type": "image/png"})

        def queued() -> dict[str, Any] | None:
            found: dict[str, Any] = client.get(
                "/admin/review", params={"model": FAMILY, "limit": 500}, headers=ADMIN
            ).json()
            return found if found["waiting"] >= 2 else None

        before = wait_for(queued, 10, "uncertain answers in the review queue")
        context = console.context()
        try:
            watched = console.login(context)
            page = watched.page
            page.wait_for_selector(".review-item")
            first = page.locator(".review-item").first
            first_id = int(first.get_attribute("data-id") or 0)
            assert first_id == before["items"][0]["id"]
            console.shot(page, "review")
            first.focus()
            page.keyboard.press("7")  # labels 0-9 are keys 0-9
            page.wait_for_selector(f".review-item[data-id='{first_id}'][data-decided='7']")
            second = page.locator(".review-item").nth(1)
            second_id = int(second.get_attribute("data-id") or 0)
            second.locator("button[data-discard]").click()
            page.wait_for_selector(f".review-item[data-id='{second_id}'][data-decided=discarded]")
            assert watched.clear() == []
        finally:
            context.close()

        after = client.get("/admin/review", params={"model": FAMILY, "limit": 500}, headers=ADMIN)
        after_json = after.json()
        assert after_json["decided"] == before["decided"] + 2
        assert {first_id, second_id}.isdisjoint(item["id"] for item in after_json["items"])
        again = client.post(f"/admin/review/{first_id}/label", json={"label": "1"}, headers=ADMIN)
        assert again.status_code == 409, again.text
        exported = client.get("/admin/review/export", params={"model": FAMILY}, headers=ADMIN)
        assert exported.status_code == 200 and exported.headers["content-type"] == "application/zip"
        names = zipfile.ZipFile(io.BytesIO(exported.content)).namelist()
        assert names == [f"7/{first_id}.png"]
        assert truths  # the blends' first labels: what a person would choose


def test_promote_and_rollback_are_driven_by_clicks(console: Console) -> None:
    context = console.context()
    try:
        watched = console.login(context)
        page = watched.page
        steps = ((2, "#promote", "promote"), (3, "#rollback", "rollback"))
        for version, button, decision in steps:
            page.goto(f"{console.server.url}/console/rollout")
            page.wait_for_selector("#rollout-panel[data-state=idle]")
            page.fill("#rollout-version", str(version))
            page.fill("#canary-share", "0.2")
            page.select_option("#rollout-decide", "no")
            page.click("#start")
            page.wait_for_selector("#rollout-panel[data-state=rolling]", timeout=60000)
            assert page.text_content("#challenger") == f"v{version}"
            rollout = status(console.server)["rollout"]
            assert rollout["challenger"] == version and rollout["canary_share"] == 0.2
            assert rollout["decide"] is False
            if version == 2:
                console.shot(page, "rollout")
            page.click(button)
            page.wait_for_selector("#rollout-panel[data-state=idle]", timeout=60000)
            state = status(console.server)
            assert state["rollout"] is None
            assert state["decisions"][-1]["decision"] == decision
            assert state["decisions"][-1]["figures"]["version"] == version
        assert watched.clear() == []
    finally:
        context.close()


def test_actions_without_the_credential_are_refused(console: Console) -> None:
    url = console.server.url
    context = console.context()
    try:
        watched = watch(context)
        page = watched.page
        page.goto(f"{url}/console/rollout")
        assert page.is_disabled("#promote") and page.is_disabled("#rollback")
        assert page.is_disabled("#start")
        refused = page.evaluate(
            "fetch('/admin/promote', {method: 'POST', headers: {'Content-Type': "
            "'application/json'}, body: '{}'}).then(r => r.status)"
        )
        assert refused == 401
        page.goto(f"{url}/console/review")
        assert page.is_visible("#need-login")
        page.goto(f"{url}/console/login")
        page.fill("#credential", "wrong")
        page.click("#login button[type=submit]")
        assert "wrong" in (page.text_content("#login-error") or "")
        watched.clear()  # the refusals above are logged as errors by the browser, on purpose
    finally:
        context.close()
    with httpx.Client(base_url=url, timeout=10) as client:
        login = client.get("/console/login")
        nonce = login.text.split('name="nonce" value="')[1].split('"')[0]
        done = client.post(
            "/console/login", data={"credential": TOKEN, "nonce": nonce, "next": "/console"}
        )
        assert done.status_code == 303
        cookie = done.cookies["imgserve_console"]
        set_cookie = done.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
    # The session without its CSRF header, or with a wrong one, or a forged cookie: refused.
    session = {"Cookie": f"imgserve_console={cookie}"}
    with httpx.Client(base_url=url, timeout=10) as client:
        no_csrf = client.post("/admin/rollback", json={}, headers=session)
        assert no_csrf.status_code == 403 and "X-CSRF-Token" in no_csrf.text
        wrong = client.post("/admin/rollback", json={}, headers={**session, "X-CSRF-Token": "0"})
        assert wrong.status_code == 403
        forged = {"Cookie": "imgserve_console=1." + "0" * 64, "X-CSRF-Token": "x"}
        assert client.post("/admin/rollback", json={}, headers=forged).status_code == 401
        # A login posted without the form's nonce (from another site): refused.
        cross = client.post("/console/login", data={"credential": TOKEN, "nonce": "x"})
        assert cross.status_code == 400 and "imgserve_console=" not in cross.headers.get(
            "set-cookie", ""
        )


def test_a_retrain_started_on_the_page_is_watched_to_its_verdict_and_promoted_by_a_click(
    console: Console,
) -> None:
    url = console.server.url
    pngs, truths = inverted_training_digits(RETRAIN_UPLOADED, seed=11)
    archive = zipped(pngs, truths, {"3/broken.png": b"not an image"})
    context = console.context()
    try:
        watched = console.login(context, "/console/retrain")
        page = watched.page
        # Nothing usable in the zip: the API's 422 and its message, shown on the page.
        junk = upload("junk.zip", zipped([b"junk"], ["1"], {}), "application/zip")
        page.set_input_files("#zip", files=[junk])
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#upload-message")).to_contain_text("422: none of")
        problems = watched.clear()  # the browser logs the refused upload, as it should
        assert problems and all("422" in p for p in problems), problems
        page.set_input_files("#zip", files=[upload("inverted.zip", archive, "application/zip")])
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#upload-message")).to_contain_text(
            f"Uploaded: {RETRAIN_UPLOADED} accepted, 1 refused: 3/broken.png (undecodable)"
        )
        # Images of one label, with the label typed in: a multipart upload.
        more, more_truths = inverted_training_digits(3, seed=12)
        page.set_input_files("#zip", files=[])
        page.set_input_files(
            "#images", files=[upload(f"more{i}.png", png) for i, png in enumerate(more[:1])]
        )
        page.fill("#label", more_truths[0])
        page.click("#upload-form button[type=submit]")
        expect(page.locator("#upload-message")).to_contain_text("Uploaded: 1 accepted;")

        page.fill("#epochs", str(RETRAIN_EPOCHS))
        page.click("#start-form button[type=submit]")
        expect(page.locator("#job-phase")).to_contain_text("training: epoch", timeout=120_000)
        assert float(page.get_attribute("#job-progress", "value") or 0) > 0
        job_id = page.text_content("#job-id") or ""
        expect(page.locator("#job[data-state=registered]")).to_have_count(
            1, timeout=RETRAIN_BOUND_S * 1000
        )
        expect(page.locator("#verdict-line")).to_contain_text("passed: FP32 candidate top-1")
        version = int((page.text_content("#job-version") or "v0").removeprefix("v"))
        assert version == 4, version  # after the three versions the fixture registers
        # The retrain rolled it out as a canary: the panel shows it, and a click promotes it.
        expect(page.locator("#job-rollout")).to_contain_text("now a canary")
        expect(page.locator("#rollout-panel[data-state=rolling]")).to_have_count(1)
        assert page.text_content("#challenger") == f"v{version}"
        assert int(page.text_content("#job-labels") or 0) >= RETRAIN_UPLOADED + 1
        console.shot(page, "retrain")
        page.click("#promote")
        expect(page.locator("#rollout-panel[data-state=idle]")).to_have_count(1, timeout=60_000)
        expect(page.locator("#job-rollout")).to_contain_text("now the champion")
        expect(page.locator("#champion")).to_have_text(f"v{version}")
        assert watched.clear() == []
    finally:
        context.close()

    with httpx.Client(base_url=url, timeout=10, headers=ADMIN) as client:
        job = client.get(f"/admin/retrain/{job_id}").json()
        assert job["state"] == "registered" and job["version"] == version, job
        assert job["epochs"] == RETRAIN_EPOCHS and job["verdict"]["passed"], job
        assert job["rollout"]["started"] and job["rollout"]["now"] == "champion", job
        listed = client.get("/admin/retrain", params={"model": FAMILY}).json()["jobs"]
        assert [j["job"] for j in listed] == [job_id]
    state = status(console.server)
    assert state["rollout"] is None
    assert state["decisions"][-1]["decision"] == "promote"
    assert state["decisions"][-1]["figures"]["version"] == version
    assert console.registry.aliases(FAMILY).get(CHAMPION) == version


def test_shifted_digits_make_the_monitoring_page_show_drift(console: Console) -> None:
    url = console.server.url
    images, _ = load_heldout()
    chosen = images[np.random.default_rng(3).choice(len(images), DRIFT_SENT, replace=False)]
    pngs = inverted(chosen)
    with httpx.Client(base_url=url, timeout=30) as client:
        served = console.registry.aliases(FAMILY)[CHAMPION]  # what the repository serves

        def answered_by_champion() -> bool:
            answer = client.post("/v1/classify", content=pngs[0], headers=PNG)
            return bool(answer.json()["model_version"] == served)

        # A promotion just before (the retrain's) reaches the runners within their poll.
        wait_for(answered_by_champion, 30, f"version {served} answers")
        for start in range(0, DRIFT_SENT, 16):
            files = [("images", (f"{i}.png", png, "image/png"))
                     for i, png in enumerate(pngs[start : start + 16])]  # fmt: skip
            answer = client.post("/v1/classify/batch", files=files)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_version"] == served

        def checked() -> dict[str, Any] | None:
            found = client.get("/v1/drift", params={"model": FAMILY})
            if found.status_code != 200:
                return None
            summary: dict[str, Any] = found.json()
            fresh = summary["version"] == served and summary["window"]["count"] >= DRIFT_SENT
            return summary if fresh else None

        summary = wait_for(checked, DRIFT_CHECK_BOUND_S, "the service's drift check")
    assert summary["drifted"] and summary["score"] >= 1, summary

    context = console.context()
    try:
        watched = watch(context)
        page = watched.page
        page.goto(f"{url}/console/monitoring")
        expect(page.locator("#drifted")).to_have_text("drifted")
        assert page.is_hidden("#drift-pending") and page.is_hidden("#drift-missing")
        expect(page.locator("#drift-version")).to_have_text(f"v{served}")
        assert page.text_content("#score") == f"{summary['score']:.3f}"
        features = summary["features"]
        expect(page.locator("#features tbody tr")).to_have_count(len(features))
        for feature in features:
            cell = page.locator(f"#features tr[data-feature={feature['name']}] td").last
            expect(cell).to_have_text("yes" if feature["drifted"] else "no")
        assert page.text_content("#features tr[data-feature=pixel_mean] td:last-child") == "yes"
        # The class and confidence distributions, the reference's against the window's.
        expect(page.locator("#classes .bar-row")).to_have_count(10)
        assert page.locator("#classes .bar-name").all_text_contents() == [str(d) for d in range(10)]
        edges = summary["reference"]["confidence"]["edges"]
        expect(page.locator("#confidence .bar-row")).to_have_count(len(edges) - 1)
        assert page.locator("#classes .bar-legend").text_content() == "referencecurrent"
        # The history: every stored check, the latest drifted.
        expect(page.locator("#checks")).to_contain_text("drifted")
        assert page.locator("#plot-history canvas").count() == 1
        history = httpx.get(f"{url}/v1/drift/history", params={"model": FAMILY}).json()
        assert history[-1]["drifted"] is True and isinstance(history[-1]["at"], float)
        # The report link answers Evidently's HTML.
        href = page.get_attribute("#report", "href")
        assert href == f"/v1/drift/report?model={FAMILY}"
        report = page.request.get(f"{url}{href}")
        assert report.status == 200 and report.headers["content-type"].startswith("text/html")
        assert "pixel_mean" in report.text()
        assert watched.clear() == []
        console.shot(page, "monitoring")
    finally:
        context.close()


def test_a_canvas_uploaded_for_a_detector_has_its_boxes_drawn_where_the_api_says(
    detector_console: DetectorConsole,
) -> None:
    url = detector_console.server.url
    png, expected = canvas([(1, 0), (3, 1), (0, 1)])
    with httpx.Client(base_url=url, timeout=30) as client:
        sent = client.post("/v1/detect", params={"model": "squares"}, content=png, headers=PNG)
        assert sent.status_code == 200, sent.text
    detections = sent.json()["detections"]
    assert sorted(d["box"] for d in detections) == expected  # three squares, three boxes

    context = detector_console.browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        watched = watch(context)
        page = watched.page
        page.goto(f"{url}/console/try")
        expect(page.locator("#model option")).to_have_count(2)
        page.select_option("#model", "squares")
        expect(page.locator("#variant option")).to_have_count(1)
        assert page.is_hidden("#top-k")  # a detector answers boxes, not the top k labels
        page.set_input_files("#files", files=[upload("canvas.png", png)])
        slot = page.locator("[data-file='canvas.png'] .answer-slot[data-variant=fp32]")
        boxes = slot.locator("svg.boxes rect.box")
        expect(boxes).to_have_count(len(detections))
        expect(slot.locator(".count")).to_have_text(str(len(detections)))
        overlay = slot.locator("svg.boxes")
        assert overlay.get_attribute("viewBox") == "0 0 128 64"  # the canvas's own pixels
        drawn = sorted(
            [float(b.get_attribute(a) or "nan") for a in ("x", "y", "width", "height")]
            for b in boxes.all()
        )
        assert drawn == sorted([x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in expected)
        # On screen: each box where its pixels are on the displayed (scaled) image.
        image = slot.locator(".detected img").bounding_box()
        assert image is not None and image["width"] > 128  # shown larger than its pixels
        scale = image["width"] / 128
        assert image["height"] == pytest.approx(64 * scale, abs=1)
        for box in boxes.all():
            shown = box.bounding_box()
            assert shown is not None
            x, y = float(box.get_attribute("x") or 0), float(box.get_attribute("y") or 0)
            assert shown["x"] - image["x"] == pytest.approx(x * scale, abs=2)
            assert shown["y"] - image["y"] == pytest.approx(y * scale, abs=2)
            assert shown["width"] == pytest.approx(32 * scale, abs=3)
        labels = slot.locator("svg.boxes g.detection text").all_text_contents()
        assert labels == [f"{d['label']} {100 * d['score']:.1f} %" for d in detections]
        detector_console.shot(page, "try-detection")
        # A classifier in the same service keeps its view: top-k bars, no boxes.
        page.select_option("#model", "digits")
        assert page.is_visible("#top-k")
        digit_png, label = digit(3)
        page.set_input_files("#files", files=[upload("digit.png", digit_png)])
        top1 = page.locator("[data-file='digit.png'] .answer-slot[data-variant=fp32] .top1")
        expect(top1).to_have_text(label)
        assert page.locator("[data-file='digit.png'] svg.boxes").count() == 0
        assert watched.clear() == []
    finally:
        context.close()


def test_the_models_page_shows_a_detectors_map50(detector_console: DetectorConsole) -> None:
    context = detector_console.browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        watched = watch(context)
        page = watched.page
        page.goto(f"{detector_console.server.url}/console/models")
        squares = page.locator("section[data-model=squares]")
        expect(squares.locator("td.quality")).to_have_text(f"{100 * SQUARES_MAP50:.1f} %")
        assert squares.locator("td.quality").get_attribute("data-measure") == "map50"
        assert "mAP@0.5" in squares.locator("thead").inner_text()
        assert "9 objects" in squares.locator("dl.facts").inner_text()
        digits = page.locator("section[data-model=digits] td.quality")
        assert digits.get_attribute("data-measure") == "top1"
        assert watched.clear() == []
    finally:
        context.close()
