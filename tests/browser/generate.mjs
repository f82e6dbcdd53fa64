// Drives the Imagine page in Debian's headless Chromium, as a person would, and prints what it saw
// as one JSON line for tests/test_browser.py to check.
//
//   node generate.mjs URL PROMPT BAD_PROMPT SCREENSHOT_DIR
//
// playwright-core only drives the browser: it never downloads one.
import { chromium } from "playwright-core";

const [url, prompt, badPrompt, shots] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
const seen = { requests: [], consoleErrors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on("console", (message) => {
    if (message.type() === "error") seen.consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => seen.consoleErrors.push(String(error)));
  page.on("request", (request) => seen.requests.push(request.url()));

  const response = await page.goto(url, { waitUntil: "load" });
  seen.pageStatus = response.status();
  seen.pageRequests = seen.requests.length;  // everything the page needed to show itself
  await page.waitForFunction(() => document.getElementById("quota").textContent !== "");
  seen.quotaBefore = await page.textContent("#quota");

  // Record every state the status line and progress bar go through.
  await page.evaluate(() => {
    window.__states = [];
    const text = document.getElementById("status-text");
    const bar = document.getElementById("progress");
    const record = () => window.__states.push({ text: text.textContent, value: bar.hasAttribute("value") ? bar.value : null });
    new MutationObserver(record).observe(text, { childList: true, characterData: true, subtree: true });
    new MutationObserver(record).observe(bar, { attributes: true });
  });

  await page.fill("#prompt", prompt);
  await page.click("#go");
  await page.waitForFunction(() => document.getElementById("progress").value >= 0.35, null, {
    timeout: 240_000,
    polling: 50,
  });
  await page.screenshot({ path: `${shots}/browser-progress.png` });
  await page.waitForFunction(
    () => {
      const img = document.querySelector("#results img");
      return img && img.complete && img.naturalWidth > 0;
    },
    null,
    { timeout: 240_000, polling: 100 },
  );
  seen.states = await page.evaluate(() => window.__states);
  seen.image = await page.evaluate(() => {
    const img = document.querySelector("#results img");
    return {
      naturalWidth: img.naturalWidth,
      naturalHeight: img.naturalHeight,
      width: Number(img.getAttribute("width")),
      height: Number(img.getAttribute("height")),
      shown: [img.clientWidth, img.clientHeight],
      src: img.getAttribute("src"),
    };
  });
  seen.caption = await page.textContent("#results figcaption");
  await page.waitForFunction((before) => document.getElementById("quota").textContent !== before, seen.quotaBefore);
  seen.quotaAfter = await page.textContent("#quota");
  seen.buttonEnabled = await page.isEnabled("#go");
  await page.screenshot({ path: `${shots}/browser-result.png`, fullPage: true });

  seen.errorsBeforeBadFlag = [...seen.consoleErrors];  // the bad flag's 400 is logged by Chromium
  await page.fill("#prompt", badPrompt);
  await page.press("#prompt", "Enter");
  await page.waitForSelector("#error:not([hidden])");
  seen.error = await page.textContent("#error");
  await page.screenshot({ path: `${shots}/browser-error.png`, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
