import assert from "node:assert/strict";
import { createHmac, timingSafeEqual } from "node:crypto";
import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { FleetError } from "../src/index.js";
import { fleet, unique, within } from "./harness.js";

interface Delivery {
  headers: IncomingHttpHeaders;
  body: string;
}

/** A receiver on loopback that hands over the first delivery it gets. */
async function receiver(): Promise<{ url: string; first: Promise<Delivery>; close: () => void }> {
  let deliver!: (d: Delivery) => void;
  const first = new Promise<Delivery>((resolve) => (deliver = resolve));
  const server = createServer((req, res) => {
    let body = "";
    req.setEncoding("utf8");
    req.on("data", (chunk: string) => (body += chunk));
    req.on("end", () => {
      res.writeHead(204).end();
      deliver({ headers: req.headers, body });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/hook`, first, close: () => server.close() };
}

/** Standard Webhooks: HMAC-SHA256 of `id.timestamp.body` under the secret's bytes. */
function signed(secret: string, d: Delivery): boolean {
  const key = Buffer.from(secret.replace(/^whsec_/, ""), "base64");
  const expected = createHmac("sha256", key)
    .update(`${d.headers["webhook-id"]}.${d.headers["webhook-timestamp"]}.${d.body}`)
    .digest();
  return String(d.headers["webhook-signature"])
    .split(" ")
    .some((s) => {
      const [version, sig] = s.split(",");
      const given = Buffer.from(sig ?? "", "base64");
      return version === "v1" && given.length === expected.length && timingSafeEqual(given, expected);
    });
}

test("a published event reaches the tenant's endpoint, signed with its secret", async () => {
  const hook = await receiver();
  try {
    const type = `ts.${unique("order").replace(/-/g, "_")}`;
    const endpoint = await fleet.endpoints.create({ url: hook.url, event_types: [type] });
    assert.ok(endpoint.secret?.startsWith("whsec_"), "the secret is shown when the endpoint is made");
    assert.ok((await fleet.endpoints.list()).some((e) => e.id === endpoint.id && e.secret == null));
    const event = await fleet.events.publish({ type, payload: { order: 42 } }, { idempotencyKey: unique("event") });
    const delivery = await within(20_000, "the webhook delivery", hook.first);
    assert.deepEqual(JSON.parse(delivery.body), { order: 42 }, "the payload's exact bytes");
    assert.equal(delivery.headers["webhook-id"], event.id);
    assert.ok(signed(endpoint.secret!, delivery), "the signature verifies with the endpoint's secret");
    assert.ok(event.id);
    await fleet.endpoints.delete(endpoint.id);
    await assert.rejects(fleet.endpoints.delete(endpoint.id), (e: unknown) => e instanceof FleetError && e.code === "not_found");
  } finally {
    hook.close();
  }
});
