"""Drives Debian's headless Chromium through the web view (run by test_web_view.py inside
the lab's server namespace, where the server listens).

argv: URL TOKEN OUTDIR NODE VM. Logs in with TOKEN, prints READY once the fleet page
shows NODE, records every state NODE's row shows (the page is never reloaded), then
opens NODE's waterfall, the pools and VM's slot map, saving screenshots to OUTDIR.
Prints one JSON line with what it saw.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait


def browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main() -> int:
    url, token, outdir, node, vm = sys.argv[1:6]
    out = Path(outdir)
    seen: list[str] = []
    driver = browser(1280, 900)
    wait = WebDriverWait(driver, 30)
    try:
        started = time.monotonic()
        driver.get(url + "/")  # redirects to /ui/
        wait.until(EC.presence_of_element_located((By.ID, "token"))).send_keys(token)
        driver.find_element(By.ID, "login").click()
        row = f'tr[data-node="{node}"] .state'
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, row)))
        first_render_s = time.monotonic() - started
        wait.until(lambda d: "on" in d.find_element(By.ID, "live").get_attribute("class"))
        driver.execute_script("window.__notReloaded = 42;")
        print("READY", flush=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                state = driver.find_element(By.CSS_SELECTOR, row).text
            except Exception:  # the row is being redrawn
                continue
            if not seen or seen[-1] != state:
                seen.append(state)
            if state == "UP":
                break
            time.sleep(0.05)
        marker = driver.execute_script("return window.__notReloaded;")
        driver.save_screenshot(str(out / "web-fleet.png"))

        driver.find_element(By.LINK_TEXT, node).click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#waterfall .bar")) >= 3)
        bars = len(driver.find_elements(By.CSS_SELECTOR, "#waterfall .bar"))
        badge = driver.find_element(By.CSS_SELECTOR, "#node-state .state").text
        why = driver.find_element(By.ID, "why").text
        driver.save_screenshot(str(out / "web-node.png"))

        driver.get(url + "/ui/#/pools")
        pool = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".pool .used"))).text
        driver.save_screenshot(str(out / "web-pools.png"))
        driver.get(url + f"/ui/#/vm/{vm}")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#slot-map .slot.active")))
        slots = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#slot-map .slot.active")]
        driver.save_screenshot(str(out / "web-vm-slots.png"))
    except Exception:
        driver.save_screenshot(str(out / "web-failed.png"))
        print(driver.find_element(By.TAG_NAME, "body").text, file=sys.stderr)
        raise
    finally:
        driver.quit()

    phone = browser(412, 915)  # a phone's viewport
    try:
        phone.get(url + "/ui/")  # sessionStorage is per browser: log in again
        WebDriverWait(phone, 30).until(
            EC.presence_of_element_located((By.ID, "token"))).send_keys(token)
        phone.find_element(By.ID, "login").click()
        WebDriverWait(phone, 30).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-node="{node}"]')))
        phone_overflow = phone.execute_script(
            "return document.documentElement.scrollWidth > window.innerWidth + 1;")
        phone.save_screenshot(str(out / "web-fleet-phone.png"))
    finally:
        phone.quit()
    print(json.dumps({"states": seen, "marker": marker, "bars": bars, "badge": badge,
                      "why": why, "pool": pool, "slots": slots,
                      "first_render_s": round(first_render_s, 2),
                      "phone_overflow": phone_overflow}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
