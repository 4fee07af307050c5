import assert from "node:assert/strict";
import { test } from "node:test";
import { Fleet, FleetError, FleetTimeoutError } from "../src/index.js";
import { baseUrl, fleet, operatorKey } from "./harness.js";

function isFleetError(status: number, code: string) {
  return (e: unknown) => {
    assert.ok(e instanceof FleetError, `a FleetError, got ${String(e)}`);
    assert.equal(e.status, status);
    assert.equal(e.code, code);
    assert.ok(e.message.length > code.length, "with the API's message");
    return true;
  };
}

test("a wrong key is unauthorized", async () => {
  const stranger = new Fleet({ baseUrl, apiKey: "fk_0000_0000" });
  await assert.rejects(stranger.jobs.get("default", "x"), isFleetError(401, "unauthorized"));
});

test("a key without the enqueue role is forbidden to enqueue", async () => {
  const operator = new Fleet({ baseUrl, apiKey: operatorKey });
  await assert.rejects(operator.jobs.enqueue({ kind: "probe", args: { do: "succeed" } }), isFleetError(403, "forbidden"));
});

test("invalid requests are invalid, missing things not_found, each with its code", async () => {
  await assert.rejects(fleet.jobs.enqueue({ kind: "no-such-kind", args: {} }), isFleetError(422, "invalid"));
  await assert.rejects(fleet.jobs.enqueue({ kind: "probe", args: { do: "succeed" }, max_attempts: 0 }), isFleetError(422, "invalid"));
  await assert.rejects(fleet.jobs.get("default", "no-such-job"), isFleetError(404, "not_found"));
  await assert.rejects(fleet.batches.get("no-such-batch"), isFleetError(404, "not_found"));
  await assert.rejects(fleet.batches.create({ jobs: [] }), isFleetError(422, "invalid"));
  await assert.rejects(fleet.streams.createToken({ ttl_secs: 0 }), isFleetError(422, "invalid"));
  // A body the API cannot read (only reachable by going around the types).
  const raw = fleet.raw as unknown as { POST: (path: string, init: object) => Promise<{ response: Response; error?: unknown }> };
  const { response, error } = await raw.POST("/v1/jobs", { body: { kind: "probe", args: {}, surprise: 1 } });
  const e = FleetError.from(response, error);
  assert.equal(e.status, 400);
  assert.equal(e.code, "bad_request");
});

test("a wait that runs out of time says so with the job's state", async () => {
  const job = await fleet.jobs.enqueue({ kind: "probe", args: { do: "succeed" }, delay_ms: 600_000 });
  await assert.rejects(fleet.jobs.wait(job.queue, job.id, { timeoutMs: 200 }), (e: unknown) => {
    assert.ok(e instanceof FleetTimeoutError);
    assert.equal(e.lastState, "scheduled");
    return true;
  });
  await fleet.jobs.cancel(job.queue, job.id);
});

test("the client refuses an API key in a page unless told otherwise", () => {
  const g = globalThis as { document?: unknown };
  g.document = {};
  try {
    assert.throws(() => new Fleet({ baseUrl, apiKey: "fk_a_b" }), /must not be used in a browser/);
    assert.doesNotThrow(() => new Fleet({ baseUrl, apiKey: "fk_a_b", dangerouslyAllowBrowser: true }));
  } finally {
    delete g.document;
  }
});
