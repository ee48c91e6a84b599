// The console in a real browser (headless Chromium, driven by playwright-core), against a
// service that tests/api/console.rs started. Exits non-zero, saying what it saw, when the
// console does not do what an operator relies on. Screenshots go to $SCREENSHOTS.
//
// Environment: BASE (the service), TOKEN, SCREENSHOTS, PLAYWRIGHT (playwright-core's folder),
// CHROMIUM (the browser). Loopback only.
import { createRequire } from "node:module";
import path from "node:path";

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT);
const base = process.env.BASE;
const token = process.env.TOKEN;
const shots = process.env.SCREENSHOTS;

async function api(method, route, body) {
  const response = await fetch(base + route, {
    method,
    headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: await response.json() };
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu"],
});
let failed = false;
let page = null;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const outside = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(base)) outside.push(request.url());
  });
  const errors = [];
  page.on("pageerror", (error) => errors.push(String(error)));

  const streams = [];
  page.on("request", (request) => {
    if (request.url() === base + "/api/v1/events") streams.push(request.url());
  });

  // Without the token, the page says it needs one, and its live stream waits for it rather
  // than asking again and again.
  await page.goto(base + "/ui");
  await page.getByRole("alert").filter({ hasText: "token" }).waitFor();
  await page.locator("#live").getByText("enter the token").waitFor();

  await page.fill("#token", token);
  await page.click("#token-form button");
  await page.locator("#holds").getByText("None.").waitFor();
  await page.locator("#live").getByText("live").waitFor();
  if (streams.length !== 2) {
    throw new Error("the event stream was asked for " + streams.length + " times, not once without the token and once with it");
  }

  // An offline made through the API appears as a hold, live, without a reload.
  const offline = await api("POST", "/api/v1/instances/10.0.0.5/offline?wait=true&reason=api%20drain");
  if (offline.status !== 200) throw new Error("offline answered " + offline.status);
  await page.locator("#holds").getByText("10.0.0.5:order-service:8080").waitFor();
  await page.locator("#holds").getByText("deployer").waitFor();
  await page.screenshot({ path: path.join(shots, "1-held.png"), fullPage: true });

  // A running fan-out, watched live: the slow node is pending, then acknowledged.
  const slow = await api("POST", "/api/v1/instances/10.0.0.7/offline");
  if (slow.status !== 202) throw new Error("slow offline answered " + slow.status);
  await page.goto(base + "/ui#/op/" + slow.body.id);
  await page.locator("#operation").getByText("pending").first().waitFor();
  await page.screenshot({ path: path.join(shots, "2-fan-out-running.png"), fullPage: true });
  await page.locator("#operation-summary").getByText("succeeded").waitFor({ timeout: 15000 });
  await page.locator("#operation").getByText("acked").first().waitFor();
  await page.screenshot({ path: path.join(shots, "3-fan-out-done.png"), fullPage: true });

  // An instance's view by IP, and the audit trail filtered by it.
  await page.fill("#ip", "10.0.0.7");
  await page.click("#ip-form button");
  await page.locator("#instance").getByText("held offline").waitFor();
  await page.locator("#instance").getByText("OUT_OF_SERVICE").waitFor();
  await page.fill("#ops-ip", "10.0.0.7");
  await page.click("#ops-form button");
  // The filtered table replaces the unfiltered one when its answer arrives: wait for
  // the other IP's operation to go, then count what is left.
  await page.locator("#ops tbody tr", { hasText: "10.0.0.5" }).waitFor({ state: "detached", timeout: 10000 })
    .catch(() => { throw new Error("the IP filter kept the operation on 10.0.0.5"); });
  await page.locator("#ops tbody tr", { hasText: "10.0.0.7" }).first().waitFor();
  if ((await page.locator("#ops tbody tr").count()) !== 1) throw new Error("the IP filter kept other operations");
  await page.fill("#ops-ip", "");
  await page.click("#ops-form button");

  // Brought back from the page: a confirmation first, then the operation, live.
  const row = page.locator("#holds tr", { hasText: "10.0.0.5:order-service:8080" });
  await row.getByRole("button", { name: "Bring online…" }).click();
  await page.locator("#confirm").getByText("Bring 10.0.0.5 online").waitFor();
  await page.screenshot({ path: path.join(shots, "4-confirm.png"), fullPage: true });
  await page.fill("#reason", "back from the console");
  await page.click("#confirm-button");
  await page.locator("#operation-summary").getByText("online of").waitFor();
  await page.locator("#operation-summary").getByText("succeeded").waitFor({ timeout: 15000 });
  await page.locator("#holds tr", { hasText: "10.0.0.5:order-service:8080" }).waitFor({ state: "detached" });

  if (outside.length) throw new Error("the console asked elsewhere: " + outside.join(", "));
  if (errors.length) throw new Error("the page threw: " + errors.join("; "));

  // A page on another origin (localhost is another origin than 127.0.0.1) cannot act
  // through this browser: the simple cross-site POST that needs no preflight.
  const other = base.replace("127.0.0.1", "localhost");
  await page.evaluate(async (url) => {
    await fetch(url + "/api/v1/instances/10.0.0.5/offline", {
      method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body: "{}",
    }).catch(() => {});
  }, other);

  // On a phone: the same page, readable.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true });
  await phone.goto(base + "/ui");
  await phone.fill("#token", token);
  await phone.click("#token-form button");
  await phone.locator("#ops table").waitFor();
  await phone.screenshot({ path: path.join(shots, "5-phone.png"), fullPage: true });

  console.log("console: 1 passed, 0 failed");
} catch (error) {
  failed = true;
  console.error("console: " + (error.stack || error));
  if (page) {
    await page.screenshot({ path: path.join(shots, "failure.png"), fullPage: true }).catch(() => {});
    console.error("the page showed: " + (await page.locator("main").innerText().catch(() => "?")));
  }
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
