// The orchestrator's dashboard: the topology as a graph with live figures on
// its edges, a tier's replicas and links, the logs, and the reloads. It reads
// the admin API's overview as Server-Sent Events (`/admin/events`) and the
// logs likewise (`/admin/logs?follow=true`); the layout is dagre's.
"use strict";
(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const $ = (selector, root = document) => root.querySelector(selector);

  /** An element: `tag` ("svg:rect" for SVG), attributes, children (strings become text). */
  function el(tag, attrs = {}, ...children) {
    const svg = tag.startsWith("svg:");
    const node = svg ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
    }
    return node;
  }

  let overview = null;

  /**
   * A JSON object keyed by names users chose (tiers, topics, groups) as a
   * Map: a plain object answers `constructor` or `toString` from its
   * prototype, a Map only what it holds.
   */
  const asMap = (object) => new Map(Object.entries(object || {}));

  // ---- Figures -------------------------------------------------------------

  const fmtRate = (r) => (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2)) + "/s";
  const fmtPct = (f) => (f === null || f === undefined ? "–" : (f * 100).toFixed(f > 0 && f < 0.01 ? 2 : 1) + "%");
  const fmtMs = (ms) => (ms === null || ms === undefined ? "–" : ms >= 100 ? ms.toFixed(0) + " ms" : ms.toFixed(1) + " ms");
  function fmtBytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }
  function fmtAge(since) {
    const s = Math.max(0, (Date.now() - Date.parse(since)) / 1000);
    if (s < 60) return Math.floor(s) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(Math.floor(s % 60)).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + Math.floor((s % 86400) / 3600) + "h";
  }

  /** A tier's state: `ready` (every replica), `failing` (one failed or restarting), `starting`; a job's `completed` or `failed`; `blocked`. */
  function tierState(tier) {
    // A job's end, or a tier that waits for one that failed.
    if (["completed", "failed", "blocked"].includes(tier.state)) return tier.state;
    const n = tier.instances.length;
    const ready = tier.instances.filter((i) => i.ready).length;
    if (tier.instances.some((i) => i.state === "failed" || i.state === "restarting")) return "failing";
    if (n > 0 && ready === n && n >= tier.replicas) return "ready";
    if (tier.state === "running" && n > 0 && ready === 0) return "failing";
    return "starting";
  }

  function linkFigures(link) {
    const figures = overview.figures.links || [];
    return figures.find((f) => f.from === link.from && f.to === link.to && f.link === link.name);
  }

  /** A tcp link's figures: connections and bytes. */
  function tcpFigures(link) {
    const figures = overview.figures.tcp || [];
    return figures.find((f) => f.from === link.from && f.to === link.to && f.link === link.name);
  }

  function fmtByteRate(n) {
    return fmtBytes(Math.round(n || 0)) + "/s";
  }

  function tierByName(name) {
    return overview.status.tiers.find((t) => t.name === name);
  }

  /** The queue tier's broker report (its first replica's), if `tier` is a queue tier. */
  function brokerOf(tier) {
    if (!tier || tier.plugin !== "queue") return null;
    const instance = tier.instances.find((i) => i.detail && i.detail.topics);
    return instance ? instance.detail : null;
  }

  /** What a queue edge shows: the topic's depth for a publisher, the group's lag for a subscriber. */
  function queueFigures(link) {
    const into = brokerOf(tierByName(link.to));
    if (into) {
      const topic = asMap(into.topics).get(link.name);
      return topic ? { depth: topic.depth, inFlight: topic.in_flight } : { depth: 0 };
    }
    const from = brokerOf(tierByName(link.from));
    if (!from) return null;
    let lag = 0;
    let inFlight = 0;
    for (const topic of asMap(from.topics).values()) {
      for (const group of asMap(topic.subscribers).values()) {
        if ((group.tiers || []).includes(link.to)) {
          lag += group.lag;
          inFlight += group.in_flight;
        }
      }
    }
    return { lag, inFlight };
  }

  /** A postgres tier's outbox relayed on `link`, if it is one: its relay's report. */
  function outboxOf(link) {
    const tier = tierByName(link.from);
    if (!tier || link.kind !== "queue") return null;
    const instance = tier.instances.find((i) => i.detail && i.detail.outbox);
    return instance ? asMap(instance.detail.outbox).get(link.name) || null : null;
  }

  function edgeText(link) {
    const o = outboxOf(link);
    if (o) {
      const q = queueFigures(link);
      return [
        `outbox ${o.table} · ${o.pending} pending` + (o.error ? " · failing" : ""),
        `${o.relayed} relayed` + (q && q.depth !== undefined ? ` · depth ${q.depth}` : ""),
        o.relayed,
        Boolean(o.error),
      ];
    }
    if (link.kind === "tcp") {
      const t = tcpFigures(link);
      if (!t) return ["tcp", "0 conn", 0, false];
      return [
        `tcp · ${t.active} open · ${fmtByteRate(t.sent_per_second)} ↑ ${fmtByteRate(t.received_per_second)} ↓`,
        `${t.connections} conn` + (t.failed ? ` · ${t.failed} failed` : ""),
        t.connections,
        t.failed > 0,
      ];
    }
    const f = linkFigures(link);
    const parts = [link.kind];
    if (f) parts.push(fmtRate(f.rate), fmtPct(f.error_rate), "p99 " + fmtMs(f.p99_ms));
    const q = link.kind === "queue" ? queueFigures(link) : null;
    const second = [(f ? f.requests : 0) + " req"];
    if (q && q.depth !== undefined) second.push("depth " + q.depth);
    if (q && q.lag !== undefined) second.push("lag " + q.lag);
    if (q && q.inFlight) second.push(q.inFlight + " in flight");
    return [parts.join(" · "), second.join(" · "), f ? f.requests : 0, f && f.error_rate > 0];
  }

  // ---- Graph ---------------------------------------------------------------

  const NODE_W = 176;
  const NODE_H = 58;
  const LABEL_W = 200;
  const LABEL_H = 30;
  let graphKey = "";

  function renderGraph() {
    const status = overview.status;
    const svg = $("#graph");
    const key = JSON.stringify([status.tiers.map((t) => t.name), status.links.map((l) => [l.from, l.to, l.name])]);
    if (key !== graphKey) {
      graphKey = key;
      layoutGraph(svg, status);
    }
    for (const tier of status.tiers) {
      const node = svg.querySelector(`g.node[data-tier="${CSS.escape(tier.name)}"]`);
      if (!node) continue;
      const state = tierState(tier);
      const ready = tier.instances.filter((i) => i.ready).length;
      node.setAttribute("class", "node " + state);
      node.setAttribute("data-state", state);
      node.querySelector(".badge-text").textContent = `${ready}/${tier.replicas}`;
      node.querySelector(".state-text").textContent = state;
      node.setAttribute("aria-label", `${tier.name}: ${tier.plugin}, ${ready} of ${tier.replicas} replicas ready, ${state}`);
    }
    for (const link of status.links) {
      const edge = svg.querySelector(
        `g.edge[data-from="${CSS.escape(link.from)}"][data-to="${CSS.escape(link.to)}"][data-link="${CSS.escape(link.name)}"]`,
      );
      if (!edge) continue;
      const [first, second, requests, failing] = edgeText(link);
      edge.querySelector(".edge-figures").textContent = first;
      edge.querySelector(".edge-count").textContent = second;
      edge.setAttribute("data-requests", requests);
      edge.classList.toggle("erring", Boolean(failing));
    }
  }

  function layoutGraph(svg, status) {
    const g = new dagre.graphlib.Graph({ multigraph: true });
    g.setGraph({ rankdir: "LR", nodesep: 28, ranksep: 90, edgesep: 18, marginx: 16, marginy: 16 });
    g.setDefaultEdgeLabel(() => ({}));
    // dagre keys plain objects by node and edge names: it is given `n0`,
    // `n1`… and `e0`…, never a name a user chose (`constructor` broke it).
    const ids = new Map(status.tiers.map((tier, i) => [tier.name, "n" + i]));
    for (const tier of status.tiers) g.setNode(ids.get(tier.name), { width: NODE_W, height: NODE_H });
    status.links.forEach((link, i) => {
      if (!ids.has(link.from) || !ids.has(link.to)) return;
      g.setEdge(ids.get(link.from), ids.get(link.to), { width: LABEL_W, height: LABEL_H, labelpos: "c" }, "e" + i);
    });
    dagre.layout(g);
    const size = g.graph();
    svg.replaceChildren();
    svg.setAttribute("viewBox", `0 0 ${Math.max(size.width, 200)} ${Math.max(size.height, 100)}`);
    svg.setAttribute("width", Math.max(size.width, 200));
    svg.setAttribute("height", Math.max(size.height, 100));
    svg.append(
      el(
        "svg:defs",
        {},
        el(
          "svg:marker",
          { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
          el("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }),
        ),
      ),
    );
    status.links.forEach((link, i) => {
      const e = ids.has(link.from) && ids.has(link.to) && g.edge({ v: ids.get(link.from), w: ids.get(link.to), name: "e" + i });
      if (!e) return;
      const d = e.points.map((p, at) => `${at ? "L" : "M"} ${p.x.toFixed(1)} ${p.y.toFixed(1)}`).join(" ");
      svg.append(
        el(
          "svg:g",
          { class: "edge", "data-from": link.from, "data-to": link.to, "data-link": link.name, "data-kind": link.kind },
          el("svg:title", {}, `${link.from} → ${link.to} (${link.kind}, link \`${link.name}\`)`),
          el("svg:path", { d, class: "edge-line kind-" + link.kind, "marker-end": "url(#arrow)" }),
          el("svg:rect", { x: e.x - LABEL_W / 2, y: e.y - LABEL_H / 2, width: LABEL_W, height: LABEL_H, rx: 4, class: "edge-label" }),
          el("svg:text", { x: e.x, y: e.y - 4, class: "edge-figures", "text-anchor": "middle" }, link.kind),
          el("svg:text", { x: e.x, y: e.y + 10, class: "edge-count", "text-anchor": "middle" }, "0 req"),
        ),
      );
    });
    for (const tier of status.tiers) {
      const n = g.node(ids.get(tier.name));
      const x = n.x - NODE_W / 2;
      const y = n.y - NODE_H / 2;
      const open = () => (location.hash = "#/tier/" + encodeURIComponent(tier.name));
      svg.append(
        el(
          "svg:g",
          {
            class: "node",
            "data-tier": tier.name,
            transform: `translate(${x.toFixed(1)} ${y.toFixed(1)})`,
            tabindex: 0,
            role: "link",
            onclick: open,
            onkeydown: (ev) => {
              if (ev.key === "Enter" || ev.key === " ") {
                ev.preventDefault();
                open();
              }
            },
          },
          el("svg:rect", { width: NODE_W, height: NODE_H, rx: 8, class: "node-box" }),
          el("svg:text", { x: 12, y: 22, class: "node-name" }, tier.name),
          el("svg:text", { x: 12, y: 42, class: "node-plugin" }, tier.plugin),
          el("svg:rect", { x: NODE_W - 52, y: 10, width: 42, height: 20, rx: 10, class: "badge-box" }),
          el("svg:text", { x: NODE_W - 31, y: 24, class: "badge-text", "text-anchor": "middle" }, "0/0"),
          el("svg:text", { x: NODE_W - 10, y: 46, class: "state-text", "text-anchor": "end" }, ""),
        ),
      );
    }
  }

  // ---- A tier's page -------------------------------------------------------

  async function restart(tier, replica) {
    const q = new URLSearchParams({ tier });
    if (replica !== undefined) q.set("replica", replica);
    const out = $("#restart-result");
    out.textContent = replica === undefined ? `Restarting every replica of ${tier}…` : `Restarting ${tier}.${replica}…`;
    const resp = await fetch("/admin/restart?" + q, { method: "POST" });
    const body = await resp.json().catch(() => ({}));
    out.textContent = resp.ok ? `Restarted ${tier}: replica(s) ${body.restarted.join(", ")}` : `Restart failed: ${body.error}`;
    out.className = resp.ok ? "ok" : "error";
  }

  function linkRow(link) {
    if (link.kind === "tcp") {
      const t = tcpFigures(link) || {};
      return el(
        "tr",
        {},
        el("td", {}, el("a", { href: "#/tier/" + encodeURIComponent(link.from) }, link.from)),
        el("td", {}, el("a", { href: "#/tier/" + encodeURIComponent(link.to) }, link.to)),
        el("td", {}, link.name),
        el("td", {}, link.kind),
        el("td", { class: "num" }, `${t.connections ?? 0} conn (${t.active ?? 0} open)`),
        el("td", { class: "num" }, (t.connection_rate ?? 0).toFixed(1) + " conn/s"),
        el("td", { class: "num" }, t.failed ? `${t.failed} failed` : "0"),
        el("td", { class: "num" }, "–"),
        el("td", { class: "num" }, `${fmtByteRate(t.sent_per_second)} ↑ ${fmtByteRate(t.received_per_second)} ↓`),
      );
    }
    const f = linkFigures(link) || {};
    const q = link.kind === "queue" ? queueFigures(link) : null;
    return el(
      "tr",
      {},
      el("td", {}, el("a", { href: "#/tier/" + encodeURIComponent(link.from) }, link.from)),
      el("td", {}, el("a", { href: "#/tier/" + encodeURIComponent(link.to) }, link.to)),
      el("td", {}, link.name),
      el("td", {}, link.kind),
      el("td", { class: "num" }, f.requests ?? 0),
      el("td", { class: "num" }, fmtRate(f.rate ?? 0)),
      el("td", { class: "num" }, fmtPct(f.error_rate)),
      el("td", { class: "num" }, fmtMs(f.p99_ms)),
      el("td", { class: "num" }, q ? (q.depth !== undefined ? "depth " + q.depth : "lag " + q.lag) : ""),
    );
  }

  /** A replica's probe: ok, or the last failure while it is not ready. */
  function probeText(instance, d) {
    if (d.probe_failures === undefined) return "–";
    if (instance.ready) return d.probe_failures ? `ok (${d.probe_failures} failed before)` : "ok";
    return d.last_probe_error ? `failing: ${d.last_probe_error}` : "waiting";
  }

  function renderTier(name) {
    const view = $("#view-tier");
    const tier = tierByName(name);
    if (!tier) {
      view.replaceChildren(el("h2", {}, `No tier ${name}`), el("p", {}, el("a", { href: "#/graph" }, "Back to the graph")));
      return;
    }
    const focused = document.activeElement && document.activeElement.id;
    const groups = asMap(overview.figures.groups);
    const listener = asMap(overview.figures.listeners).get(tier.name);
    const replicas = tier.instances.map((i) => {
      const d = i.detail || {};
      const usage = d.pgid ? groups.get(String(d.pgid)) : null;
      return el(
        "tr",
        { "data-replica": i.replica, "data-state": i.state },
        el("td", {}, `${tier.name}.${i.replica}`),
        el("td", {}, el("span", { class: "pill " + i.state }, i.state)),
        el("td", { class: "num" }, d.pid ?? "–"),
        el("td", { class: "num" }, fmtAge(i.started_at)),
        el("td", { class: "num" }, d.restarts ?? 0),
        el("td", {}, d.last_exit ?? "–"),
        el("td", { title: d.last_probe_error || "" }, probeText(i, d)),
        el("td", { class: "num" }, usage && usage.cpu_percent !== null ? usage.cpu_percent.toFixed(1) + "%" : "–"),
        el("td", { class: "num" }, usage ? fmtBytes(usage.rss_bytes) : "–"),
        el("td", {}, el("button", { type: "button", id: `restart-${i.replica}`, onclick: () => restart(tier.name, i.replica) }, "Restart")),
      );
    });
    const links = overview.status.links;
    const table = (caption, heads, rows) =>
      el(
        "table",
        {},
        el("caption", {}, caption),
        el("thead", {}, el("tr", {}, heads.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: heads.length, class: "muted" }, "none"))),
      );
    const linkHeads = ["from", "to", "link", "kind", "requests", "rate", "errors", "p99", "queue · bytes"];
    const parts = [
      el("p", {}, el("a", { href: "#/graph" }, "← graph")),
      el(
        "h2",
        {},
        tier.name,
        " ",
        el("span", { class: "pill " + tierState(tier) }, tierState(tier)),
        el("span", { class: "muted" }, ` ${tier.plugin} ${tier.plugin_version} · ${tier.origin}`),
      ),
      el(
        "p",
        {},
        tier.listen ? `listens on ${tier.listen}` : "no listener",
        listener ? ` · ${fmtRate(listener.rate)}, ${fmtPct(listener.error_rate)} errors, p99 ${fmtMs(listener.p99_ms)}` : "",
        ` · generation ${tier.generation} `,
        el("button", { type: "button", id: "restart-tier", onclick: () => restart(tier.name) }, "Restart tier"),
        " ",
        el("span", { id: "restart-result", role: "status" }, ($("#restart-result") || {}).textContent || ""),
      ),
      table(
        "Replicas",
        ["replica", "state", "pid", "uptime", "restarts", "last exit", "probe", "CPU", "memory", ""],
        replicas,
      ),
      table("Links in", linkHeads, links.filter((l) => l.to === tier.name).map(linkRow)),
      table("Links out", linkHeads, links.filter((l) => l.from === tier.name).map(linkRow)),
    ];
    const broker = brokerOf(tier);
    if (broker) {
      const topics = [...asMap(broker.topics)].map(([topic, t]) =>
        el(
          "tr",
          {},
          el("td", {}, topic),
          el("td", { class: "num" }, t.depth),
          el("td", { class: "num" }, t.in_flight),
          el("td", { class: "num" }, t.published),
          el("td", { class: "num" }, t.delivered),
          el("td", { class: "num" }, t.redelivered),
          el("td", { class: "num" }, t.dead_lettered),
          el(
            "td",
            {},
            (t.last_dead_letters || []).length
              ? el("ul", { class: "plain" }, t.last_dead_letters.map((d) => el("li", {}, `${d.id} after ${d.attempts}: ${d.reason}`)))
              : "–",
          ),
        ),
      );
      parts.push(
        table(
          `Topics${broker.durable ? " (durable: " + broker.store + ")" : ""}`,
          ["topic", "depth", "in flight", "published", "delivered", "redelivered", "dead letters", "last dead letters"],
          topics,
        ),
      );
    }
    view.replaceChildren(...parts);
    if (focused && document.getElementById(focused)) document.getElementById(focused).focus();
  }

  // ---- Reloads -------------------------------------------------------------

  /** A located error, as the terminal shows it: where, what, the line, a caret, the hint. */
  function diagnostic(e) {
    const where = [e.file, e.line, e.column].filter((x) => x !== null && x !== undefined).join(":");
    const lines = [`${where}: ${e.path ? e.path + ": " : ""}${e.message}`];
    if (e.source_line !== null && e.source_line !== undefined && e.line) {
      const gutter = String(e.line);
      lines.push(`${" ".repeat(gutter.length)} |`);
      lines.push(`${gutter} | ${e.source_line}`);
      lines.push(`${" ".repeat(gutter.length)} | ${" ".repeat(Math.max(0, (e.column || 1) - 1))}^`);
    }
    if (e.hint) lines.push(`help: ${e.hint}`);
    return el("pre", { class: "diagnostic" }, lines.join("\n"));
  }

  function changes(c) {
    if (!c) return "";
    const parts = [];
    if (c.added.length) parts.push("added " + c.added.join(", "));
    if (c.replaced.length) parts.push("replaced " + c.replaced.join(", "));
    if (c.scaled.length) parts.push("scaled " + c.scaled.join(", "));
    if (c.removed.length) parts.push("removed " + c.removed.join(", "));
    if (c.links_changed) parts.push("links changed");
    return parts.join("; ");
  }

  function renderReloads() {
    const history = overview.status.reload_history || [];
    const items = history
      .slice()
      .reverse()
      .map((r) =>
        el(
          "li",
          { class: "reload " + r.outcome, "data-outcome": r.outcome },
          el(
            "p",
            {},
            el("span", { class: "pill " + r.outcome }, r.outcome),
            ` ${new Date(r.at).toLocaleTimeString()} · ${r.trigger} · ${r.duration_ms.toFixed(0)} ms · generation ${r.generation}`,
            r.outcome === "applied" ? " · " + (changes(r.changes) || r.summary) : "",
          ),
          r.outcome === "failed" && r.errors.length ? r.errors.map(diagnostic) : null,
          r.outcome === "failed" && !r.errors.length && r.error ? el("pre", { class: "diagnostic" }, r.error) : null,
        ),
      );
    $("#reloads").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "No reload yet: save the topology file, or run `orchestrator reload`.")]));
  }

  // ---- Logs ----------------------------------------------------------------

  const MAX_LOG_LINES = 2000;
  let logs = null;
  let logKey = "";
  let logTiers = "";

  function selectedTiers() {
    return [...document.querySelectorAll("#log-tiers input:checked")].map((i) => i.value);
  }

  function renderLogFilter() {
    const names = ["orchestrator", ...overview.status.tiers.map((t) => t.name)];
    const key = names.join(",");
    if (key === logTiers) return;
    logTiers = key;
    const was = new Set(selectedTiers());
    const boxes = names.map((name) =>
      el("label", {}, el("input", { type: "checkbox", value: name, checked: was.has(name), onchange: followLogs }), " " + name),
    );
    $("#log-tiers").replaceChildren(el("legend", {}, "Tiers (none: all)"), ...boxes);
  }

  function logColumn(title) {
    const id = "log-col-" + title.replace(/[^A-Za-z0-9_-]/g, "_");
    let col = document.getElementById(id);
    if (!col) {
      col = el("div", { class: "log-column", id, "data-tier": title }, el("h3", {}, title), el("div", { class: "log-lines", tabindex: 0, role: "log" }));
      $("#log-columns").append(col);
    }
    return col.querySelector(".log-lines");
  }

  function appendLine(line) {
    const tier = line.tier ?? "orchestrator";
    const side = $("#log-side").checked;
    const target = logColumn(side ? tier : "all");
    const who = line.tier ? line.tier + (line.replica === null || line.replica === undefined ? "" : "." + line.replica) : "orchestrator";
    const row = el(
      "div",
      { class: `line level-${line.level}${line.stream === "stderr" ? " stderr" : ""}`, "data-tier": tier },
      el("time", { datetime: line.time }, line.time.slice(11, 23)),
      " ",
      el("span", { class: "who" }, who),
      " ",
      line.stream === "stderr" ? el("span", { class: "stream", title: "the program's standard error" }, "stderr") : null,
      line.stream === "stderr" ? " " : null,
      el("span", { class: "message" }, line.message),
    );
    const stick = target.scrollTop + target.clientHeight >= target.scrollHeight - 4;
    target.append(row);
    while (target.childElementCount > MAX_LOG_LINES) target.firstElementChild.remove();
    if (stick) target.scrollTop = target.scrollHeight;
  }

  async function followLogs() {
    const tiers = selectedTiers();
    const grep = $("#log-grep").value;
    const side = $("#log-side").checked;
    const key = JSON.stringify([tiers, grep, side]);
    if (key === logKey && logs) return;
    logKey = key;
    if (logs) logs.close();
    logs = null;
    $("#log-columns").replaceChildren();
    $("#log-columns").classList.toggle("side", side);
    if (side) for (const t of tiers) logColumn(t);
    const q = new URLSearchParams({ follow: "true", limit: "500" });
    if (tiers.length) q.set("tiers", tiers.join(","));
    if (grep) q.set("grep", grep);
    // A bad pattern is told apart: the stream would only fail.
    const check = await fetch("/admin/logs?" + new URLSearchParams({ limit: "0", grep }));
    if (!check.ok) {
      const body = await check.json().catch(() => ({}));
      $("#log-error").textContent = body.error || `HTTP ${check.status}`;
      return;
    }
    $("#log-error").textContent = "";
    if (key !== logKey) return;
    logs = new EventSource("/admin/logs?" + q);
    logs.addEventListener("line", (e) => appendLine(JSON.parse(e.data)));
    logs.addEventListener("skipped", (e) => {
      const n = JSON.parse(e.data).skipped;
      appendLine({ time: new Date().toISOString(), level: "WARN", message: `… ${n} lines skipped (this view fell behind)` });
    });
  }

  let grepTimer = null;
  $("#log-grep").addEventListener("input", () => {
    clearTimeout(grepTimer);
    grepTimer = setTimeout(followLogs, 250);
  });
  $("#log-side").addEventListener("change", followLogs);
  $("#log-filter").addEventListener("submit", (e) => e.preventDefault());

  // ---- Views and the live connection -----------------------------------------

  function route() {
    const hash = location.hash || "#/graph";
    const [, view, arg] = hash.split("/");
    return { view: ["graph", "tier", "logs", "reloads"].includes(view) ? view : "graph", arg: arg && decodeURIComponent(arg) };
  }

  function render() {
    if (!overview) return;
    const s = overview.status;
    $("#topology").textContent = s.name;
    $("#generation").textContent = `generation ${s.generation} · ${s.state} · ${s.file}`;
    document.title = `${s.name} · orchestrator`;
    const last = s.last_reload;
    const badge = $("#reload-badge");
    badge.hidden = !(last && last.outcome === "failed");
    badge.textContent = "failed";
    const { view, arg } = route();
    for (const v of ["graph", "tier", "logs", "reloads"]) $("#view-" + v).hidden = v !== view;
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.view === view) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    if (view === "graph") renderGraph();
    if (view === "tier") renderTier(arg);
    if (view === "reloads") renderReloads();
    if (view === "logs") {
      renderLogFilter();
      followLogs();
    }
  }

  window.addEventListener("hashchange", render);

  function setConnection(text, ok) {
    const c = $("#connection");
    c.textContent = text;
    c.classList.toggle("live", Boolean(ok));
  }

  let events = null;
  function connect() {
    if (events) events.close();
    events = new EventSource("/admin/events");
    events.addEventListener("overview", (e) => {
      setConnection("live", true);
      $("#login").hidden = true;
      overview = JSON.parse(e.data);
      $("#logout").hidden = !overview.session;
      render();
    });
    events.addEventListener("error", () => {
      setConnection("reconnecting…", false);
      // EventSource retries by itself after a dropped connection; not after
      // a refusal (an answer other than a stream), which may ask for the token.
      if (events.readyState === EventSource.CLOSED) setTimeout(checkAccess, 1000);
    });
  }

  /** Whether the page may read the overview (or must ask for the token); then connects. */
  async function checkAccess() {
    try {
      const resp = await fetch("/admin/overview");
      if (resp.status === 401) {
        setConnection("signed out", false);
        $("#login").hidden = false;
        $("#token").focus();
        return;
      }
    } catch {
      // Not reachable yet: try again.
    }
    connect();
  }

  $("#login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const resp = await fetch("/admin/login", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: $("#token").value }),
    });
    if (resp.ok) {
      $("#login-error").textContent = "";
      $("#login").hidden = true;
      connect();
    } else {
      $("#login-error").textContent = "That is not the token.";
    }
  });

  $("#logout").addEventListener("click", async () => {
    await fetch("/admin/logout", { method: "POST" });
    if (events) events.close();
    $("#logout").hidden = true;
    setConnection("signed out", false);
    $("#login").hidden = false;
    $("#token").focus();
  });

  checkAccess();
})();
