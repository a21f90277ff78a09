"""The kiosk page in a real browser: Debian's chromium, headless, driven by Playwright (no browser download).

Chromium's fake microphone plays the example speech (``--use-file-for-fake-audio-capture``);
the page sends it over WebRTC and shows the avatar. The test reads what the page measured
through ``getStats()`` (video frames decoded, the energy of the audio that came back) and the
first-frame latency, and keeps a screenshot (build/test-artifacts/kiosk.png, or $EMOTE_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
playwright = pytest.importorskip("playwright.sync_api")

from conftest import SERVE_KEY  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make install or .ci/run installs it)")
def test_kiosk_page_in_headless_chromium_with_a_fake_microphone(server, tmp_path):
    from emote.runtime.examples import SPEECH

    url, _ = server
    wav = tmp_path / "mic.wav"
    shutil.copy(SPEECH, wav)
    artifacts = Path(os.environ.get("EMOTE_ARTIFACTS", "build/test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    args = [
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain host candidates: the server cannot resolve mDNS names
        "--no-sandbox",
    ]
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args, timeout=30_000)
        try:
            page = browser.new_page(viewport={"width": 640, "height": 800})
            page.set_default_timeout(30_000)
            page.goto(f"{url}/?key={SERVE_KEY}")
            page.click("#start")
            page.wait_for_function(
                "() => kiosk.error || (kiosk.framesDecoded >= 25 && kiosk.audioEnergy > 0 && kiosk.events.some(e => e.type === 'speaking_started'))",
                timeout=45_000,
            )
            kiosk = page.evaluate("() => kiosk")
            page.screenshot(path=str(artifacts / "kiosk.png"))
            page.click("#stop")
        finally:
            browser.close()
    assert kiosk["error"] is None
    assert kiosk["framesDecoded"] >= 25 and kiosk["audioEnergy"] > 0
    assert 0 < kiosk["firstFrameMs"] < 15_000
    assert (artifacts / "kiosk.png").stat().st_size > 0
