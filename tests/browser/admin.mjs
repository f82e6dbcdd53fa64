// Drives the Imagine /admin page in Debian's headless Chromium: refused without its token, then
// loaded through /admin?token=..., its figures and charts read, a screenshot taken, and one grant
// made from the form; prints what it saw as one JSON line for tests/test_browser.py to check.
//
//   node admin.mjs URL TOKEN SCREENSHOT_DIR
import { chromium } from "playwright-core";

const [url, token, shots] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: FLAGS });
const seen = { consoleErrors: [], requests: [] };
const admin = new URL("admin", url).href;

try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 1000 } });
  // The refused loads below answer 401 with no page, so the browser asks for /favicon.ico (a 404
  // that may be reported late); any other error counts.
  page.on("console", (message) => {
    if (message.type() === "error" && !message.location().url.endsWith("/favicon.ico")) {
      seen.consoleErrors.push(message.text());
    }
  });
  page.on("pageerror", (error) => seen.consoleErrors.push(String(error)));

  // 1. No token, a wrong one: refused, and the page never loads.
  seen.noToken = (await page.goto(admin)).status();
  seen.wrongToken = (await page.goto(`${admin}?token=wrong`)).status();
  seen.consoleErrors = [];  // the browser reports each refused page load as an error

  // 2. The token: a cookie, then the page without it in the address.
  page.on("request", (request) => seen.requests.push(request.url()));
  const loaded = await page.goto(`${admin}?token=${encodeURIComponent(token)}`);
  seen.pageStatus = loaded.status();
  seen.address = page.url();
  await page.waitForSelector("body[data-loaded='true']", { timeout: 30_000 });
  seen.figures = await page.$$eval("[data-figure]", (nodes) =>
    Object.fromEntries(nodes.map((node) => [node.dataset.figure, { value: node.dataset.value, text: node.textContent }])));
  seen.charts = await page.$$eval("svg", (svgs) =>
    Object.fromEntries(svgs.map((svg) => [svg.id, { total: Number(svg.dataset.total), bars: svg.querySelectorAll("rect").length }])));
  seen.topUsers = await page.$$eval("#top-users tr", (rows) => rows.map((row) => row.cells[0].textContent));
  seen.refunds = await page.$$eval("#refunds tr", (rows) => rows.map((row) => [...row.cells].map((c) => c.textContent)));
  seen.users = await page.$$eval("#users tr", (rows) => rows.map((row) => row.dataset.user));
  seen.note = await page.textContent("#rate");
  await page.screenshot({ path: `${shots}/admin.png`, fullPage: true });

  // 3. A grant from the form: the chat command's sentence, and the table shows the bonus.
  await page.click("#users tr[data-user='discord:7']");
  seen.picked = await page.inputValue("#act-user");
  await page.selectOption("#act-action", "grant");
  await page.fill("#act-value", "5");
  await page.click("#act-go");
  await page.waitForFunction(() => document.querySelector("#act-result").textContent !== "", null, { timeout: 30_000 });
  seen.granted = await page.textContent("#act-result");
  await page.waitForFunction(
    () => [...document.querySelectorAll("#users tr[data-user='discord:7'] td")].some((td) => td.textContent === "5"),
    null, { timeout: 30_000 });
  await page.screenshot({ path: `${shots}/admin-granted.png`, fullPage: true });
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
