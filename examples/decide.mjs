// POST /decide from Node.js (18+, standard library only): node examples/decide.mjs [experiment] [visitor]
import { randomUUID } from "node:crypto";

const url = process.env.BANDIT_DECIDE_URL ?? "http://127.0.0.1:6066/decide";
const visit = {
  event_id: randomUUID(),
  experiment_id: process.argv[2] ?? "headline",
  visitor_id: process.argv[3] ?? "visitor-42",
  occurred_at: new Date().toISOString(),
  context: { user_agent: "Mozilla/5.0 (X11; Linux x86_64)", utm_source: "google", country: "DE" },
};
const response = await fetch(url, {
  method: "POST",
  headers: { "content-type": "application/json" },
  body: JSON.stringify(visit),
});
const body = await response.json();
if (!response.ok) {
  // 400 / 404 / 409 / 413: body.reason is the dead-letter reason, body.detail says what to fix
  console.error(`refused (${response.status}): ${body.reason}: ${body.detail}`);
  process.exit(1);
}
console.log(`show ${body.variant_id} (p=${body.propensity}, decision ${body.decision_id})`);
