// Runs dashboard.js (path in argv) against a fake clock and a server that answers only
// when told; prints how many requests were made at each step, as JSON.
const fs = require("fs");
let now = 0;
const timers = [];
const answers = [];
let asked = 0;
global.window = {
  setTimeout: (fn, ms) => timers.push({at: now + ms, fn: fn, every: 0}),
  setInterval: (fn, ms) => timers.push({at: now + ms, fn: fn, every: ms}),
};
const nothing = {forEach: () => {}};
global.document = {
  body: {getAttribute: () => ""},
  querySelector: (q) => (q === "[data-live]" ? {} : null),
  querySelectorAll: () => nothing,
};
global.fetch = () => { asked += 1; return new Promise((resolve) => answers.push(resolve)); };
async function advance(ms) {
  const end = now + ms;
  for (;;) {
    timers.sort((a, b) => a.at - b.at);
    if (!timers.length || timers[0].at > end) { break; }
    const t = timers.shift();
    now = t.at;
    if (t.every) { timers.push({at: now + t.every, fn: t.fn, every: t.every}); }
    t.fn();
    await new Promise((r) => setImmediate(r));
  }
  now = end;
}
(async () => {
  eval(fs.readFileSync(process.argv[2], "utf8"));
  const seen = [];
  await advance(30000);          // the server does not answer for 30 s
  seen.push(asked);
  answers.shift()({ok: true, json: () => ({queues: [], generated_at: "t"})});
  await new Promise((r) => setImmediate(r));
  await new Promise((r) => setImmediate(r));
  await advance(4000);           // not yet 5 s after the answer
  seen.push(asked);
  await advance(1500);
  seen.push(asked);
  console.log(JSON.stringify(seen));
})();
