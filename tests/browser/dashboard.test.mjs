// The dashboard in real headless Chromium (Debian's), driven by
// playwright-core, against an orchestrator running topologies/orders.yaml.
// tests/e2e/browser.rs starts the orchestrator and runs this file with:
//   ADMIN      the admin API's address (host:port)
//   WEB        the gateway's address
//   TOPOLOGY   the topology file the orchestrator runs (rewritten by a test)
//   TIERS      the topology's tiers, comma-separated (from `orchestrator graph`)
//   EDGES      its links as from>to, comma-separated
//   OUT        where screenshots go
//   CHROMIUM   the browser's executable
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, renameSync, writeFileSync, mkdirSync } from "node:fs";
import { launch } from "./launch.mjs";

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `${name} is not set`);
  return value;
};
const ADMIN = `http://${env("ADMIN")}`;
const WEB = `http://${env("WEB")}`;
const TOPOLOGY = env("TOPOLOGY");
const OUT = env("OUT");
const TIERS = env("TIERS").split(",");
const EDGES = env("EDGES").split(",").map((e) => e.split(">"));
mkdirSync(OUT, { recursive: true });

let browser;
let page;
const problems = [];

before(async () => {
  browser = await launch();
  page = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console error: ${m.text()}`);
  });
  await page.goto(ADMIN + "/#/graph");
  await page.waitForSelector("g.node", { timeout: 15000 });
});

after(async () => {
  await browser?.close();
});

const shot = (name) => page.screenshot({ path: `${OUT}/${name}.png`, fullPage: true });
const requestsOn = (from, to) =>
  page.$eval(`g.edge[data-from="${from}"][data-to="${to}"]`, (e) => Number(e.getAttribute("data-requests")));

test("every tier is a node and every link an edge, laid out apart", async () => {
  const nodes = await page.$$eval("g.node", (ns) => ns.map((n) => n.getAttribute("data-tier")).sort());
  assert.deepEqual(nodes, [...TIERS].sort());
  const edges = await page.$$eval("g.edge", (es) => es.map((e) => `${e.getAttribute("data-from")}>${e.getAttribute("data-to")}`).sort());
  assert.deepEqual(edges, EDGES.map(([f, t]) => `${f}>${t}`).sort());
  // Laid out: no two nodes overlap.
  const boxes = await page.$$eval("g.node", (ns) => ns.map((n) => n.getBoundingClientRect().toJSON()));
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, b] = [boxes[i], boxes[j]];
      const apart = a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top;
      assert.ok(apart, `nodes ${nodes[i]} and ${nodes[j]} overlap`);
    }
  }
  // Every tier becomes ready.
  await page.waitForFunction(
    (n) => document.querySelectorAll('g.node[data-state="ready"]').length === n,
    TIERS.length,
    { timeout: 15000 },
  );
});

test("requests sent show on their edges", async () => {
  const before = await requestsOn("web", "api");
  const N = 7;
  for (let i = 0; i < N; i++) {
    const resp = await fetch(`${WEB}/api/orders`, { method: "POST", body: JSON.stringify({ item: `widget-${i}`, quantity: 1 }) });
    assert.ok(resp.ok, `order ${i}: ${resp.status}`);
  }
  await page.waitForFunction(
    (want) => Number(document.querySelector('g.edge[data-from="web"][data-to="api"]').getAttribute("data-requests")) >= want,
    before + N,
    { timeout: 10000 },
  );
  assert.equal(await requestsOn("web", "api"), before + N);
  const label = await page.$eval('g.edge[data-from="web"][data-to="api"] .edge-count', (t) => t.textContent);
  assert.match(label, new RegExp(`^${before + N} req`));
  const figures = await page.$eval('g.edge[data-from="web"][data-to="api"] .edge-figures', (t) => t.textContent);
  assert.match(figures, /^rest · [\d.]+\/s · [\d.]+% · p99 [\d.]+ ms$/);
  // The queue tier's edges show its depth and its subscribers' lag.
  const queue = await page.$eval('g.edge[data-from="api"][data-to="orders"] .edge-count', (t) => t.textContent);
  assert.match(queue, /depth \d+/);
  await shot("graph");
});

test("a killed process replica turns failing, then ready again after its restart", async () => {
  const overview = await (await fetch(`${ADMIN}/admin/overview`)).json();
  const audit = overview.status.tiers.find((t) => t.plugin === "process");
  assert.ok(audit, "orders.yaml has a process tier");
  const pid = audit.instances[0].detail.pid;
  const node = `g.node[data-tier="${audit.name}"]`;
  process.kill(pid, "SIGKILL");
  await page.waitForSelector(`${node}[data-state="failing"]`, { timeout: 10000 });
  await shot("replica-failing");
  await page.waitForSelector(`${node}[data-state="ready"]`, { timeout: 20000 });
  const badge = await page.$eval(`${node} .badge-text`, (t) => t.textContent);
  assert.equal(badge, "1/1");
  // The tier's page: the replica's restart and its last exit.
  await page.goto(`${ADMIN}/#/tier/${audit.name}`);
  await page.waitForSelector('#view-tier tr[data-replica="0"][data-state="ready"]');
  const row = await page.$eval('#view-tier tr[data-replica="0"]', (r) => r.textContent);
  assert.match(row, /killed by SIGKILL/);
  await shot("tier");
});

test("a broken topology's located error shows in the reload panel within a second", async () => {
  await page.goto(`${ADMIN}/#/reloads`);
  await page.waitForSelector("#view-reloads:not([hidden])");
  const good = readFileSync(TOPOLOGY, "utf8");
  const broken = good.replace("capacity: 10000", "capacity: lots");
  assert.notEqual(broken, good);
  const line = broken.split("\n").findIndex((l) => l.includes("capacity: lots")) + 1;
  // Saved as an editor saves: a new file renamed over the old.
  writeFileSync(TOPOLOGY + ".swp", broken);
  const saved = Date.now();
  renameSync(TOPOLOGY + ".swp", TOPOLOGY);
  const diagnostic = await page.waitForSelector('li.reload[data-outcome="failed"] pre.diagnostic', { timeout: 1000 });
  const shownAfter = Date.now() - saved;
  const text = await diagnostic.textContent();
  assert.ok(text.includes(`${TOPOLOGY}:${line}:`), text);
  assert.ok(text.includes("tiers.orders.config.capacity"), text);
  assert.ok(text.includes("capacity: lots"), `the source line is quoted: ${text}`);
  assert.match(text, /\|\s+\^/, "a caret under the column");
  const badge = await page.$eval("#reload-badge", (b) => !b.hidden && b.textContent);
  assert.equal(badge, "failed");
  await shot("reload-failed");
  console.log(`# the failed reload showed ${shownAfter} ms after the save`);
  writeFileSync(TOPOLOGY + ".swp", good);
  renameSync(TOPOLOGY + ".swp", TOPOLOGY);
  await page.waitForSelector('li.reload[data-outcome="unchanged"]', { timeout: 5000 });
});

test("the log view filters by tier and finds a line by regex", async () => {
  await page.goto(`${ADMIN}/#/logs`);
  await page.waitForSelector("#log-tiers input[value=audit]");
  // Everything first: a program's stderr is marked.
  await page.waitForSelector(".line.stderr .stream", { timeout: 10000 });
  await page.check("#log-tiers input[value=audit]");
  await page.fill("#log-grep", "order \\S+ recorded");
  await page.waitForFunction(
    () => {
      const lines = [...document.querySelectorAll("#log-columns .line")];
      return lines.length > 0 && lines.every((l) => /order \S+ recorded/.test(l.textContent));
    },
    null,
    { timeout: 10000 },
  );
  const lines = await page.$$eval("#log-columns .line", (ls) => ls.map((l) => [l.getAttribute("data-tier"), l.querySelector(".message").textContent]));
  assert.ok(lines.length >= 7, `the orders sent were recorded: ${lines.length} lines`);
  for (const [tier, message] of lines) {
    assert.equal(tier, "audit");
    assert.match(message, /order \S+ recorded/);
  }
  // A bad pattern is told, not streamed.
  await page.fill("#log-grep", "(unclosed");
  await page.waitForFunction(() => document.querySelector("#log-error").textContent.includes("not a regular expression"), null, { timeout: 5000 });
  // Chromium logs the check's refusal (400) as a console error: expected here, and only here.
  const refused = problems.findIndex((p) => p.includes("status of 400 (Bad Request)"));
  assert.notEqual(refused, -1, "the pattern was checked by the admin API");
  problems.splice(refused, 1);
  // Side by side: a column per tier chosen.
  await page.fill("#log-grep", "");
  await page.check("#log-tiers input[value=worker]");
  await page.check("#log-side");
  await page.waitForSelector('.log-column[data-tier="worker"] .line');
  await page.waitForSelector('.log-column[data-tier="audit"] .line');
  await shot("logs");
});

test("the page is usable from the keyboard and raised no error", async () => {
  await page.goto(`${ADMIN}/#/graph`);
  await page.waitForSelector("g.node");
  // Tab from the top reaches a node; Enter opens its page.
  let reached = null;
  for (let i = 0; i < 20 && !reached; i++) {
    await page.keyboard.press("Tab");
    reached = await page.evaluate(() => document.activeElement?.getAttribute("data-tier"));
  }
  assert.ok(reached, "no node is reachable with Tab");
  await page.keyboard.press("Enter");
  await page.waitForFunction((t) => location.hash === `#/tier/${t}`, reached);
  assert.deepEqual(problems, []);
});
