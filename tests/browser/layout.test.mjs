// The graph of a large topology (50 tiers, tests/e2e/browser.rs makes it)
// is laid out readably: every tier and link drawn, no two tiers overlapping,
// their names still at a readable size. Env: ADMIN, OUT, CHROMIUM, TIERS (a count).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { launch } from "./launch.mjs";

let browser;
after(async () => {
  await browser?.close();
});

test("fifty tiers are laid out apart and readable", async () => {
  browser = await launch();
  // A laptop's screen.
  const page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  await page.goto(`http://${process.env.ADMIN}/#/graph`);
  const tiers = Number(process.env.TIERS);
  await page.waitForFunction((n) => document.querySelectorAll("g.node").length === n, tiers, { timeout: 15000 });
  const edges = await page.$$eval("g.edge path.edge-line", (es) => es.length);
  assert.equal(edges, tiers - 1);
  const boxes = await page.$$eval("g.node", (ns) =>
    ns.map((n) => ({ tier: n.getAttribute("data-tier"), ...n.getBoundingClientRect().toJSON() })),
  );
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, b] = [boxes[i], boxes[j]];
      const apart = a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top;
      assert.ok(apart, `${a.tier} and ${b.tier} overlap`);
    }
  }
  // Names are drawn at 10 px or more (the graph scales down to fit the width).
  const smallest = await page.$$eval("g.node .node-name", (ts) => Math.min(...ts.map((t) => t.getBoundingClientRect().height)));
  assert.ok(smallest >= 10, `node names are ${smallest.toFixed(1)} px tall`);
  // No label runs into another.
  const labels = await page.$$eval("g.edge rect.edge-label", (ls) => ls.map((l) => l.getBoundingClientRect().toJSON()));
  for (let i = 0; i < labels.length; i++) {
    for (let j = i + 1; j < labels.length; j++) {
      const [a, b] = [labels[i], labels[j]];
      const apart = a.right <= b.left + 1 || b.right <= a.left + 1 || a.bottom <= b.top + 1 || b.bottom <= a.top + 1;
      assert.ok(apart, `edge labels ${i} and ${j} overlap`);
    }
  }
  await page.screenshot({ path: `${process.env.OUT}/fifty-tiers.png`, fullPage: true });
});
