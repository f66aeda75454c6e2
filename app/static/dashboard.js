// delayq dashboard: polls this worker's API and draws the page. No framework, no build step.
// Every value from the server is written with textContent (never parsed as HTML).
"use strict";

(() => {
  const LIVE_MS = 2000;
  const SLOW_MS = 5000;
  const PALETTE = ["#2f6fdf", "#1a9a74", "#c2571a", "#8a4fd3", "#c8375f", "#2d8fb3", "#8a7a12", "#5b6b80"];

  const $ = (id) => document.getElementById(id);
  const nf = new Intl.NumberFormat();
  const nf1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  const state = {
    skewMs: 0, // server clock minus browser clock
    prevCounters: null,
    firedHistory: [],
    cluster: null,
    colors: new Map(),
    jobs: { stack: [null], index: 0, limit: 25, from: null },
    lookup: null,
    banners: new Map(),
  };

  // --- helpers ---------------------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "text") el.textContent = value;
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const serverNow = () => Date.now() + state.skewMs;

  const DAY_MS = 86400000;
  const YEAR_MS = 365.25 * DAY_MS;

  // Compact: at most two units, one from ten days on ("3d 4h", "12d", "1.5y", "57y").
  function fmtDuration(ms) {
    if (ms === null || ms === undefined) return "–";
    const neg = ms < 0;
    let rest = Math.abs(Math.round(ms));
    let out;
    if (rest < 1000) out = `${rest}ms`;
    else if (rest < 10000) out = `${nf1.format(rest / 1000)}s`;
    else if (rest >= YEAR_MS) out = `${rest < 10 * YEAR_MS ? nf1.format(rest / YEAR_MS) : nf.format(Math.round(rest / YEAR_MS))}y`;
    else if (rest >= 10 * DAY_MS) out = `${nf.format(Math.round(rest / DAY_MS))}d`;
    else {
      const units = [["d", 86400000], ["h", 3600000], ["m", 60000], ["s", 1000]];
      const parts = [];
      for (const [unit, size] of units) {
        const count = Math.floor(rest / size);
        if (count || parts.length) parts.push(`${count}${unit}`);
        rest -= count * size;
        if (parts.length === 2) break;
      }
      out = parts.filter((p) => !/^0/.test(p) || parts.length === 1).join(" ") || "0s";
    }
    return neg ? `-${out}` : out;
  }

  function relative(dueMs) {
    const delta = dueMs - serverNow();
    if (Math.abs(delta) < 1000) return "now";
    return delta > 0 ? `in ${fmtDuration(delta)}` : `${fmtDuration(-delta)} ago`;
  }

  const pad = (n) => String(n).padStart(2, "0");
  const hhmm = (d) => `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  const hhmmss = (d) => `${hhmm(d)}:${pad(d.getSeconds())}`;
  const weekday = (d) => d.toLocaleDateString(undefined, { weekday: "short" });

  function when(ms) {
    const d = new Date(ms);
    const today = new Date(serverNow());
    if (d.toDateString() === today.toDateString()) return hhmmss(d);
    return `${d.toLocaleDateString(undefined, { month: "short", day: "numeric" })} ${hhmmss(d)}`;
  }

  function fmtBytes(n) {
    if (n === null || n === undefined) return "null";
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${nf1.format(n / 1024)} KiB`;
    return `${nf1.format(n / 1048576)} MiB`;
  }

  function fmtRate(perSecond) {
    if (perSecond === null) return "–";
    if (perSecond === 0) return "0";
    return perSecond < 10 ? nf1.format(perSecond) : nf.format(Math.round(perSecond));
  }

  // "3m 20s" -> 3<small>m</small> 20<small>s</small>, so that durations fit the figure cards.
  function unitized(text) {
    const parts = [];
    let last = 0;
    for (const m of text.matchAll(/([\d.,]+)\s?(ms|[ydhms])\b/g)) {
      parts.push(text.slice(last, m.index), m[1], h("small", { class: "u", text: m[2] }));
      last = m.index + m[0].length;
    }
    parts.push(text.slice(last));
    return parts.filter((p) => p !== "");
  }

  // The tooltip gives the figure in full (the card may cut it short): ``tip``, else the text.
  function setValue(id, raw, text, cls, tip) {
    const el = $(id);
    el.dataset.value = raw === null || raw === undefined ? "" : String(raw);
    el.replaceChildren(...unitized(text));
    el.title = tip || text;
    if (cls !== undefined) {
      el.classList.remove("good", "warn", "bad");
      if (cls) el.classList.add(cls);
    }
  }

  async function call(method, path, { timeoutMs = 8000, headers = {} } = {}) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const res = await fetch(path, {
        method,
        headers: { Accept: "application/json", ...headers },
        signal: controller.signal,
        cache: "no-store",
      });
      const text = await res.text();
      let body = null;
      try {
        body = text ? JSON.parse(text) : null;
      } catch {
        body = { message: text.slice(0, 200) };
      }
      return { status: res.status, body };
    } catch (err) {
      const message = err.name === "AbortError" ? "the worker did not answer in time" : "cannot reach the worker";
      return { status: 0, body: { message } };
    } finally {
      clearTimeout(timer);
    }
  }

  const messageOf = (res) => (res.body && res.body.message) || `HTTP ${res.status}`;

  function banner(source, message) {
    if (message) state.banners.set(source, message);
    else state.banners.delete(source);
    const el = $("banner");
    el.hidden = state.banners.size === 0;
    el.textContent = [...state.banners.values()].join(" · ");
  }

  // Runs fn now and then every ms after it finishes; run.now() refreshes at once.
  function every(ms, fn) {
    let timer = null;
    let seq = 0;
    const run = async () => {
      clearTimeout(timer);
      const mine = ++seq;
      try {
        await fn(() => mine === seq);
      } catch (err) {
        console.error(err);
      }
      if (mine === seq) timer = setTimeout(run, ms);
    };
    run();
    return { now: run };
  }

  const norm = (url) => String(url || "").replace(/\/+$/, "").toLowerCase();

  function colorOf(url) {
    const key = norm(url);
    if (!state.colors.has(key)) state.colors.set(key, PALETTE[state.colors.size % PALETTE.length]);
    return state.colors.get(key);
  }

  // --- live figures and the cluster ----------------------------------------------------------

  function rates(workers) {
    const now = performance.now();
    const sums = { fired: 0, cancelled: 0, dead_lettered: 0 };
    const prev = state.prevCounters;
    let result = null;
    if (prev && now > prev.t) {
      for (const w of workers) {
        const before = prev.byWorker.get(norm(w.worker));
        if (!before) continue;
        for (const name of Object.keys(sums)) {
          const delta = w.counters[name] - before[name];
          sums[name] += delta >= 0 ? delta : w.counters[name]; // restarted: counted from zero
        }
      }
      const seconds = (now - prev.t) / 1000;
      result = Object.fromEntries(Object.entries(sums).map(([k, v]) => [k, v / seconds]));
    }
    state.prevCounters = { t: now, byWorker: new Map(workers.map((w) => [norm(w.worker), w.counters])) };
    return result;
  }

  function spark(values) {
    const box = $("fired-spark");
    box.replaceChildren();
    if (values.length < 2) return;
    const max = Math.max(1, ...values);
    const step = 100 / (values.length - 1);
    const pts = values.map((v, i) => `${(i * step).toFixed(2)},${(30 - (v / max) * 28).toFixed(2)}`);
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 100 30");
    svg.setAttribute("preserveAspectRatio", "none");
    const area = document.createElementNS(ns, "polygon");
    area.setAttribute("points", `0,30 ${pts.join(" ")} 100,30`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", pts.join(" "));
    svg.append(area, line);
    box.append(svg);
  }

  function renderFigures(res) {
    const kpis = document.querySelector(".kpis");
    state.statsStale = res.status !== 200;
    if (res.status !== 200) {
      kpis.classList.add("stale");
      state.prevCounters = null;
      banner("stats", `Figures paused: ${messageOf(res)}`);
      return;
    }
    kpis.classList.remove("stale");
    banner("stats", null);
    const { workers, total } = res.body;
    state.statsByWorker = new Map(workers.map((w) => [norm(w.worker), w]));

    setValue("pending", total.pending, nf.format(total.pending));
    $("pending-sub").textContent = `${nf.format(total.counters.scheduled)} scheduled since start`;

    const r = rates(workers);
    setValue("fired-rate", r ? r.fired : null, fmtRate(r ? r.fired : null));
    setValue("cancelled-rate", r ? r.cancelled : null, fmtRate(r ? r.cancelled : null));
    setValue("dead-rate", r ? r.dead_lettered : null, fmtRate(r ? r.dead_lettered : null), r && r.dead_lettered > 0 ? "bad" : "");
    setValue("fired-total", total.counters.fired, nf.format(total.counters.fired));
    setValue("cancelled-total", total.counters.cancelled, nf.format(total.counters.cancelled));
    setValue("dead-total", total.counters.dead_lettered, nf.format(total.counters.dead_lettered));
    if (r) {
      state.firedHistory.push(r.fired);
      if (state.firedHistory.length > 60) state.firedHistory.shift();
      spark(state.firedHistory);
    }

    const sampled = workers.filter((w) => w.lateness_ms.samples > 0);
    const lateness = $("lateness");
    if (sampled.length) {
      const p50 = Math.max(...sampled.map((w) => w.lateness_ms.p50));
      const p99 = Math.max(...sampled.map((w) => w.lateness_ms.p99));
      const samples = sampled.reduce((n, w) => n + w.lateness_ms.samples, 0);
      lateness.dataset.p50 = String(p50);
      lateness.dataset.p99 = String(p99);
      const part = (ms) => h("span", { class: "part" }, ...unitized(fmtDuration(ms)));
      lateness.replaceChildren(part(p50), " / ", part(p99));
      lateness.classList.add("parts");
      lateness.title = `p50 ${nf.format(p50)} ms · p99 ${nf.format(p99)} ms`;
      lateness.classList.toggle("warn", p99 >= 1000);
      const who = workers.length > 1 ? `worst of ${workers.length} workers, ` : "";
      $("lateness-sub").textContent = `${who}last ${nf.format(samples)} forwards`;
    } else {
      lateness.dataset.p50 = lateness.dataset.p99 = "";
      lateness.textContent = "–";
      lateness.title = "";
      $("lateness-sub").textContent = "no forwards yet";
    }
    const pastDue = total.counters.arrived_past_due;
    setValue("past-due", pastDue, pastDue === undefined ? "–" : nf.format(pastDue));

    const overdue = total.oldest_overdue_ms;
    setValue("overdue", overdue, overdue > 0 ? fmtDuration(overdue) : "none", overdue >= 60000 ? "bad" : overdue >= 1000 ? "warn" : "good", overdue > 0 ? `${nf.format(overdue)} ms` : "");
    $("overdue-sub").textContent = overdue > 0 ? "due, not yet forwarded" : "nothing waiting past its time";
    const guardLag = total.guard_lag_ms;
    setValue("guard-lag", guardLag, guardLag === undefined ? "–" : guardLag > 0 ? `holding ${fmtDuration(guardLag)}` : "caught up", guardLag >= 1000 ? "warn" : "");
  }

  function clusterState(res) {
    if (res.status !== 200) return ["bad", "unreachable"];
    const { workers, unowned } = res.body;
    const statuses = workers.map((w) => w.status);
    const count = `${workers.length} worker${workers.length === 1 ? "" : "s"}`;
    if (statuses.includes("unreachable")) return ["bad", `degraded · ${count}`];
    if (statuses.includes("rebalancing")) return ["warn", `rebalancing · ${count}`];
    if (statuses.includes("recovering")) return ["warn", `recovering · ${count}`];
    if (unowned.length) return ["warn", `${unowned.length} partition(s) unowned`];
    if ((res.body.warnings || []).length) return ["warn", `standby missing · ${count}`];
    return ["ok", `healthy · ${count}`];
  }

  function recoveryText(node) {
    const rec = node.recovery;
    if (node.status === "unreachable") return [node.error || "no answer", "bad"];
    if (!rec) return ["–", ""];
    if (!rec.actives_ready) {
      const left = rec.active_remaining ? `${nf.format(rec.active_remaining)} records left` : "starting";
      return [`recovering actives: ${left}`, "warn"];
    }
    if (rec.standby_remaining) return [`standbys ${nf.format(rec.standby_remaining)} records behind`, "warn"];
    if (!rec.standbys_ready && node.standby_partitions.length) return ["standbys catching up", "warn"];
    return ["up to date", "ok"];
  }

  const chips = (parts, cls) =>
    parts.length ? h("div", { class: "chips" }, parts.map((p) => h("span", { class: `chip ${cls}`, text: p }))) : h("span", { class: "muted", text: "none" });

  function renderCluster(res) {
    const [kind, text] = clusterState(res);
    const pill = $("cluster-state");
    pill.dataset.state = kind;
    pill.textContent = text;
    if (res.status !== 200) {
      banner("cluster", `This worker does not answer: ${messageOf(res)}`);
      return;
    }
    banner("cluster", null);
    const cl = res.body;
    state.cluster = cl;
    state.skewMs = cl.now_ms - Date.now();
    $("via").textContent = cl.self;
    for (const node of cl.workers) colorOf(node.worker);

    const standbyOf = new Map();
    for (const node of cl.workers) for (const p of node.standby_partitions || []) {
      if (!standbyOf.has(p)) standbyOf.set(p, []);
      standbyOf.get(p).push(node.worker);
    }
    const map = $("partition-map");
    map.replaceChildren();
    for (let p = 0; p < cl.partitions; p++) {
      const owner = cl.owners[String(p)];
      const standby = standbyOf.get(p) || [];
      const title = owner
        ? `partition ${p}: active on ${owner}${standby.length ? `, standby on ${standby.join(", ")}` : ""}`
        : `partition ${p}: no owner (rebalance in progress)`;
      const cell = h("span", { class: owner ? "partition" : "partition unowned", title, "data-partition": p, "data-owner": owner || "" }, String(p));
      if (owner) cell.style.background = colorOf(owner);
      map.append(cell);
    }
    const replicas = cl.standby_replicas;
    $("workers-hint").textContent = `${cl.partitions} partitions · ${replicas} standby replica${replicas === 1 ? "" : "s"}`;
    // Partitions short of standby copies: degraded, not down (fail-over restores them first).
    const warning = $("standby-warning");
    const warnings = cl.warnings || [];
    warning.hidden = warnings.length === 0;
    warning.textContent = warnings.join(" · ");
    warning.dataset.partitions = (cl.without_standby || []).join(",");

    const body = $("workers-table").tBodies[0];
    body.replaceChildren();
    for (const node of cl.workers) {
      const stats = (state.statsByWorker || new Map()).get(norm(node.worker));
      const [recovery, recoveryClass] = recoveryText(node);
      const statusClass = node.status === "ok" ? "ok" : node.status === "unreachable" ? "bad" : "warn";
      const swatch = h("span", { class: "swatch" });
      swatch.style.background = colorOf(node.worker);
      const stale = state.statsStale ? " muted" : "";
      const lat = stats && stats.lateness_ms.samples ? `${fmtDuration(stats.lateness_ms.p50)} / ${fmtDuration(stats.lateness_ms.p99)}` : "–";
      body.append(
        h(
          "tr",
          { "data-worker": node.worker, "data-status": node.status },
          h("td", { class: "wrap" }, swatch, node.worker, norm(node.worker) === norm(cl.self) ? h("span", { class: "badge you", text: "this one" }) : null),
          h("td", {}, h("span", { class: `badge ${statusClass}`, text: node.status })),
          h("td", { class: "active", "data-label": "active" }, chips(node.active_partitions, "")),
          h("td", { class: "standby", "data-label": "standby" }, chips(node.standby_partitions, "standby")),
          h("td", { class: `num${stale}`, "data-label": "pending" }, stats ? nf.format(stats.pending) : "–"),
          h("td", { class: `num nowrap${stale}`, "data-label": "lateness" }, lat),
          h("td", { class: "span" }, h("span", { class: `badge wrap ${recoveryClass}`, text: recovery })),
        ),
      );
    }
  }

  async function refreshLive(current) {
    const [stats, cluster] = await Promise.all([call("GET", "/stats?cluster=1"), call("GET", "/dashboard/api/cluster")]);
    if (!current()) return;
    renderFigures(stats);
    renderCluster(cluster);
    const updated = $("updated");
    updated.textContent = hhmmss(new Date());
    updated.dateTime = new Date().toISOString();
  }

  // --- timeline ---------------------------------------------------------------------------

  function niceMax(value) {
    if (value <= 0) return 0;
    const exp = Math.pow(10, Math.floor(Math.log10(value)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= value) return m * exp;
    return 10 * exp;
  }

  function drawChart(box, counts, startMs, bucketMs, labels) {
    const peak = Math.max(0, ...counts);
    const top = niceMax(peak);
    const plot = h("div", { class: "plot", role: "group" });
    for (const [frac, text] of [[0, top], [0.5, top / 2], [1, 0]]) {
      if (top === 0 && frac < 1) continue;
      if (!Number.isInteger(text)) continue;
      const y = h("span", { class: "y", text: nf.format(text) });
      y.style.top = `${frac * 100}%`;
      plot.append(y);
    }
    counts.forEach((count, i) => {
      const start = startMs + i * bucketMs;
      const range = `${labels.tip(new Date(start))}–${hhmm(new Date(start + bucketMs))}`;
      const tip = `${range}: ${nf.format(count)} job${count === 1 ? "" : "s"}`;
      const bar = h("button", {
        type: "button",
        class: `bar${count === 0 ? " zero" : ""}${count > 0 && count === peak ? " peak" : ""}`,
        title: tip,
        "aria-label": tip,
        tabindex: "-1",
        "data-count": count,
        "data-start": start,
        onclick: () => count > 0 && listFrom(start),
      });
      bar.style.height = top ? `${(count / top) * 100}%` : "0";
      plot.append(bar);
    });
    counts.forEach((_count, i) => {
      const text = labels.at(i, new Date(startMs + i * bucketMs));
      if (!text) return;
      const x = h("span", { class: `x ${text.kind}${i === 0 ? " first" : ""}`, text: text.text });
      x.style.left = `${(i / counts.length) * 100}%`;
      plot.append(x);
    });
    if (peak === 0) plot.append(h("span", { class: "nothing", text: "nothing due" }));
    box.replaceChildren(plot);
    box.dataset.total = String(counts.reduce((a, b) => a + b, 0));
    return peak;
  }

  // Ticks at round local times: every 5 minutes (15 on a phone), every 6 hours (a day on a phone).
  const minuteLabels = {
    tip: hhmm,
    at: (i, d) => {
      if (i === 0) return { text: "now", kind: "major" };
      if (i < 4 || d.getMinutes() % 5) return null;
      return { text: hhmm(d), kind: i < 12 || d.getMinutes() % 15 ? "minor" : "major" };
    },
  };
  const hourLabels = {
    tip: (d) => `${weekday(d)} ${hhmm(d)}`,
    at: (i, d) => {
      if (i === 0) return { text: "now", kind: "major" };
      if (i < 4 || d.getHours() % 6) return null;
      if (d.getHours() === 0) return { text: `${weekday(d)} ${d.getDate()}`, kind: i < 12 ? "minor" : "major" };
      return { text: hhmm(d), kind: "minor" };
    },
  };

  function peakText(counts, startMs, bucketMs, fmt) {
    const peak = Math.max(0, ...counts);
    if (!peak) return "";
    const i = counts.indexOf(peak);
    return `peak ${nf.format(peak)} at ${fmt(new Date(startMs + i * bucketMs))}`;
  }

  function renderTimeline(res) {
    if (res.status !== 200) {
      $("timeline-note").hidden = false;
      $("timeline-note").textContent = `Not updated: ${messageOf(res)}`;
      return;
    }
    const tl = res.body;
    const firstHour = tl.minute_start_ms; // the hour chart starts at the current minute
    drawChart($("chart-minutes"), tl.minutes, tl.minute_start_ms, tl.minute_ms, minuteLabels);
    drawChart($("chart-hours"), tl.hours, tl.hour_start_ms, tl.hour_ms, hourLabels);
    $("peak-minutes").textContent = peakText(tl.minutes, tl.minute_start_ms, tl.minute_ms, hhmm);
    $("peak-hours").textContent = peakText(tl.hours, tl.hour_start_ms, tl.hour_ms, hourLabels.tip);
    const sum = (xs) => xs.reduce((a, b) => a + b, 0);
    const lower = tl.complete ? "" : "≥ ";
    setValue("tl-overdue", tl.overdue, lower + nf.format(tl.overdue), tl.overdue > 0 ? "warn" : "");
    setValue("tl-hour", sum(tl.minutes), lower + nf.format(sum(tl.minutes)));
    setValue("tl-days", sum(tl.hours), lower + nf.format(sum(tl.hours)));
    setValue("tl-later", tl.later, tl.later === null ? "–" : nf.format(tl.later));
    const note = $("timeline-note");
    note.hidden = tl.complete;
    note.textContent = tl.complete ? "" : "Partial counts: too many jobs to count them all in one refresh (figures are lower bounds).";
    $("chart-hours").dataset.from = String(firstHour);
  }

  async function refreshTimeline(current) {
    const res = await call("GET", "/dashboard/api/timeline");
    if (current()) renderTimeline(res);
  }

  // --- dead letters -------------------------------------------------------------------------

  function keyCell(text, b64) {
    if (text !== null && text !== undefined) return h("code", { text });
    if (b64) return h("span", {}, h("span", { class: "muted", text: "base64 " }), h("code", { text: b64 }));
    return h("span", { class: "muted", text: "(no key)" });
  }

  function renderDeadLetters(res) {
    if (res.status !== 200) {
      $("dead-hint").textContent = `not updated: ${messageOf(res)}`;
      return;
    }
    const { dead_letters: letters, total } = res.body;
    $("dead-hint").textContent = total ? `${nf.format(total)} since the workers started` : "";
    const body = $("dead-letters").tBodies[0];
    body.replaceChildren(
      ...letters.map((d) =>
        h(
          "tr",
          { title: `on ${d.worker} at ${d.at}` },
          h("td", { class: "nowrap" }, when(d.at_ms), " ", h("span", { class: "muted", "data-due": d.at_ms, text: relative(d.at_ms) })),
          h("td", { class: "key" }, keyCell(d.key, d.key_base64)),
          h("td", { class: "reason span", text: d.reason }),
        ),
      ),
    );
    $("dead-empty").hidden = letters.length > 0;
    $("dead-letters").hidden = letters.length === 0;
  }

  async function refreshDeadLetters(current) {
    const res = await call("GET", "/dashboard/api/dead-letters");
    if (current()) renderDeadLetters(res);
  }

  // --- the earliest pending jobs --------------------------------------------------------------

  const statusBadge = (status) => h("span", { class: `badge ${status === "pending" ? "" : "warn"}`, text: status.replace("_", " ") });

  // A recurring job's rule in words, marked as such (null for a one-shot job).
  const ruleLine = (rule) =>
    rule ? h("div", { class: "rule", title: rule.description }, h("span", { class: "badge recurring", text: "recurring" }), " ", rule.description) : null;

  // The rule in words (its end included), and a cron rule as given, with its zone.
  function ruleDetails(rule) {
    const given = rule.cron !== null ? [h("br"), h("span", { class: "muted mono", text: `${rule.cron} · ${rule.timezone}` })] : [];
    return h("span", {}, rule.description, given);
  }

  function renderJobs(res) {
    const jobs = state.jobs;
    const body = $("jobs-table").tBodies[0];
    if (res.status !== 200) {
      $("jobs-empty").hidden = false;
      $("jobs-empty").textContent = `Not updated: ${messageOf(res)}`;
      return;
    }
    const page = res.body;
    body.replaceChildren(
      ...page.jobs.map((job) => {
        const idCell = job.id !== null
          ? h("button", { type: "button", class: "link mono", text: job.id, onclick: () => lookup(job.id, true) })
          : keyCell(null, job.id_base64);
        return h(
          "tr",
          { "data-id": job.id ?? "", "data-due": job.due_ms, "data-recurring": job.rule ? "true" : null },
          h("td", { class: "nowrap", title: job.due_at }, when(job.due_ms)),
          h("td", { class: "nowrap rel", "data-due": job.due_ms, text: relative(job.due_ms) }),
          h("td", { class: "id" }, idCell, ruleLine(job.rule)),
          h("td", { class: "wrap mono span target", "data-label": "→", text: job.target }),
          h("td", { class: "state" }, statusBadge(job.status)),
          h("td", { class: "opt num", text: job.partition }),
          h("td", { class: "opt num nowrap", text: fmtBytes(job.value_bytes) }),
        );
      }),
    );
    jobs.next = page.next;
    $("jobs-empty").hidden = page.jobs.length > 0;
    $("jobs-empty").textContent = jobs.index === 0 && !jobs.from ? "No pending jobs." : "No pending jobs here.";
    $("jobs-prev").disabled = jobs.index === 0;
    $("jobs-next").disabled = !page.next;
    const from = jobs.from ? ` · from ${when(jobs.from)}` : "";
    $("jobs-page").textContent = `page ${jobs.index + 1}${from}`;
    $("jobs-from-clear").hidden = !jobs.from;
  }

  async function refreshJobs(current) {
    const jobs = state.jobs;
    const query = new URLSearchParams({ limit: String(jobs.limit) });
    const after = jobs.stack[jobs.index];
    if (after) query.set("after", after);
    const res = await call("GET", `/dashboard/api/jobs?${query}`);
    if (current()) renderJobs(res);
  }

  function listFrom(ms) {
    const jobs = state.jobs;
    jobs.from = ms;
    jobs.stack = [ms === null ? null : String(Math.max(0, Math.floor(ms)))];
    jobs.index = 0;
    if (ms !== null) {
      const d = new Date(ms);
      $("jobs-from").value = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${hhmmss(d)}`;
    } else {
      $("jobs-from").value = "";
    }
    loaders.jobs.now();
    if (ms !== null) scrollToCard("jobs-card");
  }

  // --- job lookup and cancel ----------------------------------------------------------------

  function showLookup(kind, ...children) {
    const box = $("lookup-result");
    box.dataset.state = kind;
    box.replaceChildren(...children.filter(Boolean));
  }

  const message = (cls, text) => h("p", { class: `message ${cls}`, text });

  function valueView(text, b64, nullText) {
    if (text !== null && text !== undefined) {
      const shown = text.length > 4000 ? `${text.slice(0, 4000)}… (${nf.format(text.length)} characters)` : text;
      return h("pre", { text: shown });
    }
    if (b64) return h("div", {}, h("span", { class: "muted", text: "binary, base64:" }), h("pre", { text: b64.length > 4000 ? `${b64.slice(0, 4000)}…` : b64 }));
    return h("span", { class: "muted", text: nullText });
  }

  function renderJob(job, note) {
    state.lookup = job;
    const rows = [
      ["Id", h("code", { text: job.id ?? job.id_base64 })],
      ["State", statusBadge(job.status)],
      [job.rule ? "Next" : "Due", h("span", {}, when(job.due_ms), " · ", h("span", { "data-due": job.due_ms, class: "rel", text: relative(job.due_ms) }), h("br"), h("span", { class: "muted mono", text: job.due_at }))],
      job.rule ? ["Repeats", ruleDetails(job.rule)] : null,
      ["Target", h("code", { text: job.target })],
      ["Partition", String(job.partition)],
      ["Key", job.key === null && !job.key_base64 ? h("span", { class: "muted", text: "the job id" }) : keyCell(job.key, job.key_base64)],
      ["Value", valueView(job.value, job.value_base64, "null (a tombstone)")],
    ];
    if (job.headers.length) {
      rows.push(["Headers", h("div", {}, job.headers.map((hd) => h("div", {}, h("code", { text: hd.name }), ": ", hd.value ?? (hd.value_base64 ? `base64 ${hd.value_base64}` : "null"))))]);
    }
    const details = h("dl", { class: "details", id: "job-details" }, rows.filter(Boolean).map(([k, v]) => [h("dt", { text: k }), h("dd", {}, v)]));
    const cancel = h("button", { type: "button", class: "danger", id: "cancel-button", onclick: () => confirmCancel(job) }, job.rule ? "Cancel series…" : "Cancel job…");
    // A recurring job's series can be ended while an occurrence is in flight.
    if ((job.status !== "pending" && !job.rule) || job.id === null) cancel.disabled = true;
    const actions = h("div", { class: "actions" }, cancel, h("button", { type: "button", class: "ghost", onclick: () => lookup(job.id, false) }, "Refresh"));
    showLookup("found", note || null, details, actions);
  }

  async function lookup(id, scroll) {
    if (!id) return;
    $("lookup-id").value = id;
    showLookup("loading", h("p", { class: "muted", text: "Looking up…" }));
    if (scroll) scrollToCard("lookup-card");
    const res = await call("GET", `/jobs/${encodeURIComponent(id)}`);
    if (res.status === 200) renderJob(res.body);
    else if (res.status === 404) showLookup("missing", message("warn", `No pending job “${id}”: it was forwarded, cancelled, or never scheduled.`));
    else showLookup("error", message("bad", `Could not look it up: ${messageOf(res)}`));
  }

  function ask(dialog) {
    return new Promise((resolve) => {
      dialog.returnValue = "";
      dialog.addEventListener("close", () => resolve(dialog.returnValue), { once: true });
      dialog.showModal();
    });
  }

  const token = () => sessionStorage.getItem("delayq-token");
  const authHeaders = () => (token() ? { Authorization: `Bearer ${token()}` } : {});

  async function askToken() {
    $("token-input").value = "";
    const answer = await ask($("token-dialog"));
    const value = $("token-input").value.trim();
    if (answer !== "ok" || !value) return false;
    sessionStorage.setItem("delayq-token", value);
    return true;
  }

  const scrollToCard = (id) => {
    const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
    $(id).scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
  };

  const wait = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  async function confirmCancel(job) {
    $("cancel-job-id").textContent = job.id;
    $("cancel-job-target").textContent = job.target;
    if ((await ask($("cancel-dialog"))) !== "cancel") return;
    const path = `/jobs/${encodeURIComponent(job.id)}`;
    let res = await call("DELETE", path, { headers: authHeaders() });
    if (res.status === 401) {
      if (token()) sessionStorage.removeItem("delayq-token");
      if (!(await askToken())) {
        renderJob(job, message("bad", "Not cancelled: this cluster needs its API token."));
        return;
      }
      res = await call("DELETE", path, { headers: authHeaders() });
    }
    if (res.status === 401) return renderJob(job, message("bad", "Not cancelled: the token was refused."));
    if (res.status === 409) return renderJob({ ...job, status: "in_flight" }, message("warn", "Too late: the job was already forwarded."));
    if (res.status === 404) return showLookup("missing", message("warn", `Job “${job.id}” is no longer pending.`));
    if (res.status !== 202) return renderJob(job, message("bad", `Not cancelled: ${messageOf(res)}`));
    showLookup("cancelling", message("", `Cancel of “${job.id}” accepted; waiting for the worker to apply it…`));
    // The cancel is a record on the ingest topic: applied within moments by the partition's owner.
    for (let attempt = 0; attempt < 40; attempt++) {
      const check = await call("GET", path);
      if (check.status === 404) {
        showLookup("cancelled", message("ok", `Job “${job.id}” was cancelled.`));
        state.lookup = null;
        loaders.live.now();
        loaders.timeline.now();
        loaders.jobs.now();
        return;
      }
      await wait(Math.min(250 * (attempt + 1), 1000));
    }
    showLookup("error", message("warn", `The cancel of “${job.id}” was accepted but is not applied yet; refresh in a moment.`));
  }

  // --- wiring -------------------------------------------------------------------------------

  function tickRelative() {
    for (const el of document.querySelectorAll("[data-due].rel, td.rel, span[data-due]")) {
      el.textContent = relative(Number(el.dataset.due));
    }
  }

  let loaders = {};

  function start() {
    $("lookup-form").addEventListener("submit", (event) => {
      event.preventDefault();
      lookup($("lookup-id").value.trim(), false);
    });
    $("jobs-from-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("jobs-from").value;
      listFrom(value ? new Date(value).getTime() : null);
    });
    $("jobs-from-clear").addEventListener("click", () => listFrom(null));
    $("jobs-next").addEventListener("click", () => {
      const jobs = state.jobs;
      if (!jobs.next) return;
      jobs.stack = jobs.stack.slice(0, jobs.index + 1);
      jobs.stack.push(jobs.next);
      jobs.index += 1;
      loaders.jobs.now();
    });
    $("jobs-prev").addEventListener("click", () => {
      const jobs = state.jobs;
      if (jobs.index === 0) return;
      jobs.index -= 1;
      loaders.jobs.now();
    });
    $("jobs-limit").addEventListener("change", (event) => {
      state.jobs.limit = Number(event.target.value);
      listFrom(state.jobs.from);
    });
    loaders = {
      live: every(LIVE_MS, refreshLive),
      timeline: every(SLOW_MS, refreshTimeline),
      dead: every(SLOW_MS, refreshDeadLetters),
      jobs: every(SLOW_MS, refreshJobs),
    };
    setInterval(tickRelative, 1000);
    const fromUrl = new URLSearchParams(location.search).get("job");
    if (fromUrl) lookup(fromUrl, false);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
