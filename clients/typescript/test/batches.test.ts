import assert from "node:assert/strict";
import { test } from "node:test";
import { fleet, within } from "./harness.js";

test("a batch's jobs run, its event stream ends with done, and its counters add up", async () => {
  const batch = await fleet.batches.create({
    jobs: [
      { kind: "probe", args: { do: "succeed", tag: "1" } },
      { kind: "probe", args: { do: "succeed", tag: "2" } },
      { kind: "probe", args: { do: "give_up", tag: "3" } },
    ],
    on_complete: { kind: "probe", args: { do: "succeed", tag: "callback" } },
  });
  assert.equal(batch.total, 3);
  const seen: string[] = [];
  let last: unknown;
  await within(
    20_000,
    "the batch's done event",
    (async () => {
      for await (const event of fleet.batches.events(batch.id)) {
        seen.push(event.type);
        last = event.data;
      }
    })(),
  );
  assert.equal(seen.at(-1), "done", `events: ${seen.join(", ")}`);
  assert.deepEqual(last, { id: batch.id, total: 3, succeeded: 2, failed: 1, pending: 0 });
  const view = await fleet.batches.get(batch.id);
  assert.equal(view.succeeded, 2);
  assert.equal(view.failed, 1);
  assert.equal(view.callbacks_enqueued, true);
});
