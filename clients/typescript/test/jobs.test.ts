import assert from "node:assert/strict";
import { test } from "node:test";
import { FleetError } from "../src/index.js";
import { fleet, otherFleet, unique } from "./harness.js";

test("an enqueued job runs on the worker and is read back succeeded, with its result", async () => {
  const job = await fleet.jobs.enqueue({ kind: "probe", args: { do: "report", steps: 2 } });
  assert.equal(job.queue, "default");
  const done = await fleet.jobs.wait(job.queue, job.id, { timeoutMs: 20_000 });
  assert.equal(done.state, "succeeded");
  assert.equal(done.kind, "probe");
  assert.equal(done.attempts, 1);
  assert.deepEqual((done.result as { steps: number }).steps, 2);
  assert.equal(done.progress?.percent, 100);
});

test("a retried enqueue with the same Idempotency-Key returns the same job; another request with it is refused", async () => {
  const key = unique("idem");
  const request = { kind: "probe", args: { do: "succeed", tag: key } };
  const first = await fleet.jobs.enqueue(request, { idempotencyKey: key });
  const again = await fleet.jobs.enqueue(request, { idempotencyKey: key });
  assert.equal(again.id, first.id);
  const other = await fleet.jobs.enqueue(request, { idempotencyKey: unique("idem") });
  assert.notEqual(other.id, first.id);
  await assert.rejects(
    fleet.jobs.enqueue({ kind: "probe", args: { do: "succeed", tag: "different" } }, { idempotencyKey: key }),
    (e: unknown) => e instanceof FleetError && e.status === 422 && e.code === "idempotency_key_reused",
  );
  // One job was made for the key, and it ran once.
  const done = await fleet.jobs.wait(first.queue, first.id, { timeoutMs: 20_000 });
  assert.equal(done.attempts, 1);
});

test("bulk enqueue returns the ids in request order, each of them a job", async () => {
  const jobs = await fleet.jobs.enqueueMany([
    { kind: "probe", args: { do: "succeed", tag: "a" } },
    { kind: "probe", args: { do: "succeed", tag: "b" }, priority: "high" },
  ]);
  assert.equal(jobs.length, 2);
  assert.notEqual(jobs[0]!.id, jobs[1]!.id);
  for (const j of jobs) assert.equal((await fleet.jobs.wait(j.queue, j.id, { timeoutMs: 20_000 })).state, "succeeded");
});

test("a delayed job is cancelled before it runs; a finished one answers already_finished", async () => {
  const job = await fleet.jobs.enqueue({ kind: "probe", args: { do: "succeed" }, delay_ms: 600_000 });
  assert.equal((await fleet.jobs.get(job.queue, job.id)).state, "scheduled");
  const cancelled = await fleet.jobs.cancel(job.queue, job.id);
  assert.deepEqual(cancelled, { outcome: "cancelled", state: "scheduled" });
  assert.equal((await fleet.jobs.get(job.queue, job.id)).state, "cancelled");
  const again = await fleet.jobs.cancel(job.queue, job.id);
  assert.equal(again.outcome, "already_finished");
});

test("another tenant's job does not exist for this tenant", async () => {
  const job = await otherFleet.jobs.enqueue({ kind: "probe", args: { do: "succeed" }, delay_ms: 600_000 });
  for (const call of [fleet.jobs.get(job.queue, job.id), fleet.jobs.cancel(job.queue, job.id)]) {
    await assert.rejects(call, (e: unknown) => e instanceof FleetError && e.code === "not_found" && e.status === 404);
  }
  assert.equal((await otherFleet.jobs.cancel(job.queue, job.id)).outcome, "cancelled");
});
