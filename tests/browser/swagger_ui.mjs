// Opens trainyard's Swagger UI in headless Chromium, counts the rendered operations, runs
// "Try it out" on GET /api/v1/health, records every request the page makes, and saves a
// screenshot. With a TOKEN it also enters it through "Authorize" and runs "Try it out" on the
// token-protected GET /api/v1/jobs. Prints one JSON line; tests/it/browser_and_clients.rs asserts on it.
// Usage: node swagger_ui.mjs BASE_URL SCREENSHOT_PATH [TOKEN]
import { chromium } from "playwright-core";

const [base, screenshot, token] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
  ],
});
const result = { requests: [], outside: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 2000 } });
  page.on("request", (r) => {
    const url = new URL(r.url());
    result.requests.push(r.url());
    if (r.url().endsWith("/api/v1/jobs")) {
      result.jobs_request_authorization = r.headers()["authorization"] || null;
    }
    if (!["127.0.0.1", "localhost"].includes(url.hostname) && url.protocol !== "data:") {
      result.outside.push(r.url());
    }
  });
  await page.goto(`${base}/docs/`, { waitUntil: "networkidle" });
  await page.waitForSelector(".opblock", { timeout: 20000 });
  result.operations = await page.locator(".opblock").count();
  result.title = await page.locator(".info .title").first().innerText();
  const health = page.locator(".opblock", { has: page.locator('[data-path="/api/v1/health"]') }).first();
  await health.locator(".opblock-summary").first().click();
  await health.getByRole("button", { name: "Try it out" }).click();
  await health.getByRole("button", { name: "Execute" }).click();
  const status = health.locator(".live-responses-table .response .response-col_status").first();
  await status.waitFor({ timeout: 20000 });
  result.try_it_out_status = (await status.innerText()).trim();
  result.try_it_out_body = (await health.locator(".live-responses-table .microlight").first().innerText()).slice(0, 300);
  if (token) {
    await page.locator(".auth-wrapper button.authorize").first().click();
    await page.locator(".modal-ux input").first().fill(token);
    await page.locator(".modal-ux .auth-btn-wrapper button.authorize").first().click();
    await page.locator(".modal-ux button.btn-done").first().click();
    const jobs = page.locator(".opblock-get", { has: page.locator('[data-path="/api/v1/jobs"]') }).first();
    await jobs.locator(".opblock-summary").first().click();
    await jobs.getByRole("button", { name: "Try it out" }).click();
    await jobs.getByRole("button", { name: "Execute" }).click();
    const jobsStatus = jobs.locator(".live-responses-table .response .response-col_status").first();
    await jobsStatus.waitFor({ timeout: 20000 });
    result.authorized_status = (await jobsStatus.innerText()).trim();
  }
  await page.screenshot({ path: screenshot, fullPage: false });
  result.screenshot = screenshot;
} catch (e) {
  result.error = String(e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
