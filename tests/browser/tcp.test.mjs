// The dashboard with a tcp link to a Redis tier: the edge shows the
// connections open and the bytes each way, the links table connections and
// bytes per second, and the store's page its replica.
// tests/e2e/browser.rs starts the orchestrator; env: ADMIN, OUT, CHROMIUM.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { launch, openPage } from "./launch.mjs";

const ADMIN = `http://${process.env.ADMIN}`;
let browser;

after(async () => {
  await browser?.close();
});

test("a tcp edge shows its connections and bytes", async () => {
  browser = await launch();
  const { page, problems } = await openPage(browser);
  await page.goto(ADMIN + "/#/graph");
  await page.waitForSelector('g.edge[data-kind="tcp"]', { timeout: 15000 });
  // The caller holds one connection and PINGs on it: one open, bytes both ways.
  await page.waitForFunction(
    () => {
      const text = document.querySelector('g.edge[data-kind="tcp"] .edge-figures')?.textContent || "";
      return /^tcp · 1 open · [1-9][\d.]* \S+\/s ↑ [1-9][\d.]* \S+\/s ↓$/.test(text);
    },
    null,
    { timeout: 15000 },
  );
  const count = await page.$eval('g.edge[data-kind="tcp"] .edge-count', (t) => t.textContent);
  assert.equal(count, "1 conn");

  await page.goto(ADMIN + "/#/tier/cache");
  await page.waitForSelector('tr[data-replica="0"][data-state="ready"]');
  const row = await page.$$eval("table", (ts) =>
    ts.flatMap((t) => [...t.querySelectorAll("tbody tr")].map((r) => r.textContent)).find((r) => r.includes("tcp")),
  );
  assert.match(row, /1 conn \(1 open\).*conn\/s.*↑.*↓/, `the link's row: ${row}`);
  assert.deepEqual(problems, []);
  await page.screenshot({ path: `${process.env.OUT}/tcp-link.png`, fullPage: true });
});
