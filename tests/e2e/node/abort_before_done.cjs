// A visitor who leaves at the last word: for each conversation, post one message with
// @microsoft/fetch-event-source (what SPAs use to stream a POST) and abort the request
// right after the delta that completes the reply, before `done` arrives.
//
// Usage: node abort_before_done.cjs '{"baseUrl", "origin", "expected", "tries": [{"conversationId", "cookie"}]}'
// Prints one JSON line: [{"conversationId", "events": [...], "text"}].
"use strict";

// The library is written for browsers: it reads window.fetch/setTimeout and listens for
// visibility changes on document.
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };

const { fetchEventSource } = require("@microsoft/fetch-event-source");

async function once(config, tryConfig) {
  const controller = new AbortController();
  const events = [];
  let text = "";
  await fetchEventSource(
    `${config.baseUrl}/api/v1/conversations/${tryConfig.conversationId}/messages`,
    {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Origin: config.origin,
        Cookie: tryConfig.cookie,
      },
      body: JSON.stringify({ content: config.message || "hello" }),
      signal: controller.signal,
      openWhenHidden: true,
      onmessage(event) {
        if (controller.signal.aborted) return;
        events.push(event.event);
        if (event.event === "delta") {
          text += JSON.parse(event.data).text;
          if (text === config.expected) controller.abort();
        }
      },
      onerror(error) {
        throw error; // no reconnects: one POST per try
      },
    },
  );
  return { conversationId: tryConfig.conversationId, events, text };
}

(async () => {
  const config = JSON.parse(process.argv[2]);
  const results = [];
  for (const tryConfig of config.tries) {
    results.push(await once(config, tryConfig));
  }
  process.stdout.write(JSON.stringify(results) + "\n");
})().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
