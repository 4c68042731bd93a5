"""The viewer page in a real browser: headless Chromium driven by Selenium (chromedriver), the
service under uvicorn on a free port. Enter the token, pick a radiograph, see the query and
its matches with distances and labels, toggle a heatmap; a screenshot is saved.

MEDHASH_SCREENSHOT=path.png runs it with the bundled default model (real attention maps) and
writes the screenshot there, downsized: the README's screenshot comes from this.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason='the serve extra is not installed: pip install "medhash-sdk[serve]"')
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra)")

from _data import NIH_PNGS  # noqa: E402
from _serve import LiveServer, chromium, labels, need, need_data  # noqa: E402
from test_serve import Svc  # noqa: E402


def browser(binary: str, driver: str):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as DriverService

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = Options()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--disable-extensions", "--window-size=1280,1010", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=DriverService(executable_path=driver), options=opts)
    return drv, profile


def test_viewer_upload_shows_matches_in_chromium(tmp_path, model):
    need_data()
    binary, driver = chromium()
    need(binary is not None and driver is not None,
         "Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    lab = labels()
    readme_shot = os.environ.get("MEDHASH_SCREENSHOT")
    if readme_shot:
        from medhash_sdk.encoder import default_model_path
        model = default_model_path()
    svc = Svc(tmp_path / "data", model)
    for i, p in enumerate(NIH_PNGS[:20]):
        svc.add(p, p.stem, {"modality": "DX", "view_position": "PA" if i % 3 else "AP",
                            "study_date": f"2024-02-{i + 1:02d}", "labels": lab.get(p.name, [])})
    live = LiveServer(svc.service)
    drv, profile = browser(binary, driver)
    try:
        wait = WebDriverWait(drv, 60)
        drv.get(live.url + "/")
        drv.find_element(By.ID, "token").send_keys(svc.tokens["read"])
        drv.find_element(By.ID, "token-save").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "status"), "20 items"))
        k = drv.find_element(By.ID, "k")
        k.clear()
        k.send_keys("8")
        query = NIH_PNGS[25]
        drv.find_element(By.ID, "file").send_keys(str(query))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) == 8)
        cards = drv.find_elements(By.CSS_SELECTOR, "#results .card")
        want = svc.search(file=query, fields={"k": "8"}).json()["results"]
        shown = [(c.find_element(By.CLASS_NAME, "id").text, c.find_element(By.CLASS_NAME, "distance").text)
                 for c in cards]
        assert shown == [(m["id"], f"distance {m['distance']}") for m in want]
        first_labels = ", ".join(want[0]["metadata"]["labels"]) or "No Finding"
        assert cards[0].find_element(By.CLASS_NAME, "labels").text == first_labels
        # every thumbnail loaded (with the token, as blob: URLs), the query's too
        wait.until(lambda d: all(i.get_attribute("src", ) and i.get_attribute("src").startswith("blob:")
                                 and d.execute_script("return arguments[0].naturalWidth", i) > 0
                                 for i in d.find_elements(By.CSS_SELECTOR, ".card img")))
        # the heatmap toggle swaps the image
        img = cards[0].find_element(By.TAG_NAME, "img")
        before = img.get_attribute("src")
        cards[0].find_element(By.CLASS_NAME, "heat").click()
        wait.until(lambda d: img.get_attribute("src") != before)
        assert cards[0].find_element(By.CLASS_NAME, "heat").text == "plain image"
        drv.find_element(By.CSS_SELECTOR, "#query .heat").click()
        # a filter: only AP views
        drv.find_element(By.ID, "view").send_keys("AP")
        drv.find_element(By.ID, "search").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) == 7)
        facts = [c.find_element(By.CLASS_NAME, "facts").text for c in drv.find_elements(By.CSS_SELECTOR, "#results .card")]
        assert all(" AP " in f" {f} " for f in facts), facts
        drv.find_element(By.ID, "view").clear()
        drv.find_element(By.ID, "search").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .card")) == 8)
        wait.until(lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) > 0
                                 for i in d.find_elements(By.CSS_SELECTOR, ".card img")))
        drv.find_elements(By.CSS_SELECTOR, "#results .heat")[0].click()
        drv.find_element(By.CSS_SELECTOR, "#query .heat").click()
        shot = tmp_path / "viewer.png"
        assert drv.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        if readme_shot:
            import cv2
            img = cv2.imread(str(shot))
            small = cv2.resize(img, (960, round(img.shape[0] * 960 / img.shape[1])), interpolation=cv2.INTER_AREA)
            cv2.imwrite(readme_shot, small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        # a wrong token is refused on the page, saying so
        drv.execute_script("sessionStorage.clear()")
        drv.get(live.url + "/")
        drv.find_element(By.ID, "token").send_keys("mh_wrong")
        drv.find_element(By.ID, "token-save").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "not accepted"))
        # nothing was fetched from outside the service (offline hospital networks)
        urls = drv.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(u.startswith(live.url) or u.startswith("blob:") for u in urls), urls
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
        live.stop()
        svc.close()
