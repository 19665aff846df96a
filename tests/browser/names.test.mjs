// The dashboard with tiers and topics named as the properties every
// JavaScript object has (`constructor`, `toString`, `hasOwnProperty`,
// `valueOf`): each is drawn and opens, nothing throws, the probe cell says
// what the probe says, and the page does not reconnect over and over.
// tests/e2e/browser.rs starts the orchestrator; env: ADMIN, OUT, CHROMIUM.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { launch, openPage } from "./launch.mjs";

const ADMIN = `http://${process.env.ADMIN}`;
let browser;

after(async () => {
  await browser?.close();
});

test("tiers named like an object's properties are drawn, open, and stay connected", async () => {
  browser = await launch();
  const { page, problems } = await openPage(browser);
  await page.goto(ADMIN + "/#/graph");
  await page.waitForSelector("#connection.live");
  await page.waitForSelector("g.node", { timeout: 15000 });
  const nodes = await page.$$eval("g.node", (ns) => ns.map((n) => n.getAttribute("data-tier")).sort());
  assert.deepEqual(nodes, ["constructor", "hasOwnProperty", "toString", "valueOf"]);
  await page.waitForFunction(() => document.querySelector('g.node[data-tier="toString"] .badge-text')?.textContent === "1/1");

  // The program's page: its probe, in words.
  await page.goto(ADMIN + "/#/tier/toString");
  await page.waitForSelector('tr[data-replica="0"][data-state="ready"]');
  const probe = await page.$eval('tr[data-replica="0"] td:nth-child(7)', (td) => td.textContent);
  assert.match(probe, /^ok/, `the probe cell: ${probe}`);

  // The queue tier's page: its topic named `constructor`.
  await page.goto(ADMIN + "/#/tier/hasOwnProperty");
  await page.waitForSelector("table caption");
  const topics = await page.$$eval("table", (ts) =>
    ts.filter((t) => t.querySelector("caption")?.textContent.startsWith("Topics")).map((t) => t.textContent),
  );
  assert.ok(topics.length === 1 && topics[0].includes("constructor"), `topics: ${topics}`);

  // Connected once: no storm of reconnections (it made some 300 a minute).
  let reconnects = 0;
  page.on("request", (r) => {
    if (/\/admin\/(overview|events)/.test(r.url())) reconnects++;
  });
  await page.waitForTimeout(3000);
  assert.ok(reconnects <= 1, `${reconnects} overview or event requests in 3 s`);
  assert.deepEqual(problems, []);
  await page.screenshot({ path: `${process.env.OUT}/object-names.png`, fullPage: true });
});
