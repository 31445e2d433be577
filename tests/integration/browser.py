"""Headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium,
for the web page's end-to-end tests; and a small PNG reader for their screenshots.

Missing browser, driver or Selenium: the tests skip on a developer's machine and fail
in CI (``tests.binaries.require``; scripts/test-all installs all three). The browser
trusts exactly the gateway's certificate (its public key's hash), resolves no name but
loopback addresses, and downloads into a folder of the test's own.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import ssl
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.binaries import require


def spki_hash(host: str, port: int) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo)) of the certificate the server presents."""
    pem = ssl.get_server_certificate((host, port), timeout=10)
    key = x509.load_pem_x509_certificate(pem.encode()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


WINDOW = (1280, 860)


@contextmanager
def chromium(profile: Path, downloads: Path, trusted_spki: list[str]) -> Iterator[Any]:
    """A headless Chromium session (a Selenium ``WebDriver``), quit on exit."""
    browser = require(shutil.which("chromium"), "chromium (Debian package chromium)")
    driver_path = require(
        shutil.which("chromedriver"), "chromedriver (Debian package chromium-driver)"
    )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        require(None, "selenium (pip install '.[test]')")
        raise
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
        f"--ignore-certificate-errors-spki-list={','.join(trusted_spki)}",
        # only loopback: no name resolves, nothing phones home
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    options.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },
    )
    # The driver's path given: Selenium's own driver manager (a download) never runs.
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        driver.set_page_load_timeout(20)
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        # The page's viewport (and so every screenshot) is exactly WINDOW: the window's
        # size includes what a headed browser draws around the page.
        width, height = WINDOW
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        yield driver
    finally:
        driver.quit()


def wait_for_file(folder: Path, name: str, timeout: float = 15.0) -> Path:
    """The downloaded file, once complete (Chromium writes ``.crdownload`` first)."""
    deadline = time.monotonic() + timeout
    path = folder / name
    while time.monotonic() < deadline:
        if path.exists() and not (folder / (name + ".crdownload")).exists():
            return path
        time.sleep(0.05)
    raise AssertionError(f"{name} was not downloaded: {sorted(p.name for p in folder.iterdir())}")


# -- PNG ---------------------------------------------------------------------------------


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what
    Chromium's screenshots are)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, bytearray()
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    previous = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = previous[i]
            corner = previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                best = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = (line[i] + best) & 0xFF
        pixels.extend(tuple(line[x * channels : x * channels + 3]) for x in range(width))
        previous = line
    return width, height, pixels


def check_screenshot(data: bytes, expected_size: tuple[int, int]) -> Counter[tuple[int, ...]]:
    """The screenshot has the window's size and is not blank: much of it differs from its
    most common colour (the background), in many colours (text, not one flat box).
    Returns the colour counts for further checks."""
    width, height, pixels = png_pixels(data)
    assert (width, height) == expected_size, (width, height)
    colours = Counter(pixels)
    _, background = colours.most_common(1)[0]
    drawn = len(pixels) - background
    assert drawn > len(pixels) // 20, f"only {drawn} of {len(pixels)} pixels drawn"
    assert len(colours) > 32, f"only {len(colours)} colours"
    return colours
