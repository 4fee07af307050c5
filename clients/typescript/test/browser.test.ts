// The browser helper in a real headless Chromium: a page on the app's own origin (this
// test's server) gets stream tokens from its server (POST /token, as a Next.js route
// handler would) and follows Fleet's stream on Fleet's origin, never holding the key.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { baseUrl, fleet, unique, within } from "./harness.js";

const chromium = process.env.FLEET_CHROMIUM;
/** The built browser module and what it imports. */
const built = fileURLToPath(new URL("../src/", import.meta.url));

const page = `<!doctype html><meta charset="utf-8"><title>stream</title>
<script type="module">
  const report = (body) => fetch("/seen", { method: "POST", body: JSON.stringify(body) });
  addEventListener("error", (e) => report({ error: String(e.message) }));
  addEventListener("unhandledrejection", (e) => report({ error: String(e.reason) }));
  const { openEventStream, isJobEvent } = await import("/lib/browser.js");
  const q = new URLSearchParams(location.search);
  let tokens = 0;
  openEventStream({
    baseUrl: q.get("fleet"),
    after: "0",
    token: async () => {
      tokens += 1;
      const answer = await fetch("/token", { method: "POST" });
      return (await answer.json()).token;
    },
    onEvent: (e) => {
      if (isJobEvent(e) && e.data.id === q.get("job") && e.type === "job.succeeded") report({ event: e, tokens });
    },
  });
</script>`;

test("a page in Chromium follows a job with a stream token from its own server and no API key", async () => {
  assert.ok(chromium, "FLEET_CHROMIUM is not set: run the tests through scripts/ts-client.sh (it installs Chromium)");
  let seen!: (body: string) => void;
  const reported = new Promise<string>((resolve) => (seen = resolve));
  const served: string[] = [];
  const server = createServer(async (req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    let body = "";
    for await (const chunk of req) body += chunk;
    served.push(`${req.method} ${path}`);
    const module = /^\/lib\/([a-z]+\.js)$/.exec(path);
    if (path === "/") {
      res.writeHead(200, { "content-type": "text/html" }).end(page);
    } else if (module) {
      try {
        const js = await readFile(join(built, module[1]!), "utf8");
        res.writeHead(200, { "content-type": "text/javascript" }).end(js);
      } catch {
        res.writeHead(404).end();
      }
    } else if (path === "/token" && req.method === "POST") {
      const { token } = await fleet.streams.createToken({ ttl_secs: 60, types: ["job.*"] });
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ token }));
    } else if (path === "/seen" && req.method === "POST") {
      res.writeHead(204).end();
      seen(body);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const profile = await mkdtemp(join(tmpdir(), "fleet-ts-chromium-"));
  const job = await fleet.jobs.enqueue({ kind: "probe", args: { do: "succeed", tag: unique("page") } });
  const url = `${origin}/?fleet=${encodeURIComponent(baseUrl)}&job=${encodeURIComponent(job.id)}`;
  const browser = spawn(
    chromium,
    ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
      `--user-data-dir=${profile}`, url],
    // Its own process group, so the browser's helper processes end with it.
    { stdio: ["ignore", "ignore", "pipe"], detached: true },
  );
  const exited = new Promise((resolve) => {
    browser.once("exit", resolve);
    browser.once("error", resolve);
  });
  let log = "";
  browser.stderr.on("data", (d: Buffer) => (log = (log + d.toString()).slice(-4000)));
  try {
    const body = await within(30_000, "the page's report", reported).catch((e: unknown) => {
      throw new Error(`${String(e)}; served: ${served.join(", ")}; chromium: ${log}`);
    });
    const report = JSON.parse(body) as { error?: string; event?: { type: string; eventId?: string; data: { id: string } }; tokens?: number };
    assert.equal(report.error, undefined, `the page failed: ${report.error}`);
    assert.equal(report.event?.data.id, job.id);
    assert.match(report.event?.eventId ?? "", /^\d+-\d+$/);
    assert.equal(report.tokens, 1);
  } finally {
    try {
      process.kill(-browser.pid!, "SIGKILL");
    } catch {
      // Already gone.
    }
    await exited;
    server.close();
    await rm(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  }
});
