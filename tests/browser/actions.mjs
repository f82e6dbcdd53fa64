// Drives the image actions of the Imagine page in Debian's headless Chromium: Upscale under a
// result, an image picked with the file picker, and one dropped on the prompt; prints what it saw
// as one JSON line for tests/test_browser.py to check.
//
//   node actions.mjs URL PROMPT PICTURE PICTURE_PROMPT DROPPED_PNG SCREENSHOT_DIR
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";

const [url, prompt, picture, picturePrompt, dropped, shots] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
const seen = { consoleErrors: [], posts: [] };

// The newest result's first image, once it has loaded.
async function newest(page, count) {
  await page.waitForFunction(
    (n) => {
      const figures = document.querySelectorAll("#results figure");
      const img = figures.length >= n && figures[0].querySelector("img");
      return img && img.complete && img.naturalWidth > 0;
    },
    count,
    { timeout: 120_000, polling: 50 },
  );
  return page.evaluate(() => {
    const img = document.querySelector("#results figure img");
    return { size: [img.naturalWidth, img.naturalHeight], caption: document.querySelector("#results figcaption").textContent };
  });
}

try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on("console", (message) => { if (message.type() === "error") seen.consoleErrors.push(message.text()); });
  page.on("pageerror", (error) => seen.consoleErrors.push(String(error)));
  page.on("request", (request) => {
    if (request.method() === "POST") seen.posts.push(new URL(request.url()).pathname.replace(/web(:|%3A)[^/]+/, "ID"));
  });
  await page.goto(url, { waitUntil: "load" });

  // 1. An image, then Upscale under it.
  await page.fill("#prompt", prompt);
  await page.click("#go");
  seen.first = await newest(page, 1);
  seen.tools = await page.$$eval("#results figure .tools button", (buttons) => buttons.map((b) => b.textContent));
  await page.click("#results figure .tools button:has-text('Upscale')");
  seen.upscaled = await newest(page, 2);
  await page.screenshot({ path: `${shots}/browser-upscale.png`, fullPage: true });

  // 2. An image prompt from the file picker.
  await page.setInputFiles("#picture", picture);
  await page.waitForSelector("#picked:not([hidden])");
  await page.fill("#prompt", picturePrompt);
  await page.screenshot({ path: `${shots}/browser-picked.png` });
  await page.click("#go");
  seen.uploaded = await newest(page, 3);
  await page.screenshot({ path: `${shots}/browser-upload.png`, fullPage: true });

  // 3. A picture dropped on the prompt replaces it.
  const bytes = readFileSync(dropped).toString("base64");
  const dataTransfer = await page.evaluateHandle((b64) => {
    const data = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([data], "dropped.png", { type: "image/png" }));
    return transfer;
  }, bytes);
  await page.dispatchEvent("#form", "dragover", { dataTransfer });
  await page.dispatchEvent("#form", "drop", { dataTransfer });
  await page.waitForFunction(() => (document.getElementById("picked-img").src || "").startsWith("data:image/png"));
  await page.fill("#prompt", picturePrompt);
  await page.press("#prompt", "Enter");
  seen.dropped = await newest(page, 4);
  seen.quota = await page.textContent("#quota");
  await page.screenshot({ path: `${shots}/browser-drop.png`, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
