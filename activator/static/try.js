// The "try it" form: post the inputs as JSON to the KO's KGrid 2.0 route and show the answer as it is:
// the result with its warnings, or each problem+json field error next to its field. No innerHTML anywhere:
// every text from the server goes in through textContent.
"use strict";

(function () {
  const form = document.getElementById("try-form");
  if (!form) return;
  const outputs = JSON.parse(form.dataset.outputs || "[]");
  const indicators = JSON.parse(form.dataset.indicators || "[]");
  const summary = document.getElementById("error-summary");
  const result = document.getElementById("result");

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function clearErrors() {
    summary.hidden = true;
    document.getElementById("error-detail").textContent = "";
    document.getElementById("error-list").replaceChildren();
    for (const node of form.querySelectorAll(".field-error")) {
      node.hidden = true;
      node.textContent = "";
    }
    for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
    for (const field of form.querySelectorAll(".field.has-error")) field.classList.remove("has-error");
  }

  function inputs() {
    const body = {};
    for (const field of form.querySelectorAll("[data-input]")) {
      const name = field.dataset.input;
      const text = field.value.trim();
      if (text === "") continue; // absent: the server names a missing required input, or applies the default
      let value = text;
      if (field.dataset.type === "boolean") value = text === "true";
      if (field.dataset.type === "number" || field.dataset.type === "integer") {
        const number = Number(text);
        value = Number.isFinite(number) ? number : text; // not a number: let the server say so, by field
      }
      const unit = form.querySelector('[data-unit-for="' + CSS.escape(name) + '"]');
      if (unit && unit.value !== unit.dataset.declared) value = { value: value, unit: unit.value };
      body[name] = value;
    }
    return body;
  }

  function percent(value) {
    const shown = value * 100;
    return (Math.abs(shown) < 1 ? shown.toFixed(2) : shown.toFixed(1)) + " %";
  }

  function interpret(name, value) {
    const notes = [];
    for (const rule of indicators) {
      if (rule.output !== name || typeof value !== "number") continue;
      let level = null;
      let threshold = null;
      if (rule.critical !== null && value >= rule.critical) { level = "critical"; threshold = rule.critical; }
      else if (rule.warning !== null && value >= rule.warning) { level = "warning"; threshold = rule.warning; }
      const known = [rule.warning, rule.critical].filter((t) => t !== null).map(percent).join(" / ");
      if (level) notes.push({ level: level, text: "At or above the " + level + " threshold of " + percent(threshold) + ". " + rule.reason });
      else notes.push({ level: "ok", text: "Below the declared thresholds (" + known + "). " + rule.reason });
    }
    return notes;
  }

  function showResult(data, response) {
    const body = document.querySelector("#result-table tbody");
    body.replaceChildren();
    for (const spec of outputs) {
      const value = data.result[spec.name];
      const row = document.createElement("tr");
      const head = element("th");
      head.scope = "row";
      head.append(element("span", spec.description), element("br"), element("code", spec.name));
      const cell = element("td");
      const raw = element("data", String(value), "raw");
      raw.value = String(value);
      raw.dataset.output = spec.name;
      if (spec.unit === "1" && typeof value === "number") {
        cell.append(element("strong", percent(value), "headline"), element("br"), raw);
      } else {
        cell.append(raw);
        if (spec.unit && spec.unit !== "1") cell.append(" " + spec.unit);
      }
      const meaning = element("td");
      for (const note of interpret(spec.name, value)) meaning.append(element("p", note.text, "level-" + note.level));
      row.append(head, cell, meaning);
      body.append(row);
    }
    const warnings = document.getElementById("result-warnings");
    warnings.replaceChildren();
    for (const text of data.info.warnings) warnings.append(element("li", text));
    if (!data.info.warnings.length) warnings.append(element("li", "None."));
    const notice = document.getElementById("result-notice");
    notice.replaceChildren();
    if (response.headers.get("Deprecation")) {
      notice.append(element("p", "This version is deprecated; see its page for the successor.", "notice notice-warning"));
    }
    document.getElementById("result-provenance").textContent =
      data.info.id + " " + data.info.version + " · content digest " + data.info.content_digest + " · request " + data.info.request_id;
    result.hidden = false;
    result.focus();
  }

  function showProblem(problem) {
    document.getElementById("error-detail").textContent = problem.title + ": " + (problem.errors ? "check the fields below." : problem.detail);
    const list = document.getElementById("error-list");
    let first = null;
    for (const error of problem.errors || []) {
      const field = form.querySelector('[data-input="' + CSS.escape(error.field) + '"]');
      const item = element("li");
      if (field) {
        const message = document.getElementById("err-" + error.field);
        message.textContent = error.message;
        message.hidden = false;
        field.setAttribute("aria-invalid", "true");
        field.closest(".field").classList.add("has-error");
        const link = element("a", error.field + ": " + error.message);
        link.href = "#" + field.id;
        item.append(link);
        first = first || field;
      } else {
        item.textContent = error.field + ": " + error.message;
      }
      list.append(item);
    }
    result.hidden = true;
    summary.hidden = false;
    summary.focus();
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    clearErrors();
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const response = await fetch(form.dataset.address, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(inputs()),
      });
      const data = await response.json();
      if (response.ok) showResult(data, response);
      else showProblem(data);
    } catch (error) {
      showProblem({ title: "No answer", detail: "The server could not be reached or did not answer in JSON (" + error + ")." });
    } finally {
      button.disabled = false;
    }
  });
})();
