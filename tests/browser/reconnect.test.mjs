// The dashboard across the orchestrator's restart: the page stays open,
// says it lost the connection, reconnects by itself, and shows the new
// orchestrator's topology. tests/e2e/browser.rs restarts the orchestrator
// (same admin address, one more worker replica) once this prints
// "# connected"; env as in dashboard.test.mjs (ADMIN, OUT, CHROMIUM).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { launch } from "./launch.mjs";

const ADMIN = `http://${process.env.ADMIN}`;
let browser;

after(async () => {
  await browser?.close();
});

test("the page reconnects after a restart and shows what runs now", async () => {
  browser = await launch();
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  let loads = 0;
  page.on("load", () => loads++);
  await page.goto(ADMIN + "/#/graph");
  await page.waitForSelector('#connection.live');
  await page.waitForSelector('g.node[data-tier="worker"] .badge-text');
  assert.equal(await page.$eval('g.node[data-tier="worker"] .badge-text', (t) => t.textContent), "2/2");
  const started = await page.evaluate(async () => (await (await fetch("/admin/overview")).json()).status.started_at);
  console.log("# connected");
  await page.waitForFunction(() => !document.querySelector("#connection").classList.contains("live"), null, { timeout: 30000 });
  assert.match(await page.textContent("#connection"), /reconnecting/);
  await page.waitForSelector("#connection.live", { timeout: 30000 });
  await page.waitForFunction(
    () => document.querySelector('g.node[data-tier="worker"] .badge-text')?.textContent === "3/3",
    null,
    { timeout: 30000 },
  );
  const now = await page.evaluate(async () => (await (await fetch("/admin/overview")).json()).status.started_at);
  assert.notEqual(now, started, "another orchestrator answers");
  assert.equal(loads, 1, "no full page reload");
  await page.screenshot({ path: `${process.env.OUT}/reconnected.png`, fullPage: true });
});
