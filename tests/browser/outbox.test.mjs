// The dashboard with a postgres tier's outbox: the edge from the database to
// the queue tier shows the outbox's table, its pending rows and how many it
// relayed. tests/e2e/browser.rs starts the orchestrator and inserts 3 rows;
// env: ADMIN, OUT, CHROMIUM.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { launch, openPage } from "./launch.mjs";

const ADMIN = `http://${process.env.ADMIN}`;
let browser;

after(async () => {
  await browser?.close();
});

test("an outbox edge shows its table, pending rows and rows relayed", async () => {
  browser = await launch();
  const { page, problems } = await openPage(browser);
  await page.goto(ADMIN + "/#/graph");
  const edge = 'g.edge[data-from="db"][data-to="orders"]';
  await page.waitForSelector(edge, { timeout: 15000 });
  await page.waitForFunction(
    (edge) => document.querySelector(`${edge} .edge-count`)?.textContent === "3 relayed · depth 0",
    edge,
    { timeout: 15000 },
  );
  const figures = await page.$eval(`${edge} .edge-figures`, (t) => t.textContent);
  assert.equal(figures, "outbox outbox · 0 pending");
  const erring = await page.$eval(edge, (g) => g.classList.contains("erring"));
  assert.equal(erring, false);
  assert.deepEqual(problems, []);
  await page.screenshot({ path: `${process.env.OUT}/outbox-edge.png`, fullPage: true });
});
